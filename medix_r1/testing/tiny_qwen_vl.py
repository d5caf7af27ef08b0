"""A tiny random Qwen2.5-VL (+ an offline tokenizer) saved like a real checkpoint, for CPU tests.

``build_tiny_qwen2_5_vl(out_dir)`` writes config, safetensors weights, generation config and a
``PreTrainedTokenizerFast`` (byte-level BPE trained on the synthetic data's words, with the Qwen
chat/vision special tokens and the MediX markup) into ``out_dir``; ``from_pretrained(out_dir)``
then loads both as it would a hub checkpoint. Sizes: text hidden 128, 2 heads (head dim 64,
mrope sections 8+12+12 = 32 = head_dim / 2), 2 layers; vision depth 2, hidden 64, 2 heads,
out_hidden_size 128, patch 14, merge 2 - so the project's Qwen2.5-VL preprocessing applies as is.
"""

from __future__ import annotations

import os

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

from medix_r1.testing.synthetic import corpus_lines

# Chat / vision control tokens (special: skipped when decoding with skip_special_tokens=True).
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>"]
# MediX response markup: ordinary added tokens, kept when decoding (the reward parses them).
MEDIX_TAGS = ["<X_RAY>", "<MICROSCOPY>", "<CLINICAL_PHOTOGRAPHY>", "<CT_SCAN>", "<GRAPHICS>",
              "<ANGIOGRAPHY>", "<PET_SCAN>", "<ULTRASOUND>", "<MRI_SCAN>", "<FUNDUS_PHOTOGRAPHY>",
              "<OCT_SCAN>", "<ENDOSCOPY>", "<MAMMOGRAPHY>", "<FLUOROSCOPY>", "<OTHER>", "<SPECT>"]
MARKUP_TOKENS = ["<thinking>", "</thinking>", "<answer>", "</answer>"] + MEDIX_TAGS

# Same message layout as the Qwen2.5-VL / Qwen3-VL templates: content is a string or a list of
# {"type": "image"} / {"type": "text", "text": ...} parts, so build_vl_messages works for both.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tokenizer(extra_lines=(), vocab_size: int = 800):
    """Byte-level BPE trained offline on the synthetic QA text (+ extra_lines), as PreTrainedTokenizerFast."""
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    lines = list(corpus_lines()) + list(extra_lines)
    tok.train_from_iterator(lines, trainer=trainer)
    tok.add_tokens([AddedToken(t, normalized=False) for t in MARKUP_TOKENS])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   unk_token=None, padding_side="left")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_config(tokenizer):
    """Qwen2_5_VLConfig with the tiny sizes and the tokenizer's special-token ids."""
    from transformers import Qwen2_5_VLConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text = {"vocab_size": len(tokenizer), "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
                "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 4096,
                "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [8, 12, 12]},
                "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
                "pad_token_id": ids["<|endoftext|>"]}
    vision = {"depth": 2, "hidden_size": 64, "intermediate_size": 128, "num_heads": 2, "out_hidden_size": 128,
                  "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
                  "fullatt_block_indexes": [1]}
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision,
                            image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                            vision_start_token_id=ids["<|vision_start|>"],
                            vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=False)


def build_tiny_qwen2_5_vl(out_dir, seed: int = 0):
    """Write a tiny random Qwen2.5-VL checkpoint + tokenizer to ``out_dir``; returns out_dir.

    Random weights: the model's outputs are meaningless, but every code path (vision tower,
    mrope positions, generation with images, gradients) runs as with a real checkpoint.
    """
    from transformers import GenerationConfig, Qwen2_5_VLForConditionalGeneration

    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    tokenizer = build_tokenizer()
    config = tiny_config(tokenizer)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).to(torch.float32)
    model.generation_config = GenerationConfig(eos_token_id=config.text_config.eos_token_id,
                                               pad_token_id=config.text_config.pad_token_id,
                                               bos_token_id=config.text_config.bos_token_id)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def load_tiny_qwen2_5_vl(model_dir):
    """(model, tokenizer) from a folder written by build_tiny_qwen2_5_vl (plain from_pretrained)."""
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return model, tokenizer
