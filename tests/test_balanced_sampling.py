"""data.balance_by: prompts drawn evenly over a record field's values (medix_r1.data.sampling)."""
from collections import Counter
from concurrent.futures import Future

import pytest

from medix_r1.data.records import DataError
from medix_r1.data.sampling import BalancedPromptSampler, PromptSampler, make_sampler
from medix_r1.train import train
from tests.train_helpers import Result, make_tiny_model, tiny_run_config

LABELS = ["yes"] * 7 + ["no"] * 4 + ["maybe"] * 2  # 13 records, PubMedQA-like imbalance


def test_every_run_of_draws_holds_each_value_once():
    s = BalancedPromptSampler(LABELS, seed=5, field="decision")
    drawn = s.take(60)
    for run in range(20):
        assert sorted(LABELS[i] for i in drawn[3 * run:3 * run + 3]) == ["maybe", "no", "yes"]
    assert Counter(LABELS[i] for i in drawn) == {"yes": 20, "no": 20, "maybe": 20}
    # within a value, shuffled epochs: the 2 maybe records alternate in pairs, the 7 yes ones in sevens
    maybes = [i for i in drawn if LABELS[i] == "maybe"]
    assert all(sorted(maybes[k:k + 2]) == [11, 12] for k in range(0, 20, 2))
    yeses = [i for i in drawn if LABELS[i] == "yes"]
    assert sorted(yeses[:7]) == list(range(7)) and sorted(yeses[7:14]) == list(range(7))
    assert yeses[:7] != yeses[7:14] or yeses[7:14] != yeses[14:21]  # reshuffled per epoch
    assert BalancedPromptSampler(LABELS, seed=5, field="decision").take(60) == drawn  # seeded
    assert BalancedPromptSampler(LABELS, seed=6, field="decision").take(60) != drawn


def test_resume_is_exact_and_mismatches_are_refused():
    s = BalancedPromptSampler(LABELS, seed=1, field="decision")
    s.take(7)
    state = s.state()
    rest = s.take(11)
    t = BalancedPromptSampler(LABELS, seed=1, field="decision")
    t.load_state(state)
    assert t.take(11) == rest
    with pytest.raises(ValueError, match="decision counts"):
        BalancedPromptSampler(LABELS[:-1], seed=1, field="decision").load_state(state)
    with pytest.raises(ValueError, match="data.balance_by='decision'.*this run has ''"):
        PromptSampler(13, seed=1).load_state(state)
    with pytest.raises(ValueError, match="data.balance_by=''.*this run has 'decision'"):
        t.load_state(PromptSampler(13, seed=1).state())


def test_make_sampler_groups_records_without_the_field_and_refuses_lists(caplog):
    records = [{"id": "a", "decision": "yes"}, {"id": "b"}, {"id": "c", "decision": ["no"]}, {"id": "d"}]
    assert isinstance(make_sampler(records, "", 0), PromptSampler)
    with pytest.raises(DataError, match=r"data.balance_by='decision': record 'c' has list \['no'\]"):
        make_sampler(records, "decision", 0)
    with caplog.at_level("INFO", logger="medix_r1.train"):
        s = make_sampler([records[0], records[1], records[3]], "decision", 0)
    assert s.counts() == {"None": 2, "yes": 1} and sorted(s.take(4)[:2]) in ([0, 1], [0, 2])
    assert "prompts drawn evenly over None (2 records), yes (1 records)" in caplog.text
    with caplog.at_level("WARNING", logger="medix_r1.train"):
        s = make_sampler([records[1], records[3]], "decison", 0)
    assert "data.balance_by='decison': no record has this field" in caplog.text
    assert sorted(s.take(2)) == [0, 1]


class DecisionRecorder:
    """A reward worker that remembers the reference decision of every prompt it scores."""

    def __init__(self):
        self.decisions = []

    def submit(self, problems, responses, solutions) -> Future:
        self.decisions += [s.split()[1].rstrip(".,").lower() for s in solutions]
        fut = Future()
        fut.set_result([Result(total=r.count("e") / max(1, len(r))) for r in responses])
        return fut

    def stats(self):
        return {}

    def close(self):
        pass


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny"))


def test_trainer_draws_balanced_prompts_and_resumes_with_them(tiny, tmp_path):
    """Six prompts over two steps of the bundled PubMedQA records (first 20: 12 yes, 7 no, 1 maybe):
    two of each decision; a resumed third step goes on from the checkpoint's draw count."""
    def cfg(*more):
        return tiny_run_config(tiny, tmp_path / "run", "train.tensorboard=false", "train.plot=false",
                               "data.prompts_per_step=3", "rollout.n=2", "data.balance_by=decision",
                               "train.save_every=1", *more)
    worker = DecisionRecorder()
    train(cfg(), reward_worker=worker)
    prompts = worker.decisions[::2]  # n = 2 responses per prompt
    assert Counter(prompts) == {"yes": 2, "no": 2, "maybe": 2}
    resumed = DecisionRecorder()
    train(cfg("train.max_steps=3"), resume=True, reward_worker=resumed)
    assert sorted(resumed.decisions[::2]) == ["maybe", "no", "yes"]
    with pytest.raises(ValueError, match="data.balance_by"):
        train(cfg("train.max_steps=4", "data.balance_by="), resume=True, reward_worker=DecisionRecorder())


def test_a_bad_value_fails_before_any_model_loads(tmp_path):
    data = tmp_path / "records.jsonl"
    data.write_text('{"id": "r1", "images": [], "problem": "Q?", "solution": "<OTHER> Yes.", "decision": {"a": 1}}\n')
    cfg = tiny_run_config(str(tmp_path / "no-such-model"), tmp_path / "run", f"data.train={data}",
                          "data.max_records=0", "data.balance_by=decision")
    with pytest.raises(DataError, match="data.balance_by='decision': record 'r1' has dict"):
        train(cfg, reward_worker=DecisionRecorder())
