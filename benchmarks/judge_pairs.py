"""Does the reward judge tell right from wrong? Labelled answer/reference pairs from PubMedQA.

    python -m benchmarks judge-pairs [--records 60] [--seed 0] [--threshold X] [--decision-gate on|off]
                                     [--calibrate] [--exclude-from MARGINS.csv] [--margins MARGINS.csv]
                                     [--out-dir benchmarks/results] [--name judge_pairs_cpu]

Pairs (built by :func:`build_pairs` from the bundled ``medix_r1/data/pubmedqa/train.jsonl``; the
reference is what the reward gives the judge: the solution without its modality tag, e.g.
``"Yes. <conclusion>"``). Per record, four answers:

- ``own`` (right): the record's decision and conclusion, what a perfect policy would write;
- ``paraphrase`` (right): the decision said another way and the conclusion reworded (fixed
  word substitutions, sentences reordered);
- ``other`` (wrong): another record's decision and conclusion (random, seeded);
- ``flipped`` (wrong): the record's own conclusion under the opposite decision (yes <-> no,
  maybe -> yes or no).

The judge is the trainer's default: :class:`medix_r1.rewards.LocalJudge` (bundled
SmolLM2-135M-Instruct, fp32, CPU) with the strict prompt. Its score per pair is the margin
log P(YES) - log P(NO) of the first reply token; the verdict is YES when the margin is above
the threshold (``--threshold``, default: the CPU recipe's ``judge_threshold``). With the decision
gate (``--decision-gate``, default: the CPU recipe's ``judge_decision_gate``; see
:mod:`medix_r1.rewards.decision`) a pair whose answer misses the reference's decision is NO
without a model call (margin -inf). ``--calibrate`` also fits a threshold on one half of the
records (the one with the best accuracy there) and reports it on the other half, both ways.
``--exclude-from`` leaves out the records of an earlier run (a held-out set for a threshold
fitted there); ``--margins`` re-scores the saved margins of an earlier run of the same pairs
without loading the judge model. ``--min-similarity`` (default: the CPU recipe's
``reward.judge_min_similarity``) adds the topic gate: NO without the model when the sentence
embeddings (bundled MiniLM) of answer and reference, decisions removed, are further apart.

Writes ``<name>.csv`` (one row per setting and split: accuracy, YES rate on wrong and on right
answers, YES rate per kind), ``<name>.md`` (the command, the machine, the table) and, after a
model run, ``<name>-margins.csv`` (id, half, kind, label, margin per pair).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import random
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "medix_r1" / "data" / "pubmedqa" / "train.jsonl"
KINDS = {"own": True, "paraphrase": True, "other": False, "flipped": False}
DECISION = {"yes": "Yes", "no": "No", "maybe": "Maybe"}
# how a paraphrase states the decision (the conclusion follows)
SAY_DECISION = {"yes": "The answer is yes:", "no": "The answer is no:", "maybe": "It is not certain; maybe:"}
# word-level rewording for paraphrases: the meaning stays, the words change
REWORD = (("suggest", "indicate"), ("results", "findings"), ("showed", "demonstrated"), ("shows", "demonstrates"),
          ("significantly", "markedly"), ("may", "might"), ("associated with", "linked to"),
          ("increased", "raised"), ("decreased", "reduced"), ("patients", "subjects"), ("However,", "Still,"),
          ("our data", "the data"), ("This study", "The present study"), ("appears", "seems"))
COLUMNS = ["setting", "split", "threshold", "pairs", "accuracy", "yes_rate_wrong", "yes_rate_right",
           *[f"yes_rate_{k}" for k in KINDS], "seconds", "load_avg_1m"]


def load_records(path=DATA) -> list[dict]:
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def flip(decision: str, rng: random.Random) -> str:
    return {"yes": "no", "no": "yes"}.get(decision) or rng.choice(("yes", "no"))


def paraphrase(decision: str, conclusion: str) -> str:
    text = conclusion
    for old, new in REWORD:
        text = re.sub(rf"\b{re.escape(old)}\b", new, text)
    sentences = re.split(r"(?<=[.!?])\s+", text.strip())
    if len(sentences) > 1:  # the last sentence (usually the main claim) first
        sentences = [sentences[-1], *sentences[:-1]]
    return f"{SAY_DECISION[decision]} {' '.join(sentences)}"


def build_pairs(records: list[dict], n_records: int, seed: int = 0, exclude=()) -> list[dict]:
    """4 * n_records pairs (half right, half wrong) from ``n_records`` records drawn with ``seed``,
    none of them a record whose id is in ``exclude``."""
    records = [r for r in records if r["id"] not in set(exclude)]
    if n_records < 2 or n_records > len(records):
        raise ValueError(f"records must be between 2 and {len(records)}, got {n_records}")
    from medix_r1.rewards import parse_solution
    rng = random.Random(seed)
    chosen = rng.sample(records, n_records)
    pairs = []
    for i, rec in enumerate(chosen):
        decision, conclusion = rec["decision"], rec["long_answer"].strip()
        reference = parse_solution(rec["solution"])[1]  # what the reward hands the judge
        other = chosen[(i + rng.randrange(1, n_records)) % n_records]
        answers = {"own": f"{DECISION[decision]}. {conclusion}",
                   "paraphrase": paraphrase(decision, conclusion),
                   "other": f"{DECISION[other['decision']]}. {other['long_answer'].strip()}",
                   "flipped": f"{DECISION[flip(decision, rng)]}. {conclusion}"}
        for kind, answer in answers.items():
            pairs.append({"id": rec["id"], "half": i % 2, "kind": kind, "label": KINDS[kind],
                          "question": rec["question"], "reference": reference, "answer": answer})
    return pairs


def summarize(pairs: list[dict], verdicts: list[bool]) -> dict:
    right = [v for p, v in zip(pairs, verdicts) if p["label"]]
    wrong = [v for p, v in zip(pairs, verdicts) if not p["label"]]
    out = {"pairs": len(pairs),
           "accuracy": sum(v == p["label"] for p, v in zip(pairs, verdicts)) / len(pairs),
           "yes_rate_wrong": sum(wrong) / max(1, len(wrong)), "yes_rate_right": sum(right) / max(1, len(right))}
    for kind in KINDS:
        got = [v for p, v in zip(pairs, verdicts) if p["kind"] == kind]
        out[f"yes_rate_{kind}"] = sum(got) / max(1, len(got))
    return out


def fit_threshold(pairs: list[dict], margins: list[float]) -> float:
    """The threshold with the best accuracy on these pairs (midpoint between neighbouring margins)."""
    values = sorted({m for m in margins if math.isfinite(m)})  # gated pairs (-inf) are NO at any threshold
    cuts = [values[0] - 1.0] + [(a + b) / 2 for a, b in zip(values, values[1:])] + [values[-1] + 1.0]
    return max(cuts, key=lambda t: (sum((m > t) == p["label"] for p, m in zip(pairs, margins)), -abs(t)))


def gates(pairs: list[dict], decision_gate: bool, min_similarity: float) -> list[bool]:
    """True per pair that a gate answers NO without the model: the decision gate, then the topic
    gate (embedding cosine below ``min_similarity``, 0 = off; see medix_r1.rewards.decision)."""
    from medix_r1.rewards.decision import decision_mismatch, off_topic
    gated = [decision_gate and decision_mismatch(p["answer"], p["reference"]) for p in pairs]
    if min_similarity > 0:
        from medix_r1.rewards.embedding import Embedder
        ask = [i for i, g in enumerate(gated) if not g]
        flags = off_topic(Embedder().encode, [pairs[i]["answer"] for i in ask], [pairs[i]["reference"] for i in ask],
                          min_similarity)
        for i, f in zip(ask, flags):
            gated[i] = f
    return gated


def judge_margins(judge, pairs: list[dict], gated: list[bool]) -> list[float]:
    """The judge's margin per pair, -inf where a gate says NO (the model is not asked);
    prompts go in length order (less padding per batch)."""
    from medix_r1.rewards import judge_messages
    margins = [-math.inf if g else 0.0 for g in gated]
    order = sorted((i for i, g in enumerate(gated) if not g),
                   key=lambda i: len(pairs[i]["answer"]) + len(pairs[i]["reference"]))
    got = judge.yes_no_margins([judge_messages(pairs[i]["answer"], pairs[i]["reference"], judge.parity)
                                for i in order])
    for i, m in zip(order, got):
        margins[i] = m
    return margins


def write_margins(path: Path, pairs: list[dict], margins: list[float]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "half", "kind", "label", "margin"])
        for p, m in zip(pairs, margins):
            w.writerow([p["id"], p["half"], p["kind"], int(p["label"]), f"{m:.4f}"])


def read_margins(path: Path, pairs: list[dict]) -> list[float]:
    """Margins saved by an earlier run of the same pairs (the rows must match id and kind, in order)."""
    with open(path) as fh:
        rows = list(csv.DictReader(fh))
    if [(r["id"], r["kind"]) for r in rows] != [(p["id"], p["kind"]) for p in pairs]:
        raise ValueError(f"--margins {path}: its pairs differ from these (other --records or --seed?)")
    return [float(r["margin"]) for r in rows]


def evaluate(pairs, margins, threshold, calibrate: bool, setting: str, seconds: float, load: float) -> list[dict]:
    verdicts = [m > threshold for m in margins]
    rows = [{"setting": setting, "split": "all", "threshold": threshold, **summarize(pairs, verdicts)}]
    if calibrate:
        for fit_half in (0, 1):
            fit = [(p, m) for p, m in zip(pairs, margins) if p["half"] == fit_half]
            held = [(p, m) for p, m in zip(pairs, margins) if p["half"] != fit_half]
            t = fit_threshold([p for p, _ in fit], [m for _, m in fit])
            rows.append({"setting": f"{setting}, threshold fitted on half {fit_half}", "split": f"half {1 - fit_half}",
                         "threshold": round(t, 4),
                         **summarize([p for p, _ in held], [m > t for _, m in held])})
    for r in rows:
        r.update(seconds=round(seconds, 1), load_avg_1m=round(load, 2))
    return rows


def write(rows: list[dict], out_dir: Path, name: str, command: str, machine: str, notes: list[str]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / f"{name}.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{r[k]:.4f}" if isinstance(r[k], float) and k not in ("threshold", "seconds",
                                                                                  "load_avg_1m") else r[k])
                        for k in COLUMNS})
    pct = ("accuracy", "yes_rate_wrong", "yes_rate_right", *[f"yes_rate_{k}" for k in KINDS])
    lines = [f"# Judge on labelled PubMedQA pairs ({name})", "", f"Command: `{command}`", "", f"Machine: {machine}", "",
             "| setting | split | threshold | pairs | accuracy | YES on wrong | YES on right | "
             + " | ".join(f"YES {k}" for k in KINDS) + " |",
             "|---|---|---|---|---|---|---|" + "---|" * len(KINDS)]
    for r in rows:
        lines.append(f"| {r['setting']} | {r['split']} | {r['threshold']:g} | {r['pairs']} | "
                     + " | ".join(f"{100 * r[k]:.1f}%" for k in pct) + " |")
    lines += ["", *notes, ""]
    (out_dir / f"{name}.md").write_text("\n".join(lines))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks judge-pairs", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=60, help="PubMedQA records used (4 pairs each)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threshold", type=float, default=None,
                   help="YES when log P(YES) - log P(NO) is above this (default: the CPU recipe's judge_threshold)")
    p.add_argument("--decision-gate", choices=("on", "off"), default=None,
                   help="NO without the model when the decisions differ "
                        "(default: the CPU recipe's judge_decision_gate)")
    p.add_argument("--min-similarity", type=float, default=None,
                   help="topic gate: NO without the model when the embedding cosine of answer and reference is "
                        "below this; 0 = off (default: the CPU recipe's reward.judge_min_similarity)")
    p.add_argument("--calibrate", action="store_true", help="also fit a threshold per half, report on the other")
    p.add_argument("--exclude-from", default=None,
                   help="a margins CSV of an earlier run whose records are left out (a held-out set for a "
                        "threshold fitted on that run)")
    p.add_argument("--margins", default=None, help="reuse the margins CSV of an earlier run (no model is loaded)")
    p.add_argument("--judge-model", default=None, help="local judge model folder (default: bundled SmolLM2)")
    p.add_argument("--out-dir", default=str(Path(__file__).resolve().parent / "results"))
    p.add_argument("--name", default="judge_pairs_cpu")
    args = p.parse_args(argv)
    exclude = []
    if args.exclude_from:
        with open(args.exclude_from) as fh:
            exclude = [row["id"] for row in csv.DictReader(fh)]
    pairs = build_pairs(load_records(), args.records, args.seed, exclude)  # bad --records: before any model loads
    import os
    import platform

    from medix_r1.config import load_config
    default = load_config().reward  # the embedded CPU recipe's judge (what `python -m medix_r1.train` runs)
    threshold = default.judge_threshold if args.threshold is None else args.threshold
    gate = default.judge_decision_gate if args.decision_gate is None else args.decision_gate == "on"
    min_sim = default.judge_min_similarity if args.min_similarity is None else args.min_similarity
    if not 0.0 <= min_sim <= 1.0:
        raise ValueError(f"--min-similarity must be in [0, 1], got {min_sim}")
    load, t0 = os.getloadavg()[0], time.perf_counter()
    out_dir = Path(args.out_dir)
    gated = gates(pairs, gate, min_sim)
    if args.margins:
        margins, model_id = read_margins(Path(args.margins), pairs), "local:SmolLM2-135M-Instruct"
        # the gates need no judge model: they apply to the margins of an ungated run as well
        if any(not math.isfinite(m) and not g for m, g in zip(margins, gated)):
            raise ValueError(f"--margins {args.margins} comes from a run with other gates: it has no margin for "
                             "some pairs these gates leave to the model")
        margins = [-math.inf if g else m for m, g in zip(margins, gated)]
    else:
        from medix_r1.rewards import LocalJudge
        judge = LocalJudge(args.judge_model, threshold=threshold)
        margins, model_id = judge_margins(judge, pairs, gated), judge.model_id.split("@")[0]
        out_dir.mkdir(parents=True, exist_ok=True)
        write_margins(out_dir / f"{args.name}-margins.csv", pairs, margins)
    seconds = time.perf_counter() - t0
    setting = f"{model_id} strict prompt" + (", decision gate" if gate else "") + \
        (f", topic gate {min_sim:g}" if min_sim > 0 else "")
    rows = evaluate(pairs, margins, threshold, args.calibrate, setting, seconds, load)
    command = "python -m benchmarks judge-pairs " + " ".join(argv if argv is not None else sys.argv[1:])
    machine = (f"margins reused from {args.margins} (no judge model run"
               + ("; the topic gate's embedding model ran)" if min_sim > 0 else ")") if args.margins else
               f"{platform.machine()} {os.cpu_count()} cores, load average {load:.2f} at the start, {seconds:.0f} s")
    notes = [f"{len(pairs)} pairs from {args.records} records (seed {args.seed}"
             + (f", none of the {len(set(exclude))} records of {args.exclude_from}" if exclude else "")
             + "); right: own, paraphrase; wrong: other, flipped. Thresholds fitted on one half of the records "
             "are reported on the other half."]
    write(rows, out_dir, args.name, command.strip(), machine, notes)
    for r in rows:
        print(json.dumps({k: r[k] for k in COLUMNS}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
