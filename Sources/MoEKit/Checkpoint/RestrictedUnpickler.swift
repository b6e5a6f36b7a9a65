import Foundation

/// The objects a state-dict pickle can build: plain data, containers, the allowed globals, and
/// the storages and tensors PyTorch's reduce functions describe (descriptions only: no data is
/// read here).
indirect enum PickleValue {
    case none
    case bool(Bool)
    case int(Int)
    case float(Double)
    case string(String)
    case bytes([UInt8])
    /// A tuple (boxed, so `dismantle` can empty it like a list).
    case tuple(PickleTuple)
    case list(PickleList)
    case dict(PickleDict)
    case global(PickleGlobal)
    case storage(PickleStorage)
    case tensor(PickleTensor)

    /// A short description for error messages.
    var kind: String {
        switch self {
        case .none: return "None"
        case .bool: return "a bool"
        case .int: return "an int"
        case .float: return "a float"
        case .string: return "a string"
        case .bytes: return "bytes"
        case .tuple: return "a tuple"
        case .list: return "a list"
        case .dict: return "a dict"
        case .global(let global): return "global \(global.name)"
        case .storage: return "a storage"
        case .tensor: return "a tensor"
        }
    }
}

/// Lists and dicts are mutable and shared through the memo, so they are reference types.
final class PickleList {
    var items: [PickleValue] = []
}

/// A tuple's items. Immutable to the pickle, but a reference type so that `dismantle` can empty
/// it: a 50,000-deep tuple nesting released as nested values would recurse through every level
/// and overflow the stack.
final class PickleTuple {
    var items: [PickleValue]
    init(_ items: [PickleValue]) { self.items = items }
}

/// A dict or `collections.OrderedDict`, in insertion order.
final class PickleDict {
    private(set) var items: [(key: PickleValue, value: PickleValue)] = []
    private var stringKeys: [String: Int] = [:]

    func removeAll() {
        items = []
        stringKeys = [:]
    }

    func set(_ key: PickleValue, _ value: PickleValue) {
        if case .string(let text) = key {
            if let position = stringKeys[text] { items[position].value = value; return }
            stringKeys[text] = items.count
        }
        items.append((key, value))
    }
}

/// The globals a state dict needs, and nothing else.
enum PickleGlobal: Equatable {
    case orderedDict
    case rebuildTensorV2
    case rebuildTensor
    case rebuildParameter
    /// `torch.<Type>Storage`: the element type of a storage's persistent id (`nil` for storage
    /// types MoEKit cannot read, refused when a tensor uses one).
    case storageType(name: String, dtype: SafetensorsDType?)
    /// `torch.float32` and friends, which some pickles carry as plain values.
    case dtype(name: String)

    var name: String {
        switch self {
        case .orderedDict: return "collections.OrderedDict"
        case .rebuildTensorV2: return "torch._utils._rebuild_tensor_v2"
        case .rebuildTensor: return "torch._utils._rebuild_tensor"
        case .rebuildParameter: return "torch._utils._rebuild_parameter"
        case .storageType(let name, _): return "torch.\(name)"
        case .dtype(let name): return "torch.\(name)"
        }
    }

    /// The storage classes of `torch` (typed storages pickle as these names) and their element types.
    static let storageTypes: [String: SafetensorsDType?] = [
        "FloatStorage": .float32, "DoubleStorage": .float64, "HalfStorage": .float16, "BFloat16Storage": .bfloat16,
        "LongStorage": .int64, "IntStorage": .int32, "ShortStorage": .int16, "CharStorage": .int8,
        "ByteStorage": .uint8, "BoolStorage": .bool, "UInt16Storage": .uint16, "UInt32Storage": .uint32,
        "UInt64Storage": .uint64, "Float8_e4m3fnStorage": .float8E4M3, "Float8_e5m2Storage": .float8E5M2,
        // An untyped storage counts bytes.
        "UntypedStorage": .uint8,
        "ComplexFloatStorage": nil, "ComplexDoubleStorage": nil, "QInt8Storage": nil, "QUInt8Storage": nil,
        "QInt32Storage": nil, "QUInt4x2Storage": nil, "QUInt2x4Storage": nil,
    ]

    static let dtypeNames: Set<String> = [
        "float32", "float", "float64", "double", "float16", "half", "bfloat16", "int64", "long", "int32", "int",
        "int16", "short", "int8", "uint8", "bool",
    ]

