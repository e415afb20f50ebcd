"""The LightningModule every lmforge training run builds on, pretraining and fine-tuning alike.

It owns what the two must not differ in: AdamW with no weight decay on biases and LayerNorm
weights, the warm-up schedule, gradient clipping under bf16 with a fused optimizer, the guard that
stops a run at a non-finite loss, dropout that draws its random numbers cheaply on CPU
(`training/dropout.py`; in attention, `training/attention.py`), and the random-number state of every
rank, kept in the checkpoint so that a resumed run draws the same dropout masks as one never
interrupted.
"""

from __future__ import annotations

import lightning as L
import torch
from transformers import get_scheduler

from lmforge.components.config import TrainConfig
from lmforge.components.errors import LmforgeError
from lmforge.components.training import distributed
from lmforge.components.training.attention import use_fast_attention
from lmforge.components.training.dropout import use_fast_dropout


class TrainingModule(L.LightningModule):
    """A `transformers` model (`self.model`) trained under `train`; subclasses compute the losses."""

    #: names the run in errors, e.g. "pretrain-bert", "finetune sst2"
    stage_name = "train"
    #: what a non-finite loss error suggests
    nonfinite_hint = "Lower train.learning_rate, or use train.precision 32"

    def __init__(self, model: torch.nn.Module, train: TrainConfig, total_steps: int = 0):
        super().__init__()
        self.model, self.train_cfg, self.total_steps = model, train, total_steps
        if not train.compile:  # a compiled model's dropout is fused by inductor already
            use_fast_dropout(model)
            use_fast_attention(model)

    def configure_model(self) -> None:
        if self.train_cfg.compile and not hasattr(self, "_compiled"):
            self._compiled = True
            self.compile_model()

    def compile_model(self) -> None:
        self.model = torch.compile(self.model)

    def configure_optimizers(self):
        decay, no_decay = [], []
        for name, param in self.model.named_parameters():
            if param.requires_grad:  # biases and LayerNorm weights (1-d) are not decayed, as BERT and GPT-2 do
                (no_decay if param.ndim < 2 or "LayerNorm" in name or "ln_" in name else decay).append(param)
        cfg = self.train_cfg
        groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        optimizer = torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=tuple(cfg.adam_betas), eps=cfg.adam_epsilon,
                                      fused=use_fused_adamw(self.device, cfg))
        scheduler = get_scheduler(
            "constant_with_warmup" if cfg.schedule == "constant" else cfg.schedule, optimizer,
            num_warmup_steps=min(cfg.warmup_steps, self.total_steps), num_training_steps=self.total_steps,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        # Lightning's mixed-precision plugin refuses to clip for a fused optimizer even under bf16, which
        # has no gradient scaler and so nothing to unscale: clip directly there.
        if gradient_clip_val and getattr(self.trainer.precision_plugin, "scaler", None) is None:
            if gradient_clip_algorithm in (None, "norm"):
                torch.nn.utils.clip_grad_norm_(self.parameters(), gradient_clip_val)
            else:
                torch.nn.utils.clip_grad_value_(self.parameters(), gradient_clip_val)
            return
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def check_finite(self, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss):
            raise LmforgeError(f"{self.stage_name}: training loss became {loss.item()} at step {self.global_step}; "
                               f"nothing was exported. {self.nonfinite_hint}")

    def on_fit_start(self) -> None:
        # Under deterministic algorithms (Lightning turns them on as its Trainer is built) torch also
        # NaN-fills every new tensor, a debugging aid for code that reads uninitialized memory
        # ("detrimental to performance", its docs): none here does, and it cost 4 % of a `mini` GPT step.
        if torch.are_deterministic_algorithms_enabled():
            torch.utils.deterministic.fill_uninitialized_memory = False

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Every rank's generator: dropout draws from them, so a resumed run repeats an uninterrupted one.
        state = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        checkpoint["rng_states"] = distributed.gather_objects(state)  # saving is collective: every rank is here

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        states = checkpoint.get("rng_states")
        if isinstance(states, dict):  # a checkpoint of one process, from before states were kept per rank
            states = [states]
        self._rng_to_restore = states

    def on_train_start(self) -> None:
        # Restored here, after Lightning's own setup has drawn any random numbers it needs.
        states = getattr(self, "_rng_to_restore", None)
        if states:
            state = states[self.global_rank] if self.global_rank < len(states) else states[0]
            torch.set_rng_state(state["torch"])
            if "cuda" in state and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(state["cuda"])
            self._rng_to_restore = None


def use_fused_adamw(device: torch.device, train: TrainConfig) -> bool:
    """Fused AdamW where the device has it, except with fp16's gradient scaler and clipping, where
    gradients must be unscaled before they are clipped (bf16 has no scaler: see configure_gradient_clipping)."""
    scaled_with_clipping = train.precision == "16-mixed" and train.gradient_clip > 0
    return device.type in ("cuda", "cpu", "xpu") and not scaled_with_clipping
