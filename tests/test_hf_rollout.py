"""The batched ``hf`` rollout engine (medix_r1/rollout/hf.py, sampling.py): left-padded rows of many
prompts in one generate call give what one prompt at a time gives (greedy: token for token, also
transformers' own greedy generate), the recorded log-probs are the policy's, the samples depend only
on (seed, step, prompt, attempt), and the per-prompt engine's rules hold (EOS, max_tokens,
suppressed ids, the out-of-memory message). The sampler's maths is checked without a model."""
import dataclasses

import pytest
import torch

from medix_r1.config import load_config
from medix_r1.rollout import HfRollout, RolloutOutOfMemory
from medix_r1.rollout.sampling import Sampling, TokenSampler, draw, row_generators, sampling_logits
from medix_r1.train.batch import make_batch
from medix_r1.train.policy import sequence_logp
from tests.tolerances import tol

# ----------------------------------------------------------------------------- the sampler alone


def test_the_exponential_race_draws_each_token_with_its_probability():
    logits = torch.tensor([[2.0, float("-inf"), 0.5, -1.0, 1.5, float("-inf"), 0.0]])
    p = logits.softmax(-1)[0].double()
    N = 40_000
    noise = torch.empty(N, 7, dtype=torch.float64).exponential_(generator=torch.Generator().manual_seed(3))
    counts = torch.bincount(draw(logits.expand(N, -1), noise), minlength=7).double() / N
    assert counts[1] == counts[5] == 0  # probability 0 is never drawn
    sigma = (p * (1 - p) / N).sqrt()
    assert bool(((counts - p).abs() <= 4 * sigma + 1e-12).all()), (counts, p)  # a fixed seed: no flakes
    zero = torch.zeros(1, 7, dtype=torch.float64)  # a noise of exactly 0 does not make a NaN win
    assert draw(logits, zero).item() in (0, 2, 3, 4, 6)


def test_top_p_keeps_the_smallest_most_likely_set_reaching_p():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 40, generator=g) * 2
    for top_p in (0.3, 0.75, 0.95):
        kept = torch.isfinite(sampling_logits(logits, Sampling(temperature=0.8, top_p=top_p)))
        for row, k in zip(logits, kept):
            probs = (row / 0.8).softmax(-1).tolist()
            order = sorted(range(40), key=lambda i: -probs[i])
            want, mass = set(), 0.0
            for i in order:  # add tokens, most likely first, until the mass reaches top_p
                want.add(i)
                mass += probs[i]
                if mass >= top_p:
                    break
            assert set(k.nonzero().flatten().tolist()) == want


def test_the_sampler_records_raw_and_sampling_log_probs_and_forces_its_token():
    g = torch.Generator().manual_seed(1)
    raw = torch.randn(3, 11, generator=g)
    s = Sampling(temperature=0.7, top_p=0.9, suppress=(2, 5))
    sampler = TokenSampler(s, row_generators(0, 1, 1, 3, "cpu"), 4, "cpu")
    forced = sampler(None, raw)
    token = forced.argmax(-1)
    assert torch.equal(torch.isfinite(forced).sum(-1), torch.ones(3, dtype=torch.long))
    assert not any(t in (2, 5) for t in token.tolist())
    want_raw = raw.log_softmax(-1).gather(-1, token[:, None]).squeeze(-1)
    torch.testing.assert_close(sampler.raw_logp[:, 0], want_raw, **tol("logprob", torch.float32))
    tempered = (raw / 0.7).index_fill(-1, torch.tensor([2, 5]), float("-inf"))
    kept = torch.isfinite(sampling_logits(raw, s))
    want_sampled = tempered.masked_fill(~kept, float("-inf")).log_softmax(-1).gather(-1, token[:, None]).squeeze(-1)
    torch.testing.assert_close(sampler.sampled_logp[:, 0], want_sampled, **tol("logprob", torch.float32))
    greedy = TokenSampler(Sampling(temperature=0.0, suppress=(int(raw[0].argmax()),)), [None] * 3, 4, "cpu")
    picked = greedy(None, raw).argmax(-1)
    assert picked[0] == raw[0].index_fill(0, raw[0].argmax(), float("-inf")).argmax()
    assert torch.equal(picked[1:], raw[1:].argmax(-1))


def test_each_sample_has_its_own_stream_keyed_by_the_prompts_global_index():
    def first_draws(gens):
        return [torch.empty(5, dtype=torch.float64).exponential_(generator=g) for g in gens]
    both = first_draws(row_generators(7, 3, 2, 4, "cpu", attempt=1))
    assert len(both) == 8 and not torch.equal(both[0], both[1])  # a group's samples differ
    rank1 = first_draws(row_generators(7, 3, 1, 4, "cpu", attempt=1, offset=1))  # a rank holding prompt 1
    assert all(torch.equal(a, b) for a, b in zip(both[4:], rank1))
    assert not torch.equal(both[0], first_draws(row_generators(7, 3, 1, 4, "cpu", attempt=2))[0])
    assert not torch.equal(both[0], first_draws(row_generators(7, 4, 1, 4, "cpu", attempt=1))[0])


