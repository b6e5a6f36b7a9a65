import Foundation

/// Everything that can be wrong with a PyTorch `.bin` checkpoint (the zip format `torch.save`
/// writes), each naming the file and the zip record, pickle offset or tensor.
public enum PyTorchCheckpointError: Error, LocalizedError, Equatable, Sendable {
    /// Not a zip archive at all (or not one that ends with an end-of-central-directory record).
    case notZipArchive(file: String, reason: String)
    /// The pre-1.6 `torch.save` format: a bare pickle stream, not a zip.
    case legacyFormat(file: String)
    /// The zip's central directory or a local header is malformed, or points outside the file.
    case invalidZip(file: String, reason: String)
    case compressedRecord(file: String, record: String, method: Int)
    case encryptedRecord(file: String, record: String)
    case missingRecord(file: String, record: String)
    case checksumMismatch(file: String, record: String)
    /// `byteorder` says something other than `little`.
    case unsupportedByteOrder(file: String, byteOrder: String)
    /// Malformed pickle: truncated, stack underflow, bad memo reference, …
    case invalidPickle(file: String, offset: Int, reason: String)
    /// An opcode the restricted reader does not implement (it never guesses).
    case unsupportedOpcode(file: String, offset: Int, opcode: String)
    /// A global outside the allow-list: the pickle wants to run code. Nothing was executed.
    case forbiddenGlobal(file: String, offset: Int, name: String)
    /// An allowed global that is a value, not a function (a storage type, a dtype), called by `REDUCE`.
    case forbiddenCall(file: String, offset: Int, name: String)
    /// The pickle's object is not a mapping from tensor names to tensors.
    case notAStateDict(file: String, reason: String)
    case unsupportedStorage(file: String, tensor: String, storageType: String)
    /// A storage record whose byte count disagrees with its element count and type.
    case storageSizeMismatch(file: String, record: String, expectedBytes: Int, actualBytes: Int)
    /// A tensor whose sizes, strides and offset reach past the end of its storage.
    case storageTooSmall(file: String, tensor: String, neededElements: Int, storageElements: Int)
    case invalidTensor(file: String, tensor: String, reason: String)
    case tensorNotFound(file: String, tensor: String)
    case unsupportedDType(file: String, tensor: String, dtype: String)

    public var errorDescription: String? {
        switch self {
        case let .notZipArchive(file, reason):
            return "\(file): not a PyTorch zip checkpoint: \(reason)"
        case let .legacyFormat(file):
            return "\(file): legacy PyTorch checkpoint (torch.save before 1.6, a bare pickle stream) is not supported; re-save it with torch.save in a current PyTorch"
        case let .invalidZip(file, reason):
            return "\(file): corrupt zip archive: \(reason)"
        case let .compressedRecord(file, record, method):
            return "\(file): record '\(record)' is compressed (zip method \(method)); PyTorch writes stored records and only those are read"
        case let .encryptedRecord(file, record):
            return "\(file): record '\(record)' is encrypted"
        case let .missingRecord(file, record):
            return "\(file): missing record '\(record)'"
        case let .checksumMismatch(file, record):
            return "\(file): record '\(record)' fails its CRC-32 check (corrupt file)"
        case let .unsupportedByteOrder(file, byteOrder):
            return "\(file): byteorder is '\(byteOrder)'; only little-endian checkpoints are read"
        case let .invalidPickle(file, offset, reason):
            return "\(file): data.pkl at byte \(offset): \(reason)"
        case let .unsupportedOpcode(file, offset, opcode):
            return "\(file): data.pkl at byte \(offset): pickle opcode \(opcode) is not supported by the restricted reader"
        case let .forbiddenGlobal(file, offset, name):
            return "\(file): data.pkl at byte \(offset): refusing global '\(name)': only state-dict globals (collections.OrderedDict, torch._utils._rebuild_tensor_v2/_rebuild_parameter, torch.*Storage) are allowed; nothing was executed"
        case let .forbiddenCall(file, offset, name):
            return "\(file): data.pkl at byte \(offset): refusing to call '\(name)' (not a state-dict constructor); nothing was executed"
        case let .notAStateDict(file, reason):
            return "\(file): not a state dict of tensors: \(reason)"
        case let .unsupportedStorage(file, tensor, storageType):
            return "\(file): tensor '\(tensor)': storage type \(storageType) is not supported"
        case let .storageSizeMismatch(file, record, expected, actual):
            return "\(file): record '\(record)' holds \(actual) bytes but its storage needs \(expected)"
        case let .storageTooSmall(file, tensor, needed, available):
            return "\(file): tensor '\(tensor)': sizes, strides and offset reach element \(needed) of a storage of \(available) elements"
        case let .invalidTensor(file, tensor, reason):
            return "\(file): tensor '\(tensor)': \(reason)"
        case let .tensorNotFound(file, tensor):
            return "\(file): no tensor named '\(tensor)'"
        case let .unsupportedDType(file, tensor, dtype):
            return "\(file): tensor '\(tensor)': dtype \(dtype) is not supported here"
        }
    }
}
