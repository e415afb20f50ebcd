"""The vocabulary head fused into the loss gives the numbers and gradients of logits + F.cross_entropy."""

import pytest
import torch
import torch.nn.functional as F
from transformers import BartConfig, BartForConditionalGeneration, GPT2Config, GPT2LMHeadModel

from lmforge.components.config import TrainConfig
from lmforge.components.pretraining import module as pretraining
from lmforge.components.training import linear_ce
from lmforge.components.training.linear_ce import linear_cross_entropy

VOCAB = 97


def rows(n=50, width=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden, weight = torch.randn(n, width, generator=g), torch.randn(VOCAB, width, generator=g) * 0.3
    labels = torch.randint(0, VOCAB, (n,), generator=g)
    labels[::4] = -100
    return hidden, weight, labels


@pytest.mark.parametrize("with_bias", [False, True])
def test_loss_right_count_and_gradients_equal_cross_entropy_over_logits_in_several_chunks(monkeypatch, with_bias):
    monkeypatch.setattr(linear_ce, "CHUNK_BYTES", 4 * VOCAB * 64)  # 64 rows a chunk: 50 + 50 rows, the last chunk short
    hidden, weight, labels = rows(n=150)
    bias = torch.randn(VOCAB) if with_bias else None
    h1, w1 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    logits = h1 @ w1.T + (0 if bias is None else bias)
    expected = F.cross_entropy(logits, labels, reduction="sum")
    (expected * 0.7).backward()
    h2, w2 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss, right = linear_cross_entropy(h2, w2, labels, bias)
    (loss * 0.7).backward()  # backward scales the gradients the forward computed
    torch.testing.assert_close(loss, expected.detach())
    assert int(right) == int(((logits.argmax(-1) == labels) & (labels != -100)).sum())
    torch.testing.assert_close(h2.grad, h1.grad)
    torch.testing.assert_close(w2.grad, w1.grad)
    assert h2.grad[labels == -100].abs().max() == 0  # ignored rows get no gradient
    with torch.no_grad():  # validation: the loss alone, no gradient work
        torch.testing.assert_close(linear_cross_entropy(hidden, weight, labels, bias)[0], expected.detach())


def test_bf16_autocast_matmuls_in_bf16_softmax_in_fp32_gradients_in_the_weights_dtype():
    hidden, weight, labels = rows()
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = linear_cross_entropy(h, w, labels)
        expected = F.cross_entropy((hidden @ weight.T).float(), labels, reduction="sum")
    loss.backward()
    assert loss.dtype == torch.float32 and h.grad.dtype == w.grad.dtype == torch.float32
    assert float(loss.detach()) == pytest.approx(float(expected), rel=2e-2)


def gpt():
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=32, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel._from_config(config, attn_implementation="sdpa")


def bart():
    torch.manual_seed(0)
    config = BartConfig(vocab_size=VOCAB, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
                        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=32,
                        pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2, dropout=0.0)
    model = BartForConditionalGeneration._from_config(config, attn_implementation="sdpa")
    model.final_logits_bias.normal_()  # a buffer of zeros in a fresh model: make it count
    return model


def full_and_fused(monkeypatch, build, cls, batch):
    """The module's totals and parameter gradients through the model's own head, then fused."""
    results = []
    for fused in (False, True):
        monkeypatch.setattr(pretraining, "plain", lambda model, c: fused and type(model) is c)
        module = cls(build(), TrainConfig())
        totals = module.totals(batch)
        pretraining.ratio(totals["loss"]).backward()
        grads = {name: p.grad.clone() for name, p in module.model.named_parameters() if p.grad is not None}
        results.append(({k: (float(s), float(c)) for k, (s, c) in totals.items()}, grads))
    return results


def test_gpt_pretraining_loss_and_gradients_equal_the_models_own_head(monkeypatch):
    ids = torch.randint(3, VOCAB, (3, 20), generator=torch.Generator().manual_seed(1))
    (full, full_grads), (fused, fused_grads) = full_and_fused(monkeypatch, gpt, pretraining.GptPretrainModule,
                                                              {"input_ids": ids, "labels": ids})
    assert fused["loss"][1] == full["loss"][1] == 3 * 19
    assert fused["loss"][0] == pytest.approx(full["loss"][0], rel=1e-5)
    assert full_grads.keys() == fused_grads.keys() and "transformer.wte.weight" in fused_grads  # the tied head
    for name, grad in full_grads.items():
        torch.testing.assert_close(fused_grads[name], grad, atol=1e-6, rtol=1e-4, msg=name)
    # HF's own loss (mean over the predicted positions) agrees with the module's sum / count
    assert fused["loss"][0] / fused["loss"][1] == pytest.approx(float(gpt()(input_ids=ids, labels=ids).loss), rel=1e-5)


def test_seq2seq_pretraining_loss_accuracy_and_gradients_equal_the_models_own_head(monkeypatch):
    g = torch.Generator().manual_seed(2)
    ids, labels = torch.randint(3, VOCAB, (3, 12), generator=g), torch.randint(3, VOCAB, (3, 10), generator=g)
    labels[2, 7:] = -100
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    (full, full_grads), (fused, fused_grads) = full_and_fused(monkeypatch, bart, pretraining.Seq2SeqPretrainModule, batch)
    assert fused["loss"][1] == full["loss"][1] == 27 and fused["accuracy"] == full["accuracy"]
    assert fused["loss"][0] == pytest.approx(full["loss"][0], rel=1e-5)
    for name, grad in full_grads.items():
        torch.testing.assert_close(fused_grads[name], grad, atol=1e-6, rtol=1e-4, msg=name)


def test_a_compiled_or_other_class_model_takes_the_full_forward():
    model = gpt()
    assert pretraining.plain(model, GPT2LMHeadModel)
    assert not pretraining.plain(torch.compile(model), GPT2LMHeadModel)  # compiling wraps it; inductor fuses the loss
    assert not pretraining.plain(model, BartForConditionalGeneration)
