"""GPT-2's sequence classification with its last block run at the one position the head reads.

`GPT2ForSequenceClassification` reads each row's last token that is not padding, yet a plain forward
runs every position through every block and projects them all onto the labels. In the last block
only the keys and values need every position; its queries, attention output and feed-forward (5/6 of
its arithmetic) are needed at the read position alone. So the last block runs those there, on the
model's own modules and weights: the logits are the full forward's (tested), and the demo's 2-block
GPT does ~2/5 less work a step. Written here because no library offers it (`bert_top` does the same
for BERT's [CLS]).
"""

from __future__ import annotations

import torch
from transformers import GPT2ForSequenceClassification, GPT2Model
from transformers.masking_utils import create_causal_mask
from transformers.models.gpt2.modeling_gpt2 import GPT2Block

from lmforge.components.training.attention import attend


def supports(model) -> bool:
    """A GPT2ForSequenceClassification with a pad token (its read position), a plain last block (not
    FSDP's wrapped class, whose own forward gathers the weights) and HF's default attention layout."""
    if not isinstance(model, GPT2ForSequenceClassification) or model.config.pad_token_id is None:
        return False
    gpt = model.transformer
    config = gpt.config
    return (isinstance(gpt, GPT2Model) and not config.add_cross_attention and not config.reorder_and_upcast_attn
            and not config.scale_attn_by_inverse_layer_idx and type(gpt.h[-1]) is GPT2Block)


def read_positions(input_ids: torch.Tensor, pad_token_id: int) -> torch.Tensor:
    """Each row's rightmost token that is not padding (0 for a row of padding), as HF's head reads it."""
    positions = torch.arange(input_ids.size(-1), device=input_ids.device, dtype=torch.int32)
    return (positions * (input_ids != pad_token_id).to(torch.int32)).argmax(-1)


def classification_logits(model: GPT2ForSequenceClassification, input_ids: torch.Tensor,
                          attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """GPT2ForSequenceClassification's (batch, labels) logits, its last block run at the read position alone."""
    gpt = model.transformer
    positions = torch.arange(input_ids.size(1), device=input_ids.device)[None]
    embeds = gpt.wte(input_ids)
    hidden = gpt.drop(embeds + gpt.wpe(positions))
    mask = create_causal_mask(config=gpt.config, inputs_embeds=embeds, attention_mask=attention_mask, cache=None,
                              position_ids=positions)
    *body, last = gpt.h
    for block in body:
        hidden = block(hidden, None, mask, position_ids=positions)

    rows = torch.arange(input_ids.size(0), device=input_ids.device)
    read = read_positions(input_ids, model.config.pad_token_id).long()
    attention, width = last.attn, gpt.config.hidden_size
    normed = last.ln_1(hidden)
    # c_attn is one Conv1D (x @ W + b, W: hidden x 3 hidden) for q, k, v: the query's third at one position
    weight, bias = attention.c_attn.weight, attention.c_attn.bias
    query = torch.addmm(bias[:width], normed[rows, read], weight[:, :width])
    key, value = torch.addmm(bias[width:], normed.flatten(0, 1), weight[:, width:]).view(
        *normed.shape[:2], 2 * width).split(width, dim=-1)
    heads, size = attention.num_heads, attention.head_dim

    def split(x: torch.Tensor) -> torch.Tensor:
        return x.view(x.size(0), -1, heads, size).transpose(1, 2)

    # The query's row of the causal mask: the keys at or before the read position that are not padding.
    seen = positions <= read[:, None]
    if attention_mask is not None:
        seen = seen & attention_mask.bool()
    context = attend(split(query[:, None]), split(key), split(value), seen[:, None, None],
                     attention.attn_dropout.p if attention.training else 0.0, attention.scaling)
    attended = hidden[rows, read] + attention.resid_dropout(attention.c_proj(context.flatten(1)))
    out = attended + last.mlp(last.ln_2(attended))
    return model.score(gpt.ln_f(out))
