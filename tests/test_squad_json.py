"""SQuAD's official JSON, v1.1 and v2.0, read into the Hub's squad / squad_v2 rows."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402

from lmforge.components.data.schemas import SQUAD_FEATURES  # noqa: E402
from lmforge.components.data.squad_json import read_squad_json, squad_task  # noqa: E402
from lmforge.components.errors import LmforgeError  # noqa: E402

NOTRE_DAME = (
    'Architecturally, the school has a Catholic character. Atop the Main Building\'s gold dome is a golden statue '
    'of the Virgin Mary. Immediately behind the basilica is the Grotto, a Marian place of prayer and reflection.'
)
NORMANS = " The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, a region in France."


def v11():
    return {
        "version": "1.1",
        "data": [
            {
                "title": "University_of_Notre_Dame",
                "paragraphs": [
                    {
                        "context": NOTRE_DAME,
                        "qas": [
                            {
                                "id": "5733be284776f41900661182",
                                "question": "What is atop the Main Building?",
                                "answers": [{"answer_start": 92, "text": "a golden statue of the Virgin Mary"}],
                            },
                            {
                                "id": "5733be284776f4190066117f",
                                "question": "What is behind the basilica?",
                                "answers": [
                                    {"answer_start": 163, "text": "the Grotto"},
                                    {"answer_start": 163, "text": "the Grotto, a Marian place of prayer"},
                                ],
                            },
                        ],
                    }
                ],
            }
        ],
    }


def v20():
    return {
        "version": "v2.0",
        "data": [
            {
                "title": "Normans",
                "paragraphs": [
                    {
                        "context": NORMANS,  # leading space kept, as the Hub keeps it
                        "qas": [
                            {
                                "question": "In what country is Normandy located?",
                                "id": "56ddde6b9a695914005b9628",
                                "answers": [{"text": "France", "answer_start": 105}],
                                "is_impossible": False,
                            },
                            {
                                "plausible_answers": [{"text": "Normans", "answer_start": 5}],
                                "question": "Who gave their name to Normandy in the 1000's and 1100's",
                                "id": "5ad39d53604f3c001a3fe8d1",
                                "answers": [],
                                "is_impossible": True,
                            },
                        ],
                    }
                ],
            }
        ],
    }


def write(tmp_path, name, doc):
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc), encoding="utf-8")
    return path


def test_v11_rows_match_the_hub(tmp_path):
    files = {"train": write(tmp_path, "train-v1.1.json", v11()), "validation": write(tmp_path, "dev-v1.1.json", v11())}
    assert squad_task(files) == "squad"
    data = read_squad_json(files)
    assert list(data) == ["train", "validation"]
    assert data["train"].features == SQUAD_FEATURES
    assert data["train"].column_names == list(SQUAD_FEATURES)
    assert data["train"][1] == {
        "id": "5733be284776f4190066117f",
        "title": "University_of_Notre_Dame",
        "context": NOTRE_DAME,
        "question": "What is behind the basilica?",
        "answers": {"text": ["the Grotto", "the Grotto, a Marian place of prayer"], "answer_start": [163, 163]},
    }


def test_v20_impossible_questions_have_empty_answers_and_plausible_dropped(tmp_path):
    files = {"train": write(tmp_path, "train-v2.0.json", v20())}
    assert squad_task(files) == "squad_v2"
    data = read_squad_json(files)
    assert data["train"].column_names == list(SQUAD_FEATURES)
    assert data["train"][0]["context"] == NORMANS
    assert data["train"][0]["answers"] == {"text": ["France"], "answer_start": [105]}
    assert data["train"][1]["answers"] == {"text": [], "answer_start": []}


def test_task_is_v2_from_is_impossible_alone(tmp_path):
    doc = v20()
    del doc["version"]
    assert squad_task({"train": write(tmp_path, "t.json", doc)}) == "squad_v2"


def test_task_is_v2_from_version_alone(tmp_path):
    doc = v11()
    doc["version"] = "v2.0"
    assert squad_task({"train": write(tmp_path, "t.json", doc)}) == "squad_v2"


def test_version_argument_forces_the_task(tmp_path):
    files = {"train": write(tmp_path, "t.json", v11())}
    assert len(read_squad_json(files, version="v2.0")["train"]) == 2
    with pytest.raises(LmforgeError, match=r"SQuAD version '3': expected"):
        read_squad_json(files, version="3")


def test_title_defaults_to_empty(tmp_path):
    doc = v11()
    del doc["data"][0]["title"]
    assert read_squad_json({"train": write(tmp_path, "t.json", doc)})["train"][0]["title"] == ""


# --- errors: one per case ---------------------------------------------------------------------


def test_not_json(tmp_path):
    path = write(tmp_path, "train.json", '{"version": "1.1",\n "data": [,]}')
    with pytest.raises(LmforgeError, match=r"train\.json line 2 column 11: not valid JSON \(Expecting value\)"):
        read_squad_json({"train": path})


def test_no_data_key(tmp_path):
    path = write(tmp_path, "train.json", {"version": "1.1", "articles": []})
    with pytest.raises(LmforgeError, match=r"train\.json: no 'data' key"):
        read_squad_json({"train": path})


def test_paragraph_without_context(tmp_path):
    doc = v11()
    del doc["data"][0]["paragraphs"][0]["context"]
    with pytest.raises(LmforgeError, match=r"train\.json data\[0\]\.paragraphs\[0\]: missing field 'context'$"):
        read_squad_json({"train": write(tmp_path, "train.json", doc)})


def test_question_without_id(tmp_path):
    doc = v11()
    del doc["data"][0]["paragraphs"][0]["qas"][1]["id"]
    with pytest.raises(LmforgeError, match=r"train\.json data\[0\]\.paragraphs\[0\]\.qas\[1\]: missing field 'id'$"):
        read_squad_json({"train": write(tmp_path, "train.json", doc)})


def test_question_without_question(tmp_path):
    doc = v11()
    del doc["data"][0]["paragraphs"][0]["qas"][0]["question"]
    with pytest.raises(LmforgeError, match=r"qas\[0\] \(id 5733be284776f41900661182\): missing field 'question'$"):
        read_squad_json({"train": write(tmp_path, "train.json", doc)})


def test_answer_start_off_the_text(tmp_path):
    doc = v11()
    doc["data"][0]["paragraphs"][0]["qas"][0]["answers"][0]["answer_start"] = 89
    with pytest.raises(LmforgeError) as e:
        read_squad_json({"train": write(tmp_path, "train.json", doc)})
    assert str(e.value) == (
        f"{tmp_path / 'train.json'} question id 5733be284776f41900661182: answer_start 89 points at "
        "'is a golden statue of the Virgin M' in the context, expected the answer text 'a golden statue of the Virgin Mary'"
    )


def test_duplicate_ids(tmp_path):
    doc = v11()
    qas = doc["data"][0]["paragraphs"][0]["qas"]
    qas[1]["id"] = qas[0]["id"]
    with pytest.raises(LmforgeError, match=r"train\.json .*qas\[1\].*: duplicate question id '5733be284776f41900661182', "
                                           r"first at data\[0\]\.paragraphs\[0\]\.qas\[0\]"):  # fmt: skip
        read_squad_json({"train": write(tmp_path, "train.json", doc)})


def test_unanswered_question_in_v11(tmp_path):
    doc = v11()
    doc["data"][0]["paragraphs"][0]["qas"][0]["answers"] = []
    with pytest.raises(LmforgeError, match=r"qas\[0\] \(id 5733be284776f41900661182\): no answer; SQuAD v1\.1 needs"):
        read_squad_json({"train": write(tmp_path, "train.json", doc)})


def test_answer_start_not_an_integer(tmp_path):
    doc = v11()
    doc["data"][0]["paragraphs"][0]["qas"][0]["answers"][0]["answer_start"] = "92"
    with pytest.raises(LmforgeError, match=r"answers\[0\]: field 'answer_start' is \"92\", expected an integer"):
        read_squad_json({"train": write(tmp_path, "train.json", doc)})


def test_non_utf8(tmp_path):
    path = tmp_path / "train.json"
    path.write_bytes(b'{"version": "1.1",\n"data": ["caf\xe9"]}')
    with pytest.raises(LmforgeError, match=r"train\.json line 2: byte 0xe9 at offset 32 is not UTF-8"):
        read_squad_json({"train": path})


def test_missing_file(tmp_path):
    with pytest.raises(LmforgeError, match=r"nope\.json: cannot read SQuAD JSON file"):
        read_squad_json({"train": tmp_path / "nope.json"})
