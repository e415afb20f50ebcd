"""QA windows, answer positions and post-processing on contexts longer than one window."""

import re

import numpy as np
import pytest
from datasets import Dataset
from transformers import BertTokenizer

from lmforge.components.data.schemas import SQUAD_FEATURES
from lmforge.components.finetuning.qa_answers import postprocess_predictions, prepare_eval_features
from lmforge.components.finetuning.question_answering import prepare_train_features

MAX_LEN, STRIDE = 32, 8
QUESTION = "Where did she open a bakery?"  # [CLS] + 7 tokens + [SEP]: 22 context tokens per window
SHORT = ("Talia Brandt was born in Velmora in 1972. She studied chemistry at the Orvane Institute. "
         "After that she moved to Kestrel Bay, where she opened a bakery near the river bank.")
# The same with one more sentence: window 2 ends in "kest ##rel", the answer without its "bay".
LONG = SHORT.replace("Institute. ", "Institute. Her brother Oren plays the violin and writes books about rivers. ")
ANSWER = "Kestrel Bay"


@pytest.fixture(scope="module")
def tokenizer():
    # A WordPiece vocabulary of the texts' words, with "kestrel" split in two so one word is two tokens.
    words = sorted(set(re.findall(r"\w+|[^\w\s]", (LONG + " " + QUESTION).lower())) - {"kestrel"})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "kest", "##rel", *words]
    return BertTokenizer(vocab={w: i for i, w in enumerate(vocab)})


@pytest.fixture(scope="module")
def examples():
    def row(qid, context, answered=True):
        answers = {"text": [], "answer_start": []}
        if answered:
            answers = {"text": [ANSWER], "answer_start": [context.index(ANSWER)]}
        return {"id": qid, "title": "t", "context": context, "question": "  " + QUESTION, "answers": answers}

    rows = [row("short", SHORT), row("long", LONG), row("none", SHORT, answered=False)]
    return Dataset.from_list(rows, features=SQUAD_FEATURES)


def featurize(fn, examples, tokenizer, **kw):
    return examples.map(fn, batched=True, remove_columns=examples.column_names,
                        fn_kwargs={"tokenizer": tokenizer, "max_seq_length": MAX_LEN, "doc_stride": STRIDE, **kw})


def test_train_positions_point_at_the_answer_only_where_it_is_whole(examples, tokenizer):
    feats = featurize(prepare_train_features, examples, tokenizer)
    # short: 36 context tokens -> windows from token 0 and 14; long: 3 windows; none: 2.
    assert len(feats) == 7 and "offset_mapping" not in feats.column_names
    spans = [(f["start_positions"], f["end_positions"]) for f in feats]
    answer_windows = [1, 4]  # short's second window, long's third
    for i, (start, end) in enumerate(spans):
        if i in answer_windows:
            assert tokenizer.decode(feats[i]["input_ids"][start:end + 1]) == ANSWER.lower()
        else:  # no answer, or only part of it (long's second window): both at [CLS]
            assert (start, end) == (0, 0)
    assert tokenizer.convert_ids_to_tokens(feats[3]["input_ids"])[-3:] == ["kest", "##rel", "[SEP]"]
    # Not padded in map (the collator pads per batch) unless asked.
    assert min(len(ids) for ids in feats["input_ids"]) < MAX_LEN
    padded = featurize(prepare_train_features, examples, tokenizer, pad=True)
    assert {len(ids) for ids in padded["input_ids"]} == {MAX_LEN}


def test_eval_features_keep_example_ids_and_context_offsets(examples, tokenizer):
    feats = featurize(prepare_eval_features, examples, tokenizer)
    assert feats["example_id"] == ["short", "short", "long", "long", "long", "none", "none"]
    first = feats[0]
    seq = [None] + [0] * 7 + [None] + [1] * 22 + [None]  # [CLS] question [SEP] context [SEP]
    assert [o is None for o in first["offset_mapping"]] == [s != 1 for s in seq]
    # Offsets index the original context: the first context token is "Talia".
    start, end = first["offset_mapping"][9]
    assert SHORT[start:end] == "Talia"


def answer_logits(feats, example_id, window, context):
    """Where the answer's first and last tokens sit in an example's `window`-th feature."""
    f = [i for i, e in enumerate(feats["example_id"]) if e == example_id][window]
    offsets = feats[f]["offset_mapping"]
    start_char = context.index(ANSWER)
    s = next(k for k, o in enumerate(offsets) if o is not None and o[0] == start_char)
    e = next(k for k, o in enumerate(offsets) if o is not None and o[1] == start_char + len(ANSWER))
    return f, s, e


@pytest.fixture(scope="module")
def scored(examples, tokenizer):
    """Eval features and logits that point at the answer, among spans that must be skipped."""
    feats = featurize(prepare_eval_features, examples, tokenizer)
    start, end = np.zeros((len(feats), MAX_LEN)), np.zeros((len(feats), MAX_LEN))
    for example_id, window, context in (("short", 1, SHORT), ("long", 2, LONG), ("none", 1, SHORT)):
        f, s, e = answer_logits(feats, example_id, window, context)
        start[f, s], end[f, e] = 5.0, 5.0  # the answer: 10
    start[0, 2], end[0, 3] = 9.0, 9.0  # a span over question tokens: 18, not context
    start[0, 12], end[0, 10] = 7.0, 7.0  # end before start: 14
    start[1, 9], end[1, 30] = 8.0, 8.0  # 22 tokens long: over max_answer_length
    start[4, 20], end[4, 31] = 6.0, 50.0  # the last long window has 30 tokens: 31 is padding
    start[:, 0], end[:, 0] = 20.0, 20.0  # [CLS]: only ever the null answer
    return feats, start, end


def test_postprocess_finds_the_answer_in_a_later_window(examples, scored):
    feats, start, end = scored
    preds, diffs = postprocess_predictions(examples, feats, start, end, n_best=20, max_answer_length=10)
    assert preds == {"short": ANSWER, "long": ANSWER, "none": ANSWER}  # v1: always a span
    assert diffs["short"] == pytest.approx(40.0 - 10.0)


def test_v2_null_answer_wins_unless_the_threshold_allows_the_span(examples, scored):
    feats, start, end = scored
    start, end = start.copy(), end.copy()
    start[:, 0], end[:, 0] = 10.0, 10.0
    start[1, 0], end[1, 0] = 6.0, 6.0  # the null score is the lowest over the windows: 12
    start[6, 0], end[6, 0] = 2.0, 2.0  # none's second window: null 4 < the span's 10

    def run(threshold):
        return postprocess_predictions(examples, feats, start, end, max_answer_length=10, version_2=True,
                                       null_score_diff_threshold=threshold)

    preds, diffs = run(0.0)
    # short: null 12 - span 10 = 2 > 0: no answer. long: null 20 - 10 = 10. none: 4 - 10 = -6: the span.
    assert diffs == pytest.approx({"short": 2.0, "long": 10.0, "none": -6.0})
    assert preds == {"short": "", "long": "", "none": ANSWER}
    assert run(1.9)[0]["short"] == ""
    # "No answer" only when the difference is above the threshold: 2 is not above 2.
    assert run(2.0)[0] == {"short": ANSWER, "long": "", "none": ANSWER}
