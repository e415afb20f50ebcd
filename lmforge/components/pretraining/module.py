"""LightningModules for the pretraining objectives (BERT, GPT, seq2seq denoising), on the shared TrainingModule.

The models are plain `transformers` classes; the modules only compute losses and metrics. BERT's
MLM head runs on the masked positions alone (as the original BERT code gathers
`masked_lm_positions`): with 15% masking that skips most of the vocabulary projection, the largest
matmul of a small model. For the same reason the encoder's last layer runs its queries and
feed-forward on those positions alone (`training.bert_top`).

Losses and accuracies come as sums with their counts, so validation adds them up over every batch
of every rank before dividing: a run on several processes reports the very numbers one process
would give for the same weights (a mean of per-rank means would not, when ranks hold different
numbers of masked tokens).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from transformers import BartForConditionalGeneration, GPT2LMHeadModel

from lmforge.components.training import bert_top
from lmforge.components.training.linear_ce import linear_cross_entropy
from lmforge.components.training.module import TrainingModule

Totals = dict[str, tuple[torch.Tensor, torch.Tensor]]  # metric -> (sum, count)


class PretrainModule(TrainingModule):
    """Shared: training loss and metrics, validation by sums, the loss history kept in the checkpoint."""

    stage_name = "pretrain"

    def __init__(self, model: torch.nn.Module, train, total_steps: int = 0):
        super().__init__(model, train, total_steps)
        self.history: dict[str, list[tuple[int, float]]] = {"train/loss": [], "val/loss": []}
        self._val: dict[str, list[torch.Tensor]] = {}

    def totals(self, batch: dict) -> Totals:
        """(sum, count) of each loss and metric over the batch; `loss` is what training minimises."""
        raise NotImplementedError

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        totals = self.totals(batch)
        loss = ratio(totals["loss"])
        self.check_finite(loss)
        self.log("train/loss", loss, prog_bar=True)
        for name, pair in totals.items():
            if name != "loss":
                self.log(f"train/{name}", ratio(pair))
        if self.global_step % self.trainer.log_every_n_steps == 0:
            self.history["train/loss"].append((self.global_step, loss.item()))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        for name, (total, count) in self.totals(batch).items():
            sums = self._val.setdefault(name, [torch.zeros((), device=self.device, dtype=torch.float64)] * 2)
            self._val[name] = [sums[0] + total.detach().double(), sums[1] + count.double()]

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking or not self._val:
            self._val = {}
            return
        metrics = {}
        for name, (total, count) in self._val.items():  # summed over every rank, then divided
            total, count = (self.trainer.strategy.reduce(t, reduce_op="sum") for t in (total, count))
            metrics[name] = float(total / count.clamp(min=1))
        self._val = {}
        metrics["perplexity"] = math.exp(min(metrics[self.perplexity_of], 50.0))
        for name, value in metrics.items():  # the same on every rank already: the mean of equals is itself
            self.log(f"val/{name}", value, prog_bar=name == "loss", sync_dist=True)
        self.history["val/loss"].append((self.global_step, metrics["loss"]))

    perplexity_of = "loss"

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["loss_history"] = self.history

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self.history = checkpoint.get("loss_history", self.history)


def ratio(pair: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    total, count = pair
    return total / count.clamp(min=1)


def summed(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss sum, count) of a cross entropy over these rows; rows labelled -100 count for neither."""
    return F.cross_entropy(logits.float(), labels, reduction="sum"), (labels != -100).sum()


