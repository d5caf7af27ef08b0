"""MediX-R1's official evaluation judge (``evaluate`` in https://github.com/mbzuai-oryx/MediX-R1/blob/94fd0184b54d5e77abf909aef87aa6ada1310099/eval/utils.py).

- The judge sees the model's text after its last ``</think>`` (else ``</thinking>``), never the
  reasoning.
- Prompt: :data:`BASE_PROMPT` (score 1 / 0) or, for the MIMIC-CXR tasks, :data:`MIMIC_PROMPT`
  (a 0-5 rubric); both end with " /no_think", Qwen3's switch that turns thinking off. Sent as
  the only user turn, no system turn; temperature 0, top_p 1, at most 512 new tokens.
- Three rounds in one conversation: after each reply the reply is appended as an assistant turn
  and the user asks "Please reevaluate and make sure your judgment is correct."
- Each reply is parsed as the official code does: the text after the judge's own closing
  thinking tag, from its first ``{`` to its last ``}``, read as JSON, its ``score``.
- Verdict: the majority of the three (an item is correct when at least two rounds say 1); for
  MIMIC the mean of the three scores divided by 5 (the official score adds the 0-5 means and
  divides by 5 per item).

Where the official code would crash on an unparseable reply (and its driver then starts that item
again), :func:`judge_item` starts the conversation again, up to ``attempts`` times, each attempt
with its own cache keys; an item none of whose attempts parses scores 0 and is flagged
``judge_failed``. Calls go through the judge clients of :mod:`medix_r1.rewards` (``chat``) with
cache keys from :func:`medix_r1.eval.judging.round_cache_key`.
"""
from __future__ import annotations

import json

from medix_r1.eval.judging import round_cache_key

NO_THINK = " /no_think"
REEVALUATE = "Please reevaluate and make sure your judgment is correct."
MAX_TOKENS = 512
ROUNDS = 3

# The official prompt texts: what the judge is given is part of the protocol, so they are kept as is.
BASE_PROMPT = """You are a medical expert.

Your task is to evaluate whether the Predicted Answer correctly answers the Medical Question, based on the Ground Truth (Correct Answer) provided.

Question:
{question}

Correct Answer:
{correct_answer}

Predicted Answer:
{predicted_answer}

Score 1 if the predicted answer matches the correct answer either fully in text or by indicating the correct option label (e.g., "B", "Option B", or a paraphrased version that clearly identifies the correct choice). Score 0 if the predicted answer is incorrect or points to the wrong option.

Respond strictly in the following JSON format:

```json
{{
"score": <score>
}}
```{no_think}"""  # noqa: E501

MIMIC_PROMPT = """You are a medical expert evaluating the clinical accuracy, completeness, and relevance of a generated medical report or summary.

Your task is to compare an AI-generated report or summary to a reference (gold standard) report or summary, based on a clinical instruction or question. Assess the generated output on how well it preserves key clinical information, factual correctness, and clinical reasoning relevant to the task.

Assign a score between 0 and 5 using the following scale:

0 - Completely incorrect: Clinically irrelevant, misleading, or factually wrong. No meaningful alignment with the instruction or reference.

1 - Poor match: Barely relevant or mostly incorrect. Contains significant clinical misinformation or omits nearly all critical details.

2 - Weak match: Some fragments of relevant content are present, but major clinical errors or omissions exist. Clinical utility is low.

3 - Fair match: Contains several relevant points, but includes notable errors, missing findings, or misinterpretations that affect clinical reliability.

4 - Good match: Mostly accurate and clinically sound. Minor issues or missing details, but the overall meaning and purpose are preserved.

5 - Perfect or near-perfect match: Clinically accurate, complete, and faithful to the instruction and reference. No significant omissions or errors.

Respond only in the following example JSON format:

Example JSON format:
```json
{{
"score": <score between 0 and 5>
}}
```

Now, evaluate the following:

### Clinical Instruction or Question::
{question}

### Reference Report or Summary:
{correct_answer}

### AI-Generated Report or Summary:
{predicted_answer}{no_think}"""  # noqa: E501


def is_mimic(task: str) -> bool:
    return "mimic" in task


def after_thinking(text: str) -> str:
    """The text after the last ``</think>``, else after the last ``</thinking>``, stripped; the
    whole text (unstripped) when it has neither."""
    for tag in ("</think>", "</thinking>"):
        if tag in text:
            return text.split(tag)[-1].strip()
    return text


def judge_prompt(task: str, question: str, reference: str, response: str) -> str:
    template = MIMIC_PROMPT if is_mimic(task) else BASE_PROMPT
    return template.format(question=question, correct_answer=reference, predicted_answer=after_thinking(response),
                           no_think=NO_THINK)


def parse_score(reply: str):
    """The ``score`` of a judge reply read the official way (None when that would raise)."""
    body = after_thinking(reply)
    body = body[body.find("{"):body.rfind("}") + 1]
    try:
        score = json.loads(body)["score"]
    except (ValueError, TypeError, KeyError):
        return None
    return score if isinstance(score, (int, float)) and not isinstance(score, bool) else None


def verdict(task: str, scores: list) -> float:
    """MIMIC: mean score / 5 (in [0, 1]); others: 1 when at least two rounds scored 1, else 0."""
    if is_mimic(task):
        return sum(float(s) for s in scores) / len(scores) / 5.0
    return 1.0 if sum(1 for s in scores if s == 1) >= 2 else 0.0


def _text(role: str, text: str) -> dict:
    # the official code sends [{"type": "text", "text": ...}]: a chat template renders it as this string
    return {"role": role, "content": text}


async def judge_item(judge, task: str, question: str, reference: str, response: str, *,
                     rounds: int = ROUNDS, max_tokens: int = MAX_TOKENS, attempts: int = 3) -> dict:
    """The official verdict on one item: ``{"score", "round_scores", "replies", "attempts",
    "judge_failed"}``. ``judge`` has ``async chat(messages, *, max_tokens, cache_key)``."""
    model_id = getattr(judge, "model_id", "judge")
    replies = []
    for attempt in range(attempts):
        messages = [_text("user", judge_prompt(task, question, reference, response))]
        scores = []
        for r in range(rounds):
            key = round_cache_key(f"official:{model_id}", messages, max_tokens, r, attempt)
            reply = await judge.chat([dict(m) for m in messages], max_tokens=max_tokens, cache_key=key)
            text = None if getattr(reply, "failed", False) else getattr(reply, "text", None)
            replies.append({"attempt": attempt, "round": r, "text": text, "error": getattr(reply, "error", None)})
            score = None if text is None else parse_score(text)
            if score is None:
                break
            scores.append(score)
            messages += [_text("assistant", text), _text("user", REEVALUATE)]
        if len(scores) == rounds:
            return {"score": verdict(task, scores), "round_scores": scores, "replies": replies,
                    "attempts": attempt + 1, "judge_failed": False}
    return {"score": 0.0, "round_scores": [], "replies": replies, "attempts": attempts, "judge_failed": True}
