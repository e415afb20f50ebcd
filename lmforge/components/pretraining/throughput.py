"""Tokens per second and model-FLOPs utilisation, logged as training runs."""

from __future__ import annotations

import time

import lightning as L
import torch


def measure_peak_flops(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, size: int = 1024,
                       seconds: float = 1.0) -> float:
    """Achieved FLOP/s of a square matmul on this device: the denominator of MFU.

    CPUs have no published peak that means much per machine, so we measure one.
    """
    device = torch.device(device)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        n += 1
    _sync(device)
    return 2 * size**3 * n / (time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class ThroughputLogger(L.Callback):
    """Logs train/tokens_per_s (non-padding tokens) and train/mfu over each logging window."""

    def __init__(self, flops_per_token: float, peak_flops: float):
        self.flops_per_token, self.peak_flops = flops_per_token, peak_flops
        self.tokens, self.start = 0, None
        self.rates: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.start is None:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        mask = batch.get("attention_mask")
        self.tokens += int(mask.sum()) if mask is not None else batch["input_ids"].numel()
        if trainer.global_step % trainer.log_every_n_steps == 0 and self.start is not None:
            elapsed = time.perf_counter() - self.start
            rate = self.tokens * trainer.world_size / max(elapsed, 1e-9)
            self.rates.append(rate)
            pl_module.log("train/tokens_per_s", rate, prog_bar=True)
            pl_module.log("train/mfu", rate * self.flops_per_token / self.peak_flops)
            self.tokens, self.start = 0, None

    # In the checkpoint, so a resumed run reports the speed of all its steps: a run resumed at its
    # last step (the stage rerun after a code change: nothing left to train) reported 0 tokens/s.
    def state_dict(self) -> dict:
        return {"rates": list(self.rates)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.rates = list(state_dict.get("rates", []))

    @property
    def mean_tokens_per_s(self) -> float:
        # The first window includes warm-up (allocations, compilation): leave it out when we can.
        rates = self.rates[1:] or self.rates
        return sum(rates) / len(rates) if rates else 0.0
