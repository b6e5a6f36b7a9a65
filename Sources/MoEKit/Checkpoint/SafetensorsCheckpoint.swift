import Foundation

/// The weights of a Hugging Face model directory: one `model.safetensors`, or shards listed by
/// `model.safetensors.index.json`. Every shard is memory-mapped and validated on open; tensors are
/// read on demand, so opening costs nothing like the checkpoint's size.
public final class SafetensorsCheckpoint: @unchecked Sendable {
    public let directory: String
    /// Shard files in name order.
    public let files: [SafetensorsFile]
    private let fileForTensor: [String: SafetensorsFile]

    public init(directory: String) throws(CheckpointError) {
        self.directory = directory
        let manager = FileManager.default
        var isDirectory: ObjCBool = false
        guard manager.fileExists(atPath: directory, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw manager.fileExists(atPath: directory) ? .notADirectory(path: directory) : .missingFile(path: directory)
        }
        let indexPath = directory + "/" + SafetensorsIndex.fileName
        let singlePath = directory + "/model.safetensors"
        var fileForTensor: [String: SafetensorsFile] = [:]
        var files: [SafetensorsFile] = []
        do {
            if manager.fileExists(atPath: indexPath) {
                let index = try SafetensorsIndex(path: indexPath)
                var opened: [String: SafetensorsFile] = [:]
                for shardName in Set(index.weightMap.values).sorted() {
                    let shard = try SafetensorsFile(path: directory + "/" + shardName)
                    opened[shardName] = shard
                    files.append(shard)
                }
                for (tensor, shardName) in index.weightMap {
                    guard let shard = opened[shardName], shard.contains(tensor) else {
                        throw CheckpointError.shardMissingTensor(path: directory + "/" + shardName, tensor: tensor)
                    }
                    fileForTensor[tensor] = shard
                }
                for shard in files {
                    for name in shard.names where fileForTensor[name] == nil {
                        throw CheckpointError.invalidField(path: indexPath, field: "weight_map", reason: "does not list tensor '\(name)' of \(shard.path)")
                    }
                }
            } else if manager.fileExists(atPath: singlePath) {
                let file = try SafetensorsFile(path: singlePath)
                files = [file]
                for name in file.names { fileForTensor[name] = file }
            } else if manager.fileExists(atPath: directory + "/pytorch_model.bin") {
                throw CheckpointError.pickleCheckpoint(path: directory + "/pytorch_model.bin")
            } else {
                throw CheckpointError.noWeights(directory: directory)
            }
        } catch let error as CheckpointError {
            throw error
        } catch let error as SafetensorsError {
            throw .safetensors(error)
        } catch {
            throw .invalidArgument("\(directory): \(error)")
        }
        self.files = files
        self.fileForTensor = fileForTensor
    }

    /// All tensor names, sorted.
    public var names: [String] { fileForTensor.keys.sorted() }

    public func contains(_ name: String) -> Bool { fileForTensor[name] != nil }

    public func file(for name: String) throws(CheckpointError) -> SafetensorsFile {
        guard let file = fileForTensor[name] else { throw .missingTensor(directory: directory, tensor: name) }
        return file
    }

    public func info(_ name: String) throws(CheckpointError) -> SafetensorsTensorInfo {
        let file = try file(for: name)
        do { return try file.info(name) } catch { throw .safetensors(error) }
    }

    /// The tensor converted to f32.
    public func floatTensor(_ name: String) throws(CheckpointError) -> Tensor {
        let file = try file(for: name)
        do { return try file.floatTensor(name) } catch { throw .safetensors(error) }
    }

    /// The tensor's raw bytes from the memory map.
    public func bytes(_ name: String) throws(CheckpointError) -> UnsafeRawBufferPointer {
        let file = try file(for: name)
        do { return try file.bytes(name) } catch { throw .safetensors(error) }
    }

    /// Lets the kernel drop a tensor's pages after use (streaming passes).
    public func release(_ name: String) {
        fileForTensor[name]?.release(name)
    }

    /// The storage dtype most tensors use (what `torch_dtype` should say).
    public var dominantDType: SafetensorsDType? {
        var bytesByType: [SafetensorsDType: Int] = [:]
        for file in files { for entry in file.tensors { bytesByType[entry.dtype, default: 0] += entry.byteCount } }
        return bytesByType.max { $0.value < $1.value }?.key
    }
}
