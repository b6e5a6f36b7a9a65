#ifndef MOEKIT_CHDF5_SHIM_H
#define MOEKIT_CHDF5_SHIM_H

// HDF5 spells most of its constants as macros that expand to a library call plus a global
// (`H5T_NATIVE_INT64` is `(H5OPEN H5T_NATIVE_INT64_g)`), which Swift cannot import. These static
// inline accessors give Swift the same values. Call `H5open()` (or any accessor) before using them.

#include <hdf5.h>

// Property list classes and the default property list.
static inline hid_t moekit_H5P_DEFAULT(void) { return H5P_DEFAULT; }
static inline hid_t moekit_H5P_FILE_ACCESS(void) { return H5P_FILE_ACCESS; }
static inline hid_t moekit_H5P_FILE_CREATE(void) { return H5P_FILE_CREATE; }
static inline hid_t moekit_H5P_DATASET_CREATE(void) { return H5P_DATASET_CREATE; }
static inline hid_t moekit_H5P_DATASET_ACCESS(void) { return H5P_DATASET_ACCESS; }
static inline hid_t moekit_H5P_LINK_CREATE(void) { return H5P_LINK_CREATE; }

// File access flags.
static inline unsigned moekit_H5F_ACC_RDONLY(void) { return H5F_ACC_RDONLY; }
static inline unsigned moekit_H5F_ACC_RDWR(void) { return H5F_ACC_RDWR; }
static inline unsigned moekit_H5F_ACC_TRUNC(void) { return H5F_ACC_TRUNC; }
static inline unsigned moekit_H5F_ACC_EXCL(void) { return H5F_ACC_EXCL; }
static inline unsigned moekit_H5F_ACC_SWMR_WRITE(void) { return H5F_ACC_SWMR_WRITE; }
static inline unsigned moekit_H5F_ACC_SWMR_READ(void) { return H5F_ACC_SWMR_READ; }

// Dataspaces.
static inline hsize_t moekit_H5S_UNLIMITED(void) { return H5S_UNLIMITED; }
static inline hid_t moekit_H5S_ALL(void) { return H5S_ALL; }

// Native (in-memory) types.
static inline hid_t moekit_H5T_NATIVE_INT8(void) { return H5T_NATIVE_INT8; }
static inline hid_t moekit_H5T_NATIVE_INT16(void) { return H5T_NATIVE_INT16; }
static inline hid_t moekit_H5T_NATIVE_INT32(void) { return H5T_NATIVE_INT32; }
static inline hid_t moekit_H5T_NATIVE_INT64(void) { return H5T_NATIVE_INT64; }
static inline hid_t moekit_H5T_NATIVE_UINT8(void) { return H5T_NATIVE_UINT8; }
static inline hid_t moekit_H5T_NATIVE_FLOAT(void) { return H5T_NATIVE_FLOAT; }
static inline hid_t moekit_H5T_NATIVE_DOUBLE(void) { return H5T_NATIVE_DOUBLE; }

// File (on-disk) types: little-endian, fixed, so files are portable.
static inline hid_t moekit_H5T_STD_I16LE(void) { return H5T_STD_I16LE; }
static inline hid_t moekit_H5T_STD_I32LE(void) { return H5T_STD_I32LE; }
static inline hid_t moekit_H5T_STD_I64LE(void) { return H5T_STD_I64LE; }
static inline hid_t moekit_H5T_IEEE_F32LE(void) { return H5T_IEEE_F32LE; }
static inline hid_t moekit_H5T_IEEE_F64LE(void) { return H5T_IEEE_F64LE; }
static inline hid_t moekit_H5T_C_S1(void) { return H5T_C_S1; }
static inline size_t moekit_H5T_VARIABLE(void) { return H5T_VARIABLE; }

// File format bounds: the latest format is what SWMR needs (checksummed metadata, superblock v3).
static inline H5F_libver_t moekit_H5F_LIBVER_LATEST(void) { return H5F_LIBVER_LATEST; }

// Error stack.
static inline hid_t moekit_H5E_DEFAULT(void) { return H5E_DEFAULT; }

// Silence HDF5's automatic error printing on stderr: MoEKit reports errors itself.
static inline herr_t moekit_H5_silence_errors(void) { return H5Eset_auto2(H5E_DEFAULT, NULL, NULL); }

#endif
