"""`--protocol official`, second fidelity pass (issue 29): what the official run actually sent and
how it was served. PubMedQA's choices as yaml.safe_load reads them, the engine sized from the model
and the task (nothing cut), the checkpoint's generation_config.json defaults that `vllm serve`
applies, eval images re-encoded as the official client does, and MMMU's medical subsets."""
import json

import yaml

from medix_r1.eval.official.tasks import LETTERS, load_task

# eval/tasks.yaml of mbzuai-oryx/MediX-R1 at 94fd018, lines 80-93 (the pubmedqa entry), as written there
TASKS_YAML_PUBMEDQA = """\
llm:
  pubmedqa:
    path: sahalshajim/medix-eval-sets
    name: pubmedqa
    split: test
    question_column:
      - CONTEXTS
      - QUESTION
    answer:
      - final_decision
      - LONG_ANSWER
    choices:
      - yes
      - no
      - maybe
"""


def official_list_form(params: dict, row: dict) -> str:
    """The question the official loader builds for a list-form task (eval/utils.py lines 83-91):
    written here from the loader's rules, fed with the parameters yaml.safe_load returns."""
    text = ""
    for column in params["question_column"]:
        value = row[column]
        text += f"{column.lower().capitalize()}:\n{value[0] if isinstance(value, list) else value}\n\n"
    text += "Choices:"
    for i, option in enumerate(params["choices"]):
        if option is not None:
            text += f"\n{LETTERS[i]}. {option}"
    return text.strip()


def test_pubmedqa_choices_are_what_yaml_safe_load_made_of_tasks_yaml(tmp_path):
    params = yaml.safe_load(TASKS_YAML_PUBMEDQA)["llm"]["pubmedqa"]
    assert params["choices"] == [True, False, "maybe"]  # YAML 1.1: bare yes / no are booleans
    row = {"pubid": 1, "QUESTION": "Does X help?", "CONTEXTS": ["Ctx one.", "Ctx two."], "final_decision": "no",
           "LONG_ANSWER": "It did not."}
    data = tmp_path / "pubmedqa.jsonl"
    data.write_text(json.dumps(row) + "\n")
    items, _ = load_task("pubmedqa", data_files=[str(data)])
    assert items[0]["problem"] == official_list_form(params, row)
    assert items[0]["problem"].endswith("Choices:\nA. True\nB. False\nC. maybe")
    assert items[0]["reference"] == "no\nIt did not."