# ----------------------------------------------------------------------------- the engine on SmolLM2


@pytest.fixture(scope="module")
def smollm2():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from medix_r1.models import smollm2_hf_dir
    d = str(smollm2_hf_dir())
    return AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32), AutoTokenizer.from_pretrained(d)


@pytest.fixture(scope="module")
def prompts(smollm2):
    """Three bundled PubMedQA prompts cut to different lengths (every row of a batch is then padded)."""
    from medix_r1.data.prompts import prompt_token_ids
    from medix_r1.data.records import load_records
    _, tok = smollm2
    cfg = load_config("cpu_smollm2", [])
    records, _ = load_records("pubmedqa", max_records=3)
    return [prompt_token_ids(tok, r, cfg.data)[:k] for r, k in zip(records, (61, 40, 52))]


def engine(smollm2, **rollout):
    model, tok = smollm2
    cfg = load_config("cpu_smollm2", ["rollout.engine=hf", "rollout.n=2", "rollout.max_tokens=10"]).rollout
    return HfRollout(model, tok, dataclasses.replace(cfg, **rollout))


def test_greedy_batched_rows_equal_one_prompt_at_a_time_and_transformers_greedy(smollm2, prompts):
    model, tok = smollm2
    batched = engine(smollm2, temperature=0.0).generate(prompts, 1, 0)
    per_prompt = engine(smollm2, temperature=0.0, hf_batch_size=2).generate(prompts, 1, 0)  # n = 2: one prompt a call
    assert batched.response_ids == per_prompt.response_ids and batched.group == [0, 0, 1, 1, 2, 2]
    assert batched.prompt_ids == [p for p in prompts for _ in range(2)]
    with torch.no_grad():
        for i, p in enumerate(prompts):  # no padding, transformers' own greedy choice
            x = torch.tensor([p])
            out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=10,
                                 pad_token_id=tok.eos_token_id)
            want = out[0, len(p):].tolist()
            want = want[:want.index(tok.eos_token_id) + 1] if tok.eos_token_id in want else want
            assert batched.response_ids[2 * i] == batched.response_ids[2 * i + 1] == want
    for a, b in zip(batched.sample_logp, per_prompt.sample_logp):
        torch.testing.assert_close(torch.tensor(a), torch.tensor(b), **tol("model_logprob", torch.float32))


def test_sampled_log_probs_are_the_policys_raw_log_probs(smollm2, prompts):
    model, tok = smollm2
    r = engine(smollm2, temperature=0.7, top_p=0.9, n=3).generate(prompts, 2, 0)
    assert len(r) == 9 and all(len(ids) == len(lp) > 0 for ids, lp in zip(r.response_ids, r.sample_logp))
    batch = make_batch(r.prompt_ids, r.response_ids, tok.eos_token_id)
    trainer = sequence_logp(model, batch, 1.0, 9)  # the trainer's forward: right padding, no cache, temperature 1
    sample = torch.zeros_like(trainer)
    for b, lp in enumerate(r.sample_logp):
        sample[b, :len(lp)] = torch.tensor(lp)
    torch.testing.assert_close(sample * batch["mask"], trainer, **tol("model_logprob", torch.float32))
    at_t = sequence_logp(model, batch, 0.7, 9)
    assert float(((sample - at_t).abs() * batch["mask"]).max()) > 1e-2  # raw, not at the sampling temperature


def test_samples_depend_on_seed_step_prompt_and_attempt_only(smollm2, prompts):
    one = engine(smollm2, temperature=1.0)
    r = one.generate(prompts, 5, 11, attempt=1)
    assert r.response_ids == one.generate(prompts, 5, 11, attempt=1).response_ids  # a resumed run samples the same
    chunked = engine(smollm2, temperature=1.0, hf_batch_size=3).generate(prompts, 5, 11, 1)  # other rows, padding
    assert chunked.response_ids == r.response_ids
    rank1 = one.generate(prompts[1:], 5, 11, attempt=1, offset=1)  # a torchrun rank holding prompts 1-2
    assert rank1.response_ids == r.response_ids[2:] and rank1.group == [0, 0, 1, 1]
    assert one.generate(prompts, 5, 11, attempt=2).response_ids != r.response_ids
    assert one.generate(prompts, 6, 11, attempt=1).response_ids != r.response_ids
    assert r.response_ids[0] != r.response_ids[1]  # a group's samples differ


