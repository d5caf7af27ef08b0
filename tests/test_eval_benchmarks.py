"""Benchmark registry and the mapping of each source format (hand-made rows) to eval records."""
import json

import pytest

from medix_r1.eval.benchmarks import (
    BUNDLED_PUBMEDQA,
    PAPER_BENCHMARKS,
    REGISTRY,
    from_medix,
    from_medmcqa,
    from_medqa,
    from_mmlu,
    from_open_vqa,
    from_pmc_vqa,
    from_pubmedqa_hub,
    from_report,
    load_benchmark,
)


def test_registry_has_the_17_paper_benchmarks():
    assert len(PAPER_BENCHMARKS) == 17
    kinds = [REGISTRY[n].kind for n in PAPER_BENCHMARKS]
    assert kinds.count("text") == 11 and kinds.count("image") == 6
    assert sum(n.startswith("mmlu_") for n in PAPER_BENCHMARKS) == 6


def test_bundled_pubmedqa_default():
    records = load_benchmark("pubmedqa_bundled")
    assert len(records) == 500
    first = records[0]
    with open(BUNDLED_PUBMEDQA) as fh:
        raw = json.loads(fh.readline())
    assert first["id"] == raw["id"] and first["benchmark"] == "pubmedqa_bundled"
    assert first["reference"] == raw["solution"].split(">", 1)[1].strip()
    assert first["question"] == raw["question"] and first["problem"] == raw["problem"]
    assert raw["decision"] in first["exact_answers"] and first["modality"] == "<OTHER>"
    assert len(load_benchmark("pubmedqa_bundled", limit=7)) == 7


def test_load_local_csv_and_jsonl(tmp_path):
    csv_path = tmp_path / "pmc.csv"
    csv_path.write_text("index,Figure_path,Question,Choice A,Choice B,Choice C,Choice D,"
                        "Answer_label\n7,f.jpg,Which organ?,A:Liver,B:Lung,C:Heart,D:Kidney,D\n")
    (pmc,) = load_benchmark("pmc_vqa_hard", data_files=str(csv_path))
    assert (pmc["id"], pmc["reference"], pmc["images"]) == ("7", "D. Kidney", ["f.jpg"])
    rows = [{"question": f"Q{i}?", "choices": ["a", "b", "c", "d"], "answer": i % 4}
            for i in range(5)]
    jl = tmp_path / "mmlu.jsonl"
    jl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    records = load_benchmark("mmlu_anatomy", data_files=str(jl), limit=3)
    assert [r["reference"] for r in records] == ["A. a", "B. b", "C. c"]
    with pytest.raises(ValueError, match="data_files"):
        load_benchmark("mmlu_anatomy", data_files=str(tmp_path / "x.txt"))


def test_load_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown benchmark"):
        load_benchmark("nope")
    with pytest.raises(ValueError, match="limit"):
        load_benchmark("pubmedqa_bundled", limit=0)
    with pytest.raises(ValueError, match="--data-files mimic_cxr_report"):
        load_benchmark("mimic_cxr_report")


def test_mmlu_mapping():
    r = from_mmlu({"question": "Which bone?", "choices": ["Femur", "Tibia", "Ulna", "Rib"],
                   "answer": 2}, 4, "mmlu_anatomy")
    assert r["id"] == "4" and r["reference"] == "C. Ulna"
    assert "C. Ulna" in r["problem"] and "A. Femur" in r["problem"]
    assert {"Ulna", "C", "(C)", "C. Ulna"} <= set(r["exact_answers"])
    with pytest.raises(ValueError, match="answer index 7"):
        from_mmlu({"question": "q", "choices": ["a", "b"], "answer": 7}, 0, "mmlu_anatomy")
    with pytest.raises(TypeError, match="answer index"):
        from_mmlu({"question": "q", "choices": ["a", "b"], "answer": "1"}, 0, "mmlu_anatomy")


def test_medmcqa_mapping():
    r = from_medmcqa({"id": "m1", "question": "Vitamin for scurvy?", "opa": "A vit",
                      "opb": "C vit", "opc": "D vit", "opd": "K vit", "cop": 1}, 0, "medmcqa")
    assert r["id"] == "m1" and r["reference"] == "B. C vit"


def test_medqa_mapping_dict_and_list_options():
    row = {"question": "Next step?", "options": {"B": "CT", "A": "MRI", "C": "X-ray"},
           "answer_idx": "B", "answer": "CT"}
    r = from_medqa(row, 3, "medqa")
    assert r["reference"] == "B. CT" and r["problem"].index("A. MRI") < r["problem"].index("B. CT")
    listed = dict(row, options=[{"key": k, "value": v} for k, v in row["options"].items()])
    assert from_medqa(listed, 3, "medqa")["reference"] == "B. CT"
    with pytest.raises(ValueError, match="answer_idx"):
        from_medqa(dict(row, answer_idx="E"), 0, "medqa")


def test_pubmedqa_hub_mapping():
    row = {"pubid": 123, "question": "Does X help?", "context": {"contexts": ["A.", "B."]},
           "long_answer": "X helps a bit.", "final_decision": "maybe"}
    r = from_pubmedqa_hub(row, 0, "pubmedqa")
    assert r["id"] == "pubmedqa-123" and r["reference"] == "Maybe. X helps a bit."
    assert r["problem"] == "Context: A. B.\n\nQuestion: Does X help?"
    assert "maybe" in r["exact_answers"]


def test_open_vqa_and_pmc_vqa_mappings():
    r = from_open_vqa({"image": "img1.png", "question": "Is there a fracture?", "answer": "yes"},
                      9, "vqa_rad")
    assert r["images"] == ["img1.png"] and r["reference"] == "yes" and r["id"] == "9"
    with pytest.raises(ValueError, match="image"):
        from_open_vqa({"question": "q", "answer": "a"}, 0, "pathvqa")
    p = from_pmc_vqa({"Figure_path": "f.jpg", "Question": "Which organ?", "Choice A": "A:Liver",
                      "Choice B": "B:Lung", "Choice C": "C:Heart", "Choice D": "D:Kidney",
                      "Answer_label": "B"}, 0, "pmc_vqa")
    assert p["reference"] == "B. Lung" and p["images"] == ["f.jpg"]
    with pytest.raises(ValueError, match="Answer_label"):
        from_pmc_vqa({"Figure_path": "f", "Question": "q", "Choice A": "A:1", "Choice B": "B:2",
                      "Choice C": "C:3", "Choice D": "D:4", "Answer_label": "AB"}, 0, "pmc_vqa")


def test_report_and_medix_mappings():
    s = from_report({"study_id": "s1", "findings": "Clear lungs.", "impression": "No acute."},
                    0, "mimic_cxr_summarization")
    assert s["reference"] == "No acute." and "Clear lungs." in s["problem"] and not s["images"]
    g = from_report({"study_id": "s2", "image": "cxr.jpg", "report": "Normal chest."}, 0,
                    "mimic_cxr_report")
    assert g["images"] == ["cxr.jpg"] and g["modality"] == "<X_RAY>"
    m = from_medix({"id": "x", "images": [], "problem": "What is shown?",
                    "solution": "<CT_SCAN> Appendicitis."}, 0, "medix")
    assert m["reference"] == "Appendicitis." and m["modality"] == "<CT_SCAN>"
    with pytest.raises(ValueError, match="TAG"):
        from_medix({"problem": "p", "solution": "no tag"}, 0, "medix")
