"""rollout.top_k / min_p / repetition_penalty (issue 32) for every engine that supports them, and the
refusal of a config naming a knob its engine cannot honour. A knob left at its neutral value is not
sent at all, so a run that sets none samples exactly as before."""
import pytest

from medix_r1 import rollout as R
from medix_r1.config import load_config
from medix_r1.rollout.client import ServerRollout
from medix_r1.rollout.server_engine import sampling_kwargs
from medix_r1.rollout.vllm_server import VllmServerRollout
from tests.test_rollout_server import Recorder, server_cfg
from tests.test_vllm_server_engine import FakeVllm, rollout_cfg
from tests.test_vllm_server_engine import server as fake_vllm  # noqa: F401  (the fixture)

KNOBS = ["rollout.top_k=5", "rollout.min_p=0.05", "rollout.repetition_penalty=1.3"]
SET = {"top_k": 5, "min_p": 0.05, "repetition_penalty": 1.3}


def test_only_the_knobs_a_config_sets_are_sent():
    assert R.sampling_extras(load_config("cpu_smollm2").rollout) == {}
    assert R.sampling_extras(load_config("cpu_smollm2", KNOBS).rollout) == SET
    assert R.sampling_extras(load_config("cpu_smollm2", ["rollout.top_k=3"]).rollout) == {"top_k": 3}


@pytest.mark.parametrize("override, message", [
    ("rollout.top_k=-1", r"rollout\.top_k must be >= 0, got -1"),
    ("rollout.min_p=1.5", r"rollout\.min_p must be >= 0\.0 and <= 1\.0"),
    ("rollout.repetition_penalty=0", r"rollout\.repetition_penalty must be > 0\.0"),
    ("rollout.min_p=.nan", r"rollout\.min_p must be a finite number"),
])
def test_bad_values_are_refused_naming_the_field(override, message):
    with pytest.raises(ValueError, match=message):
        load_config("cpu_smollm2", [override])


def test_an_engine_that_cannot_honour_a_knob_refuses_the_config(monkeypatch):
    monkeypatch.setitem(R.SAMPLING_KNOBS, "hf", ("top_k",))  # as if hf could not sample with min_p
    load_config("cpu_smollm2", ["rollout.engine=hf", "rollout.top_k=4"])
    with pytest.raises(ValueError, match=r"rollout\.min_p=0\.1: rollout\.engine=hf cannot sample with it; leave "
                                         r"rollout\.min_p at 0\.0 or use an engine of \['server', 'vllm', "
                                         r"'vllm-server'\]"):
        load_config("cpu_smollm2", ["rollout.engine=hf", "rollout.min_p=0.1"])


def test_every_engine_says_which_knobs_it_honours():
    assert set(R.SAMPLING_KNOBS) == set(R.ENGINES)


class CapturingLLM:
    """Stands in for vllm.LLM: records the SamplingParams of a generate call, returns no outputs."""

    def __init__(self):
        self.params = None

    def generate(self, prompts, params, use_tqdm=False):
        self.params = params
        return []


@pytest.mark.parametrize("overrides", [[], KNOBS])
def test_the_vllm_engine_puts_the_knobs_in_its_sampling_params(overrides):
    from vllm import SamplingParams

    eng = R.VllmRollout.__new__(R.VllmRollout)  # no engine: generate's request only
    eng.cfg, eng.llm = load_config("cpu_smollm2", overrides).rollout, CapturingLLM()
    eng.generate([[1, 2, 3]], step=1, seed=0)
    (params,) = eng.llm.params
    neutral = SamplingParams()
    for knob in SET:
        assert getattr(params, knob) == (SET[knob] if overrides else getattr(neutral, knob)), knob


