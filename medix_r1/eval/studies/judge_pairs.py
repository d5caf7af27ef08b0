"""Does the reward judge tell right from wrong? Labelled answer/reference pairs from PubMedQA.

    python -m medix_r1.eval.studies judge-pairs [--records 60] [--seed 0] [--threshold X]
        [--decision-gate on|off] [--calibrate] [--exclude-from MARGINS.csv] [--margins MARGINS.csv]
        [--attacks] [--restatement-gate on|off] [--fill-missing] [--out-dir benchmarks/results]
        [--name judge_pairs_cpu]

(``python -m benchmarks judge-pairs ...`` runs the same.)

Pairs (built by :func:`build_pairs` from the bundled ``medix_r1/data/pubmedqa/train.jsonl``; the
reference is what the reward gives the judge: the solution without its modality tag, e.g.
``"Yes. <conclusion>"``). Per record, four answers:

- ``own`` (right): the record's decision and conclusion, what a perfect policy would write;
- ``paraphrase`` (right): the decision said another way and the conclusion reworded (fixed
  word substitutions, sentences reordered);
- ``other`` (wrong): another record's decision and conclusion (random, seeded);
- ``flipped`` (wrong): the record's own conclusion under the opposite decision (yes <-> no,
  maybe -> yes or no).

With ``--attacks``, two more wrong answers per record, the cheap attacks of a policy that learns
what the gates and a small judge cannot see (issue 30): ``negated``, the record's decision and
conclusion with one negation added or removed (:func:`negate`), and ``shuffled``, its decision and
its conclusion's words in a random order. They are held out from everything fitted here: the
accuracy, the YES rates on right and wrong answers and the fitted thresholds are over the four
kinds above; the attacks have their own YES rates. ``--restatement-gate`` (default: on with the
decision gate, as in the reward) applies :func:`medix_r1.rewards.decision.restatement_mismatch`.

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
without loading the judge model (with ``--fill-missing``, the model runs on the pairs the file
has no margin for, e.g. the attacks added to an earlier run's pairs). ``--min-similarity`` (default: the CPU recipe's
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

from medix_r1.utils.cli import command_name

from . import RESULTS

DATA = Path(__file__).resolve().parents[2] / "data" / "pubmedqa" / "train.jsonl"  # medix_r1/data/pubmedqa
KINDS = {"own": True, "paraphrase": True, "other": False, "flipped": False}
ATTACKS = {"negated": False, "shuffled": False}  # wrong, held out from the accuracy and any fitted threshold
AUXILIARIES = ("is", "are", "was", "were", "may", "might", "can", "could", "should", "would", "will", "does",
               "do", "did", "has", "have", "had")
DECISION = {"yes": "Yes", "no": "No", "maybe": "Maybe"}
# how a paraphrase states the decision (the conclusion follows)
SAY_DECISION = {"yes": "The answer is yes:", "no": "The answer is no:", "maybe": "It is not certain; maybe:"}
# word-level rewording for paraphrases: the meaning stays, the words change
REWORD = (("suggest", "indicate"), ("results", "findings"), ("showed", "demonstrated"), ("shows", "demonstrates"),
          ("significantly", "markedly"), ("may", "might"), ("associated with", "linked to"),
          ("increased", "raised"), ("decreased", "reduced"), ("patients", "subjects"), ("However,", "Still,"),
          ("our data", "the data"), ("This study", "The present study"), ("appears", "seems"))
COLUMNS = ["setting", "split", "threshold", "pairs", "accuracy", "yes_rate_wrong", "yes_rate_right",
           *[f"yes_rate_{k}" for k in (*KINDS, *ATTACKS)], "seconds", "load_avg_1m"]


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


def negate(conclusion: str) -> str:
    """The conclusion with one negation toggled: its first "not"/"never"/"no"/"n't" removed, else "not"
    after its first auxiliary verb, else "It is not true that" before it."""
    words = conclusion.split(" ")
    for i, w in enumerate(words):
        bare = w.lower().strip(",.;:")
        if bare in ("not", "never", "no"):
            return " ".join(words[:i] + words[i + 1:])
        if bare.endswith("n't"):
            words[i] = w.replace("n't", "").replace("ca", "can", 1) if bare == "can't" else w.replace("n't", "")
            return " ".join(words)
    for i, w in enumerate(words):
        if w.lower() in AUXILIARIES:
            return " ".join(words[:i + 1] + ["not"] + words[i + 1:])
    return f"It is not true that {conclusion[:1].lower()}{conclusion[1:]}"


def build_pairs(records: list[dict], n_records: int, seed: int = 0, exclude=(), attacks: bool = False) -> list[dict]:
    """4 * n_records pairs (half right, half wrong) from ``n_records`` records drawn with ``seed``,
    none of them a record whose id is in ``exclude``; with ``attacks`` also a ``negated`` and a
    ``shuffled`` answer per record (drawn after the others: the first four pairs stay the same)."""
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
    if attacks:  # a second generator: the pairs above do not depend on whether attacks are asked for
        arng = random.Random(f"attacks-{seed}")
        for i, rec in enumerate(chosen):
            conclusion = rec["long_answer"].strip()
            words = conclusion.split()
            arng.shuffle(words)
            answers = {"negated": f"{DECISION[rec['decision']]}. {negate(conclusion)}",
                       "shuffled": f"{DECISION[rec['decision']]}. {' '.join(words)}"}
            for kind, answer in answers.items():
                pairs.append({"id": rec["id"], "half": i % 2, "kind": kind, "label": False, "question": rec["question"],
                              "reference": parse_solution(rec["solution"])[1], "answer": answer})
    return pairs


def summarize(pairs: list[dict], verdicts: list[bool]) -> dict:
    """Accuracy and YES rates over the four base kinds (``pairs`` counts those); each attack kind's YES
    rate apart (None without such pairs)."""
    base = [(p, v) for p, v in zip(pairs, verdicts) if p["kind"] in KINDS]
    right = [v for p, v in base if p["label"]]
    wrong = [v for p, v in base if not p["label"]]
    out = {"pairs": len(base),
           "accuracy": sum(v == p["label"] for p, v in base) / max(1, len(base)),
           "yes_rate_wrong": sum(wrong) / max(1, len(wrong)), "yes_rate_right": sum(right) / max(1, len(right))}
    for kind in (*KINDS, *ATTACKS):
        got = [v for p, v in zip(pairs, verdicts) if p["kind"] == kind]
        out[f"yes_rate_{kind}"] = sum(got) / len(got) if got else (0.0 if kind in KINDS else None)
    return out


def fit_threshold(pairs: list[dict], margins: list[float]) -> float:
    """The threshold with the best accuracy on these pairs (midpoint between neighbouring margins)."""
    values = sorted({m for m in margins if math.isfinite(m)})  # gated pairs (-inf) are NO at any threshold
    cuts = [values[0] - 1.0] + [(a + b) / 2 for a, b in zip(values, values[1:])] + [values[-1] + 1.0]
    return max(cuts, key=lambda t: (sum((m > t) == p["label"] for p, m in zip(pairs, margins)), -abs(t)))


def gates(pairs: list[dict], decision_gate: bool, min_similarity: float, restatement: bool = False) -> list[bool]:
    """True per pair that a gate answers NO without the model: the decision gate (and its restatement
    checks when ``restatement``), then the topic gate (embedding cosine below ``min_similarity``, 0 = off;
    see medix_r1.rewards.decision)."""
    from medix_r1.rewards.decision import decision_mismatch, off_topic, restatement_mismatch
    gated = [(decision_gate and decision_mismatch(p["answer"], p["reference"]))
             or (restatement and restatement_mismatch(p["answer"], p["reference"])) for p in pairs]
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


def read_margins(path: Path, pairs: list[dict], fill_missing: bool = False) -> list[float | None]:
    """Margins saved by an earlier run of the same pairs (the rows must match id and kind, in order);
    with ``fill_missing`` any of these pairs the file has (None where it has no margin: to compute)."""
    with open(path) as fh:
        rows = list(csv.DictReader(fh))
    if not fill_missing:
        if [(r["id"], r["kind"]) for r in rows] != [(p["id"], p["kind"]) for p in pairs]:
            raise ValueError(f"--margins {path}: its pairs differ from these (other --records or --seed?)")
        return [float(r["margin"]) for r in rows]
    saved = {(r["id"], r["kind"]): float(r["margin"]) for r in rows}
    return [saved.get((p["id"], p["kind"])) for p in pairs]


def evaluate(pairs, margins, threshold, calibrate: bool, setting: str, seconds: float, load: float) -> list[dict]:
    verdicts = [m > threshold for m in margins]
    rows = [{"setting": setting, "split": "all", "threshold": threshold, **summarize(pairs, verdicts)}]
    if calibrate:
        for fit_half in (0, 1):  # fitted on the base kinds only: the attacks stay held out
            fit = [(p, m) for p, m in zip(pairs, margins) if p["half"] == fit_half and p["kind"] in KINDS]
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
                                                                                  "load_avg_1m") else
                            "" if r[k] is None else r[k]) for k in COLUMNS})
    kinds = [*KINDS, *(k for k in ATTACKS if any(r[f"yes_rate_{k}"] is not None for r in rows))]
    pct = ("accuracy", "yes_rate_wrong", "yes_rate_right", *[f"yes_rate_{k}" for k in kinds])
    lines = [f"# Judge on labelled PubMedQA pairs ({name})", "", f"Command: `{command}`", "", f"Machine: {machine}", "",
             "| setting | split | threshold | pairs | accuracy | YES on wrong | YES on right | "
             + " | ".join(f"YES {k}" for k in kinds) + " |",
             "|---|---|---|---|---|---|---|" + "---|" * len(kinds)]
    for r in rows:
        lines.append(f"| {r['setting']} | {r['split']} | {r['threshold']:g} | {r['pairs']} | "
                     + " | ".join("–" if r[k] is None else f"{100 * r[k]:.1f}%" for k in pct) + " |")
    lines += ["", *notes, ""]
    (out_dir / f"{name}.md").write_text("\n".join(lines))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=command_name("medix_r1.eval.studies") + " judge-pairs", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=60, help="PubMedQA records used (4 pairs each)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threshold", type=float, default=None,
                   help="YES when log P(YES) - log P(NO) is above this (default: the CPU recipe's judge_threshold)")
    p.add_argument("--decision-gate", choices=("on", "off"), default=None,
                   help="NO without the model when the decisions differ "
                        "(default: the CPU recipe's judge_decision_gate)")
    p.add_argument("--restatement-gate", choices=("on", "off"), default=None,
                   help="NO without the model for the reference's words negated or shuffled (default: with the "
                        "decision gate, as in the reward; medix_r1.rewards.decision.restatement_mismatch)")
    p.add_argument("--min-similarity", type=float, default=None,
                   help="topic gate: NO without the model when the embedding cosine of answer and reference is "
                        "below this; 0 = off (default: the CPU recipe's reward.judge_min_similarity)")
    p.add_argument("--attacks", action="store_true",
                   help="also a negated and a shuffled answer per record (wrong; held out from any fit)")
    p.add_argument("--calibrate", action="store_true", help="also fit a threshold per half, report on the other")
    p.add_argument("--exclude-from", default=None,
                   help="a margins CSV of an earlier run whose records are left out (a held-out set for a "
                        "threshold fitted on that run)")
    p.add_argument("--margins", default=None, help="reuse the margins CSV of an earlier run (no model is loaded)")
    p.add_argument("--fill-missing", action="store_true",
                   help="with --margins: run the model on the pairs the file has no margin for, and save them all")
    p.add_argument("--judge-model", default=None, help="local judge model folder (default: bundled SmolLM2)")
    p.add_argument("--out-dir", default=str(RESULTS))
    p.add_argument("--name", default="judge_pairs_cpu")
    return p


def margins_for(args, pairs, gated, threshold, out_dir: Path) -> tuple[list[float], str, int]:
    """(margin per pair, -inf where gated; the judge's name; pairs the model ran on) from --margins,
    the model, or both (--fill-missing)."""
    model_id, ran = "local:SmolLM2-135M-Instruct", 0
    saved = read_margins(Path(args.margins), pairs, args.fill_missing) if args.margins else [None] * len(pairs)
    # the gates need no judge model: they apply to the margins of an ungated run as well
    if any(m is not None and not math.isfinite(m) and not g for m, g in zip(saved, gated)):
        raise ValueError(f"--margins {args.margins} comes from a run with other gates: it has no margin for "
                         "some pairs these gates leave to the model")
    todo = [i for i, (m, g) in enumerate(zip(saved, gated)) if m is None and not g]
    if todo:
        from medix_r1.rewards import LocalJudge
        judge = LocalJudge(args.judge_model, threshold=threshold)
        got = judge_margins(judge, [pairs[i] for i in todo], [False] * len(todo))
        for i, m in zip(todo, got):
            saved[i] = m
        model_id, ran = judge.model_id.split("@")[0], len(todo)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_margins(out_dir / f"{args.name}-margins.csv", pairs,
                      [-math.inf if m is None else m for m in saved])
    return [-math.inf if g else m for m, g in zip(saved, gated)], model_id, ran


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    exclude = []
    if args.exclude_from:
        with open(args.exclude_from) as fh:
            exclude = [row["id"] for row in csv.DictReader(fh)]
    # bad --records: before any model loads
    pairs = build_pairs(load_records(), args.records, args.seed, exclude, attacks=args.attacks)
    import os
    import platform

    from medix_r1.config import load_config
    default = load_config().reward  # the embedded CPU recipe's judge (what `python -m medix_r1.train` runs)
    threshold = default.judge_threshold if args.threshold is None else args.threshold
    gate = default.judge_decision_gate if args.decision_gate is None else args.decision_gate == "on"
    restate = gate if args.restatement_gate is None else args.restatement_gate == "on"
    min_sim = default.judge_min_similarity if args.min_similarity is None else args.min_similarity
    if not 0.0 <= min_sim <= 1.0:
        raise ValueError(f"--min-similarity must be in [0, 1], got {min_sim}")
    load, t0 = os.getloadavg()[0], time.perf_counter()
    out_dir = Path(args.out_dir)
    gated = gates(pairs, gate, min_sim, restate)
    margins, model_id, ran = margins_for(args, pairs, gated, threshold, out_dir)
    seconds = time.perf_counter() - t0
    setting = f"{model_id} strict prompt" + (", decision gate" if gate else "") + \
        (", restatement checks" if restate else "") + (f", topic gate {min_sim:g}" if min_sim > 0 else "")
    rows = evaluate(pairs, margins, threshold, args.calibrate, setting, seconds, load)
    command = "python -m benchmarks judge-pairs " + " ".join(argv if argv is not None else sys.argv[1:])
    where = f"{platform.machine()} {os.cpu_count()} cores, load average {load:.2f} at the start, {seconds:.0f} s"
    machine = (f"margins reused from {args.margins} (no judge model run"
               + ("; the topic gate's embedding model ran)" if min_sim > 0 else ")") if args.margins and not ran else
               f"{where}" + (f"; the model ran on the {ran} pairs {args.margins} had no margin for" if args.margins
                             else ""))
    notes = [f"{sum(p['kind'] in KINDS for p in pairs)} pairs from {args.records} records (seed {args.seed}"
             + (f", none of the {len(set(exclude))} records of {args.exclude_from}" if exclude else "")
             + "); right: own, paraphrase; wrong: other, flipped. Thresholds fitted on one half of the records "
             "are reported on the other half."
             + (f" Attacks (wrong, held out from the accuracy and every fit): {len(ATTACKS) * args.records} pairs, "
                "negated and shuffled." if args.attacks else "")]
    write(rows, out_dir, args.name, command.strip(), machine, notes)
    for r in rows:
        print(json.dumps({k: r[k] for k in COLUMNS}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
