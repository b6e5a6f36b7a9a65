import Foundation

/// `moekit inspect --json`: the inspection's statistics as one JSON document.
extension RoutingLogInspection {
    /// The report as JSON (non-finite numbers become null).
    public func json() -> JSONValue {
        func number(_ value: Double) -> JSONValue { value.isFinite ? .number(value) : .null }
        func integers(_ values: [Int]) -> JSONValue { .array(values.map { .integer(Int64($0)) }) }
        return .object([
            "file": .string(path),
            "format": .string(RoutingLogSchema.format),
            "version": .integer(Int64(header.version)),
            "num_layers": .integer(Int64(header.numLayers)),
            "num_experts": .integer(Int64(header.numExperts)),
            "top_k": .integer(Int64(header.topK)),
            "router": .string(header.router),
            "source": .string(header.source),
            "created": .string(header.created),
            "steps": integers(steps),
            "tokens": .integer(Int64(tokens)),
            "layers": .array(layers.map { summary in
                .object([
                    "layer": .integer(Int64(summary.layer)),
                    "expert_counts": integers(summary.load.expertCounts),
                    "share_of_ideal": .array(summary.load.shareOfIdeal.map(number)),
                    "max_over_mean": number(summary.load.maxOverMean),
                    "cv": number(summary.load.coefficientOfVariation),
                    "busiest_expert": .integer(Int64(summary.load.busiestExpert)),
                    "idlest_expert": .integer(Int64(summary.load.idlestExpert)),
                    "dead_experts": integers(summary.load.deadExperts),
                    "dropped": .integer(Int64(summary.dropped)),
                    "aux_loss": number(summary.auxLoss),
                    "z_loss": number(summary.zLoss),
                    "entropy": number(summary.entropy),
                ])
            }),
            "trend": .array(trend.map { point in
                .object([
                    "step": .integer(Int64(point.step)),
                    "layers": integers(layers.map(\.layer)),
                    "cv": .array(point.coefficientOfVariation.map(number)),
                    "aux_loss": .array(point.auxLoss.map(number)),
                ])
            }),
            "variable_k": .bool(header.variableActiveExperts),
            "active_experts": activeExpertsJSON,
            "domains": .array(header.domains.map(JSONValue.string)),
            "domain_specialization": .array(domainSpecialization.map { summary in
                .object([
                    "layer": .integer(Int64(summary.layer)),
                    "counts": .array(summary.counts.map(integers)),
                    "expert_share": .array(summary.expertShare.map { .array($0.map(number)) }),
                    "mutual_information_bits": number(summary.mutualInformation),
                    "normalized_mutual_information": number(summary.normalizedMutualInformation),
                ])
            }),
            "training": .array(training.map { step in
                .object([
                    "step": .integer(Int64(step.step)),
                    "tokens": .integer(Int64(step.tokens)),
                    "loss": number(Double(step.loss)),
                    "lm_loss": number(Double(step.training?.languageModelLoss ?? .nan)),
                    "lr": number(Double(step.learningRate)),
                    "grad_norm": number(Double(step.training?.gradientNorm ?? .nan)),
                    "val_loss": number(Double(step.training?.validationLoss ?? .nan)),
                ])
            }),
        ])
    }
}
