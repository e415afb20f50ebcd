"""Seq2seq (BART-style) denoising: the corruptions, the collator, a tiny pretraining run and the ablation."""

import json
import random

import pytest
from datasets import Dataset, DatasetDict

from lmforge.components.config import CorruptionConfig, Seq2SeqAblationConfig, Seq2SeqPretrainConfig, TrackingConfig
from lmforge.components.params_file import validate_params
from lmforge.components.errors import LmforgeError
from lmforge.components.pretraining import corruptions as C
from tests.conftest import CORPUS

TINY = {"hidden_size": 64, "num_layers": 2, "num_heads": 2}
OFF = TrackingConfig(enabled=False)
MASK = 0
IDS = list(range(1, 101))  # distinct ids: what was kept, dropped or moved is visible


def test_token_masking_replaces_the_rate_of_tokens_in_place():
    out = C.mask_tokens(IDS, 0.3, MASK, random.Random(0))
    assert len(out) == len(IDS) and out.count(MASK) == 30
    assert all(o in (MASK, i) for o, i in zip(out, IDS))
    assert out == C.mask_tokens(IDS, 0.3, MASK, random.Random(0)) != C.mask_tokens(IDS, 0.3, MASK, random.Random(1))


def test_token_deletion_removes_tokens_and_keeps_the_order_of_the_rest():
    out = C.delete_tokens(IDS, 0.3, random.Random(0))
    assert len(out) == 70 and out == sorted(out) and set(out) < set(IDS)


@pytest.mark.parametrize("seed", range(20))
def test_text_infilling_replaces_each_span_with_one_mask(seed):
    lengths = C.span_lengths(len(IDS), 0.3, 3.0, random.Random(seed))
    out = C.infill(IDS, 0.3, MASK, random.Random(seed), 3.0)
    assert sum(lengths) == 30 and out.count(MASK) == len(lengths)
    assert len(out) == len(IDS) - sum(lengths) + len(lengths)
    kept = [t for t in out if t != MASK]
    assert kept == sorted(kept) and len(kept) == 70
    # Every run of missing tokens sits where a mask is: a gap in the ids has a mask between its ends.
    last, masked_since = 0, False
    for t in [*out, 101]:
        if t == MASK:
            masked_since = True
            continue
        assert t - last == 1 or masked_since, f"ids {last + 1}..{t - 1} went missing without a mask"
        last, masked_since = t, False


def test_text_infilling_inserts_a_mask_for_an_empty_span():
    seed = next(s for s in range(200) if 0 in C.span_lengths(len(IDS), 0.3, 3.0, random.Random(s)))
    lengths = C.span_lengths(len(IDS), 0.3, 3.0, random.Random(seed))
    out = C.infill(IDS, 0.3, MASK, random.Random(seed), 3.0)
    assert out.count(MASK) == len(lengths) > len([x for x in lengths if x])


def test_span_lengths_are_poisson():
    rng = random.Random(0)
    draws = [C.poisson(3.0, rng) for _ in range(4000)]
    assert sum(draws) / len(draws) == pytest.approx(3.0, abs=0.1)
    assert 0 in draws


def test_sentence_permutation_keeps_the_multiset_of_sentences():
    end = 1000
    ids = [1, 2, end, 3, 4, 5, end, 6, end, 7, 8]  # the tail without an end is a sentence too
    outs = [C.permute_sentences(ids, {end}, random.Random(s)) for s in range(10)]
    for out in outs:  # the output is the original's sentences, each once, in some order
        assert split_as(out, C.sentences(ids, {end}))
    assert any(out != ids for out in outs)


def split_as(out: list[int], parts: list[list[int]]) -> list[list[int]]:
    """`out` cut into pieces that are each one of `parts` (each used once), greedily."""
    left, pieces, i = [tuple(p) for p in parts], [], 0
    while i < len(out):
        match = next(p for p in left if tuple(out[i:i + len(p)]) == p)
        left.remove(match)
        pieces.append(list(match))
        i += len(match)
    assert not left
    return pieces


def test_document_rotation_is_a_rotation():
    for seed in range(10):
        out = C.rotate(IDS, random.Random(seed))
        k = IDS.index(out[0])
        assert k > 0 and out == IDS[k:] + IDS[:k]