    /// The allowed global for `module.name`, or `nil` when it is not allowed.
    init?(module: String, name: String) {
        switch (module, name) {
        case ("collections", "OrderedDict"): self = .orderedDict
        case ("torch._utils", "_rebuild_tensor_v2"): self = .rebuildTensorV2
        case ("torch._utils", "_rebuild_tensor"): self = .rebuildTensor
        case ("torch._utils", "_rebuild_parameter"): self = .rebuildParameter
        case ("torch", _):
            if let dtype = Self.storageTypes[name] { self = .storageType(name: name, dtype: dtype) }
            else if Self.dtypeNames.contains(name) { self = .dtype(name: name) }
            else { return nil }
        default: return nil
        }
    }
}

/// A storage named by a persistent id `('storage', torch.<Type>Storage, key, location, numel)`:
/// its data is the zip record `<archive>/data/<key>`, `numel` elements of the type.
struct PickleStorage: Equatable {
    let key: String
    let typeName: String
    let dtype: SafetensorsDType?
    let elementCount: Int
}

/// A tensor as `_rebuild_tensor_v2(storage, storage_offset, size, stride, …)` describes it:
/// element (i₀, …, iₙ₋₁) is storage element `offset + Σ iₖ·strideₖ`.
struct PickleTensor: Equatable {
    let storage: PickleStorage
    let storageOffset: Int
    let shape: [Int]
    let strides: [Int]
}

/// A pickle reader that understands what a PyTorch state dict needs and executes nothing.
///
/// It implements the opcodes of protocol 2 that `torch.save` emits (plus the harmless protocol
/// 4 framing, memo and short-string opcodes), builds plain values, dicts and lists itself, and
/// resolves only the globals of `PickleGlobal`: `collections.OrderedDict`,
/// `torch._utils._rebuild_tensor_v2` / `_rebuild_tensor` / `_rebuild_parameter`, the
/// `torch.*Storage` types and `torch` dtypes. Any other global (`GLOBAL`, `STACK_GLOBAL`, `INST`)
/// is refused with `forbiddenGlobal` naming it as `module.name` *when it is read*, before anything
/// could call it. `REDUCE` calls nothing: the allowed reduce functions are interpreted as
/// descriptions (a dict, a tensor view); `BUILD` only accepts state for a dict (an
/// `OrderedDict`'s `_metadata`, which is dropped). `OBJ`, `NEWOBJ` and the extension registry
/// are refused; so is every opcode not listed. Persistent ids must be storage descriptions.
struct RestrictedUnpickler {
    private let bytes: UnsafeRawBufferPointer
    private let file: String
    private var position = 0
    private var stack: [PickleValue] = []
    private var marks: [Int] = []
    private var memo: [Int: PickleValue] = [:]
    /// Every value ever pushed, kept alive until `dismantle` releases them level by level (a
    /// value dropped mid-run — popped, overwritten in the memo, a discarded argument — could
    /// otherwise free a deep graph recursively).
    private var retained: [PickleValue] = []

    /// Reads the pickle `bytes` (the contents of `data.pkl` in `file`) as a state dict: a dict
    /// (or `OrderedDict`) from tensor names to tensors, in its order.
    ///
    /// Every value built is kept alive until the end and the graph is then dismantled level by
    /// level (returning or throwing), so a pickle nesting containers a million deep cannot
    /// overflow the stack through recursive deallocation.
    static func loadStateDict(_ bytes: UnsafeRawBufferPointer, file: String) throws(PyTorchCheckpointError) -> [(name: String, tensor: PickleTensor)] {
        var reader = RestrictedUnpickler(bytes: bytes, file: file)
        defer { dismantle(reader.retained) }
        let root = try reader.run()
        guard case .dict(let dict) = root else { throw .notAStateDict(file: file, reason: "data.pkl holds \(root.kind), not a dict") }
        var result: [(name: String, tensor: PickleTensor)] = []
        for (key, value) in dict.items {
            guard case .string(let name) = key else { throw .notAStateDict(file: file, reason: "a key is \(key.kind), not a tensor name") }
            guard case .tensor(let tensor) = value else { throw .notAStateDict(file: file, reason: "'\(name)' is \(value.kind), not a tensor") }
            result.append((name, tensor))
        }
        return result
    }

