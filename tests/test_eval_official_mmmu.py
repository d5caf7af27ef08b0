"""`--protocol official`, item 8 of issue 29: MMMU's medical subsets as MedEvalKit runs them for the
official leaderboard (eval/eval_mmmu_med.sh of mbzuai-oryx/MediX-R1 at 94fd018; MedEvalKit at
9b12e3b): a fixture in MMMU's schema, the prompt, the rule scoring, the sampling and the overall."""
import json

import pytest
from PIL import Image

from medix_r1.eval.official.tasks import load_task
from tests.test_eval_official_fidelity import MCQ, ScriptedJudge, fake_engine, official_args, serving_model


@pytest.fixture(scope="module")
def tiny_vl(tmp_path_factory):
    return serving_model(tmp_path_factory.mktemp("tiny_vl"))

# ----------------------------------------------------------------------------- item 8: MMMU's medical subsets

def mmmu_parquet(path):
    """Rows in MMMU/MMMU's schema (validation split): options as a list's repr, image_1..image_7."""
    import datasets

    pic = Image.new("RGB", (56, 56), (120, 20, 20))
    strings = ("id", "question", "options", "explanation", "img_type", "answer", "topic_difficulty",
               "question_type", "subfield")
    feats = datasets.Features({**{k: datasets.Value("string") for k in strings},
                               **{f"image_{i}": datasets.Image() for i in range(1, 8)}})
    base = {"explanation": "", "img_type": "['Photographs']", "topic_difficulty": "Easy", "subfield": "Pharmacology",
            **{f"image_{i}": None for i in range(2, 8)}}
    rows = [{**base, "id": "validation_Pharmacy_1", "question": "<image 1> Which drug is shown?",
             "options": "['Aspirin', 'Ibuprofen', 'Paracetamol']", "answer": "B",
             "question_type": "multiple-choice", "image_1": pic},
            {**base, "id": "validation_Clinical_Medicine_2", "question": "How many chambers has the heart?",
             "options": "[]", "answer": "4", "question_type": "open", "image_1": pic},
            {**base, "id": "validation_Public_Health_3", "question": "Which chart is a histogram?",
             "options": '["<img=\'a.png\'>", "<img=\'b.png\'>"]', "answer": "A",
             "question_type": "multiple-choice", "image_1": pic}]
    datasets.Dataset.from_list(rows, features=feats).to_parquet(str(path))
    return str(path)


def test_mmmu_items_are_medevalkits_prompts_over_the_five_medical_subjects(tmp_path):
    from medix_r1.eval.official.mmmu import SUBJECTS
    from medix_r1.eval.official.tasks import TASKS

    task = TASKS["mmmu_medical"]
    assert (task.path, task.config, task.split, task.group) == ("MMMU/MMMU", SUBJECTS, "validation", "mmmu")
    assert SUBJECTS == ("Basic_Medical_Science", "Clinical_Medicine", "Diagnostics_and_Laboratory_Medicine",
                        "Pharmacy", "Public_Health")  # MedEvalKit: DOMAIN_CAT2SUB_CAT["Health and Medicine"]
    items, notes = load_task("mmmu_medical", data_files=[mmmu_parquet(tmp_path / "mmmu.parquet")])
    # MedEvalKit construct_prompt with REASONING=False: "\n{question}\n\n{(A) option\n...}\n\n" + 8 spaces
    assert items[0]["problem"] == ("\n<image 1> Which drug is shown?\n\n(A) Aspirin\n(B) Ibuprofen\n(C) Paracetamol"
                                   "\n\n\n        Answer with the option's letter from the given choices directly.")
    assert items[1]["problem"] == ("\nHow many chambers has the heart?\n\n        "
                                   "Answer the question using a single word or phrase.")
    assert [len(i["images"]) for i in items] == [1, 1, 0]  # images in two options: no image (process_single_sample)
    assert [i["reference"] for i in items] == ["B", "4", "A"] and items[0]["image_encoding"] == "png"
    assert notes["source"] == "MMMU/MMMU:" + "+".join(SUBJECTS) + ":validation"


def test_mmmu_replies_are_scored_by_medevalkits_rules(tmp_path):
    import random

    from medix_r1.eval.official.mmmu import open_answer_correct, score_item

    mc, open_q, _ = load_task("mmmu_medical", data_files=[mmmu_parquet(tmp_path / "mmmu.parquet")])[0]
    replies = {
        "<think>It could be (A).</think>The answer is (B).": "B",        # after the thinking, bracketed letter
        "<answer>C</answer>": "C",                                          # the answer tags
        "Final: \\boxed{A}": "A",                                           # the last boxed content
        "I think B is right, not A": "A",                                   # letters alone: the last one named
        "The tablet shown here is most likely ibuprofen by its shape": "B",  # over five words: an option's text
    }
    for reply, letter in replies.items():
        assert score_item(mc, reply) == {"score": float(letter == "B"), "parsed": letter}, reply
    drawn = score_item(mc, "no idea")["parsed"]  # no letter: a seeded random one
    assert drawn == random.Random(f"42:{mc['id']}").choice(["A", "B", "C"])
    # open questions: MedEvalKit's validation path checks the reply string character by character
    assert score_item(open_q, "4") == {"score": 0.0, "parsed": "4"}
    assert open_answer_correct("4", [4.0]) and open_answer_correct("Four chambers", ["it has four chambers"])


def test_mmmu_runs_with_its_own_sampling_and_stays_out_of_the_overall(tiny_vl, tmp_path, monkeypatch):
    from medix_r1.eval.official.run import run_official

    data = tmp_path / "mmlu.jsonl"
    data.write_text(json.dumps(MCQ) + "\n")
    seen, judge = {}, ScriptedJudge()
    fake_engine(monkeypatch, seen)
    args = official_args(tmp_path, tiny_vl, "mmlu_anatomy,mmmu_medical",
                         {"mmlu_anatomy": data, "mmmu_medical": mmmu_parquet(tmp_path / "mmmu.parquet")})
    assert run_official(args, make_judge=lambda: judge) == 0
    by_size = dict(seen["calls"])  # calls by batch size: 3 MMMU items, 1 MMLU item
    assert by_size[3]["max_tokens"] == 8192 and by_size[3]["top_p"] == 0.0001  # eval_mmmu_med.sh
    assert by_size[3]["repetition_penalty"] == 1.0 and by_size[3]["presence_penalty"] == 0.0
    assert by_size[1]["max_tokens"] == 2048 and by_size[1]["repetition_penalty"] == 1.05
    assert seen["cfg"].max_model_len >= 8192  # sized for MMMU's 8,192 new tokens
    assert len(judge.calls) == 3  # three rounds for the one MMLU item; MMMU is never judged
    summary = json.loads((tmp_path / "run" / "official_summary.json").read_text())
    assert summary["tasks"]["mmmu_medical"]["score"] == pytest.approx(100 / 3)  # (B) right, open 0, (B) for A wrong
    assert summary["overall"] == 100.0 and summary["overall_tasks"] == ["mmlu_anatomy"]
    rows = [json.loads(x) for x in (tmp_path / "run" / "official_items.jsonl").read_text().splitlines()]
    assert {r["decided_by"] for r in rows if r["task"] == "mmmu_medical"} == {"rules"}
