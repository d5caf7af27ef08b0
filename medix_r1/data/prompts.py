"""Prompt building shared by training and evaluation: the user text, chat messages, token ids.

The one place that applies a chat template and the one place that shortens a prompt over its
token budget (:func:`cut_middle`: the start, with the instructions, and the end, with the
question, both survive; the middle of a long context goes).
"""
from __future__ import annotations

from types import SimpleNamespace

from medix_r1.data.templates import TEMPLATES, official_filter_messages, project_messages


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
    """The chat messages of one training record under the project template (image parts first).

    ``example`` = (question, answer): when both are set, one demonstration exchange (a user turn
    and an assistant turn in the requested format) goes between the system prompt and the record.
    Small models follow a shown format far more often than a described one."""
    data = SimpleNamespace(system_prompt=system_prompt, example_question=example[0], example_answer=example[1])
    return project_messages(problem_text(record, context_chars), len(record.get("images") or []), data,
                            record.get("id", "?"))


def record_messages(record: dict, data, n_images: int | None = None) -> list[dict]:
    """The chat messages of a record under ``data.prompt_template`` (data/templates.py)."""
    n = len(record.get("images") or []) if n_images is None else n_images
    return TEMPLATES[data.prompt_template](problem_text(record, data.context_chars), n, data, record.get("id", "?"))


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


class OverlongPrompt(ValueError):
    """A prompt over ``data.max_prompt_tokens`` with ``data.overlong=filter``: the record is skipped."""


def fit_prompt(ids: list[int], data, record_id="?") -> list[int]:
    """``ids`` within ``data.max_prompt_tokens``: cut in the middle (``data.overlong=cut``) or, with
    ``filter`` (the official behaviour), an :class:`OverlongPrompt` naming the record."""
    if len(ids) > data.max_prompt_tokens and data.overlong == "filter":
        raise OverlongPrompt(f"record {record_id!r}: the prompt is {len(ids)} tokens, over data.max_prompt_tokens "
                             f"({data.max_prompt_tokens}); filtered (data.overlong=filter)")
    return cut_middle(ids, data.max_prompt_tokens)


def templated_chars(tokenizer, record: dict, data) -> int:
    """The official overlong filter's measure: the length in characters of the chat-templated prompt
    string. The official filter takes ``len(processor.apply_chat_template(messages,
    add_generation_prompt=True))``, and with the transformers versions the official code pins
    (4.54-4.57) a processor's ``apply_chat_template`` returns the string (``tokenize`` defaults to
    False): one image placeholder per image slot, never the image's tokens. Under the official
    template the messages are those the official filter builds (:func:`official_filter_messages`)."""
    messages = official_filter_messages(problem_text(record, data.context_chars)) \
        if data.prompt_template == "official" else record_messages(record, data)
    return len(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))


def check_prompt_chars(tokenizer, record: dict, data) -> None:
    """With ``data.overlong=filter`` and ``data.overlong_measure=chars``: an :class:`OverlongPrompt`
    naming the record when its templated prompt has more characters than ``data.max_prompt_tokens``
    (the official filter compares characters with its token budget, data.max_prompt_length)."""
    if data.overlong != "filter" or data.overlong_measure != "chars":
        return
    n = templated_chars(tokenizer, record, data)
    if n > data.max_prompt_tokens:
        raise OverlongPrompt(f"record {record.get('id', '?')!r}: the templated prompt is {n} characters, over "
                             f"data.max_prompt_tokens ({data.max_prompt_tokens}); filtered (data.overlong=filter, "
                             f"data.overlong_measure=chars: the official filter's measure)")


def prompt_token_ids(tokenizer, record: dict, data) -> list[int]:
    """A text record's prompt ids under the config's data section (template, length filter, token budget)."""
    check_prompt_chars(tokenizer, record, data)
    return fit_prompt(chat_token_ids(tokenizer, record_messages(record, data)), data, record.get("id", "?"))
