"""``python -m medix_r1.checkpoint export STEP_DIR OUT_DIR``: a Hugging Face folder from any checkpoint.

A single-process checkpoint's ``model/`` folder is re-saved (optionally in another dtype); a sharded
torchrun checkpoint's ``dcp/`` shards are read in this process without a process group (so models
over ``dist.full_model_max_gb``, which get no ``model/`` folder, export too).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from medix_r1.checkpoint.lora_export import LORA_EXPORTS, export_lora
from medix_r1.checkpoint.store import ADAPTER_DIR, MARKER, save_hf_folder, verify_checkpoint
from medix_r1.utils.cli import command_name

# ----------------------------------------------------------------------------- export to a Hugging Face folder

EXPORT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def dcp_model_state(dcp_dir: Path) -> dict:
    """The model's full tensors from a ``dcp/`` folder written at any world size, read in this process
    without a process group and without building the model (shapes and dtypes from DCP's metadata)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    meta = dcp.FileSystemReader(str(dcp_dir)).read_metadata().state_dict_metadata
    model = {k[len("model."):]: torch.empty(m.size, dtype=m.properties.dtype) for k, m in meta.items()
             if k.startswith("model.") and isinstance(m, TensorStorageMetadata)}
    if not model:
        raise ValueError(f"{dcp_dir}: no model tensors in this DCP checkpoint")
    state = {"model": model}
    dcp.load(state, checkpoint_id=str(dcp_dir), no_dist=True)
    return state["model"]


def export_hf(step: Path, out: Path, dtype: str | None = None, push_to_hub: str | None = None,
              lora: str = "merged") -> Path:
    """A Hugging Face folder (config, safetensors, tokenizer, processor) from a checkpoint ``step``,
    single-process or sharded (``dcp/``, any world size); ``dtype`` fp32/bf16/fp16 (default: as saved).
    The config, tokenizer and processor come from the checkpoint's ``model/`` or the run's
    ``model.policy``. ``push_to_hub``: also upload the folder to that hub repository. A LoRA run's
    checkpoint (``adapter/``) exports ``lora='merged'`` (into its base) or ``'adapter'`` (lora_export.py)."""
    import transformers

    from medix_r1.models import resolve_model_dir

    step, out = Path(step), Path(out)
    if not (step / MARKER).is_file():
        raise ValueError(f"{step} is not a complete checkpoint (no {MARKER} marker)")
    if dtype is not None and dtype not in EXPORT_DTYPES:
        raise ValueError(f"--dtype must be one of {list(EXPORT_DTYPES)}, got {dtype!r}")
    if out.exists() and not out.is_dir():
        raise ValueError(f"OUT_DIR {out} is a file, not a folder")
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} exists and is not empty")
    if push_to_hub and os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise ValueError("--push-to-hub needs the network, but HF_HUB_OFFLINE is set")
    problem = verify_checkpoint(step)  # the manifest in COMPLETE: sizes and sha256 of every file
    if problem is not None:
        raise ValueError(f"{step}: {problem}; the checkpoint is damaged and was not exported (use an earlier one)")
    policy = checkpoint_policy(step)
    if (step / ADAPTER_DIR).is_dir():  # a LoRA run's checkpoint: merged into its base, or the adapter
        tmp = out.parent / f".tmp_{out.name}_{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        export_lora(step, tmp, lora, policy, None if dtype is None else EXPORT_DTYPES[dtype])
        return _finish_export(tmp, out, push_to_hub)
    source = step / "model" if (step / "model" / "config.json").is_file() else \
        Path(resolve_model_dir(policy, "the checkpoint's model.policy"))
    config = transformers.AutoConfig.from_pretrained(str(source))
    arch = (getattr(config, "architectures", None) or [None])[0]
    model_cls = getattr(transformers, arch or "", None)
    if model_cls is None:
        raise ValueError(f"{source}: config.json names no transformers architecture ({arch!r})")
    with torch.device("meta"):  # the module tree only: names, tied weights, key conversions
        model = model_cls._from_config(config)
    if (step / "dcp").is_dir():
        weights = dcp_model_state(step / "dcp")
    else:
        from safetensors.torch import load_file
        weights = {}
        for f in sorted((step / "model").glob("*.safetensors")):
            try:
                weights.update(load_file(str(f)))
            except Exception as e:  # SafetensorError: a truncated or garbled file (one without a manifest)
                raise ValueError(f"{f}: not a readable safetensors file ({type(e).__name__}: {e})") from e
        model = None  # the files already hold the checkpoint's key names
    if dtype is not None:
        weights = {k: v.to(EXPORT_DTYPES[dtype]) if v.is_floating_point() else v for k, v in weights.items()}
        config.dtype = EXPORT_DTYPES[dtype]
    tmp = out.parent / f".tmp_{out.name}_{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    if model is None:
        _save_plain(tmp, config, weights)
    else:
        model.config = config
        save_hf_folder(tmp, model, weights, None)
    for loader in (transformers.AutoTokenizer, transformers.AutoProcessor):
        try:  # the processor (a VLM's) includes the tokenizer; text models have only the tokenizer
            loader.from_pretrained(str(step / "model" if (step / "model" / "tokenizer_config.json").is_file()
                                       else source)).save_pretrained(str(tmp))
        except (OSError, ValueError, TypeError, KeyError) as e:
            if loader is transformers.AutoTokenizer:
                raise ValueError(f"{source}: no tokenizer to export ({e})") from e
    return _finish_export(tmp, out, push_to_hub)