def test_a_mix_that_sums_to_zero_is_one_line_naming_the_param():
    zero = {k: 0 for k in ("mask", "delete", "infill", "permute", "rotate")}
    with pytest.raises(LmforgeError) as err:
        validate_params({"pretrain": {"seq2seq": {"corruption": {"mix": zero}}}})
    assert "pretrain.seq2seq.corruption.mix: the weights of mask, delete, infill, permute, rotate sum to 0" in str(err.value)
    assert "\n" not in str(err.value)


def test_the_mix_draws_in_proportion_to_its_weights():
    cfg = CorruptionConfig.model_validate({"mix": {"infill": 3, "permute": 1}})
    rng = random.Random(0)
    kinds = [C.choose(cfg, rng) for _ in range(4000)]
    assert set(kinds) == {"infill", "permute"} and kinds.count("infill") / 4000 == pytest.approx(0.75, abs=0.03)


@pytest.fixture(scope="module")
def bart_tok(tokenizers_dir):
    from lmforge.components.pretraining.seq2seq_data import bart_tokenizer

    return bart_tokenizer(tokenizers_dir / "gpt")


def test_bart_tokenizer_keeps_the_gpt_ids_and_adds_bart_specials(tokenizers_dir, bart_tok):
    from transformers import AutoTokenizer

    gpt = AutoTokenizer.from_pretrained(str(tokenizers_dir / "gpt"))
    text = CORPUS[0]
    assert bart_tok(text, add_special_tokens=False)["input_ids"] == gpt(text)["input_ids"]
    ids = bart_tok(text)["input_ids"]
    assert ids[0] == bart_tok.bos_token_id and ids[-1] == bart_tok.eos_token_id
    assert {bart_tok.pad_token_id, bart_tok.mask_token_id} <= set(range(len(gpt), len(bart_tok)))


def test_collator_corrupts_inputs_labels_restore_the_original_and_batches_repeat(bart_tok):
    from lmforge.components.pretraining.seq2seq_data import DenoisingCollator

    docs = [bart_tok(t, add_special_tokens=False)["input_ids"] for t in CORPUS[:4]]
    cfg = CorruptionConfig.model_validate({"mix": {"infill": 1, "permute": 1, "mask": 1, "delete": 1, "rotate": 1}})
    collate = DenoisingCollator(bart_tok, cfg, seed=0, max_seq_length=128)
    batch = collate([{"input_ids": d, "batch_no": 3} for d in docs])
    for row, doc in zip(batch["labels"].tolist(), docs):
        assert [t for t in row if t != -100] == [bart_tok.bos_token_id, *doc, bart_tok.eos_token_id]
    inputs = [[t for t, m in zip(r, a) if m] for r, a in zip(batch["input_ids"].tolist(), batch["attention_mask"].tolist())]
    assert all(x[1:-1] != doc for x, doc in zip(inputs, docs))
    again = collate([{"input_ids": d, "batch_no": 3} for d in docs])
    other = collate([{"input_ids": d, "batch_no": 4} for d in docs])
    assert again["input_ids"].equal(batch["input_ids"]) and not other["input_ids"].equal(batch["input_ids"])


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "raw" / "corpus"
    DatasetDict({"train": Dataset.from_dict({"text": CORPUS * 2}), "validation": Dataset.from_dict({"text": CORPUS[:8]})}
                ).save_to_disk(str(path))
    return path


def pretrain_cfg(tmp_path, tokenizers_dir, **train):
    train = {"max_steps": 6, "batch_size": 8, "val_every_n_steps": 3, "checkpoint_every_n_steps": 3,
             "log_every_n_steps": 2, "warmup_steps": 1, **train}
    return Seq2SeqPretrainConfig.model_validate({
        "tokenizer": str(tokenizers_dir / "gpt"), "out_dir": str(tmp_path / "s2s"), "run_dir": str(tmp_path / "runs"),
        "metrics": str(tmp_path / "s2s.json"), "plot": str(tmp_path / "s2s.png"), "max_seq_length": 64,
        "model": TINY, "train": train,
    })


