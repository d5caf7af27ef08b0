"""`--protocol official`: the 17 official tasks from tiny fixtures in each dataset's own schema, the
official judge (prompts, one 3-round conversation, parsing, majority / MIMIC mean), the pipeline."""
import asyncio
import json
from types import SimpleNamespace

import pytest
from PIL import Image

from medix_r1.eval.cli import build_parser, main
from medix_r1.eval.official.judge import BASE_PROMPT, MIMIC_PROMPT, REEVALUATE, judge_item, parse_score, verdict
from medix_r1.eval.official.run import run_official
from medix_r1.eval.official.tasks import TASKS, load_task, pubmedqa_training_keys

TRAIN_PMID = sorted(pubmedqa_training_keys()[0])[0]


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def image_parquet(path, rows):
    import datasets

    feats = datasets.Features({"image": datasets.Image(), **{k: datasets.Value("string") for k in rows[0]
                                                              if k != "image"}})
    datasets.Dataset.from_list(rows, features=feats).to_parquet(str(path))
    return str(path)


MCQ = {"question": "Which nerve innervates the deltoid?", "subject": "anatomy",
       "choices": ["Radial", "Axillary", "Ulnar", "Median"], "answer": 1}
ROWS = {
    **{f"mmlu_{s}": [MCQ] for s in ("clinical_knowledge", "college_biology", "college_medicine", "medical_genetics",
                                    "professional_medicine", "anatomy")},
    "medmcqa": [{"id": "m1", "question": "Drug of choice in anaphylaxis?", "opa": "Adrenaline",
                 "opb": "Atropine", "opc": "Steroid", "opd": "Antihistamine", "cop": 0, "choice_type": "single"}],
    "medqa": [{"id": "q1", "sent1": "A 30-year-old man has fever. What is next?", "sent2": "",
               "ending0": "Blood culture", "ending1": "CT", "ending2": "MRI", "ending3": "Discharge", "label": 0}],
    "usmle_sa": [{"question": "Most likely diagnosis?", "options": {"A": "Gout", "B": "Sepsis"}, "answer": "Sepsis"}],
    "pubmedqa": [{"pubid": 1, "QUESTION": "Does X help?", "CONTEXTS": ["Ctx one.", "Ctx two."],
                  "final_decision": "yes", "LONG_ANSWER": "X helped."},
                 {"pubid": int(TRAIN_PMID), "QUESTION": "A trained-on item?", "CONTEXTS": ["c"],
                  "final_decision": "no", "LONG_ANSWER": "No."}],
    "mimic_cxr_report_summarization": [{"image": "https://physionet.org/files/x/s1.jpg",
                                        "report": "FINDINGS: clear lungs.", "summary": "Normal chest."}],
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("official")
    out = {name: write(d / f"{name}.jsonl", rows) for name, rows in ROWS.items()}
    pic = Image.new("RGB", (20, 16), (10, 200, 30))
    for name in ("rad_vqa", "path_vqa", "pmc_vqa_hard"):
        out[name] = image_parquet(d / f"{name}.parquet", [{"image": pic, "question": "Is it normal?",
                                                           "answer": "yes"}])
    out["pmc_vqa"] = str(d / "pmc_vqa.parquet")
    import datasets
    feats = datasets.Features({"image": datasets.Image(), "question": datasets.Value("string"),
                               "answer": datasets.Value("string"), "choices": datasets.List(datasets.Value("string"))})
    datasets.Dataset.from_list([{"image": pic, "question": "What organ?", "answer": "Liver",
                                 "choices": ["Liver", "Kidney"]}], features=feats).to_parquet(out["pmc_vqa"])
    images = d / "imgs"
    images.mkdir()
    (images / "xmlab1").mkdir()
    pic.save(images / "xmlab1" / "source.jpg")
    pic.save(images / "s9.jpg")
    out["slake_vqa"] = write(d / "slake.jsonl", [
        {"img_name": "xmlab1/source.jpg", "question": "Which organ is abnormal?", "answer": "Lung", "q_lang": "en"},
        {"img_name": "xmlab1/source.jpg", "question": "哪个器官异常?", "answer": "肺", "q_lang": "zh"}])
    out["mimic_cxr_report_generation"] = write(d / "mimic_gen.jsonl", [
        {"image": "https://physionet.org/files/mimic-cxr-jpg/s9.jpg", "report": "No acute process.",
         "summary": "Normal."}])
    out["images"] = str(images)
    return out


EXPECTED = {  # question (as the model and judge see it), reference
    **{f"mmlu_{s}": ("Which nerve innervates the deltoid?\n\nChoices:\nA. Radial\nB. Axillary\nC. Ulnar\nD. Median",
                     "Axillary") for s in ("clinical_knowledge", "college_biology", "college_medicine",
                                           "medical_genetics", "professional_medicine", "anatomy")},
    "medmcqa": ("Drug of choice in anaphylaxis?\n\nChoices:\nA. Adrenaline\nB. Atropine\nC. Steroid\n"
                "D. Antihistamine", "Adrenaline"),
    "medqa": ("A 30-year-old man has fever. What is next?\n\nChoices:\nA. Blood culture\nB. CT\nC. MRI\n"
              "D. Discharge", "Blood culture"),
    "usmle_sa": ("Most likely diagnosis?\n\nChoices:\nA. Gout\nB. Sepsis", "Sepsis"),
    "pubmedqa": ("Contexts:\nCtx one.\n\nQuestion:\nDoes X help?\n\nChoices:\nA. True\nB. False\nC. maybe",
                 "yes\nX helped."),
    "mimic_cxr_report_summarization": ("Write a short summary of the following report.\n\nReport:\n"
                                       "FINDINGS: clear lungs.:", "Normal chest."),
    "slake_vqa": ("Which organ is abnormal?", "Lung"),
    "rad_vqa": ("Is it normal?", "yes"),
    "path_vqa": ("Is it normal?", "yes"),
    "pmc_vqa": ("What organ?\n\nChoices:\nA. Liver\nB. Kidney", "Liver"),
    "pmc_vqa_hard": ("Is it normal?", "yes"),
    "mimic_cxr_report_generation": ("Generate a detailed report based on the scan.", "No acute process."),
}
WITH_IMAGES = {"slake_vqa", "rad_vqa", "path_vqa", "pmc_vqa", "pmc_vqa_hard", "mimic_cxr_report_generation"}


def test_the_registry_is_the_official_tasks_yaml():
    assert set(TASKS) == set(EXPECTED) | {"mmmu_medical"} and len(TASKS) == 18
    assert (TASKS["medqa"].path, TASKS["medqa"].split) == ("GBaker/MedQA-USMLE-4-options-hf", "test")
    assert (TASKS["mmlu_anatomy"].path, TASKS["mmlu_anatomy"].config) == ("hails/mmlu_no_train", "anatomy")
    assert (TASKS["usmle_sa"].path, TASKS["usmle_sa"].split) == ("HuggingSara/usmle_self_assessment", "train")
    assert (TASKS["medmcqa"].split, TASKS["pubmedqa"].config) == ("validation", "pubmedqa")
    assert {n for n, t in TASKS.items() if t.group == "vlm"} == WITH_IMAGES


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_task_loads_its_own_schema_into_the_official_text(name, files):
    items, notes = load_task(name, data_files=[files[name]], image_dir=files["images"])
    question, reference = EXPECTED[name]
    assert items[0]["id"] == f"{name}_0" and items[0]["benchmark"] == name
    assert items[0]["problem"] == items[0]["question"] == question
    assert items[0]["reference"] == reference
    assert bool(items[0]["images"]) == (name in WITH_IMAGES)
    assert len(items) == 1  # slake's Chinese row and pubmedqa's trained-on row are left out
    if name == "slake_vqa":
        assert notes["skipped_rows"] == 1 and items[0]["images"][0].endswith("imgs/xmlab1/source.jpg")
    if name == "pubmedqa":
        assert notes["excluded_training_overlap"] == [TRAIN_PMID] and notes["rows"] == 2


def test_schema_errors_name_the_task_and_missing_images_the_folder(files, tmp_path):
    with pytest.raises(ValueError, match=r"medqa: the data has no column\(s\) \['sent1', 'ending0'"):
        load_task("medqa", data_files=[files["medmcqa"]])
    with pytest.raises(ValueError, match=r"--image-dir"):
        load_task("slake_vqa", data_files=[files["slake_vqa"]])
    with pytest.raises(ValueError, match=r"not found \(--image-dir\)"):
        load_task("slake_vqa", data_files=[files["slake_vqa"]], image_dir=str(tmp_path))


def test_bundled_pubmedqa_training_and_the_official_test_ids_are_disjoint():
    from medix_r1.data.records import BUNDLED, load_records

    train = {r["id"] for r in load_records("pubmedqa")[0]}
    test = {r["id"] for r in load_records(str(BUNDLED["pubmedqa"].with_name("test.jsonl")))[0]}
    assert len(train) == len(test) == 500 and not train & test
    ids, questions = pubmedqa_training_keys()
    assert ids == {i.removeprefix("pubmedqa-") for i in train} and len(questions) >= 499


# ----------------------------------------------------------------------------- the judge

class ScriptedJudge:
    model_id = "Qwen/Qwen3-14B"

    def __init__(self, replies):
        self.replies, self.calls = list(replies), []

    async def chat(self, messages, *, max_tokens, cache_key=None):
        self.calls.append((messages, max_tokens, cache_key))
        text = self.replies.pop(0)
        return SimpleNamespace(text=text, failed=text is None, error=None if text else "HTTP 500")


def test_three_rounds_are_one_conversation_and_vote_by_majority():
    judge = ScriptedJudge(['{"score": 1}', '<think>hm</think> ```json\n{"score": 0}\n```', 'ok {"score": 1}'])
    out = asyncio.run(judge_item(judge, "medqa", "Q?", "Blood culture", "<think>long reasoning</think> A. Blood"))
    assert out["score"] == 1.0 and out["round_scores"] == [1, 0, 1] and not out["judge_failed"]
    first, second, third = (c[0] for c in judge.calls)
    prompt = BASE_PROMPT.format(question="Q?", correct_answer="Blood culture", predicted_answer="A. Blood",
                                no_think=" /no_think")
    assert first == [{"role": "user", "content": prompt}] and prompt.endswith('}\n```' + " /no_think")
    assert "long reasoning" not in prompt  # the judge sees the text after </think> only
    assert second[1:] == [{"role": "assistant", "content": '{"score": 1}'}, {"role": "user", "content": REEVALUATE}]
    assert len(third) == 5 and all(c[1] == 512 for c in judge.calls)
    assert len({c[2] for c in judge.calls}) == 3


def test_mimic_uses_the_rubric_and_the_mean_over_five():
    judge = ScriptedJudge(['{"score": 4}', '{"score": 3}', '{"score": 5}'])
    out = asyncio.run(judge_item(judge, "mimic_cxr_report_generation", "Generate.", "Ref.", "Report </thinking>Rep"))
    assert out["score"] == pytest.approx(0.8)
    assert judge.calls[0][0][0]["content"] == MIMIC_PROMPT.format(question="Generate.", correct_answer="Ref.",
                                                                  predicted_answer="Rep", no_think=" /no_think")


def test_unparseable_replies_restart_the_conversation_then_fail():
    judge = ScriptedJudge(["no json here", '{"score": 1}', '{"score": 1}', '{"score": 0}'])
    out = asyncio.run(judge_item(judge, "medqa", "Q", "R", "A"))
    assert out["attempts"] == 2 and out["score"] == 1.0 and len(judge.calls[1][0]) == 1
    failing = ScriptedJudge([None, "{}", '{"score": "1"}'])
    out = asyncio.run(judge_item(failing, "medqa", "Q", "R", "A", attempts=3))
    assert out["judge_failed"] and out["score"] == 0.0
    assert parse_score('x {"score": 1} y {"z": 2}') is None  # first '{' to last '}' is not one object
    assert parse_score('<think>{"score": 0}</think>{"score": 1}') == 1
    assert verdict("medqa", [1, 0, 0]) == 0.0 and verdict("rad_vqa", [1, 1, 0]) == 1.0


# ----------------------------------------------------------------------------- the pipeline

def test_run_official_end_to_end_with_the_unweighted_overall(files, tmp_path, capsys):
    asked = []

    def make_generate():
        def generate(batch, sampling):
            assert sampling["max_tokens"] == 2048 and sampling["temperature"] == 0.0
            asked.extend(batch)
            return ["<think>x</think>" + ("A. Radial" if "deltoid" in m[-1]["content"] else "right")
                    if isinstance(m[-1]["content"], str) else "yes" for m in batch]
        return generate

    class Judge(ScriptedJudge):
        async def chat(self, messages, *, max_tokens, cache_key=None):
            wrong = "Radial" in messages[0]["content"]
            return SimpleNamespace(text=json.dumps({"score": 0 if wrong else 1}), failed=False, error=None)

    args = build_parser().parse_args(["--protocol", "official", "--benchmarks", "mmlu_anatomy,medmcqa,rad_vqa",
                                      "--data-files", f"mmlu_anatomy={files['mmlu_anatomy']}",
                                      "--data-files", f"medmcqa={files['medmcqa']}",
                                      "--data-files", f"rad_vqa={files['rad_vqa']}",
                                      "--output-dir", str(tmp_path / "run"), "--no-progress"])
    assert run_official(args, make_generate, lambda: Judge([])) == 0
    summary = json.loads((tmp_path / "run" / "official_summary.json").read_text())
    assert {t: v["score"] for t, v in summary["tasks"].items()} == {"mmlu_anatomy": 0.0, "medmcqa": 100.0,
                                                                     "rad_vqa": 100.0}
    assert summary["overall"] == pytest.approx(200 / 3)
    assert all(m[0]["role"] == "user" for m in asked)  # no system prompt
    assert [p["type"] for p in asked[-1][0]["content"]] == ["image_url", "text"]
    row = json.loads((tmp_path / "run" / "official_items.jsonl").read_text().splitlines()[0])
    assert row["judged_text"] in ("A. Radial", "right", "yes")
    assert run_official(args, lambda: pytest.fail("regenerated"), lambda: pytest.fail("rejudged")) == 0  # resume


def test_cli_errors_for_the_official_protocol(capsys):
    assert main(["--protocol", "official", "--benchmarks", "mmlu_nope", "--model", "m"]) == 2
    assert "unknown official task(s) ['mmlu_nope']" in capsys.readouterr().err
    assert main(["--protocol", "official", "--image-dir", "slake=/x", "--model", "m"]) == 2
    assert "--image-dir expects TASK=VALUE" in capsys.readouterr().err


def test_project_hub_pubmedqa_leaves_out_the_trained_on_items(tmp_path):
    """qiaojin/PubMedQA pqa_labeled holds all 1,000 expert items; the 500 of the bundled training set go."""
    from medix_r1.eval.benchmarks import bundled_training_ids, load_benchmark

    trained = sorted(bundled_training_ids())[:2]
    rows = [{"pubid": int(i.removeprefix("pubmedqa-")), "question": f"Q{i}?", "context": {"contexts": ["c"]},
             "final_decision": "yes", "long_answer": "Yes."} for i in trained]
    rows.append({"pubid": 1, "question": "Held out?", "context": {"contexts": ["c"]}, "final_decision": "no",
                 "long_answer": "No."})
    records = load_benchmark("pubmedqa", data_files=write(tmp_path / "pqal.jsonl", rows))
    assert [r["id"] for r in records] == ["pubmedqa-1"]
    assert len(bundled_training_ids()) == 500