    /// Reads the pickle and returns its object graph (for tests of plain values; the caller
    /// releases the graph, see `dismantle`).
    static func load(_ bytes: UnsafeRawBufferPointer, file: String) throws(PyTorchCheckpointError) -> PickleValue {
        var reader = RestrictedUnpickler(bytes: bytes, file: file)
        return try reader.run()
    }

    /// Releases values one nesting level at a time: each container's children are moved to a
    /// work list (which keeps them alive) before the container goes, so no release recurses.
    /// Emptying lists and dicts also breaks the reference cycles a memo can build.
    static func dismantle(_ values: [PickleValue]) {
        var pending = values
        while let value = pending.popLast() {
            switch value {
            case .tuple(let tuple):
                pending.append(contentsOf: tuple.items)
                tuple.items = []
            case .list(let list):
                pending.append(contentsOf: list.items)
                list.items = []
            case .dict(let dict):
                for (key, item) in dict.items { pending.append(key); pending.append(item) }
                dict.removeAll()
            default:
                break
            }
        }
    }

    private init(bytes: UnsafeRawBufferPointer, file: String) {
        self.bytes = bytes
        self.file = file
    }

    // MARK: Reading the stream

    private func invalid(_ reason: String, at offset: Int? = nil) -> PyTorchCheckpointError {
        .invalidPickle(file: file, offset: offset ?? position, reason: reason)
    }

    private mutating func read(_ count: Int) throws(PyTorchCheckpointError) -> UnsafeRawBufferPointer {
        guard count >= 0, count <= bytes.count - position else {
            throw invalid("truncated: \(count) more bytes needed, \(bytes.count - position) left")
        }
        defer { position += count }
        return UnsafeRawBufferPointer(rebasing: bytes[position ..< position + count])
    }

    private mutating func readUInt<T: FixedWidthInteger>(_ type: T.Type) throws(PyTorchCheckpointError) -> T {
        T(littleEndian: try read(MemoryLayout<T>.size).loadUnaligned(as: T.self))
    }

    private mutating func readLength<T: FixedWidthInteger>(_ type: T.Type) throws(PyTorchCheckpointError) -> Int {
        let value = try readUInt(type)
        guard let length = Int(exactly: value), length >= 0 else { throw invalid("length \(value) out of range") }
        return length
    }

