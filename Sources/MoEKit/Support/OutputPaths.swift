import Foundation

/// Checks that an output about to be written (and replaced with `--force`) cannot destroy an input.
enum OutputPaths {
    /// `path` with every symbolic link and `.`/`..` resolved; for a path that does not exist yet,
    /// its deepest existing ancestor is resolved and the rest appended.
    static func resolved(_ path: String) -> String {
        let absolute = URL(fileURLWithPath: path).standardizedFileURL.path
        var existing = absolute
        var rest: [String] = []
        while !existing.isEmpty, existing != "/" {
            if let real = realpath(existing, nil) {
                defer { free(real) }
                return ([String(cString: real)] + rest.reversed()).joined(separator: "/").replacingOccurrences(of: "//", with: "/")
            }
            rest.append((existing as NSString).lastPathComponent)
            existing = (existing as NSString).deletingLastPathComponent
        }
        return absolute
    }

    /// Throws when `output` is `input` (also through a symbolic link) or a directory holding it:
    /// writing there would replace the input itself (`upcycle D D --force`).
    static func refuseOverlap(input: String, output: String) throws(FileError) {
        let source = resolved(input), destination = resolved(output)
        if source == destination {
            throw .outputOverlapsInput(output: output, input: input, reason: "is the input itself")
        }
        if source.hasPrefix(destination.hasSuffix("/") ? destination : destination + "/") {
            throw .outputOverlapsInput(output: output, input: input, reason: "holds the input")
        }
    }
}
