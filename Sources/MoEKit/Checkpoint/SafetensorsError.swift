import Foundation

/// Everything that can be wrong with a safetensors file, each naming the file and, where there is
/// one, the tensor.
public enum SafetensorsError: Error, LocalizedError, Equatable, Sendable {
    case cannotOpen(file: String, reason: String)
    case fileTooSmall(file: String, size: Int)
    case headerTooLarge(file: String, length: UInt64)
    case headerOutOfBounds(file: String, length: UInt64, fileSize: Int)
    case headerNotUTF8(file: String)
    case headerNotJSONObject(file: String, reason: String)
    case invalidMetadata(file: String, reason: String)
    case invalidTensorEntry(file: String, tensor: String, reason: String)
    case unknownDType(file: String, tensor: String, dtype: String)
    case unsupportedDType(file: String, tensor: String, dtype: String)
    case arithmeticOverflow(file: String, tensor: String)
    case sizeMismatch(file: String, tensor: String, expectedBytes: Int, actualBytes: Int)
    case dataNotContiguous(file: String, tensor: String, expectedStart: Int, actualStart: Int)
    case dataLengthMismatch(file: String, coveredBytes: Int, dataBytes: Int)
    case tensorNotFound(file: String, tensor: String)
    /// Writing the output file failed (`AtomicFileWriter`).
    case file(FileError)
    case invalidWrite(file: String, reason: String)

    public var errorDescription: String? {
        switch self {
        case let .cannotOpen(file, reason):
            return "\(file): cannot open: \(reason)"
        case let .fileTooSmall(file, size):
            return "\(file): not a safetensors file: \(size) bytes, fewer than the 8-byte header length"
        case let .headerTooLarge(file, length):
            return "\(file): header length \(length) exceeds the 100 MB limit"
        case let .headerOutOfBounds(file, length, fileSize):
            return "\(file): header length \(length) runs past the end of the \(fileSize)-byte file (truncated?)"
        case let .headerNotUTF8(file):
            return "\(file): header is not valid UTF-8"
        case let .headerNotJSONObject(file, reason):
            return "\(file): header is not a JSON object: \(reason)"
        case let .invalidMetadata(file, reason):
            return "\(file): __metadata__ \(reason)"
        case let .invalidTensorEntry(file, tensor, reason):
            return "\(file): tensor '\(tensor)': \(reason)"
        case let .unknownDType(file, tensor, dtype):
            return "\(file): tensor '\(tensor)': unknown dtype '\(dtype)'"
        case let .unsupportedDType(file, tensor, dtype):
            return "\(file): tensor '\(tensor)': dtype \(dtype) is not supported here"
        case let .arithmeticOverflow(file, tensor):
            return "\(file): tensor '\(tensor)': shape or offsets overflow"
        case let .sizeMismatch(file, tensor, expected, actual):
            return "\(file): tensor '\(tensor)': data_offsets span \(actual) bytes but dtype and shape need \(expected)"
        case let .dataNotContiguous(file, tensor, expectedStart, actualStart):
            return "\(file): tensor '\(tensor)': data starts at \(actualStart), expected \(expectedStart) (\(actualStart > expectedStart ? "gap" : "overlap") in the data buffer)"
        case let .dataLengthMismatch(file, covered, dataBytes):
            return "\(file): tensors cover \(covered) bytes of a \(dataBytes)-byte data buffer (\(covered < dataBytes ? "trailing bytes or truncated header" : "file truncated"))"
        case let .tensorNotFound(file, tensor):
            return "\(file): no tensor named '\(tensor)'"
        case let .file(error):
            return error.errorDescription
        case let .invalidWrite(file, reason):
            return "\(file): \(reason)"
        }
    }
}
