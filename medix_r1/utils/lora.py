"""LoRA adapters through peft, injected into the model in place (``model.lora``, docs/lora.md).

``peft.inject_adapter_in_model`` puts a low-rank pair (A [r, in], B [out, r], B = 0 at the start) beside
each target linear layer and keeps the model's class and module tree, so every forward the trainer
runs, the fused loss (it reads ``lm_head.weight``, which never gets an adapter) and FSDP2's decoder-layer
units see the model they always saw. Everything but the adapters is frozen.

What the rest of the trainer needs from an adapted model is here:

- :func:`adapters_disabled`: the base model (the reference policy of the KL term: no second model);
- :class:`MergedWeights`: ``named_parameters()`` under the base model's names with W + (alpha / r) B A,
  what a rollout engine loads (engines know nothing of adapters);
- :func:`adapter_state` / :func:`load_adapter_state` / :func:`save_adapter`: the adapters in peft's
  file format (``adapter_model.safetensors`` + ``adapter_config.json``, which ``PeftModel.from_pretrained``
  and vLLM's LoRA loader read);
- :func:`check_targets`: ``model.lora.target_modules`` against a model's module tree (built on the meta
  device, before any weight loads).
"""
from __future__ import annotations

import contextlib
import re
from pathlib import Path

import torch

ADAPTER = "default"          # peft's adapter name inside the module names (lora_A.default.weight)
PEFT_PREFIX = "base_model.model."  # what PeftModel.save_pretrained puts before the module names
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


def lora_config(section, base_model: str = ""):
    """peft's LoraConfig from the config's ``model.lora`` section."""
    from peft import LoraConfig

    targets = section.target_modules if isinstance(section.target_modules, str) else list(section.target_modules)
    return LoraConfig(r=section.r, lora_alpha=section.alpha, lora_dropout=section.dropout, target_modules=targets,
                      bias="none", task_type="CAUSAL_LM", base_model_name_or_path=str(base_model) or None)


def add_lora(model: torch.nn.Module, section, base_model: str = "") -> torch.nn.Module:
    """Inject the adapters of ``section`` into ``model`` in place; only they require gradients after."""
    from peft import inject_adapter_in_model

    model = inject_adapter_in_model(lora_config(section, base_model), model, adapter_name=ADAPTER)
    for name, p in model.named_parameters():
        p.requires_grad_(".lora_" in name)
    return model


def lora_layers(model: torch.nn.Module) -> dict:
    """{module name: peft LoRA layer} of an adapted model ({} for a plain one)."""
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # peft not installed: no model can carry adapters
        return {}
    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


def is_lora(model) -> bool:
    return any(".lora_" in name for name, _ in model.named_parameters())


@contextlib.contextmanager
def adapters_disabled(model: torch.nn.Module):
    """The base model inside the block (every adapter off); the adapters are back on after."""
    layers = list(lora_layers(model).values())
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield model
    finally:
        for layer in layers:
            layer.enable_adapters(True)


def _full(p: torch.Tensor) -> torch.Tensor:
    """The whole tensor, detached: an FSDP2 shard (DTensor) is gathered (a collective on every rank)."""
    p = p.detach()
    gather = getattr(p, "full_tensor", None)
    return gather() if callable(gather) else p


def merged_weight(weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scaling: float) -> torch.Tensor:
    """W + scaling * B @ A, computed in float32, in W's dtype."""
    return (weight.float() + scaling * (b.float() @ a.float())).to(weight.dtype)


class MergedWeights:
    """An adapted model seen as its merged base model: ``named_parameters()`` yields the base model's
    names with the merged tensors (gathered one parameter at a time under FSDP2, in the same order on
    every rank), ``parameters()`` the model's own (engines read their device only)."""

    def __init__(self, model: torch.nn.Module):
        self.model = model

    def parameters(self):
        return self.model.parameters()

    @torch.no_grad()
    def named_parameters(self):
        layers = lora_layers(self.model)
        for name, p in self.model.named_parameters():
            if ".lora_" in name:  # folded into their base weight below
                continue
            if ".base_layer." not in name:
                yield name, _full(p)
                continue
            owner, leaf = name.rsplit(".base_layer.", 1)
            layer = layers[owner]
            tensor = _full(p)
            if leaf == "weight":
                tensor = merged_weight(tensor, _full(layer.lora_A[ADAPTER].weight),
                                       _full(layer.lora_B[ADAPTER].weight), float(layer.scaling[ADAPTER]))
            yield f"{owner}.{leaf}", tensor