def test_pretraining_exports_a_seq2seq_model_that_loads_and_generates(tmp_path, tokenizers_dir, corpus):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from lmforge.components.evaluation.heldout import restored_word_accuracy
    from lmforge.components.pretraining.seq2seq import pretrain_seq2seq

    gpt_config = (tokenizers_dir / "gpt" / "tokenizer_config.json").read_text()
    out = pretrain_seq2seq(pretrain_cfg(tmp_path, tokenizers_dir), corpus, OFF)
    model = AutoModelForSeq2SeqLM.from_pretrained(str(out), use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    assert tokenizer.mask_token == "<mask>" and tokenizer.pad_token == "<pad>"
    written = model.generate(**tokenizer(["Talia Brandt was born in <mask>."], return_tensors="pt"), max_new_tokens=8)
    assert written.shape[0] == 1 and written[0, 1] == tokenizer.bos_token_id  # </s> starts, <s> is forced next
    metrics = json.loads((tmp_path / "s2s.json").read_text())
    assert metrics["steps"] == 6 and 0 <= metrics["val_accuracy"] <= 1 and (tmp_path / "s2s.png").exists()
    assert -1 <= metrics["val_input_gain"] <= 1 and 0 <= metrics["val_restore_token_accuracy"] <= 1
    # The GPT tokenizer on disk is left as it was: the model has its own copy.
    assert (tokenizers_dir / "gpt" / "tokenizer_config.json").read_text() == gpt_config
    scored = restored_word_accuracy(out, CORPUS[:5], 64)
    assert 0 <= scored["restored_word_accuracy"] <= 1 and scored["masked_words"] > 0


def test_ablation_writes_a_row_per_corruption_and_random_init(tmp_path, tokenizers_dir, corpus):
    from lmforge.components.evaluation.seq2seq_ablation import MEASURES, corruption_ablation

    qa = [("Where was Talia Brandt born?", "Velmora"), ("Where does Oren Vale work?", "Orvane Institute")] * 8
    DatasetDict({split: Dataset.from_dict({"question": [q for q, _ in qa], "answer": [a for _, a in qa]})
                 for split in ("train", "validation")}).save_to_disk(str(tmp_path / "raw" / "qa"))
    cfg = Seq2SeqAblationConfig(pretrain_steps=2, finetune_steps=2, finetune_batch_size=8, qa_dataset="qa",
                                heldout_documents=4, max_new_tokens=4, copy_warmup_steps=0,
                                out=str(tmp_path / "abl.json"), plot=str(tmp_path / "abl.png"))
    out = corruption_ablation(cfg, pretrain_cfg(tmp_path, tokenizers_dir), tmp_path / "raw", OFF)
    rows = json.loads(out.read_text())["rows"]
    assert [r["model"] for r in rows] == ["random-init", "mask", "delete", "infill", "permute", "rotate"]
    # The common yardstick: each row's mean over restoring every corruption, its own among them.
    assert all(0 <= r["restore_all_accuracy"] <= 1 for r in rows)
    assert all(0 <= r[m] <= 1 for r in rows for m in MEASURES if m != "input_gain")
    assert all(-1 <= r["input_gain"] <= 1 for r in rows)
    assert abs(rows[0]["input_gain"]) <= 0.05  # random weights: as (un)able with the input as without
    report = json.loads(out.read_text())
    assert set(report["reads_input"]) == {"mask", "delete", "infill", "permute", "rotate"}
    assert isinstance(report["verdict"], str) and report["verdict"]
    assert (tmp_path / "abl.png").stat().st_size > 0


def test_reading_the_input_is_measured_against_the_input_withheld(tokenizers_dir):
    """A decoder scores well under teacher forcing as a language model of its own prefix: the gain
    compares with the encoder given only <s></s>, the labels unchanged."""
    from lmforge.components.evaluation.seq2seq_ablation import verdict, withheld
    from lmforge.components.pretraining.seq2seq_data import bart_tokenizer, pad_pairs

    tokenizer = bart_tokenizer(tokenizers_dir / "gpt")
    batch = pad_pairs([([0, 5, 6, 7, 2], [0, 5, 6, 7, 2]), ([0, 9, 2], [0, 9, 8, 2])], tokenizer.pad_token_id)
    blind = withheld(batch, tokenizer)
    assert blind["input_ids"].tolist() == [[tokenizer.bos_token_id, tokenizer.eos_token_id]] * 2
    assert blind["attention_mask"].tolist() == [[1, 1]] * 2 and blind["labels"] is batch["labels"]
    assert "no corruption taught" in verdict([{"model": "mask", "input_gain": 0.001, "restore_all_accuracy": 0.5},
                                              {"model": "rotate", "input_gain": -0.01, "restore_all_accuracy": 0.6}])
    # Ranked by restoring every corruption, not by the gain under its own: masking leaves most tokens
    # in place, so its own is the easiest to read back.
    line = verdict([{"model": "mask", "input_gain": 0.7, "restore_all_accuracy": 0.42},
                    {"model": "infill", "input_gain": 0.4, "restore_all_accuracy": 0.52},
                    {"model": "rotate", "input_gain": 0.0, "restore_all_accuracy": 0.9}])
    assert line == ("infill taught the most: restoring every corruption, token accuracy infill 0.520, mask 0.420; "
                    "rotate did not read the input")


def test_every_row_starts_from_the_same_copy_trained_weights(tmp_path, tokenizers_dir, corpus, monkeypatch):
    """The warm-up copies rows of ordinary random tokens (the labels are the input), once; each row
    then starts from those weights, not from where the row before it (and its QA fine-tune) left them."""
    import torch

    import lmforge.components.evaluation.seq2seq_ablation as ablation
    from lmforge.components.pretraining.seq2seq_data import bart_tokenizer

    warmup, kept, begins = [], [], []
    real_train_steps, real_restoration, real_briefly = ablation.train_steps, ablation.restoration, ablation.pretrain_briefly

    def train_steps(model, batches, train, steps):
        if not warmup:  # the stage's first training is the warm-up
            warmup.extend(batch for _, batch in zip(range(steps), batches))
            batches = iter(warmup)
        real_train_steps(model, batches, train, steps)

    def weights(model):
        return model.model.shared.weight.detach().clone()

    def restoration(model, *args, **kwargs):
        kept.append(weights(model))
        return real_restoration(model, *args, **kwargs)

    def pretrain_briefly(model, *args, **kwargs):
        begins.append(weights(model))
        return real_briefly(model, *args, **kwargs)

    monkeypatch.setattr(ablation, "train_steps", train_steps)
    monkeypatch.setattr(ablation, "restoration", restoration)
    monkeypatch.setattr(ablation, "pretrain_briefly", pretrain_briefly)
    qa = [("Where was Talia Brandt born?", "Velmora")] * 8
    DatasetDict({split: Dataset.from_dict({"question": [q for q, _ in qa], "answer": [a for _, a in qa]})
                 for split in ("train", "validation")}).save_to_disk(str(tmp_path / "raw" / "qa"))
    cfg = Seq2SeqAblationConfig(pretrain_steps=2, finetune_steps=2, finetune_batch_size=4, qa_dataset="qa",
                                heldout_documents=2, max_new_tokens=2, copy_warmup_steps=3,
                                corruptions=["mask", "rotate"], out=str(tmp_path / "abl.json"),
                                plot=str(tmp_path / "abl.png"))
    pretrain = pretrain_cfg(tmp_path, tokenizers_dir)
    report = json.loads(ablation.corruption_ablation(cfg, pretrain, tmp_path / "raw", OFF).read_text())
    assert [r["model"] for r in report["rows"]] == ["copy-warmup", "mask", "rotate"]
    assert report["copy_warmup_steps"] == 3 and len(warmup) == 3
    special = set(bart_tokenizer(tokenizers_dir / "gpt").all_special_ids)
    for batch in warmup:
        body = batch["input_ids"][:, 1:-1]
        assert body.shape[1] == 30 and not set(body.unique().tolist()) & special
        assert torch.equal(batch["labels"], batch["input_ids"])
    # The baseline row is the warm-up's weights; each corruption begins from them again.
    assert len(begins) == 2 and all(torch.equal(begin, kept[0]) for begin in begins)
    assert not torch.equal(kept[1], kept[0]) and not torch.equal(kept[2], kept[1])


def test_ablation_needs_demo_questions_or_a_qa_dataset(tmp_path, tokenizers_dir, corpus):
    from lmforge.components.evaluation.seq2seq_ablation import corruption_ablation

    cfg = Seq2SeqAblationConfig(out=str(tmp_path / "abl.json"), plot=str(tmp_path / "abl.png"))
    with pytest.raises(LmforgeError, match=r"seq2seq_ablation.qa_dataset: .* is not the built-in demo corpus"):
        corruption_ablation(cfg, pretrain_cfg(tmp_path, tokenizers_dir), tmp_path / "raw", OFF)


def test_demo_world_questions_train_on_train_people_and_score_on_eval_people():
    from lmforge.components.data.world import build_world
    from lmforge.components.evaluation.seq2seq_ablation import world_pairs

    world = build_world(0, 20)
    train, held = world_pairs(world)
    person = world.people_in("eval")[0]
    assert (f"Where was {person.name} born?", person.birth_city.name) in held
    assert not any(person.name in q for q, _ in train)
