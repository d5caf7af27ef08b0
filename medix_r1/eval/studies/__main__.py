"""``python -m medix_r1.eval.studies NAME [options]``: run one study (the package docstring lists them)."""
from __future__ import annotations

import importlib
import sys

from medix_r1.utils.cli import command_name

STUDIES = {"decision-eval": "decision_eval", "judge-pairs": "judge_pairs", "judge-vs-decision": "judge_vs_decision",
           "run-curves": "run_curves"}  # command -> module of this package, each with main(argv)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in STUDIES:
        return importlib.import_module(f"{__package__}.{STUDIES[argv[0]]}").main(argv[1:])
    usage = f"usage: {command_name('medix_r1.eval.studies')} {{{','.join(STUDIES)}}} [options]"
    if argv and argv[0] in ("-h", "--help"):
        print(usage + "\n\n" + importlib.import_module(__package__).__doc__)
        return 0
    print(usage + (f"\nunknown study {argv[0]!r}" if argv else "") + "\n(NAME --help describes each)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
