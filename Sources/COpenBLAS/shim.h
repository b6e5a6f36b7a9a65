#ifndef MOEKIT_COPENBLAS_SHIM_H
#define MOEKIT_COPENBLAS_SHIM_H

#include <cblas.h>

// openblas_set_num_threads / openblas_get_num_threads / openblas_get_config are declared in
// OpenBLAS's cblas.h; nothing else is needed here.

#endif
