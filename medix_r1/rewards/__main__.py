"""``python -m medix_r1.rewards score --input responses.jsonl --output scored.jsonl ...`` (see cli.py)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
