import Foundation

/// Byte sizes written as people write them: `5GB` (10⁹), `5GiB` (2³⁰), `500MB`, `4096`.
public enum ByteSize {
    /// Parses a size; `nil` when the text is not a size.
    public static func parse(_ text: String) -> Int? {
        let trimmed = text.trimmingCharacters(in: .whitespaces).uppercased()
        let units: [(String, Double)] = [
            ("KIB", 1024), ("MIB", 1024 * 1024), ("GIB", 1024 * 1024 * 1024), ("TIB", 1024 * 1024 * 1024 * 1024),
            ("KB", 1e3), ("MB", 1e6), ("GB", 1e9), ("TB", 1e12), ("B", 1),
        ]
        for (suffix, factor) in units where trimmed.hasSuffix(suffix) {
            guard let number = Double(trimmed.dropLast(suffix.count).trimmingCharacters(in: .whitespaces)),
                  number > 0, number * factor < 9e18 else { return nil }
            return Int(number * factor)
        }
        guard let number = Int(trimmed), number > 0 else { return nil }
        return number
    }

    /// `1.23 GB`-style text, decimal units.
    public static func format(_ bytes: Int) -> String {
        let value = Double(bytes)
        if value >= 1e9 { return String(format: "%.2f GB", value / 1e9) }
        if value >= 1e6 { return String(format: "%.2f MB", value / 1e6) }
        if value >= 1e3 { return String(format: "%.1f kB", value / 1e3) }
        return "\(bytes) B"
    }
}
