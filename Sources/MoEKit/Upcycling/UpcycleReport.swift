import Foundation

/// `upcycle-report.json`: what was upcycled, how, and what came out.
///
/// Keys: `source` (dense directory), `output`, `method`, `seed`, `options` (experts, top_k,
/// router_init, router_std, noise_std, granularity, partition_by, drop_ratio, weight_scale, router,
/// dtype, shard_size, verify_tokens), `expert_intermediate_size`, `scales` (gate_up, down — the
/// factors on W1/W3 and on W2, routing included — and routing, the `--weight-scale auto` factor),
/// `drop` (`drop` only: ratio, neurons_per_expert, and `redrawn`: per layer and expert the redrawn
/// neurons and each matrix's mean and std; `null` otherwise), `parameters` and `dense_parameters`
/// (total, active_per_token, non_embedding, active_non_embedding), `bytes_written`, `files`,
/// `verification` (tokens, max_relative_difference, tolerance, passed; `null` when disabled),
/// `warnings`.
enum UpcycleReport {
    static func json(plan: UpcyclePlan, outputDirectory: String, files: [String], bytesWritten: Int,
                            verification: UpcycleVerification?, drop: DropUpcycling.Record? = nil) -> JSONValue {
        let options = plan.options
        func counts(_ c: MiniCPMLayout.ParameterCounts) -> JSONValue {
            .object([
                "total": .integer(Int64(c.total)), "active_per_token": .integer(Int64(c.activePerToken)),
                "non_embedding": .integer(Int64(c.nonEmbedding)), "active_non_embedding": .integer(Int64(c.activeNonEmbedding)),
            ])
        }
        let routing = plan.routingWeightScale
        let scales: (Float, Float) = {
            switch options.method {
            case .copy, .noise, .drop: return (1, routing)
            case .partition: return (1, ExpertSlicing.partitionOutputScale(experts: options.experts) * routing)
            case .granular:
                let s = ExpertSlicing.granularWeightScale(granularity: options.granularity)
                return (s, s * routing)
            }
        }()
        var dropValue: JSONValue = .null
        if options.method == .drop {
            dropValue = .object([
                "ratio": .number(options.dropRatio),
                "neurons_per_expert": .integer(Int64(DropUpcycling.redrawnCount(intermediateSize: plan.denseConfig.intermediateSize, ratio: options.dropRatio))),
                "redrawn": drop?.jsonValue ?? .array([]),
            ])
        }
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
                "drop_ratio": .number(options.dropRatio),
                "shared_experts": .integer(Int64(options.sharedExperts)),
                "weight_scale": .string(options.weightScaling.rawValue),
                "router": options.router?.jsonValue ?? .null,
                "dtype": .string(options.dtype?.rawValue ?? "keep"),
                "shard_size": .integer(Int64(options.maximumShardBytes)),
                "verify_tokens": .integer(Int64(options.verifyTokens)),
            ]),
            "expert_intermediate_size": .integer(Int64(plan.expertIntermediateSize)),
            "scales": .object(["gate_up": .number(Double(scales.0)), "down": .number(Double(scales.1)),
                               "routing": .number(Double(routing))]),
            "drop": dropValue,
            "parameters": counts(plan.parameters),
            "dense_parameters": counts(plan.denseParameters),
            "bytes_written": .integer(Int64(bytesWritten)),
            "files": .array(files.map { .string($0) }),
            "verification": verificationValue,
            "warnings": .array(plan.warnings.map { .string($0) }),
        ])
    }
}
