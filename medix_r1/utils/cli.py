"""What every command line shares: its own name in usage lines, and help text wrapped to the terminal."""
from __future__ import annotations

import os
import shutil
import sys
import textwrap


def command_name(module: str) -> str:
    """How the user started this command: ``medix-train`` when run as that console script, else
    ``python -m <module>`` (so usage lines and examples show what the user typed)."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return name if name.startswith("medix-") else f"python -m {module}"


def terminal_width(cap: int = 120) -> int:
    return max(60, min(cap, shutil.get_terminal_size((100, 24)).columns - 2))


def wrap_entries(lines: list[str], indent: int = 2) -> str:
    """Lines of 'name ...: help' wrapped to the terminal: '[section]' headers flush left, each entry
    indented, its continuation lines indented further."""
    width, out = terminal_width(), []
    for line in lines:
        if line.startswith("["):
            out.append(line)
            continue
        out.append(textwrap.fill(line, width=width, initial_indent=" " * indent,
                                 subsequent_indent=" " * (indent + 4), break_on_hyphens=False))
    return "\n".join(out)
