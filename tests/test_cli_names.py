"""Every command's usage line names the command as the user typed it: the console script's own name,
or `python -m <module>` (the installed console scripts are checked in test_install.py)."""
import sys

import pytest

from medix_r1.utils.cli import command_name, wrap_entries


@pytest.mark.parametrize("argv0,want", [
    ("/venv/bin/medix-train", "medix-train"),
    ("/src/medix_r1/train/__main__.py", "python -m medix_r1.train"),
    ("", "python -m medix_r1.train"),
])
def test_command_name_follows_how_the_command_was_started(monkeypatch, argv0, want):
    monkeypatch.setattr(sys, "argv", [argv0])
    assert command_name("medix_r1.train") == want


def test_entries_wrap_to_the_terminal_under_flush_headers(monkeypatch):
    monkeypatch.setenv("COLUMNS", "70")
    text = wrap_entries(["[loss]", "loss.beta (float) = 0.0: " + "KL coefficient, " * 12])
    lines = text.splitlines()
    assert lines[0] == "[loss]" and lines[1].startswith("  loss.beta")
    assert lines[2].startswith("      ") and not lines[2][6].isspace()  # continuation lines indented further
    assert max(map(len, lines)) <= 68


def test_eval_help_is_grouped_and_names_the_compare_command(capsys):
    from medix_r1.eval.cli import build_parser
    text = build_parser().format_help()
    for group in ("what to evaluate:", "generation", "the judge", "output and statistics:"):
        assert group in text
    assert "compare RUN_DIR" in text
    body = text[text.index("options:"):]  # the usage line lists every option once more
    assert body.index("--judge-url") > body.index("the judge (fixed") > body.index("--max-new-tokens")
