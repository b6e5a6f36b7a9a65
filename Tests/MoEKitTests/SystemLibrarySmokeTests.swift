import CHDF5
import COpenBLAS
import Foundation
import Testing
@testable import MoEKit

/// The two system libraries link and compute: OpenBLAS multiplies, HDF5 writes and reads a file.
@Suite struct SystemLibrarySmokeTests {
    /// cblas_sgemm of a hand-computed 2×3 · 3×2 product.
    @Test func openBLASMultipliesMatrices() {
        let a = Tensor(shape: [2, 3], values: [1, 2, 3, 4, 5, 6])
        let b = Tensor(shape: [3, 2], values: [7, 8, 9, 10, 11, 12])
        let c = MatrixMultiply.product(a, b)
        #expect(c.values == [58, 64, 139, 154])
        #expect(!BLAS.configuration.isEmpty)
    }

    /// An HDF5 file with one int64 dataset written through the C API and read back.
    @Test func hdf5WritesAndReadsADataset() throws {
        let directory = TemporaryDirectory()
        let path = directory.file("smoke.h5")
        #expect(H5open() >= 0)
        let file = H5Fcreate(path, moekit_H5F_ACC_TRUNC(), moekit_H5P_DEFAULT(), moekit_H5P_DEFAULT())
        #expect(file >= 0)
        var dimensions: [hsize_t] = [2, 3]
        let space = H5Screate_simple(2, &dimensions, nil)
        let dataset = H5Dcreate2(file, "numbers", moekit_H5T_STD_I64LE(), space, moekit_H5P_DEFAULT(), moekit_H5P_DEFAULT(), moekit_H5P_DEFAULT())
        let written: [Int64] = [1, -2, 3, 40, 500, 6000]
        #expect(H5Dwrite(dataset, moekit_H5T_NATIVE_INT64(), moekit_H5S_ALL(), moekit_H5S_ALL(), moekit_H5P_DEFAULT(), written) >= 0)
        H5Dclose(dataset); H5Sclose(space); H5Fclose(file)

        let reopened = H5Fopen(path, moekit_H5F_ACC_RDONLY(), moekit_H5P_DEFAULT())
        #expect(reopened >= 0)
        let readDataset = H5Dopen2(reopened, "numbers", moekit_H5P_DEFAULT())
        var read = [Int64](repeating: 0, count: 6)
        #expect(H5Dread(readDataset, moekit_H5T_NATIVE_INT64(), moekit_H5S_ALL(), moekit_H5S_ALL(), moekit_H5P_DEFAULT(), &read) >= 0)
        H5Dclose(readDataset); H5Fclose(reopened)
        #expect(read == written)
    }
}