# ----------------------------------------------------------------------------- files

def to_peft_name(name: str) -> str:
    """``model.layers.0.q_proj.lora_A.default.weight`` -> ``base_model.model.model.layers.0.q_proj.lora_A.weight``."""
    return PEFT_PREFIX + name.replace(f".{ADAPTER}.", ".")


def from_peft_name(name: str) -> str:
    name = name.removeprefix(PEFT_PREFIX)
    return re.sub(r"\.(lora_[AB])\.", rf".\1.{ADAPTER}.", name)


def adapter_state(named_tensors) -> dict:
    """The adapter tensors of ``(module name, tensor)`` pairs under peft's file names (contiguous, on the CPU)."""
    return {to_peft_name(n): _full(t).contiguous().cpu() for n, t in named_tensors if ".lora_" in n}


def save_adapter(folder, state: dict, model: torch.nn.Module) -> Path:
    """peft's adapter folder: ``adapter_model.safetensors`` (``state``, peft names) and the injected
    adapter's ``adapter_config.json``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    model.peft_config[ADAPTER].save_pretrained(str(folder))
    return folder


def load_adapter_state(model: torch.nn.Module, folder) -> None:
    """Load an adapter folder's weights into the adapted ``model``; ValueError when they do not fit it."""
    from safetensors.torch import load_file

    weights = {from_peft_name(k): v for k, v in load_file(str(Path(folder) / ADAPTER_WEIGHTS)).items()}
    own = {n for n, _ in model.named_parameters() if ".lora_" in n}
    missing, unexpected = sorted(own - set(weights)), sorted(set(weights) - own)
    if missing or unexpected:
        raise ValueError(f"{folder}: the adapter does not fit this model's model.lora settings (missing "
                         f"{missing[:3]}{'...' if len(missing) > 3 else ''}, unexpected {unexpected[:3]}"
                         f"{'...' if len(unexpected) > 3 else ''})")
    model.load_state_dict(weights, strict=False)


# ----------------------------------------------------------------------------- targets

def check_targets(model: torch.nn.Module, targets, field: str = "model.lora.target_modules") -> None:
    """ValueError naming ``field`` when a target names no linear layer of ``model`` (a meta-device model is
    enough), or names the LM head (the fused loss reads its weight directly, an adapter there would be lost)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    linear = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m is not head}
    head_name = next((n for n, m in model.named_modules() if head is not None and m is head), None)
    leaves = sorted({n.rsplit(".", 1)[-1] for n in linear})
    if isinstance(targets, str):
        if targets == "all-linear":
            if not linear:
                raise ValueError(f"{field}='all-linear': {type(model).__name__} has no linear layer besides the "
                                 "LM head")
            return
        if head_name is not None and re.fullmatch(targets, head_name):
            raise ValueError(f"{field}={targets!r} matches the LM head ({head_name}), which cannot take an adapter "
                             f"(the fused loss reads its weight directly)")
        if not any(re.fullmatch(targets, n) for n in linear):
            raise ValueError(f"{field}={targets!r} matches no linear layer of {type(model).__name__}; its linear "
                             f"layers are named {leaves}")
        return
    for t in targets:
        if head_name is not None and (head_name == t or head_name.endswith("." + t)):
            raise ValueError(f"{field}: {t!r} is the LM head, which cannot take an adapter (the fused loss reads "
                             "its weight directly)")
        if not any(n == t or n.endswith("." + t) for n in linear):
            raise ValueError(f"{field}: {type(model).__name__} has no linear layer named {t!r}; its linear layers "
                             f"are named {leaves}")
