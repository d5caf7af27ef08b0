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

    def replace(self, **changes) -> LossConfig:
        return dataclasses.replace(self, **changes)

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
