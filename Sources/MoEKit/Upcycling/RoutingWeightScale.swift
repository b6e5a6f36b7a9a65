import Foundation

/// `--weight-scale`: whether the experts' `W2` absorbs the factor by which the routing shrinks
/// (or grows) the MoE output at initialisation.
public enum WeightScaling: String, Sendable, CaseIterable, Codable {
    /// No routing factor (the method's own scales only).
    case none
    /// He et al. 2024 ("Upcycling Large Language Models into Mixture of Experts", arXiv
    /// 2410.07524): multiply `W2` by `RoutingWeightScale.factor`, so the upcycled layer's expected
    /// output at initialisation matches the dense layer's under the routing the output will run.
    case auto
}

/// The factor `--weight-scale auto` folds into every expert's `W2`.
///
/// At initialisation the router logits are near zero, so every expert's score is the score of a
/// zero logit: `1/E` for softmax, `σ(0) = 1/2` for sigmoid. The MoE output is `Σ_{top-k} w_e y_e`;
/// with copied experts (`y_e = y`) its expectation is `(Σ w_e) · y`, and
///
/// - softmax → top-k → renormalise (MiniCPM-MoE), or softmax over the chosen logits: `Σ w = 1`;
/// - softmax → top-k without renormalising (Switch, ST-MoE, the paper's softmax-then-topK): `Σ w = K/E`;
/// - sigmoid → top-k → renormalise: `Σ w = 1`;
/// - sigmoid → top-k without renormalising: `Σ w = K/2`;
///
/// each times the router's `weightScale` s. The factor is `1 / Σ w`: `E/(K·s)` for the paper's
/// case. `W2` carries it because the expert output is linear in `W2` (exact, whatever the
/// activation). Methods that also scale (partition: `E`; granular: `G^(1/3)` on each matrix, i.e.
/// `G` on the output) multiply with it: granular with softmax-then-top-k gets `a = G · E/K` on the
/// output, Megatron-Core's `expansion_rate · G² / K` (`upcycling_utils.py`, `moe_router_pre_softmax`).
enum RoutingWeightScale {
    /// `1 / Σ w` for `experts` E and the router's top-k (its own `topK`, else `topK`). Expert
    /// choice has no per-token weight sum to match and is refused.
    static func factor(router: RouterConfiguration, experts: Int, topK: Int) throws(UpcycleError) -> Float {
        guard router.mode == .tokenChoice else {
            throw .invalidOption(option: "--weight-scale", reason: "auto has no expected-output factor for expert-choice or ReLU routing (tokens get a varying number of experts)")
        }
        guard router.weightScale > 0 else {
            throw .invalidOption(option: "--weight-scale", reason: "auto needs a positive router weight scale, got \(router.weightScale)")
        }
        let k = Double(router.topK ?? topK)
        let weightSum: Double
        switch (router.scoring, router.weighting) {
        case (_, .renormalized), (_, .softmaxOverSelected): weightSum = 1
        case (.softmax, .unnormalized): weightSum = k / Double(experts)
        case (.sigmoid, .unnormalized): weightSum = k / 2
        case (.relu, .unnormalized): preconditionFailure("ReLU routing is not token choice")
        }
        return Float(1 / (weightSum * Double(router.weightScale)))
    }
}
