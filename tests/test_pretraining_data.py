"""BERT examples (NSP/SOP), masking, GPT blocks and the resumable sampler."""

import pytest
import torch
from datasets import Dataset
from transformers import AutoTokenizer

from lmforge.components.config import MaskingConfig
from lmforge.components.pretraining.bert_data import build_bert_examples, split_sentences
from lmforge.components.pretraining.collate import MaskingCollator, ResumableBatchSampler, mask_tokens
from lmforge.components.pretraining.gpt_data import build_gpt_blocks

# Each sentence is one distinct word, so a segment's words say which sentences it holds, in order.
WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"]


def numbered_docs(n_docs=40, per_doc=8):
    return Dataset.from_dict({"text": [
        " ".join(f"{WORDS[i % len(WORDS)]} {d}." for i in range(per_doc)) for d in range(n_docs)
    ]})


@pytest.fixture(scope="module")
def bert_tok():
    """A WordPiece tokenizer that knows every word of the numbered documents as one token."""
    from lmforge.components.config import BertTokenizerConfig
    from lmforge.components.tokenizer import train_bert_tokenizer

    return train_bert_tokenizer(numbered_docs(200), BertTokenizerConfig(vocab_size=300, min_frequency=1))


def segments(tok, ids, types):
    words = tok.convert_ids_to_tokens(ids)
    a = [w for w, t in zip(words, types) if t == 0 and w in WORDS]
    b = [w for w, t in zip(words, types) if t == 1 and w in WORDS]
    return a, b


def test_split_sentences_handles_english_and_chinese():
    assert split_sentences("One. Two? Three!") == ["One.", "Two?", "Three!"]
    assert split_sentences("我喜欢吃苹果。苹果公司发布了新手机。") == ["我喜欢吃苹果。", "苹果公司发布了新手机。"]


@pytest.mark.parametrize("objective", ["sop", "nsp"])
def test_pair_labels_are_balanced_and_mean_what_they_say(bert_tok, objective):
    docs = numbered_docs()
    examples = build_bert_examples(docs, bert_tok, 24, objective, short_seq_prob=0.0, seed=1)
    labels, checked = examples["next_sentence_label"], 0
    assert 0.35 < sum(labels) / len(labels) < 0.65
    for ex in examples:
        ids, types = ex["input_ids"], ex["token_type_ids"]
        assert ids[0] == bert_tok.cls_token_id and ids[-1] == bert_tok.sep_token_id and len(ids) <= 24
        assert ids.count(bert_tok.sep_token_id) == 2
        a, b = [[WORDS.index(w) for w in seg] for seg in segments(bert_tok, ids, types)]
        docs_seen = {t for t in bert_tok.convert_ids_to_tokens(ids) if t.isdigit()}
        if not (a and b):
            continue  # truncation can cut a one-sentence segment down to its number
        checked += 1
        in_order = max(a) < min(b)
        if objective == "sop":
            assert len(docs_seen) == 1  # both segments from one document
            assert in_order == (ex["next_sentence_label"] == 0)
            assert (max(b) < min(a)) == (ex["next_sentence_label"] == 1)
        elif ex["next_sentence_label"] == 0:
            assert len(docs_seen) == 1 and in_order and min(b) == max(a) + 1
        else:
            assert len(docs_seen) == 2  # B comes from another document
    assert checked >= len(examples) // 3  # the rest are one-sentence tails split in half


def test_objective_none_packs_full_rows_across_documents(bert_tok):
    """The corpus's tokens in order, in rows of exactly the maximum length (bar the last), crossing
    document boundaries with a [SEP] between documents; nothing lost, nothing repeated."""
    docs = numbered_docs()
    examples = build_bert_examples(docs, bert_tok, 32, "none", short_seq_prob=0.0, seed=0)
    assert "next_sentence_label" not in examples.column_names
    stream = []
    for ex in examples:
        ids = ex["input_ids"]
        assert set(ex["token_type_ids"]) == {0}
        assert ids[0] == bert_tok.cls_token_id and ids[-1] == bert_tok.sep_token_id
        assert ids[1] != bert_tok.sep_token_id
        body = ids[1:-1]
        # A row that ends with its document gives up the [SEP] between documents to its own.
        ends_a_document = bert_tok.convert_ids_to_tokens(body[-3:])[0] == "hotel"
        stream += [*body, bert_tok.sep_token_id] if ends_a_document else body
    assert [len(ex["input_ids"]) for ex in examples][:-1] == [32] * (len(examples) - 1)  # no padding but the last
    words = bert_tok.convert_ids_to_tokens(stream)
    assert [int(w) for w in words if w.isdigit()] == [d for d in range(len(docs)) for _ in range(8)]
    # A [SEP] exactly where a document ends: after its eighth sentence ("hotel <d>.").
    ends = [i for i, w in enumerate(words) if w == "[SEP]"]
    assert [words[i - 3:i - 1] for i in ends] == [["hotel", str(d)] for d in range(len(docs))]


