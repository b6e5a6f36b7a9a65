import Foundation

/// Encodes an `Encodable` record straight to a `JSONValue` (the twin of `JSONValueDecoder`), so
/// MoEKit's files are written by `JSONValue.serialized()` with its fixed layout and number forms.
///
/// Values are encoded as Foundation's `JSONEncoder` writes them, so that
/// `JSONValueEncoder.encode(x)` equals `JSONValue.parse(JSONEncoder().encode(x))`: integers are
/// `.integer` (a `UInt64` beyond Int64 a `.number`, as `JSONParser` reads its digits); a `Float` or `Double` is the shortest decimal of its own type (`Float(0.01)` is
/// 0.01, not 0.009999999776…), and a whole one has no fraction (`1.0` is `.integer(1)`); `nil`
/// optionals written with `encodeIfPresent` are left out. A field whose kind must survive (a float
/// that must stay a float, a NaN written as `null`) encodes a `JSONValue` itself, which is taken
/// as it is. A key encoded twice keeps its last value.
struct JSONValueEncoder {
    /// The JSON value of `value`.
    static func encode<T: Encodable>(_ value: T) throws -> JSONValue {
        let root = Node()
        try Encoding(node: root, codingPath: []).encodeValue(value)
        return root.json
    }

    /// One value under construction: a finished value, or an object or array whose members are
    /// still being encoded (containers write into it after they are handed out).
    private final class Node {
        var value: JSONValue = .null
        var members: [String: Node]?
        var elements: [Node]?

        var json: JSONValue {
            if let members { return .object(members.mapValues(\.json)) }
            if let elements { return .array(elements.map(\.json)) }
            return value
        }
    }

    private struct Encoding: Encoder {
        let node: Node
        let codingPath: [CodingKey]
        var userInfo: [CodingUserInfoKey: Any] { [:] }

        func container<Key: CodingKey>(keyedBy type: Key.Type) -> KeyedEncodingContainer<Key> {
            if node.members == nil { node.members = [:]; node.elements = nil }
            return KeyedEncodingContainer(Keyed<Key>(node: node, codingPath: codingPath))
        }

        func unkeyedContainer() -> UnkeyedEncodingContainer {
            if node.elements == nil { node.elements = []; node.members = nil }
            return Unkeyed(node: node, codingPath: codingPath)
        }

        func singleValueContainer() -> SingleValueEncodingContainer { Single(encoding: self) }

        /// Writes `value` into `node`: JSON primitives by their kind, anything else through its `encode(to:)`.
        func encodeValue<T: Encodable>(_ value: T) throws {
            node.members = nil
            node.elements = nil
            switch value {
            case let json as JSONValue: node.value = json
            case let flag as Bool: node.value = .bool(flag)
            case let text as String: node.value = .string(text)
            case let number as Double: node.value = Self.number(number.description)
            case let number as Float: node.value = Self.number(number.description)
            case let integer as Int: node.value = .integer(Int64(integer))
            case let integer as Int64: node.value = .integer(integer)
            case let integer as Int32: node.value = .integer(Int64(integer))
            case let integer as UInt32: node.value = .integer(Int64(integer))
            case let integer as UInt64:  // beyond Int64, a number, as `JSONParser` reads such digits
                node.value = Int64(exactly: integer).map(JSONValue.integer) ?? .number(Double(integer))
            default: try value.encode(to: self)
            }
        }

        /// `JSONEncoder`'s form of a floating-point value from its description: a whole value
        /// ("2.0") without the fraction, as an integer; a non-finite one stays a number, which
        /// `JSONValue.serialized()` writes as `null`.
        private static func number(_ description: String) -> JSONValue {
            if description.hasSuffix(".0"), let integer = Int64(description.dropLast(2)) { return .integer(integer) }
            return .number(Double(description) ?? .nan)
        }
    }

    private struct Keyed<Key: CodingKey>: KeyedEncodingContainerProtocol {
        let node: Node
        let codingPath: [CodingKey]

        private func member(_ key: Key) -> Encoding {
            let child = Encoding(node: Node(), codingPath: codingPath + [key])
            node.members?[key.stringValue] = child.node
            return child
        }

        mutating func encodeNil(forKey key: Key) throws { member(key).node.value = .null }
        mutating func encode<T: Encodable>(_ value: T, forKey key: Key) throws { try member(key).encodeValue(value) }
        mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type, forKey key: Key) -> KeyedEncodingContainer<NestedKey> {
            member(key).container(keyedBy: keyType)
        }
        mutating func nestedUnkeyedContainer(forKey key: Key) -> UnkeyedEncodingContainer { member(key).unkeyedContainer() }
        mutating func superEncoder() -> Encoder { Encoding(node: node, codingPath: codingPath) }
        mutating func superEncoder(forKey key: Key) -> Encoder { member(key) }
    }

    private struct Unkeyed: UnkeyedEncodingContainer {
        let node: Node
        let codingPath: [CodingKey]
        var count: Int { node.elements?.count ?? 0 }

        private func next() -> Encoding {
            let child = Encoding(node: Node(), codingPath: codingPath + [JSONKey("\(count)")])
            node.elements?.append(child.node)
            return child
        }

        mutating func encodeNil() throws { next().node.value = .null }
        mutating func encode<T: Encodable>(_ value: T) throws { try next().encodeValue(value) }
        mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type) -> KeyedEncodingContainer<NestedKey> {
            next().container(keyedBy: keyType)
        }
        mutating func nestedUnkeyedContainer() -> UnkeyedEncodingContainer { next().unkeyedContainer() }
        mutating func superEncoder() -> Encoder { next() }
    }

    private struct Single: SingleValueEncodingContainer {
        let encoding: Encoding
        var codingPath: [CodingKey] { encoding.codingPath }
        mutating func encodeNil() throws { encoding.node.value = .null; encoding.node.members = nil; encoding.node.elements = nil }
        mutating func encode<T: Encodable>(_ value: T) throws { try encoding.encodeValue(value) }
    }
}
