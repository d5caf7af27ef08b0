"""Exporting a LoRA run's checkpoint (its ``adapter/`` folder, peft's format): merged into the base model
as a plain Hugging Face folder (what vLLM and ``from_pretrained`` load), or as the adapter itself.

The merge is peft's own (``PeftModel.from_pretrained(base, adapter).merge_and_unload()``, in float32):
the base is the run's ``model.policy``, which the run never changed.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import torch

from medix_r1.checkpoint.store import ADAPTER_DIR

LORA_EXPORTS = ("merged", "adapter")


def export_lora(step: Path, tmp: Path, how: str, policy: str, dtype: torch.dtype | None) -> None:
    """Write the export of a LoRA checkpoint ``step`` into the new folder ``tmp``: ``how`` is ``merged``
    (the base model ``policy`` with the adapters folded in) or ``adapter`` (peft's adapter folder)."""
    adapter = step / ADAPTER_DIR
    if how not in LORA_EXPORTS:
        raise ValueError(f"--lora must be one of {list(LORA_EXPORTS)}, got {how!r}")
    if how == "adapter":
        shutil.copytree(adapter, tmp)
        if dtype is not None:
            from safetensors.torch import load_file, save_file
            path = tmp / "adapter_model.safetensors"
            save_file({k: v.to(dtype) for k, v in load_file(str(path)).items()}, str(path), metadata={"format": "pt"})
        return
    from peft import PeftModel
    from transformers import AutoTokenizer

    from medix_r1.models import resolve_model_dir
    from medix_r1.vision.model import auto_model_class

    base = resolve_model_dir(policy, "the checkpoint's model.policy (the LoRA base)")
    model = auto_model_class(base).from_pretrained(str(base), dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    if dtype is not None:
        merged = merged.to(dtype)
    merged.save_pretrained(str(tmp), safe_serialization=True)
    AutoTokenizer.from_pretrained(str(adapter)).save_pretrained(str(tmp))
