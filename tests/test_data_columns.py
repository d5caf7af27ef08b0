"""Datasets in other shapes: data.columns renames a dataset's columns to the record's fields,
data.default_modality tags untagged solutions, data.subset names a hub configuration; a missing
column is an error that names it and lists the columns that exist."""
import json

import pytest

from medix_r1.config import load_config
from medix_r1.data.records import MalformedRecord, load_records

ROWS = [{"qid": 7, "question": "Does aspirin prevent heart attacks?", "answer": "Yes, in this trial.",
         "source": "trial"},
        {"qid": 8, "question": "Is the X-ray normal?", "answer": "<X_RAY> No, there is a fracture.",
         "source": "clinic"}]
MAP = {"qid": "id", "question": "problem", "answer": "solution"}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_columns_are_mapped_and_untagged_solutions_get_the_default_tag(tmp_path):
    records, skipped = load_records(write_jsonl(tmp_path / "qa.jsonl", ROWS), columns=MAP,
                                    default_modality="<OTHER>")
    assert skipped == 0
    assert [r["id"] for r in records] == ["7", "8"]
    assert records[0]["problem"] == ROWS[0]["question"] and records[0]["images"] == []
    assert records[0]["solution"] == "<OTHER> Yes, in this trial."
    assert records[1]["solution"] == "<X_RAY> No, there is a fracture."  # its own tag is kept
    assert records[0]["source"] == "trial" and "question" not in records[0]  # other columns stay, renamed go


def test_the_same_mapping_reads_parquet_and_json_arrays(tmp_path):
    import datasets
    datasets.Dataset.from_list(ROWS).to_parquet(str(tmp_path / "qa.parquet"))
    (tmp_path / "qa.json").write_text(json.dumps(ROWS))
    for name in ("qa.parquet", "qa.json"):
        records, _ = load_records(str(tmp_path / name), columns=MAP, default_modality="<OTHER>")
        assert [r["solution"] for r in records] == ["<OTHER> Yes, in this trial.", "<X_RAY> No, there is a fracture."]


def test_without_a_default_tag_an_untagged_solution_is_malformed(tmp_path):
    with pytest.raises(MalformedRecord, match="modality tag"):
        load_records(write_jsonl(tmp_path / "qa.jsonl", ROWS), columns=MAP, default_modality="")


def test_a_missing_column_is_named_with_the_columns_that_exist(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", ROWS)
    with pytest.raises(ValueError) as e:
        load_records(path, columns={"qid": "id", "prompt": "problem", "answer": "solution"})
    assert "'prompt'" in str(e.value) and "['answer', 'qid', 'question', 'source']" in str(e.value)
    with pytest.raises(ValueError) as e:  # no mapping: the record fields it lacks, and the columns
        load_records(path)
    assert "['id', 'problem', 'solution']" in str(e.value) and "'question'" in str(e.value)
    assert "data.columns" in str(e.value)


def test_config_checks_the_mapping_targets_and_the_default_tag():
    cfg = load_config("cpu_smollm2", ["data.columns={question: problem, answer: solution}", "data.subset=pqa_labeled"])
    assert cfg.data.columns == {"question": "problem", "answer": "solution"} and cfg.data.subset == "pqa_labeled"
    assert cfg.data.default_modality == "<OTHER>"
    with pytest.raises(ValueError, match="data.columns.question must be one of"):
        load_config("cpu_smollm2", ["data.columns={question: prompt}"])
    with pytest.raises(ValueError, match="several columns to \\['problem'\\]"):
        load_config("cpu_smollm2", ["data.columns={question: problem, text: problem}"])
    with pytest.raises(ValueError, match="data.default_modality must be one of"):
        load_config("cpu_smollm2", ["data.default_modality=<XRAY>"])


def test_subset_is_passed_to_the_hub_loader(monkeypatch):
    import datasets
    seen = {}

    def fake_load_dataset(path, name=None, split=None):  # no network: check what the loader is asked for
        seen.update(path=path, name=name, split=split)
        return datasets.Dataset.from_list(ROWS)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    records, _ = load_records("hub:org/medqa", split="test", subset="en", columns=MAP, default_modality="<OTHER>")
    assert seen == {"path": "org/medqa", "name": "en", "split": "test"} and len(records) == 2


# --- the image column: mapped, missing, a text field, all null; empty Parquet (issue 30, item 11) ------
IMG_ROWS = [{"id": "a", "problem": "What is shown?", "solution": "<X_RAY> A fracture.", "pic": "a.png"},
            {"id": "b", "problem": "What is shown?", "solution": "<X_RAY> Nothing.", "pic": ["b.png", "c.png"]}]


def test_an_image_column_renamed_by_columns_keeps_its_images(tmp_path):
    path = write_jsonl(tmp_path / "img.jsonl", IMG_ROWS)
    for kw in ({"columns": {"pic": "images"}, "image_column": "pic"}, {"image_column": "pic"},
               {"columns": {"pic": "images"}}):
        records, _ = load_records(path, **kw)
        assert [list(r["images"]) for r in records] == [["a.png"], ["b.png", "c.png"]], kw


@pytest.mark.parametrize("kw, words", [
    ({"image_column": "scan"}, ["img.jsonl", "data.image_column 'scan' is not a column", "'pic'"]),
    ({"image_column": "solution"}, ["data.image_column 'solution'", "name the column that holds the images"]),
    ({"image_column": "question", "columns": {"question": "problem"}}, ["data.image_column 'question'"]),
])
def test_a_wrong_image_column_is_one_error_naming_it(tmp_path, kw, words):
    path = write_jsonl(tmp_path / "img.jsonl", IMG_ROWS)
    with pytest.raises(ValueError) as e:
        load_records(path, **kw)
    assert not isinstance(e.value, KeyError)
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_an_all_null_image_column_means_no_images(tmp_path):
    import datasets
    rows = [{k: v for k, v in r.items() if k != "pic"} | {"image": None} for r in IMG_ROWS]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "null.parquet"))
    for kw in ({}, {"image_column": "image"}):
        records, _ = load_records(str(tmp_path / "null.parquet"), **kw)
        assert [list(r["images"]) for r in records] == [[], []]


def test_an_empty_parquet_file_is_one_error_naming_it(tmp_path, capsys):
    import datasets
    (tmp_path / "empty.parquet").write_bytes(b"")
    datasets.Dataset.from_list(IMG_ROWS[:1]).select([]).to_parquet(str(tmp_path / "zero.parquet"))
    for name in ("empty.parquet", "zero.parquet"):
        with pytest.raises(ValueError, match=f"{name}: cannot be read as Parquet records"):
            load_records(str(tmp_path / name))
    from medix_r1.train.cli import main
    assert main(["--set", f"data.train={tmp_path / 'empty.parquet'}", "--output-dir", str(tmp_path / "run")]) == 2
    err = error_lines(capsys)
    assert len(err) == 1 and "empty.parquet" in err[0] and "Traceback" not in err[0]
    assert main(["--set", f"data.train={write_jsonl(tmp_path / 'img.jsonl', IMG_ROWS)}", "--set",
                 "data.image_column=solution", "--output-dir", str(tmp_path / "run2")]) == 2
    err = error_lines(capsys)
    assert len(err) == 1 and "data.image_column 'solution'" in err[0]


def error_lines(capsys) -> list[str]:
    """stderr without the datasets library's progress bars."""
    return [x for x in capsys.readouterr().err.replace("\r", "\n").splitlines() if x.strip() and "[00:" not in x]
