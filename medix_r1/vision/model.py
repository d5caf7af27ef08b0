"""Which models are vision-language models, and their vision tower.

Loading picks the transformers Auto class from the folder's config (:func:`auto_model_class`);
the trainer freezes or trains the tower (:func:`freeze_vision_tower`), and under torchrun the FSDP
code keeps the tower in its root unit (:func:`vision_tower`).
"""
from __future__ import annotations

import importlib.util

import torch


def _config(model_or_config):
    return getattr(model_or_config, "config", model_or_config)


def is_vision_model(model_or_config) -> bool:
    """True for a model/config with a vision tower and an image token (Qwen2/2.5/3-VL and alike)."""
    cfg = _config(model_or_config)
    return getattr(cfg, "vision_config", None) is not None and getattr(cfg, "image_token_id", None) is not None


def check_model_accepts_images(model_or_config, records) -> None:
    """Raise ValueError naming the first record with images when the model is text-only."""
    if is_vision_model(model_or_config):
        return
    for record in records:
        if record.get("images"):
            model_type = getattr(_config(model_or_config), "model_type", type(model_or_config).__name__)
            raise ValueError(
                f"record {record.get('id', '?')!r} has {len(record['images'])} image(s) but the policy "
                f"({model_type}) is a text-only model; use a vision-language model (e.g. Qwen2.5-VL, "
                "Qwen3-VL) or drop image records from the data (keep records with images == [])")


def torchvision_importable() -> bool:
    if importlib.util.find_spec("torchvision") is None:
        return False
    try:
        import torchvision  # noqa: F401
        return True
    except Exception:  # the PyPI torchvision is a CUDA build that fails against the CPU torch
        return False


def model_config(model_dir):
    from transformers import AutoConfig
    return AutoConfig.from_pretrained(str(model_dir))


def auto_model_class(model_dir):
    """The transformers Auto class to load ``model_dir`` with (image-text-to-text for Qwen-VL)."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText
    return AutoModelForImageTextToText if is_vision_model(model_config(model_dir)) else AutoModelForCausalLM


def vision_tower(model) -> torch.nn.Module | None:
    """The vision tower (incl. its merger) of a Qwen-VL model (``.model.visual`` or ``.visual``), or None."""
    return getattr(getattr(model, "model", model), "visual", None) or getattr(model, "visual", None)


def vision_parameters(model) -> list[torch.nn.Parameter]:
    """Parameters of the vision tower (incl. its merger) of a Qwen-VL model."""
    visual = vision_tower(model)
    if visual is None:
        raise ValueError(f"{type(model).__name__} has no vision tower (.model.visual / .visual)")
    return list(visual.parameters())


def freeze_vision_tower(model, frozen: bool = True) -> int:
    """Set requires_grad=False (or True) on the vision tower; returns the number of parameters affected."""
    params = vision_parameters(model)
    for p in params:
        p.requires_grad_(not frozen)
    return sum(p.numel() for p in params)
