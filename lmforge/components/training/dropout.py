"""Dropout whose random numbers cost a quarter of torch's on CPU.

Written by hand because torch's CPU dropout draws one `bernoulli_` number per element on one
thread (py-spy: 22 % of a `mini` fine-tuning forward); here one 64-bit draw from the same
generator decides four elements (16 random bits each), so the keep probability is 1 - p to within
1/65536, and a seeded or resumed run draws the same masks as before it stopped. The mask is kept
for the backward as booleans (1 byte an element, not a float's 4; keeping the 16-bit draws instead
cost a comparison more per backward). Anywhere but CPU (CUDA's dropout is a fused kernel) it is
torch's own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_LOW, _HIGH = -(2 ** 63), 2 ** 63 - 1  # the whole int64 range: every one of its 64 bits random


def draws(shape: torch.Size, device: torch.device | None = None) -> torch.Tensor:
    """Uniform int16 numbers of `shape`, four from each 64-bit draw of torch's generator."""
    n = shape.numel()
    bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(_LOW, _HIGH)
    return bits.view(torch.int16)[:n].view(shape)


def kept(shape: torch.Size, p: float, device: torch.device | None = None) -> torch.Tensor:
    """A bool mask of `shape`, each element true with probability 1 - p."""
    # round(p * 65536) of the 65536 int16 values drop: those below the threshold
    return draws(shape, device) >= round(p * 65536) - 32768


def dropped(values: torch.Tensor, keep: torch.Tensor, p: float) -> torch.Tensor:
    """values / (1 - p) where `keep`, else 0."""
    return torch.where(keep, values, 0.0).mul_(1.0 / (1.0 - p))


class _Dropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        keep = kept(x.shape, p, x.device)
        ctx.save_for_backward(keep)
        ctx.p = p
        return dropped(x, keep, p)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return dropped(grad, keep, ctx.p), None


class FastDropout(torch.nn.Dropout):
    """`torch.nn.Dropout` (same `p`, same place in the model), with cheaper random numbers on CPU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu" or self.inplace or not resolvable(self.p):
            return F.dropout(x, self.p, True, self.inplace)
        return _Dropout.apply(x, self.p)


def resolvable(p: float) -> bool:
    """A p that 16-bit draws tell from 0 and 1: one within 1/131072 of 1 would keep every element, scaled."""
    return 0 < round(p * 65536) < 65536


def use_fast_dropout(model: torch.nn.Module) -> int:
    """Every `torch.nn.Dropout` of the model becomes a FastDropout of the same p; returns how many.
    Models that call dropout as a function (BART) keep theirs; attention dropout is
    `training/attention.py`'s (HF passes it the module's `p`, which a FastDropout still has)."""
    swapped = 0
    for module in model.modules():
        for name, child in list(module.named_children()):
            if type(child) is torch.nn.Dropout:
                setattr(module, name, FastDropout(child.p, child.inplace).train(child.training))
                swapped += 1
    return swapped
