"""API keys and tokens come from the environment, never from flags (issue 17): flags show in
``ps`` and shell histories."""
from pathlib import Path

from medix_r1.eval.cli import build_parser, make_judge_factory


def test_eval_has_no_key_flags_only_env_var_names():
    flags = {a for action in build_parser()._actions for a in action.option_strings}
    assert "--api-key" not in flags and "--judge-api-key" not in flags
    assert {"--api-key-env", "--judge-api-key-env"} <= flags


def test_eval_judge_key_is_read_from_the_named_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-from-env")
    args = build_parser().parse_args(["--judge-url", "http://127.0.0.1:9/v1", "--judge-model", "j",
                                      "--judge-api-key-env", "MY_JUDGE_KEY"])
    mode, _, make = make_judge_factory(args, Path(tmp_path))
    assert mode == "http" and make().api_key == "sk-from-env"
    monkeypatch.delenv("MY_JUDGE_KEY")
    assert make().api_key == "EMPTY"
