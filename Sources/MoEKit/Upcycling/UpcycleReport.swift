import Foundation

/// `upcycle-report.json`: what was upcycled, how, and what came out.
///
/// Keys: `source` (dense directory), `output`, `method`, `seed`, `options` (experts, top_k,
/// router_init, router_std, noise_std, granularity, partition_by, dtype, shard_size, verify_tokens),
/// `expert_intermediate_size`, `scales` (gate_up, down), `parameters` and `dense_parameters`
/// (total, active_per_token, non_embedding, active_non_embedding), `bytes_written`, `files`,
/// `verification` (tokens, max_relative_difference, tolerance, passed; `null` when disabled),
/// `warnings`.
public enum UpcycleReport {
    public static func json(plan: UpcyclePlan, outputDirectory: String, files: [String], bytesWritten: Int,
                            verification: UpcycleVerification?) -> JSONValue {
        let options = plan.options
        func counts(_ c: MiniCPMLayout.ParameterCounts) -> JSONValue {
            .object([
                "total": .integer(Int64(c.total)), "active_per_token": .integer(Int64(c.activePerToken)),
                "non_embedding": .integer(Int64(c.nonEmbedding)), "active_non_embedding": .integer(Int64(c.activeNonEmbedding)),
            ])
        }
        let scales: (Float, Float) = {
            switch options.method {
            case .copy, .noise: return (1, 1)
            case .partition: return (1, ExpertSlicing.partitionOutputScale(experts: options.experts))
            case .granular:
                let s = ExpertSlicing.granularWeightScale(granularity: options.granularity)
                return (s, s)
            }
        }()
        var verificationValue: JSONValue = .null
        if let verification {
            verificationValue = .object([
                "tokens": .integer(Int64(verification.tokens)),
                "max_relative_difference": .number(Double(verification.maxRelativeDifference)),
                "tolerance": verification.tolerance.map { .number(Double($0)) } ?? .null,
                "passed": .bool(verification.passed),
            ])
        }
        return .object([
            "source": .string(URL(fileURLWithPath: plan.denseDirectory).standardizedFileURL.path),
            "output": .string(outputDirectory),
            "method": .string(options.method.rawValue),
            "seed": .integer(Int64(bitPattern: options.seed)),
            "options": .object([
                "experts": .integer(Int64(options.experts)),
                "top_k": .integer(Int64(options.topK)),
                "router_init": .string(options.routerInitialization.rawValue),
                "router_std": .number(options.routerStandardDeviation),
                "noise_std": .number(options.noiseStandardDeviation),
                "granularity": .integer(Int64(options.granularity)),
                "partition_by": .string(options.partitionBy.rawValue),
                "dtype": .string(options.dtype?.rawValue ?? "keep"),
                "shard_size": .integer(Int64(options.maximumShardBytes)),
                "verify_tokens": .integer(Int64(options.verifyTokens)),
            ]),
            "expert_intermediate_size": .integer(Int64(plan.expertIntermediateSize)),
            "scales": .object(["gate_up": .number(Double(scales.0)), "down": .number(Double(scales.1))]),
            "parameters": counts(plan.parameters),
            "dense_parameters": counts(plan.denseParameters),
            "bytes_written": .integer(Int64(bytesWritten)),
            "files": .array(files.map { .string($0) }),
            "verification": verificationValue,
            "warnings": .array(plan.warnings.map { .string($0) }),
        ])
    }
}
