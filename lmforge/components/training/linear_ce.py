"""Cross-entropy of a linear vocabulary head, without its (rows, vocabulary) logits.

A language model's loss reads every predicted position's logits over the whole vocabulary.
`F.cross_entropy(lm_head(hidden))` writes them, reads them into a log-softmax (a second such
tensor), and its backward writes a third (zeros, then the gradient) before the two gradient
matmuls read it: for a small model with a few thousand tokens, those passes over memory cost as
much as the head's matmuls. Here the rows go through in chunks: a chunk's logits turn into
softmax-minus-one-hot in place and both gradient matmuls run in the forward, while the chunk is
still in cache; the backward only scales the two gradients. The same loss and gradients (tests),
the memory of one chunk's logits instead of three full ones. Written here because the libraries
that fuse this (Liger-Kernel, Apple's cut-cross-entropy) are Triton kernels, GPU only.
"""

from __future__ import annotations

import torch

IGNORE = -100
CHUNK_BYTES = 8 << 20  # one chunk's fp32 logits: small enough to stay in cache, big enough for an efficient matmul


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                         bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed cross-entropy, right argmax predictions) of `hidden @ weight.T + bias` against
    `labels` over rows (hidden: rows x width, labels: rows; -100 counts for neither).
    Equals `F.cross_entropy(logits.float(), labels, reduction="sum")` and
    `(logits.argmax(-1) == labels).sum()`. A bias gets no gradient (BART's `final_logits_bias` is a
    buffer)."""
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return _LinearCrossEntropy.apply(hidden, weight, labels, bias)
    with torch.no_grad():
        return _chunks(hidden, weight, labels, bias, with_grads=False)[:2]


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, bias):
        loss, right, grad_hidden, grad_weight = _chunks(hidden, weight, labels, bias, with_grads=True)
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.mark_non_differentiable(right)
        return loss, right

    @staticmethod
    def backward(ctx, grad_loss, _grad_right):
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_loss.to(grad_hidden.dtype), grad_weight * grad_loss.to(grad_weight.dtype), None, None


def _chunks(hidden, weight, labels, bias, with_grads: bool):
    """The loss sum, the right count and (with_grads) d loss / d hidden and d loss / d weight."""
    device = hidden.device.type
    # Under autocast the matmuls run in its precision, as `lm_head` would; the softmax in fp32, as
    # `summed()` casts the logits. Autocast is off inside, so every cast is explicit.
    compute = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
    rows = max(64, CHUNK_BYTES // (4 * weight.shape[0]))
    loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
    right = torch.zeros((), dtype=torch.long, device=hidden.device)
    grad_hidden = torch.empty_like(hidden) if with_grads else None
    grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if with_grads else None
    with torch.autocast(device, enabled=False):
        w = weight.detach().to(compute)
        for start in range(0, hidden.shape[0], rows):
            h, target = hidden[start:start + rows].detach().to(compute), labels[start:start + rows]
            logits = (h @ w.t()).float()
            if bias is not None:
                logits += bias.float()
            valid = target != IGNORE
            safe = target.masked_fill(~valid, 0)[:, None]
            # The log-sum-exp by hand, in place: its exponentials are the softmax the gradient needs, and
            # each pass over the chunk is one of memory (torch.logsumexp would write a copy first).
            top, best = logits.max(-1, keepdim=True)
            right += ((best.squeeze(1) == target) & valid).sum()
            picked = logits.gather(1, safe)
            sums = logits.sub_(top).exp_().sum(-1, keepdim=True)
            loss += ((top + sums.log() - picked).squeeze(1) * valid).sum()
            if not with_grads:
                continue
            # d loss / d logits = softmax - one-hot, zero on ignored rows; in the logits' memory.
            grad = logits.mul_(valid[:, None] / sums)
            grad.scatter_add_(1, safe, -valid.to(grad.dtype)[:, None])
            grad = grad.to(compute)
            if compute == hidden.dtype:
                torch.mm(grad, w, out=grad_hidden[start:start + rows])
            else:
                grad_hidden[start:start + rows] = grad @ w
            if compute == torch.float32:
                grad_weight.addmm_(grad.t(), h)
            else:
                grad_weight += (grad.t() @ h).float()
    if with_grads:
        grad_weight = grad_weight.to(weight.dtype)
    return loss, right, grad_hidden, grad_weight
