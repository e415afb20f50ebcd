"""CoNLL NER files (CoNLL-2003's 4 columns in IOB1, or plain token/tag BIO) read into the Hub's conll2003 rows."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
from datasets import List, Value  # noqa: E402

from lmforge.components.data.conll import iob1_to_iob2, read_conll  # noqa: E402
from lmforge.components.data.schemas import CONLL_FEATURES  # noqa: E402
from lmforge.components.errors import LmforgeError  # noqa: E402

# The start of CoNLL-2003's eng.train as first distributed: IOB1, so entities start with I-.
ENG_TRAIN = """-DOCSTART- -X- O O

EU NNP I-NP I-ORG
rejects VBZ I-VP O
German JJ I-NP I-MISC
call NN I-NP O
to TO I-VP O
boycott VB I-VP O
British JJ I-NP I-MISC
lamb NN I-NP O
. . O O

Peter NNP I-NP I-PER
Blackburn NNP I-NP I-PER

-DOCSTART- -X- O O

Germany NNP I-NP I-LOC
Poland NNP B-NP B-LOC
" " O O
"""

WNUT_LIKE = "Angela B-PER\nMerkel I-PER\nvisited O\nParis B-LOC\n\n\nok O\n"


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_conll2003_iob1_becomes_the_hubs_iob2(tmp_path):
    data = read_conll({"train": write(tmp_path, "eng.train", ENG_TRAIN)})
    train = data["train"]
    assert train.features == {**CONLL_FEATURES, "pos": List(Value("string")), "chunk": List(Value("string"))}
    assert train.column_names == ["id", "tokens", "ner_tags", "pos", "chunk"]
    assert train["id"] == ["0", "1", "2"]
    assert train[0]["tokens"] == ["EU", "rejects", "German", "call", "to", "boycott", "British", "lamb", "."]
    assert train[0]["ner_tags"] == [3, 0, 7, 0, 0, 0, 7, 0, 0]  # the Hub's conll2003 train[0]
    assert train[1]["ner_tags"] == [1, 2]  # B-PER I-PER
    assert train[2]["ner_tags"] == [5, 5, 0]  # IOB1's B-LOC after I-LOC: two entities, each B-LOC
    assert train[0]["pos"][:3] == ["NNP", "VBZ", "JJ"]
    assert train[0]["chunk"] == ["B-NP", "B-VP", "B-NP", "I-NP", "B-VP", "I-VP", "B-NP", "I-NP", "O"]
    assert train[2]["tokens"][2] == '"'


def test_two_column_bio_file_has_no_invented_columns(tmp_path):
    data = read_conll({"train": write(tmp_path, "a.txt", WNUT_LIKE), "validation": write(tmp_path, "b.txt", WNUT_LIKE)})
    assert list(data) == ["train", "validation"]
    assert data["train"].features == CONLL_FEATURES
    assert data["train"][:] == {
        "id": ["0", "1"],
        "tokens": [["Angela", "Merkel", "visited", "Paris"], ["ok"]],
        "ner_tags": [[1, 2, 0, 5], [0]],
    }


def test_tabs_and_crlf_accepted(tmp_path):
    data = read_conll({"train": write(tmp_path, "a.txt", "EU\tB-ORG\r\nsays\tO\r\n")})
    assert data["train"][0]["ner_tags"] == [3, 0]


def test_iob2_passes_through_iob1_converted():
    assert iob1_to_iob2(["B-PER", "I-PER", "O", "B-LOC"]) == ["B-PER", "I-PER", "O", "B-LOC"]
    assert iob1_to_iob2(["I-PER", "I-PER", "I-LOC", "O", "I-LOC"]) == ["B-PER", "I-PER", "B-LOC", "O", "B-LOC"]
    assert iob1_to_iob2(["I-MISC", "B-MISC", "I-MISC"]) == ["B-MISC", "B-MISC", "I-MISC"]


# --- errors: one per case ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "tag, why",
    [
        ("PERSON", "is not a BIO tag"),
        ("B-FOO", "has unknown entity type 'FOO' (expected LOC, MISC, ORG, PER)"),
        ("X-PER", "is not a BIO tag"),
    ],
)
def test_tag_outside_the_bio_set(tmp_path, tag, why):
    path = write(tmp_path, "eng.train", f"-DOCSTART- O\n\nJohn B-PER\n\nMary {tag}\n")
    with pytest.raises(LmforgeError) as e:
        read_conll({"train": path})
    message = str(e.value)
    assert message.startswith(f"{path} line 5: NER tag {tag!r} (last column) {why}")
    assert message.endswith("allowed: O, B-PER, I-PER, B-ORG, I-ORG, B-LOC, I-LOC, B-MISC, I-MISC")


def test_wrong_column_count(tmp_path):
    with pytest.raises(LmforgeError, match=r"x\.txt line 2: 3 columns, expected 2 \(token tag\) or 4"):
        read_conll({"train": write(tmp_path, "x.txt", "EU B-ORG\nsays VBZ O\n")})


def test_column_count_changes_mid_file(tmp_path):
    with pytest.raises(LmforgeError, match=r"x\.txt line 3: 2 columns, expected 4 as in the lines before"):
        read_conll({"train": write(tmp_path, "x.txt", "EU NNP I-NP I-ORG\n\nsays O\n")})


def test_no_sentences(tmp_path):
    with pytest.raises(LmforgeError, match=r"x\.txt: no sentences"):
        read_conll({"train": write(tmp_path, "x.txt", "-DOCSTART- -X- O O\n\n")})


def test_non_utf8(tmp_path):
    path = tmp_path / "x.txt"
    path.write_bytes(b"EU B-ORG\nM\xfcller B-PER\n")
    with pytest.raises(LmforgeError, match=r"x\.txt line 2: byte 0xfc at offset 10 is not UTF-8"):
        read_conll({"train": path})


def test_missing_file(tmp_path):
    with pytest.raises(LmforgeError, match=r"nope\.txt: cannot read CoNLL file"):
        read_conll({"train": tmp_path / "nope.txt"})
