/// One value of a `tokenizer.json` together with where it sits (`model.merges[3]`), so that every
/// parse error names the file and the field.
struct TokenizerJSONField {
    let path: String
    let field: String
    let value: JSONValue

    func child(_ key: String) -> TokenizerJSONField? {
        guard case .object(let members) = value, let member = members[key] else { return nil }
        return TokenizerJSONField(path: path, field: field.isEmpty ? key : "\(field).\(key)", value: member)
    }

    /// The member `key`, `nil` when it is absent or JSON `null`.
    func optional(_ key: String) -> TokenizerJSONField? {
        guard let member = child(key), member.value != .null else { return nil }
        return member
    }

    func required(_ key: String) throws(TokenizerError) -> TokenizerJSONField {
        guard let member = optional(key) else {
            throw .missingField(path: path, field: field.isEmpty ? key : "\(field).\(key)")
        }
        return member
    }

    func invalid(_ reason: String) -> TokenizerError { .invalidField(path: path, field: field, reason: reason) }
    func unsupported(_ what: String) -> TokenizerError { .unsupported(path: path, field: field, what: what) }

    func object() throws(TokenizerError) -> [String: JSONValue] {
        guard case .object(let members) = value else { throw invalid("must be an object") }
        return members
    }

    func array() throws(TokenizerError) -> [TokenizerJSONField] {
        guard case .array(let elements) = value else { throw invalid("must be an array") }
        var result: [TokenizerJSONField] = []
        result.reserveCapacity(elements.count)
        for (index, element) in elements.enumerated() {
            result.append(TokenizerJSONField(path: path, field: "\(field)[\(index)]", value: element))
        }
        return result
    }

    func string() throws(TokenizerError) -> String {
        guard case .string(let text) = value else { throw invalid("must be a string") }
        return text
    }

    func bool() throws(TokenizerError) -> Bool {
        guard case .bool(let flag) = value else { throw invalid("must be true or false") }
        return flag
    }

    /// A non-negative integer no larger than `maximum`.
    func integer(maximum: Int = Int(Int32.max)) throws(TokenizerError) -> Int {
        guard case .integer(let number) = value, number >= 0, number <= maximum else {
            throw invalid("must be an integer in [0, \(maximum)]")
        }
        return Int(number)
    }

    /// One Unicode scalar (Rust's `char`, which `tokenizers` uses for replacement characters).
    func scalar() throws(TokenizerError) -> Unicode.Scalar {
        let text = try string()
        guard text.unicodeScalars.count == 1, let scalar = text.unicodeScalars.first else {
            throw invalid("must be exactly one character")
        }
        return scalar
    }

    func optionalBool(_ key: String, default fallback: Bool) throws(TokenizerError) -> Bool {
        try optional(key)?.bool() ?? fallback
    }

    /// The `type` tag of a component object.
    func typeName() throws(TokenizerError) -> String {
        _ = try object()
        return try required("type").string()
    }
}