def correct(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(right predictions, count) over these rows."""
    return (logits.argmax(-1) == labels).sum(), torch.tensor(labels.numel(), device=labels.device)


class BertPretrainModule(PretrainModule):
    """Masked LM plus, for BertForPreTraining, the sentence-pair (NSP or SOP) head."""

    stage_name = "pretrain-bert"
    perplexity_of = "mlm_loss"  # perplexity of the masked-LM loss alone, comparable with a unigram model's

    def compile_model(self) -> None:
        # The encoder has static shapes per padded length; the sparse MLM head does not.
        self.model.bert = torch.compile(self.model.bert, dynamic=True)

    def totals(self, batch: dict) -> Totals:
        labels = batch["labels"]
        pair_labels = batch.get("next_sentence_label")
        chosen = labels != -100
        masked, first = self.encode(batch, chosen, pair_labels is not None)
        logits, targets = self.model.cls.predictions(masked), labels[chosen]
        totals = {"mlm_loss": summed(logits, targets), "mlm_accuracy": correct(logits, targets)}
        loss = ratio(totals["mlm_loss"])
        if pair_labels is not None:
            pair_logits = self.model.cls.seq_relationship(self.model.bert.pooler(first[:, None]))
            totals |= {"pair_loss": summed(pair_logits, pair_labels), "pair_accuracy": correct(pair_logits, pair_labels)}
            loss = loss + ratio(totals["pair_loss"])
        # The total loss is a sum of two means: counted once per batch, its mean over batches is what training sees.
        totals["loss"] = (loss, torch.ones((), device=loss.device))
        return totals


    def encode(self, batch: dict, chosen: torch.Tensor, with_first: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The last hidden states at the masked positions, and at each row's first ([CLS]) when the
        pair head needs them. Its last layer runs on those positions alone (`bert_top`), unless
        compiled: torch.compile wraps the whole encoder."""
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
                  "token_type_ids": batch.get("token_type_ids")}
        if not bert_top.supports(self.model.bert):
            states = self.model.bert(**inputs)[0]
            return states[chosen], states[:, 0] if with_first else None
        keep = chosen | bert_top.first_positions(chosen) if with_first else chosen
        states = bert_top.states_at(self.model.bert, keep, **inputs)
        if not with_first:
            return states, None
        first = keep.nonzero()[:, 1] == 0  # the kept states, row-major: each row's [CLS] leads its row
        return states[chosen[keep]], states[first]


class GptPretrainModule(PretrainModule):
    """Causal LM: predict each next token."""

    stage_name = "pretrain-gpt"

    def totals(self, batch: dict) -> Totals:
        # Shift the labels, not the logits: slicing (batch, block, vocab) logits copied them, 10-15 % of a
        # tiny GPT's step (measured); the last position has no next token to predict.
        labels = F.pad(batch["labels"][:, 1:], (0, 1), value=-100).flatten()
        if not plain(self.model, GPT2LMHeadModel):
            return {"loss": summed(self.model(input_ids=batch["input_ids"]).logits.flatten(0, 1), labels)}
        # The vocabulary head fused into the loss (`training.linear_ce`): no (batch, block, vocab) logits.
        hidden = self.model.transformer(input_ids=batch["input_ids"], use_cache=False)[0]
        loss, _ = linear_cross_entropy(hidden.flatten(0, 1), self.model.lm_head.weight, labels)
        return {"loss": (loss, (labels != -100).sum())}


class Seq2SeqPretrainModule(PretrainModule):
    """Denoising: the decoder writes the original chunk from the corrupted one the encoder reads."""

    stage_name = "pretrain-seq2seq"

    def totals(self, batch: dict) -> Totals:
        labels = batch["labels"]
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
                  "decoder_input_ids": self.model.prepare_decoder_input_ids_from_labels(labels=labels)}
        chosen = labels != -100
        targets = labels[chosen]
        if not plain(self.model, BartForConditionalGeneration):
            logits = self.model(**inputs).logits[chosen]
            return {"loss": summed(logits, targets), "accuracy": correct(logits, targets)}
        # The vocabulary head fused into the loss, as GPT's above; BART adds a fixed (buffer) bias.
        hidden = self.model.model(**inputs, use_cache=False)[0][chosen]
        loss, right = linear_cross_entropy(hidden, self.model.lm_head.weight, targets, self.model.final_logits_bias[0])
        count = torch.tensor(targets.numel(), device=targets.device)
        return {"loss": (loss, count), "accuracy": (right, count)}


def plain(model: torch.nn.Module, cls: type) -> bool:
    """`model` is `cls` itself with a bias-free linear head: not compiled (torch.compile wraps it and
    fuses the loss itself) nor given another class by FSDP2."""
    head = getattr(model, "lm_head", None)
    return type(model) is cls and type(head) is torch.nn.Linear and head.bias is None
