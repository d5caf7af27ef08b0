"""Answer generation: vLLM in-process, transformers (``hf``), or an OpenAI-compatible endpoint.

All three take OpenAI-style chat messages built by :func:`build_messages` and return one text
per item; greedy decoding unless a temperature is given. vLLM runs in this process, configured
as everywhere else in the project (:mod:`medix_r1.rollout.vllm_engine`); text prompts are
tokenised with the model's chat template here and passed as ``TokensPrompt``. Items with images
go through ``LLM.chat`` (vLLM) or as data-URL content parts (OpenAI endpoint); the ``hf`` path is
text only.

A generator is called as ``generate(batch)`` or ``generate(batch, sampling)``: ``sampling`` holds
sampling settings for that call (``max_tokens``, ``temperature``, ``top_p``, ``top_k``, ``min_p``,
``repetition_penalty``, ``presence_penalty``, ``frequency_penalty``) over the config's, so one engine
serves tasks with different settings. With ``GenerationConfig.cut_long_prompts=False`` (the official
protocol, which sizes the engine from its prompts) a prompt that does not fit is an error, never cut.
"""
from __future__ import annotations

import base64
import io
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from medix_r1.data.prompts import chat_token_ids, cut_middle
from medix_r1.models import resolve_model_dir
from medix_r1.rollout.vllm_engine import build_llm, engine_kwargs

MEDIX_SYSTEM = (
    "You are a medical expert. Answer in this format: first the modality tag of the image (one "
    "of <X_RAY> <MICROSCOPY> <CLINICAL_PHOTOGRAPHY> <CT_SCAN> <GRAPHICS> <ANGIOGRAPHY> "
    "<PET_SCAN> <ULTRASOUND> <MRI_SCAN> <FUNDUS_PHOTOGRAPHY> <OCT_SCAN> <ENDOSCOPY> "
    "<MAMMOGRAPHY> <FLUOROSCOPY> <OTHER> <SPECT>; <OTHER> when there is no image), then your "
    "reasoning inside <thinking> </thinking>, then the final answer inside <answer> </answer>."
)
PLAIN_SYSTEM = "You are a medical expert. Answer the question briefly and precisely."
# "official": MediX-R1's official evaluation sends no system prompt (medix_r1/eval/official/)
PROMPT_STYLES = {"medix": MEDIX_SYSTEM, "plain": PLAIN_SYSTEM, "official": None}
GENERATORS = ("vllm", "hf", "openai")