    /// A text line up to `\n` (GLOBAL and INST operands).
    private mutating func readLine() throws(PyTorchCheckpointError) -> String {
        guard let end = bytes[position...].firstIndex(of: UInt8(ascii: "\n")) else { throw invalid("truncated: unterminated text operand") }
        let line = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[position ..< end]), as: UTF8.self)
        position = end + 1
        return line
    }

    private mutating func readString(length: Int) throws(PyTorchCheckpointError) -> String {
        let start = position
        let raw = try read(length)
        guard let text = String(validating: raw, as: UTF8.self) else { throw invalid("string is not valid UTF-8", at: start) }
        return text
    }

    /// Two's-complement little-endian integer of `count` bytes (LONG1/LONG4), at most 64 bits.
    private mutating func readLong(count: Int) throws(PyTorchCheckpointError) -> Int {
        let start = position
        let raw = try read(count)
        guard count <= 8 else { throw invalid("integer of \(count) bytes is too large", at: start) }
        guard count > 0 else { return 0 }
        var value: UInt64 = 0
        for (index, byte) in raw.enumerated() { value |= UInt64(byte) << (8 * UInt64(index)) }
        if count < 8, raw[count - 1] & 0x80 != 0 { value |= ~UInt64(0) << (8 * UInt64(count)) }
        return Int(Int64(bitPattern: value))
    }

    // MARK: The stack

    private func tuple(_ items: [PickleValue]) -> PickleValue { .tuple(PickleTuple(items)) }

    private mutating func push(_ value: PickleValue) {
        stack.append(value)
        retained.append(value)
    }

    private mutating func pop() throws(PyTorchCheckpointError) -> PickleValue {
        guard let value = stack.popLast(), stack.count >= (marks.last ?? 0) else { throw invalid("stack underflow") }
        return value
    }

    private mutating func popMark() throws(PyTorchCheckpointError) -> [PickleValue] {
        guard let mark = marks.popLast() else { throw invalid("no MARK to pop to") }
        let items = Array(stack[mark...])
        stack.removeSubrange(mark...)
        return items
    }

    private mutating func top() throws(PyTorchCheckpointError) -> PickleValue {
        guard let value = stack.last, stack.count > (marks.last ?? 0) else { throw invalid("stack underflow") }
        return value
    }

    private func memoized(_ index: Int) throws(PyTorchCheckpointError) -> PickleValue {
        guard let value = memo[index] else { throw invalid("memo entry \(index) used before it was stored") }
        return value
    }

    private func global(module: String, name: String, at offset: Int) throws(PyTorchCheckpointError) -> PickleValue {
        guard let global = PickleGlobal(module: module, name: name) else {
            throw .forbiddenGlobal(file: file, offset: offset, name: "\(module).\(name)")
        }
        return .global(global)
    }

    // MARK: The machine

    private mutating func run() throws(PyTorchCheckpointError) -> PickleValue {
        while position < bytes.count {
            let offset = position
            let opcode = bytes[position]
            position += 1
            switch opcode {
            case 0x80:  // PROTO
                let version = try readUInt(UInt8.self)
                guard version <= 5 else { throw invalid("pickle protocol \(version) is unknown", at: offset) }
            case 0x95:  // FRAME (protocol 4): a length prefix, nothing to do
                _ = try readUInt(UInt64.self)
            case UInt8(ascii: "."):  // STOP
                guard marks.isEmpty, stack.count == 1, let result = stack.last else {
                    throw invalid("STOP with \(stack.count) values and \(marks.count) marks on the stack", at: offset)
                }
                return result
            case UInt8(ascii: "("): marks.append(stack.count)  // MARK
            case UInt8(ascii: "0"): _ = try pop()  // POP
            case UInt8(ascii: "1"): _ = try popMark()  // POP_MARK
            case UInt8(ascii: "2"): push(try top())  // DUP

            case UInt8(ascii: "N"): push(.none)
            case 0x88: push(.bool(true))  // NEWTRUE
            case 0x89: push(.bool(false))  // NEWFALSE
            case UInt8(ascii: "J"): push(.int(Int(Int32(bitPattern: try readUInt(UInt32.self)))))  // BININT
            case UInt8(ascii: "K"): push(.int(Int(try readUInt(UInt8.self))))  // BININT1
            case UInt8(ascii: "M"): push(.int(Int(try readUInt(UInt16.self))))  // BININT2
            case 0x8A: push(.int(try readLong(count: Int(try readUInt(UInt8.self)))))  // LONG1
            case 0x8B: push(.int(try readLong(count: try readLength(UInt32.self))))  // LONG4
            case UInt8(ascii: "G"):  // BINFLOAT: big-endian IEEE double
                let bits = UInt64(bigEndian: try read(8).loadUnaligned(as: UInt64.self))
                push(.float(Double(bitPattern: bits)))

            case UInt8(ascii: "X"): push(.string(try readString(length: try readLength(UInt32.self))))  // BINUNICODE
            case 0x8C: push(.string(try readString(length: Int(try readUInt(UInt8.self)))))  // SHORT_BINUNICODE
            case 0x8D: push(.string(try readString(length: try readLength(UInt64.self))))  // BINUNICODE8
            case UInt8(ascii: "T"), UInt8(ascii: "U"):  // BINSTRING, SHORT_BINSTRING (Python 2 str, as Latin-1)
                let length = opcode == UInt8(ascii: "T") ? try readLength(UInt32.self) : Int(try readUInt(UInt8.self))
                push(.string(String(try read(length).map { Character(Unicode.Scalar($0)) })))
            case UInt8(ascii: "B"): push(.bytes(Array(try read(try readLength(UInt32.self)))))  // BINBYTES
            case UInt8(ascii: "C"): push(.bytes(Array(try read(Int(try readUInt(UInt8.self))))))  // SHORT_BINBYTES
            case 0x8E: push(.bytes(Array(try read(try readLength(UInt64.self)))))  // BINBYTES8

            case UInt8(ascii: ")"): push(tuple([]))  // EMPTY_TUPLE
            case UInt8(ascii: "t"): push(tuple(try popMark()))  // TUPLE
            case 0x85: push(tuple([try pop()]))  // TUPLE1
            case 0x86:  // TUPLE2
                let second = try pop(), first = try pop()
                push(tuple([first, second]))
            case 0x87:  // TUPLE3
                let third = try pop(), second = try pop(), first = try pop()
                push(tuple([first, second, third]))

            case UInt8(ascii: "]"): push(.list(PickleList()))  // EMPTY_LIST
            case UInt8(ascii: "l"):  // LIST
                let list = PickleList()
                list.items = try popMark()
                push(.list(list))
            case UInt8(ascii: "a"):  // APPEND
                let item = try pop()
                guard case .list(let list) = try top() else { throw invalid("APPEND to \(stack.last?.kind ?? "nothing")", at: offset) }
                list.items.append(item)
            case UInt8(ascii: "e"):  // APPENDS
                let items = try popMark()
                guard case .list(let list) = try top() else { throw invalid("APPENDS to \(stack.last?.kind ?? "nothing")", at: offset) }
                list.items += items

            case UInt8(ascii: "}"): push(.dict(PickleDict()))  // EMPTY_DICT
            case UInt8(ascii: "d"):  // DICT
                let items = try popMark()
                guard items.count % 2 == 0 else { throw invalid("DICT with an odd number of items", at: offset) }
                let dict = PickleDict()
                for pair in stride(from: 0, to: items.count, by: 2) { dict.set(items[pair], items[pair + 1]) }
                push(.dict(dict))
            case UInt8(ascii: "s"):  // SETITEM
                let value = try pop(), key = try pop()
                guard case .dict(let dict) = try top() else { throw invalid("SETITEM on \(stack.last?.kind ?? "nothing")", at: offset) }
                dict.set(key, value)
            case UInt8(ascii: "u"):  // SETITEMS
                let items = try popMark()
                guard items.count % 2 == 0 else { throw invalid("SETITEMS with an odd number of items", at: offset) }
                guard case .dict(let dict) = try top() else { throw invalid("SETITEMS on \(stack.last?.kind ?? "nothing")", at: offset) }
                for pair in stride(from: 0, to: items.count, by: 2) { dict.set(items[pair], items[pair + 1]) }

            case UInt8(ascii: "h"): push(try memoized(Int(try readUInt(UInt8.self))))  // BINGET
            case UInt8(ascii: "j"): push(try memoized(Int(try readUInt(UInt32.self))))  // LONG_BINGET
            case UInt8(ascii: "q"): memo[Int(try readUInt(UInt8.self))] = try top()  // BINPUT
            case UInt8(ascii: "r"): memo[Int(try readUInt(UInt32.self))] = try top()  // LONG_BINPUT
            case 0x94: memo[memo.count] = try top()  // MEMOIZE

            case UInt8(ascii: "c"):  // GLOBAL module\nname\n
                let module = try readLine(), name = try readLine()
                push(try global(module: module, name: name, at: offset))
            case 0x93:  // STACK_GLOBAL
                let name = try pop(), module = try pop()
                guard case .string(let moduleName) = module, case .string(let globalName) = name else {
                    throw invalid("STACK_GLOBAL operands are not strings", at: offset)
                }
                push(try global(module: moduleName, name: globalName, at: offset))
            case UInt8(ascii: "i"):  // INST module\nname\n: instantiates a class
                let module = try readLine(), name = try readLine()
                throw .forbiddenGlobal(file: file, offset: offset, name: "\(module).\(name)")
            case UInt8(ascii: "R"):  // REDUCE
                let arguments = try pop(), callable = try pop()
                push(try reduce(callable, arguments, at: offset))
            case UInt8(ascii: "b"):  // BUILD
                let state = try pop()
                guard case .dict = try top() else {
                    throw invalid("BUILD (setting the state of \(stack.last?.kind ?? "nothing")) is only accepted on a dict", at: offset)
                }
                _ = state  // an OrderedDict's attributes (`_metadata`): not needed, dropped
            case UInt8(ascii: "Q"):  // BINPERSID
                push(try persistentLoad(try pop(), at: offset))

            default:
                throw .unsupportedOpcode(file: file, offset: offset, opcode: Self.opcodeName(opcode))
            }
        }
        throw invalid("truncated: no STOP opcode")
    }

    /// `REDUCE` on an allowed global, interpreted without calling anything.
    private func reduce(_ callable: PickleValue, _ arguments: PickleValue, at offset: Int) throws(PyTorchCheckpointError) -> PickleValue {
        guard case .global(let global) = callable else { throw invalid("REDUCE on \(callable.kind), not a global", at: offset) }
        guard case .tuple(let argumentTuple) = arguments else { throw invalid("REDUCE arguments are \(arguments.kind), not a tuple", at: offset) }
        let args = argumentTuple.items
        switch global {
        case .orderedDict:
            let dict = PickleDict()
            if let first = args.first {
                // OrderedDict(iterable of pairs)
                let pairs: [PickleValue]
                switch first {
                case .list(let list): pairs = list.items
                case .tuple(let tuple): pairs = tuple.items
                default: throw invalid("OrderedDict(\(first.kind))", at: offset)
                }
                for pair in pairs {
                    guard case .tuple(let pairTuple) = pair, pairTuple.items.count == 2 else { throw invalid("OrderedDict item is not a pair", at: offset) }
                    dict.set(pairTuple.items[0], pairTuple.items[1])
                }
            }
            return .dict(dict)
        case .rebuildTensorV2, .rebuildTensor:
            // (storage, storage_offset, size, stride[, requires_grad, backward_hooks[, metadata]])
            guard args.count >= 4, case .storage(let storage) = args[0], case .int(let storageOffset) = args[1],
                  let shape = Self.integers(args[2]), let strides = Self.integers(args[3]) else {
                throw invalid("\(global.name) arguments are not (storage, offset, size, stride, …)", at: offset)
            }
            return .tensor(PickleTensor(storage: storage, storageOffset: storageOffset, shape: shape, strides: strides))
        case .rebuildParameter:
            // (data, requires_grad, backward_hooks): the parameter is its tensor
            guard let data = args.first, case .tensor = data else { throw invalid("_rebuild_parameter without a tensor", at: offset) }
            return data
        case .storageType, .dtype:
            throw .forbiddenCall(file: file, offset: offset, name: global.name)
        }
    }

    private static func integers(_ value: PickleValue) -> [Int]? {
        guard case .tuple(let tuple) = value else { return nil }
        var result: [Int] = []
        for item in tuple.items {
            guard case .int(let number) = item else { return nil }
            result.append(number)
        }
        return result
    }

    /// `('storage', torch.<Type>Storage, key, location, numel)`, as `torch.save` writes storages.
    private func persistentLoad(_ id: PickleValue, at offset: Int) throws(PyTorchCheckpointError) -> PickleValue {
        guard case .tuple(let tuple) = id, case let fields = tuple.items, fields.count == 5, case .string("storage") = fields[0],
              case .global(.storageType(let typeName, let dtype)) = fields[1], case .string(let key) = fields[2],
              case .string = fields[3], case .int(let elementCount) = fields[4] else {
            throw invalid("persistent id is \(id.kind), not ('storage', torch.<Type>Storage, key, location, numel)", at: offset)
        }
        guard elementCount >= 0 else { throw invalid("storage '\(key)' has \(elementCount) elements", at: offset) }
        return .storage(PickleStorage(key: key, typeName: "torch." + typeName, dtype: dtype, elementCount: elementCount))
    }

    static func opcodeName(_ opcode: UInt8) -> String {
        let names: [UInt8: String] = [
            UInt8(ascii: "I"): "INT", UInt8(ascii: "L"): "LONG", UInt8(ascii: "S"): "STRING", UInt8(ascii: "V"): "UNICODE",
            UInt8(ascii: "F"): "FLOAT", UInt8(ascii: "g"): "GET", UInt8(ascii: "p"): "PUT", UInt8(ascii: "P"): "PERSID",
            UInt8(ascii: "o"): "OBJ", 0x81: "NEWOBJ", 0x92: "NEWOBJ_EX", 0x82: "EXT1", 0x83: "EXT2", 0x84: "EXT4",
            0x8F: "EMPTY_SET", 0x90: "ADDITEMS", 0x91: "FROZENSET", 0x96: "BYTEARRAY8", 0x97: "NEXT_BUFFER",
            0x98: "READONLY_BUFFER",
        ]
        let hex = "0x" + String(opcode, radix: 16, uppercase: true)
        return names[opcode].map { "\($0) (\(hex))" } ?? hex
    }
}
