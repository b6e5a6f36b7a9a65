import Foundation

/// A JSON value, kept exactly as read: lets MoEKit validate untrusted headers strictly and
/// preserve the keys of a `config.json` that it does not know.
public enum JSONValue: Codable, Sendable, Equatable {
    case null
    case bool(Bool)
    case integer(Int64)
    case number(Double)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    public init(from decoder: Decoder) throws {
        let container = try decoder.singleValueContainer()
        if container.decodeNil() { self = .null }
        else if let value = try? container.decode(Bool.self) { self = .bool(value) }
        else if let value = try? container.decode(Int64.self) { self = .integer(value) }
        else if let value = try? container.decode(Double.self) { self = .number(value) }
        else if let value = try? container.decode(String.self) { self = .string(value) }
        else if let value = try? container.decode([JSONValue].self) { self = .array(value) }
        else { self = .object(try container.decode([String: JSONValue].self)) }
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .null: try container.encodeNil()
        case .bool(let value): try container.encode(value)
        case .integer(let value): try container.encode(value)
        case .number(let value): try container.encode(value)
        case .string(let value): try container.encode(value)
        case .array(let value): try container.encode(value)
        case .object(let value): try container.encode(value)
        }
    }

    /// Parses JSON text (UTF-8 bytes) strictly (see `JSONParser`: `2` is an integer, `2.0` a
    /// number; nesting is bounded); `nil` when it is not valid JSON.
    public static func parse(_ data: Data) -> JSONValue? {
        data.withUnsafeBytes { JSONParser.parse($0) }
    }

    /// Pretty-printed JSON with sorted keys (stable output for files MoEKit writes), laid out as
    /// Foundation's `JSONEncoder` lays it out. A `.number` is always written as a JSON float
    /// (`0.0`, `10000.0`, `1e-05`: Swift's shortest round-trip form), an `.integer` without a
    /// fraction, so each keeps its kind when read back (transformers 5 validates config fields such
    /// as `router_jitter_noise` by type); non-finite numbers become `null`.
    public func serialized(pretty: Bool = true) -> Data {
        var text = ""
        write(to: &text, pretty: pretty, indent: 0)
        return Data(text.utf8)
    }

    private func write(to text: inout String, pretty: Bool, indent: Int) {
        switch self {
        case .null: text += "null"
        case .bool(let value): text += value ? "true" : "false"
        case .integer(let value): text += String(value)
        case .number(let value):
            guard value.isFinite else { text += "null"; return }
            let plain = value.description  // "0.0", "1e-05", "1.4142135623730951", "1e+20"
            text += plain.contains(where: { $0 == "." || $0 == "e" }) ? plain : plain + ".0"
        case .string(let value): Self.writeString(value, to: &text)
        case .array(let values):
            guard !values.isEmpty else { text += "[]"; return }
            text += "["
            for (index, value) in values.enumerated() {
                if index > 0 { text += "," }
                if pretty { text += "\n" + String(repeating: "  ", count: indent + 1) }
                value.write(to: &text, pretty: pretty, indent: indent + 1)
            }
            if pretty { text += "\n" + String(repeating: "  ", count: indent) }
            text += "]"
        case .object(let members):
            guard !members.isEmpty else { text += "{}"; return }
            text += "{"
            for (index, key) in members.keys.sorted().enumerated() {
                if index > 0 { text += "," }
                if pretty { text += "\n" + String(repeating: "  ", count: indent + 1) }
                Self.writeString(key, to: &text)
                text += pretty ? " : " : ":"
                members[key]?.write(to: &text, pretty: pretty, indent: indent + 1)
            }
            if pretty { text += "\n" + String(repeating: "  ", count: indent) }
            text += "}"
        }
    }

    private static func writeString(_ value: String, to text: inout String) {
        text += "\""
        for scalar in value.unicodeScalars {
            switch scalar {
            case "\"": text += "\\\""
            case "\\": text += "\\\\"
            case "\n": text += "\\n"
            case "\r": text += "\\r"
            case "\t": text += "\\t"
            case "\u{08}": text += "\\b"
            case "\u{0C}": text += "\\f"
            case _ where scalar.value < 0x20:
                let hex = String(scalar.value, radix: 16)
                text += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: text.unicodeScalars.append(scalar)
            }
        }
        text += "\""
    }

    var objectValue: [String: JSONValue]? { if case .object(let v) = self { return v } else { return nil } }
    var arrayValue: [JSONValue]? { if case .array(let v) = self { return v } else { return nil } }
    var stringValue: String? { if case .string(let v) = self { return v } else { return nil } }
    var boolValue: Bool? { if case .bool(let v) = self { return v } else { return nil } }
    /// The value as an integer when it is one (a JSON number without fraction that fits Int64).
    var integerValue: Int64? {
        switch self {
        case .integer(let v): return v
        case .number(let v) where v.rounded() == v && abs(v) < 9.0e18: return Int64(v)
        default: return nil
        }
    }
    /// The value as a Double when it is a number.
    var doubleValue: Double? {
        switch self {
        case .integer(let v): return Double(v)
        case .number(let v): return v
        default: return nil
        }
    }
}