def _finish_export(tmp: Path, out: Path, push_to_hub: str | None) -> Path:
    if out.exists():
        out.rmdir()
    os.replace(tmp, out)
    if push_to_hub:
        from huggingface_hub import HfApi
        api = HfApi()
        try:
            api.create_repo(push_to_hub, exist_ok=True)
            api.upload_folder(folder_path=str(out), repo_id=push_to_hub)
        except Exception as e:  # offline, no token, no rights: the folder is written and stays
            raise PushError(f"wrote {out}, but pushing it to {push_to_hub} failed ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:300] if str(e) else ''}); push it later with "
                            f"`huggingface-cli upload {push_to_hub} {out}`") from e
    return out


class PushError(RuntimeError):
    """The folder was exported but not uploaded (one line; the folder stays)."""


def checkpoint_policy(step: Path) -> str:
    """The run's ``model.policy`` from the checkpoint's trainer_state.json; ValueError naming the file."""
    path = step / "trainer_state.json"
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path} is missing") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not readable JSON ({e})") from None
    try:
        policy = state["config"]["model"]["policy"]
    except (KeyError, TypeError):
        raise ValueError(f"{path} has no config.model.policy (the run's model; written by the trainer)") from None
    if not isinstance(policy, str) or not policy:
        raise ValueError(f"{path}: config.model.policy must be a model folder or name, got {policy!r}")
    return policy


def _save_plain(folder: Path, config, weights: dict) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in weights.items()}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    config.save_pretrained(folder)


def main(argv=None) -> int:
    """``python -m medix_r1.checkpoint export STEP_DIR OUT_DIR [--dtype bf16] [--push-to-hub REPO]``."""
    import argparse
    import sys

    p = argparse.ArgumentParser(prog=command_name("medix_r1.checkpoint"),
                                description="Trainer checkpoints: export one as a Hugging Face model folder.")
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", help="write a Hugging Face folder (safetensors, config, tokenizer, processor) "
                                      "from a checkpoint, sharded torchrun ones included")
    e.add_argument("step_dir", help="a checkpoint folder, e.g. runs/medix_cpu/step_000030")
    e.add_argument("out_dir", help="the folder to write (must not exist or be empty)")
    e.add_argument("--dtype", choices=tuple(EXPORT_DTYPES), help="cast floating-point weights (default: as saved)")
    e.add_argument("--push-to-hub", metavar="REPO", help="also upload the folder to this hub repository")
    e.add_argument("--lora", choices=LORA_EXPORTS, default="merged",
                   help="a LoRA run's checkpoint: 'merged' (the adapters folded into the base model, a plain "
                        "Hugging Face folder; the default) or 'adapter' (peft's adapter folder)")
    args = p.parse_args(argv)
    try:
        out = export_hf(Path(args.step_dir), Path(args.out_dir), args.dtype, args.push_to_hub, args.lora)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except PushError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {out}" + (f" and pushed it to {args.push_to_hub}" if args.push_to_hub else ""))
    return 0

