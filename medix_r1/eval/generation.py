"""Answer generation: vLLM in-process, transformers (``hf``), or an OpenAI-compatible endpoint.

All three take OpenAI-style chat messages built by :func:`build_messages` and return one text
per item; greedy decoding unless a temperature is given. vLLM runs in this process, configured
as everywhere else in the project (:mod:`medix_r1.rollout.vllm_engine`); text prompts are
tokenised with the model's chat template here and passed as ``TokensPrompt``. Items with images
go through ``LLM.chat`` (vLLM) or as data-URL content parts (OpenAI endpoint); the ``hf`` path is
text only.
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


def _image_data_url(image) -> str:
    """An image (path, PIL image, bytes, or a datasets {'bytes','path'} dict) as a data URL."""
    if isinstance(image, dict):
        image = image.get("bytes") or image.get("path")
    if isinstance(image, (str, Path)):
        data = Path(image).read_bytes()
    elif isinstance(image, (bytes, bytearray)):
        data = bytes(image)
    elif hasattr(image, "save"):  # PIL image
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="PNG")
        data = buffer.getvalue()
    else:
        raise TypeError(f"image must be a path, bytes or a PIL image, got {type(image).__name__}")
    return "data:image/png;base64," + base64.b64encode(data).decode()


def build_messages(record: dict, style: str = "medix") -> list[dict]:
    """OpenAI-style chat messages for one record (image parts first when it has images)."""
    if style not in PROMPT_STYLES:
        raise ValueError(f"prompt style must be one of {sorted(PROMPT_STYLES)}, got {style!r}")
    if record["images"]:
        content = [{"type": "image_url", "image_url": {"url": _image_data_url(im)}}
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
    params = SamplingParams(temperature=cfg.temperature, max_tokens=cfg.max_new_tokens,
                            seed=cfg.seed)
    budget = cfg.max_model_len - cfg.max_new_tokens

    def generate(batch: list[list[dict]]) -> list[str]:
        texts: list[str | None] = [None] * len(batch)
        text_only = [i for i, m in enumerate(batch) if isinstance(m[-1]["content"], str)]
        if text_only:
            prompts = [TokensPrompt(prompt_token_ids=cut_middle(chat_token_ids(tokenizer, batch[i]),
                                                                budget)) for i in text_only]
            for i, out in zip(text_only, llm.generate(prompts, params, use_tqdm=False)):
                texts[i] = out.outputs[0].text
        with_images = [i for i in range(len(batch)) if texts[i] is None]
        if with_images:
            outs = llm.chat([batch[i] for i in with_images], params, use_tqdm=False)
            for i, out in zip(with_images, outs):
                texts[i] = out.outputs[0].text
        return texts

    return generate


def make_hf_generator(model_dir: Path, cfg: GenerationConfig) -> Callable:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"  # decoder-only batched generation pads on the left
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    budget = cfg.max_model_len - cfg.max_new_tokens

    def generate(batch: list[list[dict]]) -> list[str]:
        if any(not isinstance(m[-1]["content"], str) for m in batch):
            raise ValueError("the hf generator is text only; use --generator vllm or openai "
                             "for benchmarks with images")
        ids = [cut_middle(chat_token_ids(tokenizer, m), budget) for m in batch]
        width = max(len(x) for x in ids)
        pad = tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids])
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])
        sampling = {"do_sample": True, "temperature": cfg.temperature} if cfg.temperature > 0 \
            else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        with torch.no_grad():
            out = model.generate(input_ids=input_ids, attention_mask=mask,
                                 max_new_tokens=cfg.max_new_tokens, pad_token_id=pad, **sampling)
        return [tokenizer.decode(row[width:], skip_special_tokens=True) for row in out]

    return generate


def make_openai_generator(model_name: str, cfg: GenerationConfig) -> Callable:
    from openai import OpenAI

    if not cfg.base_url:
        raise ValueError("--generator openai needs --base-url URL (an OpenAI-compatible /v1)")
    client = OpenAI(base_url=cfg.base_url, api_key=cfg.api_key or "EMPTY", max_retries=3)

    def one(messages):
        reply = client.chat.completions.create(model=model_name, messages=messages,
                                               temperature=cfg.temperature,
                                               max_tokens=cfg.max_new_tokens, seed=cfg.seed)
        return reply.choices[0].message.content or ""

    def generate(batch: list[list[dict]]) -> list[str]:
        with ThreadPoolExecutor(max_workers=cfg.concurrency) as pool:
            return list(pool.map(one, batch))

    return generate


def make_generator(kind: str, model: str | Path, cfg: GenerationConfig) -> Callable:
    """A function mapping a batch of chat-message lists to the generated texts."""
    if kind == "openai":
        return make_openai_generator(str(model), cfg)
    if kind not in GENERATORS:
        raise ValueError(f"generator must be one of {GENERATORS}, got {kind!r}")
    model_dir = resolve_model_dir(model, "--model")
    return (make_vllm_generator if kind == "vllm" else make_hf_generator)(model_dir, cfg)