def test_masking_rates_over_many_draws_and_specials_never_masked(bert_tok):
    cfg = MaskingConfig(mlm_probability=0.2, mask_token=0.6, random_token=0.3, keep=0.1)
    collate = MaskingCollator(bert_tok, cfg, seed=0)
    examples = build_bert_examples(numbered_docs(600), bert_tok, 64, "sop", 0.0, seed=0)
    chosen = as_mask = as_random = as_kept = maskable = 0
    special = torch.tensor(bert_tok.all_special_ids)
    for b in range(0, len(examples) - 16, 16):
        rows = [dict(examples[i], batch_no=b) for i in range(b, b + 16)]
        original = collate.pad([{k: v for k, v in r.items() if k != "batch_no"} for r in rows])["input_ids"]
        batch = collate(rows)
        picked = batch["labels"] != -100
        assert not torch.isin(original[picked], special).any(), "a special token or padding was chosen"
        assert torch.equal(batch["labels"][picked], original[picked])
        chosen += picked.sum().item()
        maskable += (~torch.isin(original, special)).sum().item()
        as_mask += (batch["input_ids"][picked] == bert_tok.mask_token_id).sum().item()
        as_kept += (batch["input_ids"][picked] == original[picked]).sum().item()
        replaced = batch["input_ids"][picked]
        as_random += ((replaced != original[picked]) & (replaced != bert_tok.mask_token_id)).sum().item()
        assert not torch.isin(batch["input_ids"][~picked], torch.tensor([bert_tok.mask_token_id])).any()
    assert chosen > 2000
    assert abs(chosen / maskable - 0.2) < 0.02
    assert abs(as_mask / chosen - 0.6) < 0.03
    # A random draw can land on the original token, so "kept" gains a little from "random".
    assert abs(as_random / chosen - 0.3) < 0.03
    assert abs(as_kept / chosen - 0.1) < 0.03


def test_masks_differ_per_batch_and_repeat_per_seed(bert_tok):
    collate = MaskingCollator(bert_tok, MaskingConfig(), seed=3)
    examples = build_bert_examples(numbered_docs(), bert_tok, 32, "sop", 0.0, seed=0)
    rows = lambda b: [dict(examples[i], batch_no=b) for i in range(8)]  # noqa: E731
    assert torch.equal(collate(rows(5))["labels"], collate(rows(5))["labels"])
    assert not torch.equal(collate(rows(5))["labels"], collate(rows(6))["labels"])


def test_whole_word_masking_chooses_whole_words():
    ids = torch.tensor([[2, 10, 11, 12, 20, 30, 31, 3, 0]])
    word_start = torch.tensor([[True, True, False, False, True, True, False, True, True]])
    maskable = torch.tensor([[False, True, True, True, True, True, True, False, False]])
    cfg = MaskingConfig(mlm_probability=0.5, whole_word=True)
    for seed in range(200):
        _, labels = mask_tokens(ids, maskable, cfg, 4, (5, 40), torch.Generator().manual_seed(seed), word_start)
        picked = (labels != -100)[0].tolist()
        assert picked[1] == picked[2] == picked[3] and picked[5] == picked[6]
        assert not (picked[0] or picked[7] or picked[8])


def test_gpt_blocks_are_documents_joined_by_end_of_text_and_cut_exactly(tokenizers_dir):
    tok = AutoTokenizer.from_pretrained(tokenizers_dir / "gpt")
    docs = Dataset.from_dict({"text": ["Talia was born in Velmora.", "Oren plays the violin.", "The bank."]})
    blocks = build_gpt_blocks(docs, tok, block_size=5)
    stream = []
    for text in docs["text"]:
        stream += tok(text)["input_ids"] + [tok.eos_token_id]
    expected = [stream[i : i + 5] for i in range(0, len(stream) // 5 * 5, 5)]
    assert blocks["input_ids"] == expected
    assert all(len(b) == 5 for b in blocks["input_ids"])


def test_sampler_resumes_exactly_and_shards_by_rank():
    full = list(ResumableBatchSampler(100, 8, 30, seed=4))
    resumed = list(ResumableBatchSampler(100, 8, 30, seed=4, start=17))
    assert resumed == full[17:]
    assert len({i for batch in full[:12] for i, _ in batch}) == 96  # one epoch: no repeats
    assert [i for i, _ in full[0]] != [i for i, _ in full[12]]  # a new order each epoch
    rank0 = list(ResumableBatchSampler(100, 4, 5, seed=4, rank=0, world_size=2))
    rank1 = list(ResumableBatchSampler(100, 4, 5, seed=4, rank=1, world_size=2))
    for a, b in zip(rank0, rank1):
        assert not {i for i, _ in a} & {i for i, _ in b}
