"""LossConfig: every option of the clipped-ratio policy loss in one small frozen dataclass."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

LOSS_TYPES = ("grpo", "dapo", "dr_grpo", "gspo", "gspo_token", "cispo")
#: Loss types with GSPO's sequence-level ratio (the per-sequence mean log-ratio is needed first).
SEQUENCE_RATIO_TYPES = ("gspo", "gspo_token")
KL_ESTIMATORS = ("k1", "k2", "k3")
AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
#: The aggregation each loss type's paper defines, used when ``aggregation`` is left unset (None), as TRL's
#: ``loss_type`` selects its normaliser: Dr. GRPO divides by a constant (sequences x max length), GSPO averages
#: each sequence's tokens first; GRPO, DAPO and CISPO use the token mean (verl's default ``loss_agg_mode``).
LOSS_TYPE_AGGREGATION = {"grpo": "token-mean", "dapo": "token-mean", "dr_grpo": "seq-mean-token-sum-norm",
                         "gspo": "seq-mean-token-mean", "gspo_token": "seq-mean-token-mean", "cispo": "token-mean"}
#: Corrections for the rollout engine's mismatch (medix_kernels/reference/policy_loss.py:rollout_weights).
ROLLOUT_CORRECTIONS = ("none", "token_truncate", "token_mask", "sequence_truncate", "sequence_mask")
#: A sequence's ratio: exp of the mean log-ratio over its tokens (geometric) or of their sum (product).
ROLLOUT_SEQUENCE_RATIOS = ("geometric", "product")
#: What *_mask does with a ratio outside [lower, cap]: zero its weight (weight) or drop the token from the batch
#: (reject: out of every denominator, its KL term too; the tokens kept are then unweighted).
ROLLOUT_MASK_STYLES = ("weight", "reject")
#: The rollout diagnostics a loss given rollout_logp returns in its stats (reference.policy_loss.rollout_stats).
ROLLOUT_STATS = ("rollout_weight_mean", "rollout_weight_max", "rollout_flagged_frac", "rollout_kl_k3", "rollout_chi2",
                 "rollout_ppl_ratio", "rollout_logp_mismatch", "rollout_logp_mismatch_max")
#: The peers' definitions as LossConfig fields (docs/rollout_correction.md has the sources). cap / lower are the
#: peers' defaults, overridable in LossConfig.with_rollout; lower None there means 1 / cap (verl's rollout_rs).
ROLLOUT_PRESETS = {
    # TRL GRPOConfig: vllm_importance_sampling_mode=<mode>, vllm_importance_sampling_clip_max (formerly _cap),
    # clip_min unset; a sequence's ratio is the product of its tokens'; a masked ratio becomes a weight of 0
    **{f"trl_{mode}": dict(rollout_correction=mode, rollout_is_cap=3.0, rollout_is_lower=0.0,
                            rollout_is_sequence="product", rollout_mask="weight")
       for mode in ROLLOUT_CORRECTIONS[1:]},
    # verl algorithm.rollout_correction: rollout_is=token|sequence (weights truncated from above at
    # rollout_is_threshold), or rollout_rs=token|sequence|geometric (rejection outside
    # [rollout_rs_threshold_lower, rollout_rs_threshold], through the response mask)
    "verl_token_is": dict(rollout_correction="token_truncate", rollout_is_cap=2.0, rollout_is_lower=0.0,
                          rollout_is_sequence="product", rollout_mask="weight"),
    "verl_sequence_is": dict(rollout_correction="sequence_truncate", rollout_is_cap=2.0, rollout_is_lower=0.0,
                             rollout_is_sequence="product", rollout_mask="weight"),
    "verl_token_rs": dict(rollout_correction="token_mask", rollout_is_cap=2.0, rollout_is_lower=None,
                          rollout_is_sequence="product", rollout_mask="reject"),
    "verl_sequence_rs": dict(rollout_correction="sequence_mask", rollout_is_cap=2.0, rollout_is_lower=None,
                             rollout_is_sequence="product", rollout_mask="reject"),
    "verl_geometric_rs": dict(rollout_correction="sequence_mask", rollout_is_cap=1.001, rollout_is_lower=None,
                              rollout_is_sequence="geometric", rollout_mask="reject"),
}


@dataclass(frozen=True)
class LossConfig:
    """Options of ``grpo_loss`` / ``fused_linear_grpo_loss``.

    loss_type: "grpo", "dapo", "dr_grpo" (token ratio, PPO clip), "gspo" (sequence ratio:
        s = exp(mean of log-ratios over the sequence), applied per token as
        sg(s) * exp(logp - sg(logp)); the log of that per-token ratio capped at 10, as verl's
        GSPO), "gspo_token" (the same ratio with its log clamped to [-20, 20] instead, as
        MediX-R1's official trainer: docs/official_loss_semantics.md), "cispo"
        (-sg(min(ratio, 1 + clip_high)) * A * logp).
    clip_low, clip_high: the ratio is clipped to [1 - clip_low, 1 + clip_high].
    dual_clip: None, or c > 1: for A < 0 the token loss is also capped at -A * c (verl).
    kl, beta: beta * KL(policy || reference) per token with x = ref_logp - logp:
        k1 = -x, k2 = x^2 / 2, k3 = exp(x) - x - 1 (x clamped to [-20, 20], k3 to [-10, 10], as
        verl's "low_var_kl"). beta = 0 turns it off (then ref_logp is not needed).
    aggregation: "token-mean" (sum / tokens in the batch), "seq-mean-token-mean" (mean per
        sequence, then over sequences), "seq-mean-token-sum", "seq-mean-token-sum-norm"
        (sum / (sequences * max_len): Dr. GRPO's constant normaliser). Sequences with no unmasked
        token are ignored by every aggregation (they count in no denominator). None (the default):
        the loss type's own (LOSS_TYPE_AGGREGATION: "dr_grpo" -> "seq-mean-token-sum-norm",
        "gspo"/"gspo_token" -> "seq-mean-token-mean", the others "token-mean"); the resolved name is
        what the field holds afterwards. "dr_grpo" with any other aggregation is a ValueError (it
        would be GRPO under another name).
    max_len: the constant of "seq-mean-token-sum-norm" (None: the padded length L).
    temperature: logits are divided by it before the log-softmax (> 0).
    rollout_correction: importance sampling for the rollout engine's mismatch, from ``rollout_logp`` (the
        engine's log-probs of the sampled tokens at this temperature): "none", or the ratio
        rho = pi_train / pi_rollout (pi_train: old_logp when given, else the detached log-probs) per token
        ("token_*") or per sequence ("sequence_*", see rollout_is_sequence), then "*_truncate": the
        weight clamp(rho, rollout_is_lower, rollout_is_cap) (TIS), "*_mask": rho inside
        [rollout_is_lower, rollout_is_cap], else 0 (MIS; see rollout_mask). The weight multiplies each
        token's policy term (not the KL) and carries no gradient. docs/rollout_correction.md.
    rollout_is_cap: the upper bound, > 1 (inf: none). rollout_is_lower: the lower bound, in [0, 1) (0: none).
    rollout_is_sequence: "geometric" (exp of the mean log-ratio over the response, the default) or
        "product" (exp of the sum: TRL's and verl's sequence ratio).
    rollout_mask: "weight" (a ratio outside the bounds weighs 0, the token stays in the denominators:
        TRL) or "reject" (the token, or the whole sequence, leaves the batch as if masked; the tokens kept
        weigh 1: verl's rollout_rs).
    entropy_coef: an entropy bonus, >= 0: the per-token loss minus entropy_coef * H_t, with H_t the
        entropy of softmax(logits / temperature) at token t, aggregated like the rest (verl's
        entropy_coeff). 0 = off (the entropy is then not needed).
    """

    loss_type: str = "grpo"
    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip: float | None = None
    kl: str = "k3"
    beta: float = 0.0
    aggregation: str | None = None
    max_len: int | None = None
    temperature: float = 1.0
    rollout_correction: str = "none"
    rollout_is_cap: float = 2.0
    rollout_is_lower: float = 0.0
    rollout_is_sequence: str = "geometric"
    rollout_mask: str = "weight"
    entropy_coef: float = 0.0

    def __post_init__(self):
        def bad(field, expected):
            raise ValueError(f"LossConfig: '{field}' must be {expected}, got {getattr(self, field)!r}")

        if self.loss_type not in LOSS_TYPES:
            bad("loss_type", f"one of {LOSS_TYPES}")
        if self.kl not in KL_ESTIMATORS:
            bad("kl", f"one of {KL_ESTIMATORS}")
        if self.aggregation is None:
            object.__setattr__(self, "aggregation", LOSS_TYPE_AGGREGATION[self.loss_type])
        if self.aggregation not in AGGREGATIONS:
            bad("aggregation", f"one of {AGGREGATIONS} or None (the loss type's own)")
        if self.loss_type == "dr_grpo" and self.aggregation != LOSS_TYPE_AGGREGATION["dr_grpo"]:
            bad("aggregation", "'seq-mean-token-sum-norm' (or None) with loss_type 'dr_grpo', whose constant "
                               "normaliser is what sets it apart from 'grpo' (for GRPO with another aggregation "
                               "use loss_type 'grpo')")
        if not (isinstance(self.clip_low, (int, float)) and 0 <= self.clip_low < 1):
            bad("clip_low", "a float in [0, 1)")
        if not (isinstance(self.clip_high, (int, float)) and self.clip_high >= 0):
            bad("clip_high", "a float >= 0")
        if self.dual_clip is not None and not (isinstance(self.dual_clip, (int, float)) and self.dual_clip > 1):
            bad("dual_clip", "None or a float > 1")
        if not (isinstance(self.beta, (int, float)) and self.beta >= 0):
            bad("beta", "a float >= 0")
        if not (isinstance(self.temperature, (int, float)) and self.temperature > 0):
            bad("temperature", "a float > 0")
        if not (isinstance(self.entropy_coef, (int, float)) and self.entropy_coef >= 0):  # NaN fails >= 0 too
            bad("entropy_coef", "a float >= 0")
        if self.max_len is not None and not (isinstance(self.max_len, int) and self.max_len >= 1):
            bad("max_len", "None or an int >= 1")
        for name, choices in (("rollout_correction", ROLLOUT_CORRECTIONS),
                              ("rollout_is_sequence", ROLLOUT_SEQUENCE_RATIOS), ("rollout_mask", ROLLOUT_MASK_STYLES)):
            if getattr(self, name) not in choices:
                bad(name, f"one of {choices}")
        if not (isinstance(self.rollout_is_cap, (int, float)) and self.rollout_is_cap > 1):  # NaN fails too
            bad("rollout_is_cap", "a float > 1 (the upper bound of the rollout importance weight; inf: none)")
        if not (isinstance(self.rollout_is_lower, (int, float)) and 0 <= self.rollout_is_lower < 1):
            bad("rollout_is_lower", "a float in [0, 1) (the lower bound of the rollout importance weight; 0: none)")

    def replace(self, **changes) -> LossConfig:
        return dataclasses.replace(self, **changes)

    def with_rollout(self, preset: str, *, cap: float | None = None, lower: float | None = None) -> LossConfig:
        """This config with a peer's rollout correction (ROLLOUT_PRESETS), e.g.
        ``LossConfig.preset("dapo").with_rollout("trl_sequence_mask", cap=2.0)``; ``lower`` left None
        keeps the preset's (verl's rollout_rs: 1 / cap)."""
        if preset not in ROLLOUT_PRESETS:
            raise ValueError(f"LossConfig.with_rollout: unknown preset {preset!r}; choose one of "
                             f"{tuple(ROLLOUT_PRESETS)}")
        fields = dict(ROLLOUT_PRESETS[preset])
        if cap is not None:
            fields["rollout_is_cap"] = cap
        if lower is not None:
            fields["rollout_is_lower"] = lower
        elif fields["rollout_is_lower"] is None:
            fields["rollout_is_lower"] = 1.0 / fields["rollout_is_cap"]
        return self.replace(**fields)

    @classmethod
    def preset(cls, name: str, **overrides) -> LossConfig:
        """Named configurations (overridable):

        - "grpo": GRPO: PPO clip 0.2, k3 KL to the reference with beta 1e-2, token-mean.
        - "dapo": DAPO: asymmetric clip 0.2 / 0.28, no KL, token-mean.
        - "gspo": GSPO: sequence-level ratio, clip 3e-4 / 4e-4, no KL, seq-mean-token-mean.
        - "medix_grpo", "medix_dapo", "medix_gspo": the settings of MediX-R1's official training
          scripts (docs/official_loss_semantics.md): its GRPO recipe keeps the trainer defaults
          clip 0.2 / 0.3 and dual clip 3 with k3 KL (beta 1e-2); DAPO: clip 0.2 / 0.28, dual
          clip 3, no KL; GSPO: "gspo_token", clip 3e-4 / 4e-4, dual clip 3, no KL,
          seq-mean-token-mean. The dual clip is always on in that trainer.
        - "dr_grpo": Dr. GRPO: clip 0.2, no KL, seq-mean-token-sum-norm.
        - "cispo": CISPO: clip from above at 1 + 0.28 (no lower clip), no KL, token-mean.
        - "trl": TRL GRPOTrainer defaults today: clip 0.2, beta 0, token-mean ("dapo" loss type).
        - "verl": verl actor defaults: clip 0.2, dual clip 3, k3 ("low_var_kl"), beta 1e-3,
          token-mean.
        """
        presets = {
            "grpo": dict(loss_type="grpo", clip_low=0.2, clip_high=0.2, kl="k3", beta=1e-2, aggregation="token-mean"),
            "dapo": dict(loss_type="dapo", clip_low=0.2, clip_high=0.28, beta=0.0, aggregation="token-mean"),
            "gspo": dict(loss_type="gspo", clip_low=3e-4, clip_high=4e-4, beta=0.0, aggregation="seq-mean-token-mean"),
            "dr_grpo": dict(loss_type="dr_grpo", clip_low=0.2, clip_high=0.2, beta=0.0,
                            aggregation="seq-mean-token-sum-norm"),
            "cispo": dict(loss_type="cispo", clip_low=0.0, clip_high=0.28, beta=0.0, aggregation="token-mean"),
            "trl": dict(loss_type="dapo", clip_low=0.2, clip_high=0.2, beta=0.0, aggregation="token-mean"),
            "verl": dict(loss_type="grpo", clip_low=0.2, clip_high=0.2, dual_clip=3.0, kl="k3", beta=1e-3,
                         aggregation="token-mean"),
            "medix_grpo": dict(loss_type="grpo", clip_low=0.2, clip_high=0.3, dual_clip=3.0, kl="k3", beta=1e-2,
                               aggregation="token-mean"),
            "medix_dapo": dict(loss_type="dapo", clip_low=0.2, clip_high=0.28, dual_clip=3.0, beta=0.0,
                               aggregation="token-mean"),
            "medix_gspo": dict(loss_type="gspo_token", clip_low=3e-4, clip_high=4e-4, dual_clip=3.0, beta=0.0,
                               aggregation="seq-mean-token-mean"),
        }
        if name not in presets:
            raise ValueError(f"LossConfig.preset: unknown preset {name!r}; choose one of {tuple(presets)}")
        return cls(**{**presets[name], **overrides})
