import Foundation

/// Decodes a `Decodable` record straight from a parsed `JSONValue` (no round trip through JSON
/// text and `JSONDecoder`), keeping `JSONValue`'s strictness: an `Int` field must hold a JSON
/// integer (`2.0` is refused), a `Float`/`Double` field takes an integer or a number, and a value
/// of the wrong kind is a `DecodingError.typeMismatch` whose coding path names the field.
struct JSONValueDecoder: Decoder {
    let value: JSONValue
    var codingPath: [CodingKey] = []
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    init(_ value: JSONValue, codingPath: [CodingKey] = []) {
        self.value = value
        self.codingPath = codingPath
    }

    /// Decodes `type` from `value`.
    static func decode<T: Decodable>(_ type: T.Type, from value: JSONValue) throws -> T {
        try JSONValueDecoder(value).decodeValue(type)
    }

    func container<Key: CodingKey>(keyedBy type: Key.Type) throws -> KeyedDecodingContainer<Key> {
        guard case .object(let object) = value else { throw mismatch([String: JSONValue].self, "an object") }
        return KeyedDecodingContainer(Keyed<Key>(object: object, codingPath: codingPath))
    }

    func unkeyedContainer() throws -> UnkeyedDecodingContainer {
        guard case .array(let array) = value else { throw mismatch([JSONValue].self, "an array") }
        return Unkeyed(array: array, codingPath: codingPath)
    }

    func singleValueContainer() throws -> SingleValueDecodingContainer { Single(decoder: self) }

    private func mismatch(_ type: Any.Type, _ expected: String) -> DecodingError {
        .typeMismatch(type, .init(codingPath: codingPath, debugDescription: "expected \(expected), found \(value.kindDescription)"))
    }

    /// The value as `type`: JSON primitives by their kind, anything else through its `init(from:)`.
    func decodeValue<T: Decodable>(_ type: T.Type) throws -> T {
        switch type {
        case is Bool.Type:
            guard case .bool(let flag) = value else { throw mismatch(type, "true or false") }
            return flag as! T
        case is String.Type:
            guard case .string(let text) = value else { throw mismatch(type, "a string") }
            return text as! T
        case is Double.Type, is Float.Type:
            let number: Double
            switch value {
            case .integer(let integer): number = Double(integer)
            case .number(let real): number = real
            default: throw mismatch(type, "a number")
            }
            return (type == Float.self ? Float(number) as Any : number as Any) as! T
        case is Int.Type, is Int64.Type, is UInt64.Type, is Int32.Type, is UInt32.Type:
            guard case .integer(let integer) = value else { throw mismatch(type, "an integer") }
            let converted: Any?
            switch type {
            case is Int.Type: converted = Int(exactly: integer)
            case is Int64.Type: converted = integer
            case is UInt64.Type: converted = UInt64(exactly: integer)
            case is Int32.Type: converted = Int32(exactly: integer)
            default: converted = UInt32(exactly: integer)
            }
            guard let converted else {
                throw DecodingError.dataCorrupted(.init(codingPath: codingPath, debugDescription: "\(integer) does not fit in \(type)"))
            }
            return converted as! T
        case is JSONValue.Type:
            return value as! T
        default:
            return try T(from: self)
        }
    }

    private struct Keyed<Key: CodingKey>: KeyedDecodingContainerProtocol {
        let object: [String: JSONValue]
        let codingPath: [CodingKey]
        var allKeys: [Key] { object.keys.compactMap { Key(stringValue: $0) } }

        func contains(_ key: Key) -> Bool { object[key.stringValue] != nil }

        func decodeNil(forKey key: Key) throws -> Bool { object[key.stringValue] == nil || object[key.stringValue] == .null }

        func decode<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T {
            guard let value = object[key.stringValue] else {
                throw DecodingError.keyNotFound(key, .init(codingPath: codingPath, debugDescription: "missing '\(key.stringValue)'"))
            }
            guard value != .null else {
                throw DecodingError.valueNotFound(type, .init(codingPath: codingPath + [key], debugDescription: "null instead of a value"))
            }
            return try JSONValueDecoder(value, codingPath: codingPath + [key]).decodeValue(type)
        }

        func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type, forKey key: Key) throws -> KeyedDecodingContainer<NestedKey> {
            try JSONValueDecoder(object[key.stringValue] ?? .null, codingPath: codingPath + [key]).container(keyedBy: type)
        }

        func nestedUnkeyedContainer(forKey key: Key) throws -> UnkeyedDecodingContainer {
            try JSONValueDecoder(object[key.stringValue] ?? .null, codingPath: codingPath + [key]).unkeyedContainer()
        }

        func superDecoder() throws -> Decoder { JSONValueDecoder(.object(object), codingPath: codingPath) }
        func superDecoder(forKey key: Key) throws -> Decoder { JSONValueDecoder(object[key.stringValue] ?? .null, codingPath: codingPath + [key]) }
    }

    private struct Unkeyed: UnkeyedDecodingContainer {
        let array: [JSONValue]
        let codingPath: [CodingKey]
        var currentIndex = 0
        var count: Int? { array.count }
        var isAtEnd: Bool { currentIndex >= array.count }

        init(array: [JSONValue], codingPath: [CodingKey]) {
            self.array = array
            self.codingPath = codingPath
        }

        private mutating func next() throws -> JSONValueDecoder {
            guard !isAtEnd else {
                throw DecodingError.valueNotFound(JSONValue.self, .init(codingPath: codingPath, debugDescription: "the array has only \(array.count) elements"))
            }
            defer { currentIndex += 1 }
            return JSONValueDecoder(array[currentIndex], codingPath: codingPath + [IndexKey(intValue: currentIndex)])
        }

        mutating func decodeNil() throws -> Bool {
            guard !isAtEnd, array[currentIndex] == .null else { return false }
            currentIndex += 1
            return true
        }

        mutating func decode<T: Decodable>(_ type: T.Type) throws -> T { try next().decodeValue(type) }
        mutating func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type) throws -> KeyedDecodingContainer<NestedKey> {
            try next().container(keyedBy: type)
        }
        mutating func nestedUnkeyedContainer() throws -> UnkeyedDecodingContainer { try next().unkeyedContainer() }
        mutating func superDecoder() throws -> Decoder { try next() }
    }

    private struct Single: SingleValueDecodingContainer {
        let decoder: JSONValueDecoder
        var codingPath: [CodingKey] { decoder.codingPath }
        func decodeNil() -> Bool { decoder.value == .null }
        func decode<T: Decodable>(_ type: T.Type) throws -> T { try decoder.decodeValue(type) }
    }

    private struct IndexKey: CodingKey {
        var stringValue: String { "\(intValue ?? 0)" }
        var intValue: Int?
        init(intValue: Int) { self.intValue = intValue }
        init?(stringValue: String) { nil }
    }
}

/// A coding key for a name only known at run time (a tensor in `weight_map`, an unknown key).
struct JSONKey: CodingKey {
    let stringValue: String
    var intValue: Int? { nil }
    init(_ name: String) { stringValue = name }
    init?(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { nil }
}

extension JSONValue {
    /// "a string", "an integer", … for error messages.
    var kindDescription: String {
        switch self {
        case .null: return "null"
        case .bool: return "a boolean"
        case .integer: return "an integer"
        case .number: return "a number"
        case .string: return "a string"
        case .array: return "an array"
        case .object: return "an object"
        }
    }
}
