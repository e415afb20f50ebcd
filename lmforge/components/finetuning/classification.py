"""GLUE fine-tuning: BERT or GPT (GPT-1 style) with a sequence-classification head.

Batches are padded only to their longest row and grouped by length, so a batch of short
sentences costs a short batch: the main saving over padding every row to max_seq_length.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from datasets import Dataset
from torch.utils.data import DataLoader
from transformers import BertForSequenceClassification, DataCollatorWithPadding, PreTrainedTokenizerBase
from transformers.modeling_outputs import SequenceClassifierOutput

from lmforge.components.config import TrainConfig
from lmforge.components.data.schemas import GLUE_TASKS
from lmforge.components.errors import LmforgeError
from lmforge.components.finetuning.metrics import glue_metrics
from lmforge.components.finetuning.training import PAD_MULTIPLE, FinetuneModule, padded_loader, with_lengths
from lmforge.components.training import bert_top, gpt_top
from lmforge.components.training.linear_ce import linear_cross_entropy


def encode_glue(data: Dataset, task: str, tokenizer: PreTrainedTokenizerBase, max_seq_length: int,
                gpt: bool = False) -> Dataset:
    """Tokenize a GLUE split: one sentence, or a pair (BERT: [SEP] and token types; GPT: joined
    by the end-of-text token as delimiter, as GPT-1 joins pairs)."""
    columns = GLUE_TASKS[task].text_columns
    missing = [c for c in (*columns, "label") if c not in data.column_names]
    if missing:
        raise LmforgeError(f"task {task!r}: dataset has no column(s) {', '.join(missing)} (found {data.column_names})")

    def encode(batch: dict) -> dict:
        if len(columns) == 1:
            enc = tokenizer(batch[columns[0]], truncation=True, max_length=max_seq_length)
        elif gpt:
            joined = [f"{a}{tokenizer.eos_token}{b}" for a, b in zip(batch[columns[0]], batch[columns[1]])]
            enc = tokenizer(joined, truncation=True, max_length=max_seq_length)
        else:
            enc = tokenizer(batch[columns[0]], batch[columns[1]], truncation="longest_first", max_length=max_seq_length)
        enc["labels"] = batch["label"]
        return enc

    return with_lengths(data.map(encode, batched=True, remove_columns=data.column_names, desc=f"tokenize {task}"))


def glue_loader(data: Dataset, tokenizer, batch_size: int, shuffle: bool, seed: int, num_workers: int = 0) -> DataLoader:
    return padded_loader(data, DataCollatorWithPadding(tokenizer, pad_to_multiple_of=PAD_MULTIPLE), batch_size, shuffle, seed,
                         num_workers)


class ClassificationModule(FinetuneModule):
    """Trains a *ForSequenceClassification model; scores each validation pass with GLUE's metrics.

    With `aux_lm_weight` λ (GPT), the loss is the head's plus λ times the language-modelling loss on
    the same tokens, as GPT-1 fine-tunes (L3 = L2 + λ L1): the LM head is the tied token embedding."""

    def __init__(self, model, task: str, train: TrainConfig, total_steps: int = 0, aux_lm_weight: float = 0.0):
        super().__init__(model, task, train, total_steps)
        self.regression = GLUE_TASKS[task].is_regression
        self.aux_lm_weight = aux_lm_weight

    def forward(self, batch: dict):
        bert = getattr(self.model, "bert", None)
        # The head reads one position a row (BERT's [CLS], GPT's last token): the last layer runs there
        # alone (`bert_top`, `gpt_top`), the same logits.
        if isinstance(self.model, BertForSequenceClassification) and bert_top.supports(bert):
            logits = bert_top.classification_logits(self.model, batch["input_ids"], batch.get("attention_mask"),
                                                    batch.get("token_type_ids"))
        elif gpt_top.supports(self.model) and "token_type_ids" not in batch:
            logits = gpt_top.classification_logits(self.model, batch["input_ids"], batch.get("attention_mask"))
        else:
            return self.model(**batch)
        labels = batch.get("labels")
        # In fp32, as HF's loss under autocast: bf16 would round the gold scores (4.2 -> 4.1875).
        loss = (None if labels is None else F.mse_loss(logits.squeeze(-1).float(), labels.float()) if self.regression
                else F.cross_entropy(logits.float(), labels))
        return SequenceClassifierOutput(loss=loss, logits=logits)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if not self.aux_lm_weight:
            return super().training_step(batch, batch_idx)
        out = self.model(**batch, output_hidden_states=True)
        lm_loss = causal_lm_loss(out.hidden_states[-1], self.model.get_input_embeddings().weight,
                                 batch["input_ids"], batch["attention_mask"])
        loss = out.loss + self.aux_lm_weight * lm_loss
        self.check_finite(loss)
        self.log("train/loss", loss, prog_bar=True)
        self.log_dict({"train/head_loss": out.loss, "train/lm_loss": lm_loss})
        return loss

    def validation_items(self, batch: dict) -> list[tuple[float, float]]:
        out = self(batch)
        self.log("val/loss", out.loss, prog_bar=True, sync_dist=True)
        return list(zip(predict(out.logits, self.regression).cpu().tolist(), batch["labels"].cpu().tolist()))

    def score(self, items: list[tuple[float, float]]) -> dict:
        preds, labels = (np.array(column) for column in zip(*items))
        return glue_metrics(self.task, preds, labels)


def causal_lm_loss(hidden: torch.Tensor, embeddings: torch.Tensor, input_ids: torch.Tensor,
                   attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross entropy over the real (unpadded) tokens, through the tied output
    projection (the last hidden state is GPT-2's, after its final layer norm)."""
    targets = input_ids[:, 1:].masked_fill(attention_mask[:, 1:] == 0, -100).flatten()
    # The vocabulary projection fused into the loss (`training.linear_ce`): no (batch, length, vocab) logits.
    loss, _ = linear_cross_entropy(hidden[:, :-1].flatten(0, 1), embeddings, targets)
    return loss / (targets != -100).sum().clamp(min=1)


def predict(logits: torch.Tensor, regression: bool) -> torch.Tensor:
    return logits.squeeze(-1).float() if regression else logits.argmax(-1)


@torch.no_grad()
def predict_dataset(model, loader: DataLoader, regression: bool) -> tuple[np.ndarray, np.ndarray]:
    """Predictions (class ids or scores) and labels for a whole split, in order."""
    model.eval()
    preds, labels = [], []
    for batch in loader:
        batch = {k: v.to(model.device) for k, v in batch.items()}
        preds.append(predict(model(**batch).logits, regression).cpu())
        labels.append(batch["labels"].cpu())
    return torch.cat(preds).numpy(), torch.cat(labels).numpy()
