"""GPT-2's last block run at the one position its classification head reads gives the full forward's numbers."""

import pytest
import torch
from transformers import GPT2Config, GPT2ForSequenceClassification

from lmforge.components.config import TrainConfig
from lmforge.components.finetuning.classification import ClassificationModule
from lmforge.components.training import gpt_top

PAD = 0
CONFIG = dict(vocab_size=97, n_embd=32, n_layer=3, n_head=4, n_inner=64, n_positions=64, pad_token_id=PAD,
              bos_token_id=1, eos_token_id=1, activation_function="gelu_pytorch_tanh")


def batch(rows=5, length=17, seed=0):
    """Right-padded rows of different lengths (one of a single token), the pad token inside none."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 97, (rows, length), generator=g)
    mask = torch.ones(rows, length, dtype=torch.long)
    for row, length in ((1, 9), (3, 4), (4, 1)):
        ids[row, length:], mask[row, length:] = PAD, 0
    return ids, mask


def grads(model) -> dict:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("labels", [3, 1])
def test_logits_and_their_gradients_equal_the_full_forward(attention, labels):
    torch.manual_seed(0)
    model = GPT2ForSequenceClassification._from_config(GPT2Config(**CONFIG, num_labels=labels),
                                                       attn_implementation=attention).eval()
    ids, mask = batch()
    assert gpt_top.supports(model)
    assert gpt_top.read_positions(ids, PAD).tolist() == [16, 8, 16, 3, 0]

    full = model(input_ids=ids, attention_mask=mask).logits
    full.square().sum().backward()
    full_grads = grads(model)
    model.zero_grad()
    ours = gpt_top.classification_logits(model, ids, mask)
    ours.square().sum().backward()
    assert ours.shape == (5, labels)
    assert torch.allclose(ours, full, atol=1e-6)
    ours_grads = grads(model)
    assert set(ours_grads) == set(full_grads)  # every weight trains, as in the full forward
    for name, grad in full_grads.items():
        assert torch.allclose(ours_grads[name], grad, atol=1e-5), name
    # without an attention mask the head still reads the last token that is not padding, as HF's does
    assert torch.allclose(gpt_top.classification_logits(model, ids), model(input_ids=ids).logits, atol=1e-6)


def test_the_fine_tuning_module_takes_it_with_the_same_loss_and_falls_back_where_it_cannot():
    torch.manual_seed(0)
    model = GPT2ForSequenceClassification._from_config(GPT2Config(**CONFIG, num_labels=2))
    module = ClassificationModule(model, "sst2", TrainConfig()).eval()
    ids, mask = batch()
    labels = torch.tensor([0, 1, 1, 0, 1])
    calls = []
    model.transformer.h[-1].register_forward_hook(lambda *a: calls.append("full last block"))
    out = module({"input_ids": ids, "attention_mask": mask, "labels": labels})
    assert not calls  # the last block ran through gpt_top, not its own forward
    reference = model(input_ids=ids, attention_mask=mask, labels=labels)
    assert calls and torch.allclose(out.logits, reference.logits, atol=1e-6)
    assert out.loss.item() == pytest.approx(reference.loss.item(), abs=1e-6)

    # no pad token: HF's head reads the last position of a lone row; the model's own forward does it
    model.config.pad_token_id = None
    assert not gpt_top.supports(model)
    calls.clear()
    module({"input_ids": ids[:1], "labels": labels[:1]})
    assert calls == ["full last block"]
