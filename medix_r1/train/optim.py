"""The optimizers ``optim.optimizer`` names: torch's AdamW, or :class:`BF16AdamW` for bf16 weights.

``adamw_bf16`` is what MediX-R1's 30B script selects (``worker.actor.optim.strategy=adamw_bf16``
with ``worker.actor.fsdp.torch_dtype=bf16``): the weights are bfloat16 and so are both Adam
moments, which halves the optimizer memory of fp32 AdamW twice over (no fp32 master copy, bf16
states). A bf16 weight cannot take an update of lr 1e-6 directly (it is below half a bf16 ulp of
most weights and would round away), so each weight keeps a bf16 *compensation* buffer (Kahan
summation): the update is added to the buffer, the buffer to the weight, and what the rounding
lost goes back into the buffer, to be applied once it has grown large enough.

The official optimizer is ``AnyPrecisionAdamW`` (https://github.com/mbzuai-oryx/MediX-R1/blob/94fd0184b54d5e77abf909aef87aa6ada1310099/training/verl/utils/torch_functional.py,
from Meta's llama-cookbook) with its defaults; this is the same update, written here: decoupled
weight decay ``w *= 1 - lr * wd``, ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g^2``,
``w -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)`` through the compensation buffer.
One difference: the update is formed in float32 from the bf16 states (the official one does that
arithmetic in bf16), which rounds less and costs nothing that matters next to the forward pass.
"""
from __future__ import annotations

import torch


class BF16AdamW(torch.optim.Optimizer):
    """AdamW with bfloat16 moments and Kahan-compensated updates (module docstring)."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        if lr <= 0 or eps <= 0 or weight_decay < 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"BF16AdamW: invalid lr={lr}, betas={betas}, eps={eps} or weight_decay={weight_decay}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, dtype=torch.bfloat16)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.bfloat16)
                    state["compensation"] = torch.zeros_like(p, dtype=torch.bfloat16)
                state["step"] += 1
                t = state["step"]
                grad = p.grad.float()
                m = state["exp_avg"].float().mul_(b1).add_(grad, alpha=1 - b1)
                v = state["exp_avg_sq"].float().mul_(b2).addcmul_(grad, grad, value=1 - b2)
                state["exp_avg"].copy_(m)
                state["exp_avg_sq"].copy_(v)
                if wd:
                    p.mul_(1 - lr * wd)
                update = m.div_(v.sqrt_().div_((1 - b2 ** t) ** 0.5).add_(eps)).mul_(-lr / (1 - b1 ** t))
                comp = state["compensation"]
                comp.add_(update.to(comp.dtype))
                before = p.detach().clone()
                p.add_(comp.to(p.dtype))
                comp.add_(before.sub_(p).to(comp.dtype))  # what the rounding of p lost, kept for later
        return loss


def make_optimizer(params, o):
    """The optimizer of the config's optim section over ``params`` (the trainable parameters)."""
    params = list(params)
    kwargs = dict(lr=o.lr, betas=(o.beta1, o.beta2), weight_decay=o.weight_decay)
    return OPTIMIZERS[o.optimizer](params, **kwargs)


OPTIMIZERS = {"adamw": torch.optim.AdamW, "adamw_bf16": BF16AdamW}
