/// The element types of the safetensors format.
public enum SafetensorsDType: String, Sendable, CaseIterable, Codable {
    case bool = "BOOL"
    case uint8 = "U8"
    case int8 = "I8"
    case float8E5M2 = "F8_E5M2"
    case float8E4M3 = "F8_E4M3"
    case int16 = "I16"
    case uint16 = "U16"
    case float16 = "F16"
    case bfloat16 = "BF16"
    case int32 = "I32"
    case uint32 = "U32"
    case float32 = "F32"
    case float64 = "F64"
    case int64 = "I64"
    case uint64 = "U64"

    /// Bytes per element.
    public var size: Int {
        switch self {
        case .bool, .uint8, .int8, .float8E5M2, .float8E4M3: return 1
        case .int16, .uint16, .float16, .bfloat16: return 2
        case .int32, .uint32, .float32: return 4
        case .float64, .int64, .uint64: return 8
        }
    }

    /// Whether MoEKit can convert this type to f32 (every type but the two 8-bit floats).
    public var isConvertibleToFloat: Bool {
        self != .float8E5M2 && self != .float8E4M3
    }

    /// The types MoEKit writes: the floating-point storage formats of model weights.
    public var isWritable: Bool {
        self == .float32 || self == .float16 || self == .bfloat16
    }

    /// Hugging Face's `torch_dtype` name for the floating-point storage types.
    public var torchName: String? {
        switch self {
        case .float32: return "float32"
        case .float16: return "float16"
        case .bfloat16: return "bfloat16"
        default: return nil
        }
    }

    /// The storage type for a `torch_dtype` name (`bfloat16`, `float16`/`half`, `float32`/`float`).
    public init?(torchName: String) {
        switch torchName {
        case "float32", "float": self = .float32
        case "float16", "half": self = .float16
        case "bfloat16": self = .bfloat16
        default: return nil
        }
    }
}
