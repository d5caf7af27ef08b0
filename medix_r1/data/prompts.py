"""Prompt building shared by training and evaluation: the user text, chat messages, token ids.

The one place that applies a chat template and the one place that shortens a prompt over its
token budget (:func:`cut_middle`: the start, with the instructions, and the end, with the
question, both survive; the middle of a long context goes).
"""
from __future__ import annotations


def problem_text(record: dict, context_chars: int) -> str:
    """The user text: the question with its context cut to ``context_chars`` characters when the
    record carries them separately (PubMedQA), else the record's problem."""
    contexts, question = record.get("contexts"), record.get("question")
    if context_chars > 0 and question and contexts:
        ctx = " ".join(contexts) if isinstance(contexts, (list, tuple)) else str(contexts)
        if len(ctx) > context_chars:
            ctx = ctx[:context_chars].rsplit(" ", 1)[0] + " ..."
        return f"Context: {ctx}\n\nQuestion: {question}"
    return record["problem"]


def prompt_messages(record: dict, system_prompt: str, context_chars: int,
                    example: tuple[str, str] = ("", "")) -> list[dict]:
    """The chat messages of one training record (image parts first).

    ``example`` = (question, answer): when both are set, one demonstration exchange (a user turn
    and an assistant turn in the requested format) goes between the system prompt and the record.
    Small models follow a shown format far more often than a described one."""
    text = problem_text(record, context_chars)
    if record.get("images"):
        content = [{"type": "image"} for _ in record["images"]] + [{"type": "text", "text": text}]
    else:
        content = text
    demo = []
    if example[0] and example[1]:
        demo = [{"role": "user", "content": example[0]}, {"role": "assistant", "content": example[1]}]
    return [{"role": "system", "content": system_prompt}, *demo, {"role": "user", "content": content}]


def chat_token_ids(tokenizer, messages: list[dict]) -> list[int]:
    """The chat template applied to ``messages`` with the assistant turn opened, as token ids."""
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if hasattr(ids, "keys"):  # some tokenizers return a BatchEncoding
        ids = ids["input_ids"]
    return list(ids)


def cut_middle(token_ids: list[int], budget: int) -> list[int]:
    """``token_ids`` when it fits in ``budget``, else its first ``budget // 2`` and last
    ``budget - budget // 2`` tokens."""
    if len(token_ids) <= budget:
        return list(token_ids)
    head = budget // 2
    return list(token_ids[:head]) + list(token_ids[len(token_ids) - (budget - head):])


def prompt_token_ids(tokenizer, record: dict, data) -> list[int]:
    """A training record's prompt ids under the config's data section, cut to ``data.max_prompt_tokens``."""
    messages = prompt_messages(record, data.system_prompt, data.context_chars,
                               (data.example_question, data.example_answer))
    return cut_middle(chat_token_ids(tokenizer, messages), data.max_prompt_tokens)
