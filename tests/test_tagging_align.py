"""Word labels onto sub-tokens (first sub-token only) and predictions back to tags."""

import numpy as np
import pytest
from datasets import Dataset
from transformers import BertTokenizer

from lmforge.components.data.schemas import CONLL_FEATURES, CONLL_NER_TAGS
from lmforge.components.finetuning.metrics import seqeval_metrics
from lmforge.components.finetuning.token_classification import align_labels, tags_from_predictions

O, B_PER, I_PER, B_LOC, I_LOC = (CONLL_NER_TAGS.index(t) for t in ("O", "B-PER", "I-PER", "B-LOC", "I-LOC"))
ID2LABEL = dict(enumerate(CONLL_NER_TAGS))


@pytest.fixture(scope="module")
def tokenizer():
    # "Kestrel" is three pieces (kest ##re ##l), "Velmora" two (vel ##mora).
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "talia", "visited", "bay", "in", "kest", "##re", "##l",
             "vel", "##mora", "."]
    return BertTokenizer(vocab={w: i for i, w in enumerate(vocab)})


@pytest.fixture(scope="module")
def rows():
    return Dataset.from_dict({
        "id": ["0", "1"],
        "tokens": [["Talia", "visited", "Kestrel", "Bay", "."], ["Velmora"]],
        "ner_tags": [[B_PER, O, B_LOC, I_LOC, O], [B_LOC]],
    }, features=CONLL_FEATURES)


def encode(rows, tokenizer, **kw):
    return rows.map(align_labels, batched=True, remove_columns=rows.column_names,
                    fn_kwargs={"tokenizer": tokenizer, **kw})


def test_label_only_on_the_first_sub_token(rows, tokenizer):
    enc = encode(rows, tokenizer)
    tokens = tokenizer.convert_ids_to_tokens(enc[0]["input_ids"])
    assert tokens == ["[CLS]", "talia", "visited", "kest", "##re", "##l", "bay", ".", "[SEP]"]
    assert enc[0]["labels"] == [-100, B_PER, O, B_LOC, -100, -100, I_LOC, O, -100]
    assert enc[1]["labels"] == [-100, B_LOC, -100, -100]  # [CLS] vel ##mora [SEP]


def test_label_all_tokens_continues_the_entity(rows, tokenizer):
    enc = encode(rows, tokenizer, label_all_tokens=True)
    assert enc[0]["labels"] == [-100, B_PER, O, B_LOC, I_LOC, I_LOC, I_LOC, O, -100]  # B-LOC's pieces: I-LOC
    assert enc[1]["labels"] == [-100, B_LOC, I_LOC, -100]


def test_truncation_keeps_labels_aligned(rows, tokenizer):
    enc = encode(rows, tokenizer, max_length=5)  # [CLS] talia visited kest [SEP]
    assert enc[0]["labels"] == [-100, B_PER, O, B_LOC, -100]


def test_predictions_back_to_tags_and_scores(rows, tokenizer):
    enc = encode(rows, tokenizer)
    width = max(len(x) for x in enc["labels"])
    labels = np.full((2, width), -100)  # padded as a collator pads them
    for i, row in enumerate(enc["labels"]):
        labels[i, : len(row)] = row
    # Predictions at ignored positions are noise that must not count.
    preds = np.full((2, width), B_PER)
    preds[0, [1, 2, 3, 6, 7]] = [B_PER, O, B_PER, I_LOC, O]  # Kestrel's B-LOC predicted B-PER
    preds[1, 1] = B_LOC
    true_tags, pred_tags = tags_from_predictions(preds, labels, ID2LABEL)
    assert true_tags == [["B-PER", "O", "B-LOC", "I-LOC", "O"], ["B-LOC"]]
    assert pred_tags == [["B-PER", "O", "B-PER", "I-LOC", "O"], ["B-LOC"]]
    # Gold: PER, LOC(Kestrel Bay), LOC(Velmora). Predicted: PER, PER(Kestrel), LOC(Bay), LOC(Velmora).
    # Right: PER and Velmora: precision 2/4, recall 2/3.
    got = seqeval_metrics(true_tags, pred_tags)
    assert (got["precision"], got["recall"]) == pytest.approx((0.5, 2 / 3))
    assert got["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    # Logits (one more axis) are argmaxed; a label list works as id2label too.
    logits = np.eye(len(CONLL_NER_TAGS))[preds]
    assert tags_from_predictions(logits, labels, list(CONLL_NER_TAGS)) == (true_tags, pred_tags)
