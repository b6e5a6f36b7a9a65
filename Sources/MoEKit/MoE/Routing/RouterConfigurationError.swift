import Foundation

/// A router configuration that cannot be used: a bad `moekit_router` entry of a `config.json`, or a
/// bad `--router` text. Messages name the source (file path or flag) and the field.
public enum RouterConfigurationError: Error, LocalizedError, Equatable, Sendable {
    /// A field is missing its value, has the wrong type or an impossible value.
    case invalidField(source: String, field: String, reason: String)
    /// A `--router` text that does not parse.
    case invalidText(text: String, reason: String)
    /// The configuration does not fit the model (e.g. top-k larger than the number of experts).
    case incompatibleModel(reason: String)

    public var errorDescription: String? {
        switch self {
        case let .invalidField(source, field, reason): return "\(source): router setting '\(field)' \(reason)"
        case let .invalidText(text, reason): return "--router '\(text)': \(reason)"
        case let .incompatibleModel(reason): return "router: \(reason)"
        }
    }
}