class EosAt:
    """The tokenizer with another end-of-sequence id (the engine reads eos, pad and decode)."""

    def __init__(self, tok, eos: int):
        self.tok, self.eos_token_id, self.pad_token_id = tok, eos, tok.pad_token_id

    def decode(self, ids, **kw):
        return self.tok.decode(ids, **kw)


def test_eos_ends_a_row_and_max_tokens_truncates_the_others(smollm2, prompts):
    model, tok = smollm2
    cfg = engine(smollm2, temperature=0.0).cfg
    free = HfRollout(model, tok, cfg).generate(prompts, 1, 0)
    stop = free.response_ids[0][3]  # the 4th token prompt 0 generates greedily becomes the EOS
    r = HfRollout(model, EosAt(tok, stop), cfg).generate(prompts, 1, 0)
    for full, got, logp, cut in zip(free.response_ids, r.response_ids, r.sample_logp, r.truncated):
        if stop in full:
            assert got == full[:full.index(stop) + 1] and not cut
        else:
            assert got == full and len(got) == 10 and cut
        assert len(logp) == len(got)
    assert r.texts[0] == tok.decode(r.response_ids[0], skip_special_tokens=True)


def test_suppressed_ids_are_never_sampled_and_log_probs_stay_raw(smollm2, prompts):
    model, tok = smollm2
    free = engine(smollm2, temperature=0.0).generate(prompts, 1, 0)
    banned = sorted({ids[0] for ids in free.response_ids} | {ids[1] for ids in free.response_ids})
    eng = engine(smollm2, temperature=0.0)
    eng.suppress_tokens(banned)
    r = eng.generate(prompts, 1, 0)
    assert not set(banned) & {t for ids in r.response_ids for t in ids}
    batch = make_batch(r.prompt_ids, r.response_ids, tok.eos_token_id)
    trainer = sequence_logp(model, batch, 1.0, 6)
    sample = torch.zeros_like(trainer)
    for b, lp in enumerate(r.sample_logp):
        sample[b, :len(lp)] = torch.tensor(lp)
    torch.testing.assert_close(sample * batch["mask"], trainer, **tol("model_logprob", torch.float32))


def test_out_of_memory_names_the_batch_size_knob(smollm2, prompts, monkeypatch):
    eng = engine(smollm2)
    own = eng.model.generation_config

    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 5.00 GiB")
    monkeypatch.setattr(eng.model, "generate", oom)
    with pytest.raises(RolloutOutOfMemory, match=r"rollout\.max_tokens.*rollout\.hf_batch_size.*Tried to allocate"):
        eng.generate(prompts, 1, 0)
    assert eng.model.generation_config is own  # the model's own generation config is back


def test_hf_batch_size_below_one_is_a_config_error():
    with pytest.raises(ValueError, match=r"rollout.hf_batch_size must be >= 1, got 0"):
        load_config("cpu_smollm2", ["rollout.hf_batch_size=0"])


# ----------------------------------------------------------------------------- images (tiny Qwen2.5-VL)


def test_image_items_batch_with_text_items_like_one_prompt_at_a_time(tmp_path):
    import json

    from medix_r1.testing.synthetic import generate_synthetic_set
    from medix_r1.testing.tiny_qwen_vl import build_tiny_qwen2_5_vl, load_tiny_qwen2_5_vl
    from tests.test_vision_model import prompts_for

    tiny = build_tiny_qwen2_5_vl(tmp_path / "vl")
    folder = tmp_path / "shapes"
    folder.mkdir()
    records = [json.loads(x) for x in open(generate_synthetic_set(folder, n_image=10, n_text=4, seed=1))]
    model, tok = load_tiny_qwen2_5_vl(tiny)
    picked = [next(i for i, r in enumerate(records) if len(r["images"]) == k) for k in (2, 1, 0)]
    vp = prompts_for(tiny, folder, records, "rollout.max_tokens=8")
    items = [vp.prepare(i) for i in picked]
    greedy = dataclasses.replace(vp.cfg.rollout, temperature=0.0)
    batched = HfRollout(model, tok, greedy).generate(items, 0, 0)
    alone = HfRollout(model, tok, dataclasses.replace(greedy, hf_batch_size=2)).generate(items, 0, 0)
    assert batched.response_ids == alone.response_ids
    assert [x is not None for x in batched.images] == [True, True, True, True, False, False]
    sampled = HfRollout(model, tok, vp.cfg.rollout).generate(items, 1, 0)
    batch = make_batch(sampled.prompt_ids, sampled.response_ids, tok.pad_token_id, sampled.images)
    trainer = sequence_logp(model, batch, 1.0, 6)  # the images reach the trainer's forward the same way
    sample = torch.zeros_like(trainer)
    for b, lp in enumerate(sampled.sample_logp):
        sample[b, :len(lp)] = torch.tensor(lp)
    torch.testing.assert_close(sample * batch["mask"], trainer, **tol("model_logprob", torch.float32))
