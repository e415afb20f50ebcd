"""BERT's last layer run on the positions a head reads gives the full forward's numbers."""

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, BertForPreTraining, BertForSequenceClassification

from lmforge.components.config import TrainConfig
from lmforge.components.finetuning.classification import ClassificationModule
from lmforge.components.pretraining.module import BertPretrainModule
from lmforge.components.training import bert_top

CONFIG = dict(vocab_size=97, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
              max_position_embeddings=64, type_vocab_size=2)


def batch(rows=5, length=17, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 97, (rows, length), generator=g)
    mask = torch.ones(rows, length, dtype=torch.long)
    mask[1, 9:] = 0  # padded rows send attention down its masked path
    mask[3, 4:] = 0
    types = torch.zeros(rows, length, dtype=torch.long)
    types[:, 6:] = 1
    return ids, mask, types


@pytest.mark.parametrize("padded", [True, False])
def test_kept_states_and_their_gradients_equal_the_full_forward(padded):
    torch.manual_seed(0)
    model = BertForMaskedLM._from_config(BertConfig(**CONFIG), attn_implementation="sdpa").eval()
    ids, mask, types = batch()
    if not padded:
        mask = torch.ones_like(mask)
    keep = torch.rand(ids.shape, generator=torch.Generator().manual_seed(1)) < 0.3
    keep[2] = False  # a row with nothing to read
    keep[4, -1] = True

    full = model.bert(ids, attention_mask=mask, token_type_ids=types)[0][keep]
    full.square().sum().backward()
    full_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    part = bert_top.states_at(model.bert, keep, ids, mask, types)
    part.square().sum().backward()

    assert part.shape == full.shape == (int(keep.sum()), 32)
    torch.testing.assert_close(part, full, atol=1e-5, rtol=1e-5)
    for name, param in model.named_parameters():
        if name in full_grads:
            torch.testing.assert_close(param.grad, full_grads[name], atol=1e-5, rtol=1e-4, msg=name)
    # and it does skip work: the last layer's feed-forward saw only the kept rows
    seen = []
    model.bert.encoder.layer[-1].intermediate.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    bert_top.states_at(model.bert, keep, ids, mask, types)
    assert seen == [int(keep.sum())]


@pytest.mark.parametrize("regression", [False, True])
def test_classification_module_gives_the_hf_model_s_logits_and_loss(regression):
    torch.manual_seed(0)
    config = BertConfig(**CONFIG, num_labels=1 if regression else 3)
    model = BertForSequenceClassification._from_config(config, attn_implementation="sdpa")
    task = "stsb" if regression else "mnli"
    module = ClassificationModule(model, task, TrainConfig()).eval()
    ids, mask, types = batch()
    labels = torch.tensor([0.5, 3.0, 1.0, 4.5, 2.0]) if regression else torch.tensor([0, 2, 1, 1, 0])
    inputs = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "labels": labels}

    ours, theirs = module(inputs), model(**inputs)
    torch.testing.assert_close(ours.logits, theirs.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.loss, theirs.loss, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pair", [True, False])
def test_mlm_and_pair_totals_equal_those_of_the_full_encoder(pair, monkeypatch):
    torch.manual_seed(0)
    model_class = BertForPreTraining if pair else BertForMaskedLM
    module = BertPretrainModule(model_class._from_config(BertConfig(**CONFIG), attn_implementation="sdpa"),
                                TrainConfig()).eval()
    ids, mask, types = batch()
    labels = torch.full_like(ids, -100)
    picks = torch.rand(ids.shape, generator=torch.Generator().manual_seed(2)) < 0.2
    picks[:, 0] = False
    labels[picks & mask.bool()] = ids[picks & mask.bool()]
    inputs = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "labels": labels}
    if pair:
        inputs["next_sentence_label"] = torch.tensor([0, 1, 1, 0, 1])

    fast = module.totals(inputs)
    monkeypatch.setattr(bert_top, "supports", lambda bert: False)
    slow = module.totals(inputs)
    assert fast.keys() == slow.keys() == ({"mlm_loss", "mlm_accuracy", "loss"}
                                          | ({"pair_loss", "pair_accuracy"} if pair else set()))
    for name in fast:
        for a, b in zip(fast[name], slow[name]):
            torch.testing.assert_close(a.float(), b.float(), atol=1e-4, rtol=1e-5, msg=name)


def test_useful_flops_count_the_last_layer_where_the_loss_reads():
    from lmforge.components.pretraining.models import count_flops_per_token

    model = BertForMaskedLM._from_config(BertConfig(**CONFIG))
    full = count_flops_per_token(model, 64, head_fraction=0.15)
    sparse = count_flops_per_token(model, 64, head_fraction=0.15, top_fraction=0.15)
    # queries, attention output and feed-forward of the last layer (all but its keys and values)
    h, i = 32, 64
    rest = (h * h + h) + (h * h + h + 2 * h) + (h * i + i) + (i * h + h + 2 * h)
    assert full - sparse == pytest.approx(0.85 * (6 * rest + 12 * 64 * h))
