"""``python -m medix_r1.train [--recipe NAME|PATH] [--set key=value ...]``: the trainer's command line.

With no arguments it runs the embedded CPU recipe (``recipes/cpu_smollm2.yaml``). Every config
field can be set with ``--set section.field=value``; ``--help`` lists them all with their meaning.
"""
from __future__ import annotations

import argparse
import logging
import sys

from medix_r1.checkpoint import CheckpointError
from medix_r1.config import DEFAULT_RECIPE, describe_fields, load_config
from medix_r1.data.records import DataError
from medix_r1.parallel import collectives as dist
from medix_r1.rollout import ENGINES, RolloutOutOfMemory, RolloutServerError
from medix_r1.train.loop import TrainingStopped, train
from medix_r1.train.output_dir import OutputDirError
from medix_r1.train.trackers import check_report_to
from medix_r1.utils.cli import command_name, wrap_entries


def fields_help(recipe: str, overrides: list[str]) -> str:
    """The config fields with the values this command line would run: the recipe's, with its --set
    overrides (the built-in default named where it differs); the built-in defaults if they do not load."""
    try:
        cfg, source = load_config(recipe, overrides), f"recipe {recipe}" + (" with the --set overrides" if overrides
                                                                            else "")
    except (ValueError, TypeError) as e:
        cfg, source = None, f"the built-in defaults (recipe {recipe} does not load: {e})"
    return (f"config fields, with the values of {source} (set with --set section.field=value):\n"
            + wrap_entries(describe_fields(cfg)))


def build_parser(recipe: str = DEFAULT_RECIPE, overrides: list[str] = ()) -> argparse.ArgumentParser:
    epilog = fields_help(recipe, list(overrides))
    p = argparse.ArgumentParser(prog=command_name("medix_r1.train"),
                                description="Train a (vision-)language model with GRPO / DAPO / GSPO on MediX-R1 "
                                            "rewards.",
                                epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default=DEFAULT_RECIPE,
                   help="recipe NAME in medix_r1/recipes/ (cpu_smollm2, grpo, dapo, gspo, the official medix_r1_*: "
                        "docs/reproducing.md) or a YAML path "
                        f"(default {DEFAULT_RECIPE})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, dotted (repeatable), e.g. --set loss.beta=0.01")
    p.add_argument("--max-steps", type=int, help="= --set train.max_steps=N")
    p.add_argument("--output-dir", help="= --set train.output_dir=DIR")
    p.add_argument("--rollout", choices=tuple(ENGINES),
                   help="= --set rollout.engine=... (server: rollout.server_url, see docs/rollout_server.md)")
    p.add_argument("--resume", action="store_true", help="continue from the latest complete checkpoint in the "
                                                         "output dir (a larger --max-steps extends the run)")
    p.add_argument("--overwrite", action="store_true",
                   help="start again in a used output dir: first delete the previous run's own files there "
                        "(metrics.jsonl, tensorboard/, rewards.png, step_*/), nothing else")
    p.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    return p


def main(argv=None) -> int:
    pre = argparse.ArgumentParser(add_help=False)  # --help lists the values of the recipe asked for
    pre.add_argument("--recipe", default=DEFAULT_RECIPE)
    pre.add_argument("--set", dest="overrides", action="append", default=[])
    known, _ = pre.parse_known_args(argv)
    args = build_parser(known.recipe, known.overrides).parse_args(argv)
    # under torchrun the ranks other than 0 log warnings only
    logging.basicConfig(level=logging.WARNING if args.quiet or dist.env_rank() > 0 else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = list(args.overrides)
    if args.max_steps is not None:
        overrides.append(f"train.max_steps={args.max_steps}")
    if args.output_dir is not None:
        overrides.append(f"train.output_dir={args.output_dir}")
    if args.rollout is not None:
        overrides.append(f"rollout.engine={args.rollout}")
    try:
        cfg = load_config(args.recipe, overrides)
        dist.check_config(cfg)  # e.g. data.prompts_per_step divisible by torchrun's world size
        check_report_to(cfg.train.report_to, cfg.train.tensorboard)  # the trackers' libraries are installed
    except (ValueError, TypeError) as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    try:
        summary = train(cfg, resume=args.resume, overwrite=args.overwrite)
    except (OutputDirError, CheckpointError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (TrainingStopped, RolloutOutOfMemory, RolloutServerError) as e:
        print(f"training stopped: {e}", file=sys.stderr)
        return 1
    if dist.env_rank() > 0:
        return 0
    t = summary["mean_timing_s"]
    print(f"done: {summary['steps']} steps in {summary['wall_s']:.0f} s; mean reward first 10 steps "
          f"{summary['first10_reward']:.3f}, last 10 {summary['last10_reward']:.3f}; mean per step: "
          + ", ".join(f"{k.split('/')[1]} {v:.1f}s" for k, v in t.items()))
    print(f"outputs in {cfg.train.output_dir} (metrics.jsonl, tensorboard/, rewards.png, step_*/)")
    return 0
