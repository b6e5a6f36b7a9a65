import Foundation
import Testing
@testable import MoEKit

/// `JSONValue.parse` reads RFC 8259 JSON strictly: integers stay integers only when spelled as
/// integers, strings are valid UTF-8 with valid escapes, nesting is bounded, anything else is `nil`.
@Suite struct JSONParserTests {
    static func parse(_ text: String) -> JSONValue? { JSONValue.parse(Data(text.utf8)) }

    /// Valid texts parse to the values they spell, numbers keeping integer vs fraction.
    @Test func validTextsParseToTheirValues() {
        #expect(Self.parse(#" {"a": [1, -2, 2.0, 2e0, 0.5, -0, 9223372036854775807, 18446744073709551616], "b": true, "c": null, "d": false} "#)
            == .object(["a": .array([.integer(1), .integer(-2), .number(2), .number(2), .number(0.5), .integer(0), .integer(.max), .number(18446744073709551616)]),
                        "b": .bool(true), "c": .null, "d": .bool(false)]))
        #expect(Self.parse(#""a\"b\\c\/d\b\f\n\r\t\u00e9\ud83d\ude00é""#) == .string("a\"b\\c/d\u{8}\u{c}\n\r\té😀é"))
        #expect(Self.parse("[]") == .array([]))
        #expect(Self.parse("{}") == .object([:]))
        #expect(Self.parse(#"{"k": 1, "k": 2}"#) == .object(["k": .integer(2)]))  // last value wins
        #expect(Self.parse(String(repeating: "[", count: 500) + String(repeating: "]", count: 500)) != nil)
    }

    /// Each malformed text is `nil`.
    @Test(arguments: ["", " ", "[1,]", #"{"a":1,}"#, "01", "1.", ".5", "-", "1e", "+1", "NaN", "Infinity", "1e400", "tru", "nul",
                      #""abc"#, "\"a\u{1}b\"", #""\x""#, #""\ud800""#, #""\udc00""#, #""\u12""#, "[1] 2", "{1: 2}", #"{"a" 1}"#, "[1 2]",
                      String(repeating: "[", count: 100_000) + String(repeating: "]", count: 100_000)])
    func malformedTextsAreRejected(_ text: String) {
        #expect(Self.parse(text) == nil)
    }

    /// Invalid UTF-8 inside a string is rejected.
    @Test func invalidUTF8IsRejected() {
        #expect(JSONValue.parse(Data([0x22, 0xFF, 0x22])) == nil)
        #expect(JSONValue.parse(Data([0x22, 0xC3, 0xA9, 0x22])) == .string("é"))
    }
}
