"""BERT's encoder run so that its last layer computes only the positions a head reads.

A [CLS] head reads one position of each row and the MLM head the ~15 % that are masked, yet a
plain forward runs every position through every layer. In the last layer only the keys and values
need every position; its queries, attention output and feed-forward (5/6 of its arithmetic) are
needed only where a head reads. So the last layer runs those on the kept positions alone, on the
model's own modules and weights: the states at the kept positions are the full forward's (tested),
and a 4-layer encoder does ~1/5 less work, forward and backward. Written here because no library
offers it: `transformers` computes every position of every layer.
"""

from __future__ import annotations

import torch
from transformers import BertForSequenceClassification, BertModel
from transformers.masking_utils import create_bidirectional_mask
from transformers.models.bert.modeling_bert import BertLayer

from lmforge.components.training.attention import attend


def supports(bert) -> bool:
    """A plain bidirectional BertModel (no decoder, no cross-attention, no chunked feed-forward) whose
    last layer is a plain BertLayer: FSDP wraps each layer (FSDP2 by changing its class), and only the
    layer's own forward gathers its sharded weights, which `states_at` goes around."""
    if not isinstance(bert, BertModel):
        return False
    config = bert.config
    return (not config.is_decoder and not config.add_cross_attention and not config.chunk_size_feed_forward
            and type(bert.encoder.layer[-1]) is BertLayer)


def states_at(bert: BertModel, keep: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
              token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
    """The last hidden states where `keep` (batch, seq; bool) is true, as (kept, hidden) in row-major
    order: equal to `bert(input_ids, attention_mask, token_type_ids)[0][keep]`."""
    hidden = bert.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
    mask = create_bidirectional_mask(config=bert.config, inputs_embeds=hidden, attention_mask=attention_mask)
    *body, last = bert.encoder.layer
    for layer in body:
        hidden = layer(hidden, mask)

    # Each row's kept positions first, padded to the most any row keeps, so the queries stay a batch.
    counts = keep.sum(1)
    width = int(counts.max()) if keep.numel() else 0
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :width]
    queried = torch.arange(width, device=keep.device) < counts[:, None]
    rows = hidden.gather(1, order[..., None].expand(-1, -1, hidden.size(-1)))

    attention = last.attention.self
    heads, size = attention.num_attention_heads, attention.attention_head_size

    def split(x: torch.Tensor) -> torch.Tensor:
        return x.view(x.size(0), x.size(1), heads, size).transpose(1, 2)

    # The body's mask, one query row of it: every query of a row sees the same keys (None: no padding).
    padding = None if mask is None else mask[:, :, :1]
    context = attend(split(attention.query(rows)), split(attention.key(hidden)), split(attention.value(hidden)), padding,
                     attention.dropout.p if attention.training else 0.0, attention.scaling)
    context = context.transpose(1, 2).flatten(2)[queried]
    attended = last.attention.output(context, rows[queried])
    return last.output(last.intermediate(attended), attended)


def first_positions(input_ids: torch.Tensor) -> torch.Tensor:
    keep = torch.zeros_like(input_ids, dtype=torch.bool)
    keep[:, 0] = True
    return keep


def classification_logits(model: BertForSequenceClassification, input_ids: torch.Tensor,
                          attention_mask: torch.Tensor | None = None,
                          token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
    """BertForSequenceClassification's logits, its last layer run on [CLS] alone."""
    first = states_at(model.bert, first_positions(input_ids), input_ids, attention_mask, token_type_ids)
    return model.classifier(model.dropout(model.bert.pooler(first[:, None])))
