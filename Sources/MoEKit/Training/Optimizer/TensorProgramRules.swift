/// MiniCPM's tensor-program (μP) rule for learning rates: hidden weight matrices train at
/// lr / (hidden_size / dim_model_base); everything else at lr.
///
/// The MiniCPM paper (arXiv 2404.06395, §3 "model wind tunnel" and its μP table) lists the
/// width-dependent settings: embedding output × `scale_emb`, residual branches ×
/// `scale_depth/√layers`, matrix init std ∝ 1/√(d/d_base), *learning rate of tensors* ÷ (d/d_base),
/// logits ÷ (d/d_base). Which tensors the divided learning rate applies to is fixed by OpenBMB's
/// training code for this architecture (the CPM-9G / fm9g "Dragonfly" pretraining scripts,
/// `get_optimizer`): parameters whose name ends in `.weight` and contains none of `layernorm`,
/// `embedding`, `lm_head` go into a group with `lr / config.scale_width`
/// (scale_width = hidden/dim_model_base); all others keep `lr`. Its MoE variant puts the expert
/// matrices and the router (`moe_router.w_gate`, in its own group) at `… / scale_width` too.
///
/// In MoEKit names that is, for d/d_base = `hidden_size / dim_model_base`:
///
/// | tensors                                                         | multiplier |
/// |-----------------------------------------------------------------|------------|
/// | `self_attn.{q,k,v,o}_proj`, `mlp.{gate,up,down}_proj`            | 1/(d/d_base) |
/// | MoE `mlp.experts.E.{w1,w2,w3}` and the router `mlp.gate`         | 1/(d/d_base) |
/// | `model.embed_tokens` and an untied `lm_head` (vector-like in μP) | 1          |
/// | `input_layernorm`, `post_attention_layernorm`, `model.norm`      | 1          |
///
/// That is exactly: rank-2 tensors inside `model.layers.*` are divided, the rest are not. The
/// embedding and the head keep the full rate as μP's "input/output weights" do (their scale is
/// handled by `scale_emb` and the logit divisor instead). With `dim_model_base` absent (1) the
/// divisor is the full width, as MiniCPM's config semantics imply.
enum TensorProgramRules {
    /// d / d_base = `hidden_size / dim_model_base` (MiniCPM's `scale_width`).
    static func widthMultiplier(config: MiniCPMConfig) -> Float {
        Float(Double(config.hiddenSize) / config.dimModelBase)
    }

    /// Whether `name` (a MiniCPM layout name of rank `rank`) is a hidden weight matrix, the class
    /// whose learning rate μP divides by the width multiplier.
    static func isHiddenMatrix(name: String, rank: Int) -> Bool {
        rank == 2 && name.hasPrefix("model.layers.")
    }

    /// The learning-rate multiplier of every name: 1/(d/d_base) for hidden matrices, 1 otherwise.
    /// Ranks come from the config's layout; names outside the layout get 1.
    static func learningRateMultipliers(config: MiniCPMConfig, names: [String]) -> [String: Float] {
        let ranks = Dictionary(MiniCPMLayout(config: config).entries.map { ($0.name, $0.shape.count) }, uniquingKeysWith: { a, _ in a })
        let scaled = 1 / widthMultiplier(config: config)
        var result: [String: Float] = [:]
        for name in names {
            result[name] = isHiddenMatrix(name: name, rank: ranks[name] ?? 0) ? scaled : 1
        }
        return result
    }

    /// `learningRateMultipliers(config:names:)` for every parameter of a model of `config`.
    static func learningRateMultipliers(config: MiniCPMConfig) -> [String: Float] {
        learningRateMultipliers(config: config, names: MiniCPMLayout(config: config).entries.map(\.name))
    }
}