@dataclass
class GenerationConfig:
    max_new_tokens: int = 256
    temperature: float = 0.0          # 0 = greedy
    batch_size: int = 16
    max_model_len: int = 2048         # vLLM context; prompts longer than it are cut in the middle
    kv_cache_memory_bytes: int = 1 << 30
    seed: int = 0
    concurrency: int = 8              # OpenAI endpoint: requests in flight
    api_key: str | None = None
    base_url: str | None = None       # OpenAI endpoint
    sampling: dict | None = None      # further sampling settings (SAMPLING_KEYS), e.g. repetition_penalty
    cut_long_prompts: bool = True     # False: a text prompt over max_model_len - max_tokens is an error

    def __post_init__(self):
        for name in ("max_new_tokens", "batch_size", "max_model_len", "kv_cache_memory_bytes",
                     "concurrency"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not isinstance(self.temperature, (int, float)) or self.temperature < 0:
            raise ValueError(f"temperature must be a number >= 0, got {self.temperature!r}")
        if self.max_new_tokens >= self.max_model_len:
            raise ValueError(f"max_new_tokens ({self.max_new_tokens}) must be below "
                             f"max_model_len ({self.max_model_len})")
        unknown = sorted(set(self.sampling or {}) - set(SAMPLING_KEYS))
        if unknown:
            raise ValueError(f"sampling: unknown setting(s) {unknown}; known: {list(SAMPLING_KEYS)}")

    def params(self, sampling: dict | None = None) -> dict:
        """The sampling settings of one call: the config's, then ``sampling`` over them."""
        out = {"temperature": float(self.temperature), "max_tokens": self.max_new_tokens, **(self.sampling or {}),
               **(sampling or {})}
        unknown = sorted(set(out) - set(SAMPLING_KEYS))
        if unknown:
            raise ValueError(f"sampling: unknown setting(s) {unknown}; known: {list(SAMPLING_KEYS)}")
        return out


# what a generator call may set (vLLM SamplingParams names; max_tokens = new tokens)
SAMPLING_KEYS = ("max_tokens", "temperature", "top_p", "top_k", "min_p", "repetition_penalty", "presence_penalty",
                 "frequency_penalty")


def _image_bytes(image) -> bytes | None:
    """The encoded bytes a path, bytes or datasets {'bytes','path'} dict holds (None for a PIL image)."""
    if isinstance(image, dict):
        image = image.get("bytes") or image.get("path")
    if isinstance(image, (str, Path)):
        return Path(image).read_bytes()
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    if hasattr(image, "save"):
        return None
    raise TypeError(f"image must be a path, bytes or a PIL image, got {type(image).__name__}")


def _image_data_url(image, encoding: str = "original") -> str:
    """An image (path, PIL image, bytes, or a datasets {'bytes','path'} dict) as a data URL.

    ``original``: a file's or bytes' own encoding is sent as is, a PIL image as PNG (lossless).
    ``jpeg``: as MediX-R1's official client (``generate`` in eval/utils.py): ``convert("RGB")``, then
    re-encoded as JPEG with PIL's default quality. ``png``: decoded and re-encoded losslessly."""
    data = _image_bytes(image)
    if encoding == "original" and data is not None:
        return "data:image/png;base64," + base64.b64encode(data).decode()  # servers sniff the real format
    if data is not None:
        from PIL import Image
        image = Image.open(io.BytesIO(data))
    buffer = io.BytesIO()
    fmt = "JPEG" if encoding == "jpeg" else "PNG"
    image.convert("RGB").save(buffer, format=fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buffer.getvalue()).decode()


def build_messages(record: dict, style: str = "medix") -> list[dict]:
    """OpenAI-style chat messages for one record (image parts first when it has images). Under the
    ``official`` style images are re-encoded as the official client does (JPEG), unless the record
    names its own ``image_encoding`` (MMMU: the decoded image, as MedEvalKit hands vLLM)."""
    if style not in PROMPT_STYLES:
        raise ValueError(f"prompt style must be one of {sorted(PROMPT_STYLES)}, got {style!r}")
    if record["images"]:
        encoding = record.get("image_encoding") or ("jpeg" if style == "official" else "original")
        content = [{"type": "image_url", "image_url": {"url": _image_data_url(im, encoding)}}
                   for im in record["images"]] + [{"type": "text", "text": record["problem"]}]
    else:
        content = record["problem"]
    system = PROMPT_STYLES[style]
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": content}]


def make_vllm_generator(model_dir: Path, cfg: GenerationConfig) -> Callable:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    llm = build_llm(engine_kwargs(model_dir, max_model_len=cfg.max_model_len, seed=cfg.seed,
                                  kv_cache_gb=cfg.kv_cache_memory_bytes / (1 << 30), enforce_eager=True))
    tokenizer = llm.get_tokenizer()

    def generate(batch: list[list[dict]], sampling: dict | None = None) -> list[str]:
        settings = cfg.params(sampling)
        params = SamplingParams(**settings, seed=cfg.seed)
        budget = cfg.max_model_len - settings["max_tokens"]
        texts: list[str | None] = [None] * len(batch)
        text_only = [i for i, m in enumerate(batch) if isinstance(m[-1]["content"], str)]
        if text_only:
            prompts = [TokensPrompt(prompt_token_ids=fit(chat_token_ids(tokenizer, batch[i]), budget, cfg))
                       for i in text_only]
            for i, out in zip(text_only, llm.generate(prompts, params, use_tqdm=False)):
                texts[i] = out.outputs[0].text
        with_images = [i for i in range(len(batch)) if texts[i] is None]
        if with_images:
            outs = llm.chat([batch[i] for i in with_images], params, use_tqdm=False)
            for i, out in zip(with_images, outs):
                texts[i] = out.outputs[0].text
        return texts

    return generate


def fit(ids: list[int], budget: int, cfg: GenerationConfig) -> list[int]:
    """A text prompt within ``budget`` tokens: cut in the middle, or (``cut_long_prompts=False``) an error."""
    if len(ids) > budget and not cfg.cut_long_prompts:
        raise ValueError(f"a prompt of {len(ids)} tokens does not fit the engine ({cfg.max_model_len} tokens with "
                         f"{cfg.max_model_len - budget} new ones); it should have been left out when the engine "
                         f"was sized")
    return cut_middle(ids, budget)


def make_hf_generator(model_dir: Path, cfg: GenerationConfig) -> Callable:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"  # decoder-only batched generation pads on the left
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()

    def generate(batch: list[list[dict]], sampling: dict | None = None) -> list[str]:
        if any(not isinstance(m[-1]["content"], str) for m in batch):
            raise ValueError("the hf generator is text only; use --generator vllm or openai "
                             "for benchmarks with images")
        settings = hf_sampling(cfg.params(sampling))
        max_new = settings.pop("max_new_tokens")
        ids = [fit(chat_token_ids(tokenizer, m), cfg.max_model_len - max_new, cfg) for m in batch]
        width = max(len(x) for x in ids)
        pad = tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids])
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])
        with torch.no_grad():
            out = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new, pad_token_id=pad,
                                 **settings)
        return [tokenizer.decode(row[width:], skip_special_tokens=True) for row in out]

    return generate