def test_the_server_engine_sends_them_and_the_server_passes_them_to_vllm():
    with Recorder(sampling=list(SET)) as srv:
        eng = ServerRollout(server_cfg(srv.url, *KNOBS).rollout, seed=0)
        eng.generate([[1, 2, 3]], step=1, seed=0)
        plain = ServerRollout(server_cfg(srv.url).rollout, seed=0)
        plain.generate([[1, 2, 3]], step=1, seed=0)
    (_, body), (_, plain_body) = srv.bodies
    assert {k: body[k] for k in SET} == SET and not set(SET) & set(plain_body)
    req = {"n": 2, "max_tokens": 4, "temperature": 0.7, "top_p": 0.9, "seeds": None, "logit_bias": None}
    assert sampling_kwargs({**req, **SET}, 0) == {**sampling_kwargs(req, 0), **SET}
    assert sampling_kwargs({**req, "top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0}, 0) == sampling_kwargs(req, 0)


def test_a_server_that_does_not_list_a_knob_is_refused():
    """A rollout server from before these knobs would ignore them: the trainer stops instead."""
    with Recorder() as srv:  # its /health has no "sampling"
        ServerRollout(server_cfg(srv.url).rollout, seed=0)  # no knob set: fine
        with pytest.raises(R.RolloutServerError, match=rf"rollout\.top_k=5: the rollout server at {srv.url} does "
                                                       r"not take it .*restart it from this version"):
            ServerRollout(server_cfg(srv.url, "rollout.top_k=5").rollout, seed=0)


def test_the_rollout_server_lists_the_knobs_it_takes():
    from medix_r1.rollout.server_engine import RolloutEngine

    eng = RolloutEngine.__new__(RolloutEngine)
    eng.weights_broken, eng.model, eng.dtype, eng.max_model_len = None, "m", "float32", 640
    eng.instance, eng.weights_version, eng.group, eng.last_update = "i", 0, None, {}
    eng.logprobs_mode = "processed_logprobs"
    assert eng.health()["sampling"] == list(SET)


def test_the_vllm_server_engine_sends_them_in_the_completions_request(fake_vllm):  # noqa: F811
    cfg = rollout_cfg(fake_vllm)
    for knob, value in SET.items():
        setattr(cfg, knob, value)
    VllmServerRollout(cfg, seed=0).generate([[5, 6]], step=1, seed=0)
    VllmServerRollout(rollout_cfg(fake_vllm), seed=0).generate([[5, 6]], step=1, seed=0)
    with_knobs, plain = [b for _, p, b in FakeVllm.calls if p == "/v1/completions"]
    assert {k: with_knobs[k] for k in SET} == SET and not set(SET) & set(plain)


def test_the_payload_is_one_vllm_parses():
    """vLLM's own completion request model takes the three knobs under these names."""
    protocol = pytest.importorskip("vllm.entrypoints.openai.completion.protocol")
    req = protocol.CompletionRequest(model="m", prompt=[1, 2], max_tokens=4, **SET)
    params = req.to_sampling_params(max_tokens=4, default_sampling_params={})
    assert (params.top_k, params.min_p, params.repetition_penalty) == (5, 0.05, 1.3)


@pytest.mark.slow
def test_top_k_1_makes_the_vllm_engines_samples_of_a_prompt_identical():
    """A real engine honours the knob: with top_k=1 every sample of a prompt is the greedy one."""
    from transformers import AutoTokenizer

    from medix_r1.models import resolve_model_dir
    from tests.test_train_vllm import prompts

    d = resolve_model_dir("smollm2")
    cfg = load_config("cpu_smollm2", ["rollout.max_tokens=12", "rollout.n=3", "rollout.temperature=1.0"])
    eng = R.VllmRollout(d, cfg.rollout, seed=0)
    ps = prompts(AutoTokenizer.from_pretrained(str(d)), cfg)
    free = eng.generate(ps, 1, 0)
    eng.cfg = load_config("cpu_smollm2", ["rollout.max_tokens=12", "rollout.n=3", "rollout.temperature=1.0",
                                          "rollout.top_k=1"]).rollout
    greedy = eng.generate(ps, 1, 0)
    for g in range(len(ps)):
        rows = [ids for ids, grp in zip(greedy.response_ids, greedy.group) if grp == g]
        assert all(r == rows[0] for r in rows)
    assert len({tuple(ids) for ids in free.response_ids}) > len(ps)  # without it, the samples differ


def test_the_hf_engine_samples_with_them(tmp_path):
    """The hf engine's own sampler takes the knobs (none changes anything when neutral), and generate
    honours them: with top_k=1 the n samples of a prompt are the greedy one, without it they differ."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.train_helpers import make_tiny_model

    tiny = make_tiny_model(tmp_path / "tiny")
    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=R.types.torch.float32)
    tok = AutoTokenizer.from_pretrained(tiny)

    def engine(*more):
        return R.HfRollout(model, tok, load_config("cpu_smollm2", ["rollout.n=4", "rollout.max_tokens=5",
                                                                   *more]).rollout)
    s = engine().sampling()
    assert (s.top_k, s.min_p, s.repetition_penalty) == (0, 0.0, 1.0)
    s = engine(*KNOBS).sampling()
    assert (s.top_k, s.min_p, s.repetition_penalty) == (5, 0.05, 1.3)
    prompt = [tok.encode("Does aspirin prevent heart attacks?")]
    assert len({tuple(x) for x in engine("rollout.top_k=1").generate(prompt, 1, 0).response_ids}) == 1
    assert len({tuple(x) for x in engine().generate(prompt, 1, 0).response_ids}) > 1


def test_the_hf_samplers_transforms():
    import torch

    from medix_r1.rollout.sampling import Sampling, TokenSampler, penalize_repeats, sampling_logits

    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0, -3.0]])
    kept = torch.isfinite(sampling_logits(logits, Sampling(temperature=1.0, top_k=2)))
    assert kept.tolist() == [[True, True, False, False, False]]
    # min_p 0.3: keep p >= 0.3 * p_max, i.e. logits >= 2 + log(0.3) = 0.796
    kept = torch.isfinite(sampling_logits(logits, Sampling(temperature=1.0, min_p=0.3)))
    assert kept.tolist() == [[True, True, False, False, False]]
    kept = torch.isfinite(sampling_logits(logits, Sampling(temperature=0.5, min_p=0.3)))  # after temperature
    assert kept.tolist() == [[True, False, False, False, False]]
    assert torch.equal(sampling_logits(logits, Sampling(temperature=1.0)), logits)  # neutral: untouched
    seen = torch.tensor([[True, False, False, True, False]])
    assert penalize_repeats(logits, seen, 2.0).tolist() == [[1.0, 1.0, 0.5, -2.0, -3.0]]
    # the sampler's seen ids: each row's prompt (no left padding) and then every token it draws
    sampler = TokenSampler(Sampling(temperature=0.0, repetition_penalty=2.0), [None, None], 3, "cpu",
                           prompts=[[0], [3, 4]])
    scores = torch.tensor([[3.0, 2.0, 1.0, 0.0, -1.0], [3.0, 2.0, 1.0, 0.0, -1.0]])
    first = sampler(torch.zeros(2, 2, dtype=torch.long), scores.clone()).argmax(-1).tolist()
    assert first == [1, 0]  # row 0's prompt holds token 0: 3 / 2 = 1.5 < 2
    second = sampler(torch.zeros(2, 3, dtype=torch.long), scores.clone()).argmax(-1).tolist()
    assert second == [0, 1]  # token 1 (row 0) and token 0 (row 1) were drawn: 1.5 vs 1.0 and 1.5 vs 2.0
    assert sampler.raw_logp[0, 0] == scores.log_softmax(-1)[0, 1]  # the raw log-prob stays unpenalized
