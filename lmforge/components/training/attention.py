"""Attention whose dropout draws its random numbers as `training/dropout.py` does, on CPU.

Written by hand because torch's SDPA, given a dropout probability on CPU, leaves its fused kernel
for a math path that draws one `bernoulli_` number per attention weight: a 4-head, 128-token
causal batch of 32 took 65.6 ms forward and backward with attention dropout 0.1, 32.3 ms without, and
53.3 ms here (micro-benchmark, 2 threads). Here the weights are computed as HF's eager attention computes them
and dropped with FastDropout's draws; without dropout (evaluation, p = 0), on other devices, under
torch.compile or for anything this does not handle, it is `transformers`' own SDPA attention.
Registered with `transformers`' AttentionInterface, so every model's own attention modules call it.
"""

from __future__ import annotations

import copy

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from lmforge.components.training.dropout import _Dropout, resolvable

#: the name models are given (`model.set_attn_implementation(NAME)`) while lmforge trains them
NAME = "lmforge_sdpa"


def attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None, dropout: float,
           scaling: float | None = None, is_causal: bool = False) -> torch.Tensor:
    """softmax(q k^T * scaling + mask) v, (batch, heads, queries, head size), the weights dropped with
    probability `dropout` in training: `F.scaled_dot_product_attention`'s result and arguments (a
    bool `mask` keeps where true, a float one is added), for the cases `uses_own_dropout` admits."""
    if not uses_own_dropout(query, dropout):
        return torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout,
                                                                is_causal=is_causal, scale=scaling)
    scaling = query.size(-1) ** -0.5 if scaling is None else scaling
    if is_causal or mask is None:  # the scaling, and a causal mask as its `beta * input`, inside the scores'
        # matmul: one pass over the (batch, heads, queries, keys) scores fewer each way per step saved (finfo.min,
        # not -inf: the same zero weight, and no NaN where a whole row is masked)
        t, s = query.size(-2), key.size(-2)
        bias = (torch.full((t, s), torch.finfo(query.dtype).min, dtype=query.dtype, device=query.device).triu(1)
                if is_causal else query.new_zeros(()).expand(t, s))
        scores = torch.baddbmm(bias, query.flatten(0, 1), key.flatten(0, 1).transpose(-1, -2), beta=float(is_causal),
                               alpha=scaling).view(*query.shape[:-1], s)
        mask = None
    else:
        scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min) if mask.dtype == torch.bool else scores + mask
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)
    out = torch.matmul(_Dropout.apply(weights, dropout), value)
    if mask is not None and mask.dtype == torch.bool:  # ... and such a row attends to nothing: 0, as SDPA gives
        out = out.masked_fill(~mask.any(-1, keepdim=True), 0.0)
    return out


def uses_own_dropout(query: torch.Tensor, dropout: float) -> bool:
    """Dropout on a CPU tensor, outside torch.compile, with a p that 16-bit draws resolve."""
    return (dropout > 0.0 and query.device.type == "cpu" and resolvable(dropout)
            and not torch.compiler.is_compiling())


def attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
              attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
              is_causal: bool | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """`transformers`' attention interface: what `sdpa_attention_forward` returns, with cheap dropout."""
    if (not uses_own_dropout(query, dropout) or kwargs.get("position_bias") is not None
            or getattr(module, "num_key_value_groups", 1) > 1 or kwargs.get("output_attentions")):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    # is_causal as SDPA's interface settles it: only where no mask was made (no padding, no cache)
    is_causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    is_causal = query.size(2) > 1 and attention_mask is None and is_causal
    if is_causal and key.size(2) > query.size(2):
        key, value = key[:, :, :query.size(2)], value[:, :, :query.size(2)]
    out = attend(query, key, value, attention_mask, dropout, scaling, is_causal)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, attention)
AttentionMaskInterface.register(NAME, sdpa_mask)  # the masks SDPA's interface gets, None where is_causal does


def use_fast_attention(model: torch.nn.Module) -> bool:
    """A model that attends through SDPA now attends through `attention`; True if it was switched.
    transformers writes no implementation into config.json, so an export loads with SDPA anywhere; the
    model lmforge exports is rebuilt with SDPA anyway (`sdpa_twin`)."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    model.set_attn_implementation(NAME)
    return True


def sdpa_twin(model: torch.nn.Module) -> torch.nn.Module:
    """A new model of `model`'s class and config (fresh weights), attending through SDPA. The config is
    copied: `_from_config` sets the implementation on the config it is given, and the training model
    shares that one, so a snapshot taken mid-run would switch the run's own attention back."""
    return type(model)._from_config(copy.deepcopy(model.config), attn_implementation="sdpa")
