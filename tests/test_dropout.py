"""FastDropout: torch's dropout, in distribution and in gradient, with cheaper random numbers on CPU."""

import pytest
import torch

from lmforge.components.config import TrainConfig
from lmforge.components.training.dropout import FastDropout, use_fast_dropout
from lmforge.components.training.module import TrainingModule


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keeps_each_element_with_probability_one_minus_p_and_scales_the_kept(p):
    torch.manual_seed(0)
    x = torch.rand(1_000_000) + 1.0  # no zeros of its own
    y = FastDropout(p).train()(x)
    kept = y != 0
    # 1e6 draws: the keep rate's standard deviation is below 5e-4
    assert kept.float().mean().item() == pytest.approx(1 - p, abs=2.5e-3)
    torch.testing.assert_close(y[kept], x[kept] / (1 - p))
    # the masks are independent of position: the first and second halves keep alike
    first, second = kept[:500_000].float().mean(), kept[500_000:].float().mean()
    assert abs(first - second).item() < 5e-3


def test_gradient_is_the_forward_mask_scaled():
    torch.manual_seed(1)
    x = torch.randn(63, 33, requires_grad=True)  # 2,079 elements, not a multiple of 4: the last 64-bit draw is cut
    y = FastDropout(0.2).train()(x)
    weights = torch.randn_like(y)
    (y * weights).sum().backward()
    mask = (y != 0).float() / 0.8
    torch.testing.assert_close(x.grad, weights * mask)
    torch.testing.assert_close(y, x.detach() * mask)


def test_the_four_elements_of_one_draw_are_kept_independently():
    torch.manual_seed(2)
    kept = FastDropout(0.5).train()(torch.ones(400_000)).view(-1, 4) != 0
    # each pair of the four (as adjacent, and as far apart as one draw allows) is kept together a quarter of the time
    for a, b in [(0, 1), (1, 2), (2, 3), (0, 3)]:
        assert (kept[:, a] & kept[:, b]).float().mean().item() == pytest.approx(0.25, abs=5e-3)
    # and a whole draw's four elements all at once, a sixteenth
    assert kept.all(1).float().mean().item() == pytest.approx(1 / 16, abs=3e-3)


@pytest.mark.parametrize("p", [1e-6, 1 - 1e-6])
def test_a_p_sixteen_bits_cannot_resolve_is_torchs_dropout(p):
    torch.manual_seed(5)
    y = FastDropout(p).train()(torch.ones(200_000))
    torch.manual_seed(5)
    assert torch.equal(y, torch.nn.functional.dropout(torch.ones(200_000), p, True))


def test_same_seed_same_masks_other_seed_other_masks_and_eval_is_identity():
    x = torch.ones(4096)
    drop = FastDropout(0.5).train()
    torch.manual_seed(3)
    a = drop(x)
    torch.manual_seed(3)
    b = drop(x)
    torch.manual_seed(4)
    c = drop(x)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(drop.eval()(x), x) and torch.equal(FastDropout(0.0).train()(x), x)


def test_bf16_values_keep_their_dtype():
    y = FastDropout(0.1).train()(torch.ones(1000, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16
    values = y.unique().float()
    assert len(values) == 2 and values[0] == 0 and values[1].item() == pytest.approx(1 / 0.9, rel=1e-2)


def test_training_module_swaps_every_dropout_of_the_model_and_keeps_its_p():
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, hidden_dropout_prob=0.15, attention_probs_dropout_prob=0.05)
    model = BertForSequenceClassification(config)
    before = {name: m.p for name, m in model.named_modules() if isinstance(m, torch.nn.Dropout)}
    TrainingModule(model, TrainConfig())
    after = {name: (type(m), m.p) for name, m in model.named_modules() if isinstance(m, torch.nn.Dropout)}
    assert len(before) == 8 and after == {name: (FastDropout, p) for name, p in before.items()}
    assert use_fast_dropout(model) == 0  # already swapped
    # the attention's dropout is read as `.p` by HF's attention functions: a training forward runs
    model.train()(input_ids=torch.randint(0, 100, (2, 7)), labels=torch.tensor([0, 1])).loss.backward()

    resting = BertForSequenceClassification(config).eval()  # a model swapped in eval mode stays in it
    TrainingModule(resting, TrainConfig())
    assert not any(m.training for m in resting.modules())

    compiled = BertForSequenceClassification(config)
    TrainingModule(compiled, TrainConfig(compile=True))  # inductor fuses dropout itself
    assert not any(isinstance(m, FastDropout) for m in compiled.modules())


def test_the_backward_keeps_the_mask_as_one_byte_an_element():
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        FastDropout(0.1).train()(torch.randn(1000, requires_grad=True))
    assert [(t.dtype, t.numel()) for t in saved] == [(torch.bool, 1000)]
