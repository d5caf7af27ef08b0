"""The weight sync's log: vLLM's "RotaryEmbedding / ParallelLMHead: Failed to load weights" warnings
(expected on every reload: those layers have no tensors of their own in the policy's weights) become
one line that says so; any other layer that fails to load still warns."""
import importlib.util
import logging
from pathlib import Path

import pytest

from medix_r1.rollout import vllm_engine
from medix_r1.rollout.vllm_engine import VLLM_RELOAD_LOGGER, expected_reload_warnings_as_one_line


def vllm_reload(*layers):
    """What vLLM's layerwise reload logs for layers that got no tensors (its own call, on its own logger)."""
    for layer in layers:
        logging.getLogger(VLLM_RELOAD_LOGGER).warning("%s: Failed to load weights", layer)


def test_the_expected_warnings_become_one_line_and_others_stay(caplog, monkeypatch):
    monkeypatch.setattr(vllm_engine, "_reported", False)
    caplog.set_level(logging.DEBUG)
    with expected_reload_warnings_as_one_line() as quiet:
        vllm_reload("RotaryEmbedding", "ParallelLMHead", "Llama3RotaryEmbedding", "QKVParallelLinear")
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == ["QKVParallelLinear: Failed to load weights"]  # a real failure is still shown
    assert quiet.layers == ["RotaryEmbedding", "ParallelLMHead", "Llama3RotaryEmbedding"]
    infos = [r for r in caplog.records if r.name == "medix_r1.rollout"]
    assert len(infos) == 1 and infos[0].levelno == logging.INFO
    assert "RotaryEmbedding x1, ParallelLMHead x1, Llama3RotaryEmbedding x1" in infos[0].getMessage()
    assert "nothing failed" in infos[0].getMessage()
    caplog.clear()
    with expected_reload_warnings_as_one_line():  # every later sync: one DEBUG line, no warning
        vllm_reload("RotaryEmbedding", "ParallelLMHead")
    assert [(r.levelno, r.name) for r in caplog.records] == [(logging.DEBUG, "medix_r1.rollout")]
    caplog.clear()
    vllm_reload("RotaryEmbedding")  # outside a weight sync the filter is gone
    assert [r.levelno for r in caplog.records] == [logging.WARNING]


def test_the_filtered_call_is_the_installed_vllms():
    spec = importlib.util.find_spec("vllm")
    if spec is None:
        pytest.skip("vllm is not installed")
    module = VLLM_RELOAD_LOGGER.split(".", 1)[1].replace(".", "/") + ".py"
    source = (Path(spec.submodule_search_locations[0]) / module).read_text()
    assert "logger = init_logger(__name__)" in source  # the logger's name is the module's
    assert 'logger.warning("%s: Failed to load weights", layer.__class__.__name__)' in source
