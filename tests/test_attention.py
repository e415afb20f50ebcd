"""training/attention.py: attention whose dropout draws as FastDropout does, behind transformers' interface."""

import pytest
import torch
import torch.nn.functional as F
from transformers import (BartConfig, BartForConditionalGeneration, BertConfig, BertForMaskedLM, GPT2Config,
                          GPT2LMHeadModel)

from lmforge.components.training import attention
from lmforge.components.training.attention import NAME, attend, sdpa_twin, use_fast_attention


def weights_through(mask=None, is_causal=False, p=0.25, seed=0, scaling=None):
    """attend() with an identity value: its output is the (dropped, scaled) attention weights themselves,
    beside SDPA's weights for the same scores (no dropout)."""
    torch.manual_seed(seed)
    batch, heads, t = 4, 2, 16
    q, k = torch.randn(batch, heads, t, 8), torch.randn(batch, heads, t, 8)
    eye = torch.eye(t).expand(batch, heads, t, t)
    dropped = attend(q, k, eye, mask, p, scaling, is_causal)
    plain = F.scaled_dot_product_attention(q, k, eye, attn_mask=mask, is_causal=is_causal, scale=scaling)
    return dropped, plain


@pytest.mark.parametrize("case", ["none", "causal", "bool", "float", "scaled"])
def test_kept_weights_are_sdpas_scaled_and_the_rest_zero(case):
    t, p = 16, 0.25
    padding = torch.ones(4, 1, t, t, dtype=torch.bool)
    padding[:2, ..., 11:] = False  # two rows padded after 11 tokens
    mask = {"bool": padding, "float": torch.where(padding, 0.0, -1e4)}.get(case)
    dropped, plain = weights_through(mask, is_causal=case == "causal", p=p, scaling=0.1 if case == "scaled" else None)
    kept = dropped != 0
    torch.testing.assert_close(dropped[kept], plain[kept] / (1 - p))  # the masked softmax, rescaled
    if case == "causal":
        assert not kept[..., torch.ones(t, t, dtype=torch.bool).triu(1)].any()
    if case in ("bool", "float"):
        assert not kept[:2, ..., 11:].any()
    allowed = plain > 1e-6
    assert abs(1 - kept[allowed].float().mean().item() - p) < 0.03  # ~p of the weights dropped


def test_the_gradient_flows_through_the_mask_the_forward_drew():
    torch.manual_seed(1)
    q, k, v = (torch.randn(2, 2, 12, 8, requires_grad=True) for _ in range(3))
    out = attend(q, k, v, None, 0.5, None, True)
    grad = torch.randn_like(out)
    out.backward(grad)
    torch.manual_seed(1)
    q2, k2, _ = (torch.randn(2, 2, 12, 8) for _ in range(3))
    weights = attend(q2, k2, torch.eye(12).expand(2, 2, 12, 12), None, 0.5, None, True)  # the same draws
    torch.testing.assert_close(v.grad, weights.transpose(-1, -2) @ grad)
    assert q.grad.abs().sum() > 0 and k.grad.abs().sum() > 0


def test_seeds_repeat():
    a, _ = weights_through(seed=3)
    b, _ = weights_through(seed=3)
    c, _ = weights_through(seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_a_row_with_every_key_masked_attends_to_nothing_as_in_sdpa():
    """Review: such a row (left padding) softmaxed to uniform weights and returned the mean of the values."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 6, 8) for _ in range(3))
    mask = torch.ones(2, 1, 6, 6, dtype=torch.bool)
    mask[0, :, 0] = False  # the first query of the first row may see no key
    out = attend(q, k, v, mask, 0.25)
    assert torch.equal(out[0, :, 0], torch.zeros(2, 8))
    torch.testing.assert_close(F.scaled_dot_product_attention(q, k, v, attn_mask=mask)[0, :, 0], torch.zeros(2, 8))
    assert out[0, :, 1:].abs().sum() > 0 and out[1].abs().sum() > 0


def tiny(kind):
    if kind == "bert":
        return BertForMaskedLM(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                          intermediate_size=64, attn_implementation="sdpa"))
    if kind == "gpt":
        return GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=2, attn_implementation="sdpa"))
    return BartForConditionalGeneration(BartConfig(vocab_size=50, d_model=32, encoder_layers=1, decoder_layers=1,
                                                   encoder_attention_heads=2, decoder_attention_heads=2,
                                                   encoder_ffn_dim=64, decoder_ffn_dim=64, attention_dropout=0.1,
                                                   attn_implementation="sdpa"))


@pytest.mark.parametrize("kind", ["bert", "gpt", "bart"])
def test_models_attend_through_it_and_evaluate_and_save_as_sdpa(kind, tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = tiny(kind)
    ids = torch.randint(3, 50, (3, 10))
    mask = torch.ones_like(ids)
    mask[0, 7:] = 0  # padding: the mask path, not only is_causal
    inputs = {"input_ids": ids, "attention_mask": mask, "labels": ids}
    reference = model.eval()(**inputs).logits
    calls = []
    monkeypatch.setattr(attention, "attend", lambda *a: calls.append(1) or attend(*a))
    assert use_fast_attention(model) and model.config._attn_implementation == NAME
    torch.testing.assert_close(model(**inputs).logits, reference)  # eval: no dropout, SDPA's numbers
    assert not calls
    loss = model.train()(**inputs).loss
    loss.backward()
    assert calls and torch.isfinite(loss)  # training attends here, with its dropout
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad and p.ndim > 1)
    # Every dropout an identity: a training forward through this attention (dropout p still > 0, so its own
    # path: masks, causality, scale) gives the logits SDPA gives in eval.
    with monkeypatch.context() as identity:
        identity.setattr(attention._Dropout, "apply", lambda x, p: x)
        identity.setattr(torch.nn.Dropout, "forward", lambda self, x: x)
        identity.setattr(torch.nn.functional, "dropout", lambda x, *args, **kwargs: x)
        calls.clear()
        torch.testing.assert_close(model.train()(**inputs).logits, reference, atol=1e-5, rtol=1e-5)
        assert calls
    model.save_pretrained(tmp_path)  # the export loads with SDPA wherever lmforge's attention is not registered
    assert type(model).from_pretrained(tmp_path).config._attn_implementation == "sdpa"


def test_a_model_not_on_sdpa_is_left_alone():
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=32, n_layer=1, n_head=2, attn_implementation="eager"))
    assert not use_fast_attention(model) and model.config._attn_implementation == "eager"


def test_a_plain_twin_mid_run_leaves_the_training_model_on_its_attention():
    """Bug: a snapshot mid-run rebuilt the model with `_from_config(model.config, attn_implementation="sdpa")`,
    which sets that on the training model's own config: the run went on with torch's attention dropout."""
    from lmforge.components.pretraining.snapshots import plain_copy

    model = tiny("gpt")
    use_fast_attention(model)
    twin, copy = sdpa_twin(model), plain_copy(model)
    assert model.config._attn_implementation == NAME
    assert twin.config._attn_implementation == copy.config._attn_implementation == "sdpa"
