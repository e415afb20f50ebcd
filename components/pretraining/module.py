"""LightningModules for the two pretraining objectives.

The models are plain `transformers` classes; the modules only compute losses and metrics, and
own the optimizer and schedule. BERT's MLM head runs on the masked positions alone (as the
original BERT code gathers `masked_lm_positions`): with 15% masking that skips most of the
vocabulary projection, the largest matmul of a small model.
"""

from __future__ import annotations

import math

import lightning as L
import torch
import torch.nn.functional as F
from transformers import get_scheduler

from components.config import TrainConfig
from components.errors import LmforgeError


class PretrainModule(L.LightningModule):
    """Shared: optimizer, schedule, non-finite loss guard, loss history kept in the checkpoint."""

    stage_name = "pretrain"

    def __init__(self, model: torch.nn.Module, train: TrainConfig, total_steps: int):
        super().__init__()
        self.model, self.train_cfg, self.total_steps = model, train, total_steps
        self.history: dict[str, list[tuple[int, float]]] = {"train/loss": [], "val/loss": []}

    def configure_model(self) -> None:
        if self.train_cfg.compile and not hasattr(self, "_compiled"):
            self._compiled = True
            self.compile_model()

    def compile_model(self) -> None:
        self.model = torch.compile(self.model)

    def configure_optimizers(self):
        decay, no_decay = [], []
        for name, param in self.model.named_parameters():
            if param.requires_grad:
                (no_decay if param.ndim < 2 or "LayerNorm" in name or "ln_" in name else decay).append(param)
        groups = [
            {"params": decay, "weight_decay": self.train_cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        optimizer = torch.optim.AdamW(groups, lr=self.train_cfg.learning_rate, betas=(0.9, 0.98), eps=1e-6,
                                      fused=use_fused_adamw(self.device, self.train_cfg))
        scheduler = get_scheduler(
            "constant_with_warmup" if self.train_cfg.schedule == "constant" else self.train_cfg.schedule,
            optimizer,
            num_warmup_steps=min(self.train_cfg.warmup_steps, self.total_steps),
            num_training_steps=self.total_steps,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        clip_without_scaler(self, optimizer, gradient_clip_val, gradient_clip_algorithm)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, metrics = self.losses(batch)
        if not torch.isfinite(loss):
            raise LmforgeError(
                f"{self.stage_name}: training loss became {loss.item()} at step {self.global_step}; "
                "nothing was exported. Lower train.learning_rate, or use train.precision 32"
            )
        self.log("train/loss", loss, prog_bar=True)
        for name, value in metrics.items():
            self.log(f"train/{name}", value)
        if self.global_step % self.trainer.log_every_n_steps == 0:
            self.history["train/loss"].append((self.global_step, loss.item()))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        loss, metrics = self.losses(batch)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True)
        for name, value in metrics.items():
            self.log(f"val/{name}", value, sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        metrics = self.trainer.callback_metrics
        if "val/loss" in metrics and not self.trainer.sanity_checking:
            val_loss = float(metrics["val/loss"])
            self.log("val/perplexity", math.exp(min(val_loss, 50.0)), sync_dist=True)
            self.history["val/loss"].append((self.global_step, val_loss))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["loss_history"] = self.history
        # Dropout draws from these: restoring them makes a resumed run repeat an uninterrupted one.
        checkpoint["rng_states"] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            checkpoint["rng_states"]["cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.history = checkpoint.get("loss_history", self.history)
        self._rng_to_restore = checkpoint.get("rng_states")

    def on_train_start(self) -> None:
        # Restored here, after Lightning's own setup has drawn any random numbers it needs.
        states = getattr(self, "_rng_to_restore", None)
        if states:
            torch.set_rng_state(states["torch"])
            if "cuda" in states and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(states["cuda"])
            self._rng_to_restore = None

    def losses(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError


class BertPretrainModule(PretrainModule):
    """Masked LM plus, for BertForPreTraining, the sentence-pair (NSP or SOP) head."""

    stage_name = "pretrain-bert"

    def compile_model(self) -> None:
        # The encoder has static shapes per padded length; the sparse MLM head does not.
        self.model.bert = torch.compile(self.model.bert, dynamic=True)

    def losses(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        labels = batch["labels"]
        pair_labels = batch.get("next_sentence_label")
        out = self.model.bert(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            token_type_ids=batch.get("token_type_ids"),
        )
        chosen = labels != -100
        logits = self.model.cls.predictions(out[0][chosen])
        mlm_loss = F.cross_entropy(logits.float(), labels[chosen])
        metrics = {
            "mlm_loss": mlm_loss.detach(),
            "mlm_accuracy": (logits.argmax(-1) == labels[chosen]).float().mean(),
        }
        loss = mlm_loss
        if pair_labels is not None:
            pair_logits = self.model.cls.seq_relationship(out[1])
            pair_loss = F.cross_entropy(pair_logits.float(), pair_labels)
            loss = mlm_loss + pair_loss
            metrics["pair_loss"] = pair_loss.detach()
            metrics["pair_accuracy"] = (pair_logits.argmax(-1) == pair_labels).float().mean()
        return loss, metrics

    def on_validation_epoch_end(self) -> None:
        # Perplexity is of the masked-LM loss alone, comparable with a unigram model's.
        metrics = self.trainer.callback_metrics
        if "val/mlm_loss" in metrics and not self.trainer.sanity_checking:
            self.log("val/perplexity", math.exp(min(float(metrics["val/mlm_loss"]), 50.0)), sync_dist=True)
            self.history["val/loss"].append((self.global_step, float(metrics["val/loss"])))


class GptPretrainModule(PretrainModule):
    """Causal LM: predict each next token."""

    stage_name = "pretrain-gpt"

    def losses(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = self.model(input_ids=batch["input_ids"]).logits
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), batch["labels"][:, 1:].flatten())
        return loss, {}


def use_fused_adamw(device: torch.device, train: TrainConfig) -> bool:
    """Fused AdamW where the device has it, except with fp16's gradient scaler and clipping, where
    gradients must be unscaled before they are clipped (bf16 has no scaler: see clip_without_scaler)."""
    scaled_with_clipping = train.precision == "16-mixed" and train.gradient_clip > 0
    return device.type in ("cuda", "cpu", "xpu") and not scaled_with_clipping


def clip_without_scaler(module: L.LightningModule, optimizer, gradient_clip_val, gradient_clip_algorithm) -> None:
    """Lightning's mixed-precision plugin refuses to clip for a fused optimizer even under bf16,
    which has no gradient scaler and so nothing to unscale: clip directly there."""
    if gradient_clip_val and getattr(module.trainer.precision_plugin, "scaler", None) is None:
        if gradient_clip_algorithm in (None, "norm"):
            torch.nn.utils.clip_grad_norm_(module.parameters(), gradient_clip_val)
        else:
            torch.nn.utils.clip_grad_value_(module.parameters(), gradient_clip_val)
        return
    module.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
