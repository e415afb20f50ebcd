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


def test_regression_loss_keeps_the_gold_scores_in_fp32_under_bf16_autocast():
    # bf16 logits once pulled the labels down to bf16 with them: 4.2 -> 4.1875, a different loss and gradient.
    torch.manual_seed(0)
    model = BertForSequenceClassification._from_config(BertConfig(**CONFIG, num_labels=1), attn_implementation="sdpa")
    module = ClassificationModule(model, "stsb", TrainConfig()).eval()
    ids, mask, types = batch(rows=4)
    inputs = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types,
              "labels": torch.tensor([4.2, 3.8, 1.1, 2.6])}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours, theirs = module(inputs), model(**inputs)
    assert ours.loss.dtype == torch.float32
    torch.testing.assert_close(ours.loss, theirs.loss.float(), atol=1e-6, rtol=1e-6)
    assert module({k: v for k, v in inputs.items() if k != "labels"}).loss is None


class _Step(torch.nn.Module):
    """As Lightning wraps the module: the step runs inside the root's forward."""

    def __init__(self, module, metric: str):
        super().__init__()
        self.module, self.metric = module, metric

    def forward(self, inputs):
        return self.module.totals(inputs)[self.metric][0]


def _sharded_loss(module, metric: str, inputs: dict, block: type) -> tuple[float, float, torch.nn.Module]:
    """The loss of `module` alone, and with each `block` its own FSDP unit (as the pretraining trainer
    shards it), after that one's backward."""
    from torch.distributed.fsdp import FullyShardedDataParallel
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    expected = module.totals(inputs)[metric][0]
    sharded = FullyShardedDataParallel(_Step(module, metric), auto_wrap_policy=ModuleWrapPolicy({block}),
                                       use_orig_params=True, device_id=torch.device("cpu"))
    got = sharded(inputs)
    got.backward()
    return float(expected), float(got), sharded


def _fsdp_rank(rank: int, port: int, results) -> None:
    import os

    import torch.distributed as dist
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.models.bert.modeling_bert import BertLayer
    from transformers.models.gpt2.modeling_gpt2 import GPT2Block

    from lmforge.components.pretraining.module import GptPretrainModule

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        module = BertPretrainModule(BertForMaskedLM._from_config(BertConfig(**CONFIG), attn_implementation="sdpa"),
                                    TrainConfig()).eval()
        ids, mask, types = batch()
        labels = torch.full_like(ids, -100)
        labels[:, 3] = ids[:, 3]
        inputs = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "labels": labels}
        expected, got, _ = _sharded_loss(module, "mlm_loss", inputs, BertLayer)

        # GPT's fused vocabulary head (`training.linear_ce`) reads the tied embedding, a root parameter,
        # beside blocks that are their own units: the same loss, and it trains.
        torch.manual_seed(0)
        gpt = GPT2LMHeadModel._from_config(GPT2Config(vocab_size=97, n_embd=32, n_layer=2, n_head=4, n_positions=32),
                                           attn_implementation="sdpa")
        gpt_expected, gpt_got, sharded = _sharded_loss(GptPretrainModule(gpt, TrainConfig()).eval(), "loss",
                                                       {"input_ids": ids, "labels": ids}, GPT2Block)
        grad = sharded.module.module.model.transformer.wte.weight.grad
        results[rank] = (expected, got, gpt_expected, gpt_got, float(grad.abs().sum()))
    except Exception as error:  # reported to the test, not lost in the child
        results[rank] = repr(error)
    finally:
        dist.destroy_process_group()


def test_fsdp_sharded_layers_take_the_full_forward_and_train():
    # states_at calls the last layer's submodules directly, around FSDP's gathering of their shards: on
    # 2 ranks that crashed ("mat2 must be a matrix"). A wrapped last layer now takes the full forward.
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_fsdp_rank, args=(port, results), nprocs=2)
    for rank in (0, 1):
        assert not isinstance(results[rank], str), results[rank]
        expected, got, gpt_expected, gpt_got, gpt_grad = results[rank]
        assert got == pytest.approx(expected, rel=1e-5)
        assert gpt_got == pytest.approx(gpt_expected, rel=1e-5) and gpt_grad > 0