def hf_sampling(settings: dict) -> dict:
    """vLLM-named sampling settings as transformers ``generate`` arguments; the penalties transformers
    lacks (presence, frequency) must be 0."""
    missing = [k for k in ("presence_penalty", "frequency_penalty") if settings.get(k)]
    if missing:
        raise ValueError(f"the hf generator has no {missing}: use --generator vllm")
    out = {"max_new_tokens": settings["max_tokens"], "repetition_penalty": settings.get("repetition_penalty")}
    if settings["temperature"] > 0:
        return {**out, "do_sample": True, "temperature": settings["temperature"], "top_p": settings.get("top_p"),
                "top_k": settings.get("top_k") or 0, "min_p": settings.get("min_p")}
    return {**out, "do_sample": False, "temperature": None, "top_p": None, "top_k": None}


def make_openai_generator(model_name: str, cfg: GenerationConfig) -> Callable:
    from openai import OpenAI

    if not cfg.base_url:
        raise ValueError("--generator openai needs --base-url URL (an OpenAI-compatible /v1)")
    client = OpenAI(base_url=cfg.base_url, api_key=cfg.api_key or "EMPTY", max_retries=3)

    def one(messages, settings):
        # what the server does not know by OpenAI's names goes in vLLM's extra body
        standard = {k: settings[k] for k in ("temperature", "top_p", "max_tokens", "presence_penalty",
                                             "frequency_penalty") if k in settings}
        extra = {k: v for k, v in settings.items() if k not in standard}
        reply = client.chat.completions.create(model=model_name, messages=messages, seed=cfg.seed, **standard,
                                               **({"extra_body": extra} if extra else {}))
        return reply.choices[0].message.content or ""

    def generate(batch: list[list[dict]], sampling: dict | None = None) -> list[str]:
        settings = cfg.params(sampling)
        with ThreadPoolExecutor(max_workers=cfg.concurrency) as pool:
            return list(pool.map(lambda m: one(m, settings), batch))

    return generate


def make_generator(kind: str, model: str | Path, cfg: GenerationConfig) -> Callable:
    """A function mapping a batch of chat-message lists to the generated texts."""
    if kind == "openai":
        return make_openai_generator(str(model), cfg)
    if kind not in GENERATORS:
        raise ValueError(f"generator must be one of {GENERATORS}, got {kind!r}")
    model_dir = resolve_model_dir(model, "--model")
    return (make_vllm_generator if kind == "vllm" else make_hf_generator)(model_dir, cfg)
