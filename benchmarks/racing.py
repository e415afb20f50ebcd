"""What the throughput benchmarks share: contestants that take turns on one thread, the clock that
times their steps, and the environment a report records.

Each contestant is a function of `Turns` that trains and calls `Clock.step_end` after every
optimizer step; past warm-up, every `window` steps it hands over to the next contestant (order
A B C, C B A, ...), so load from outside the process hits all of them alike.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import random
import time
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import numpy as np
import torch
from transformers import TrainerCallback

try:  # installed with SQLAlchemy (mlflow, prefect); without it the contestants run one after another
    import greenlet
except ImportError:  # pragma: no cover
    greenlet = None

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# The two Trainer rows every benchmark has: set up as the example scripts do by default, and as
# fast as the Trainer's documentation allows (followed by its precision).
REFERENCE = "Trainer defaults 32"
BEST = "Trainer best"


def best_trainer_settings(cfg) -> dict:
    """TrainingArguments for the Trainer at its best against lmforge's TrainConfig `cfg`: the same
    precision, optimizer settings and compilation, with the fused AdamW kernel."""
    return {"bf16": "bf16" in cfg.precision, "optim": "adamw_torch_fused", "adam_beta1": cfg.adam_betas[0],
            "adam_beta2": cfg.adam_betas[1], "adam_epsilon": cfg.adam_epsilon, "torch_compile": cfg.compile}


def bf16_available() -> bool:
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())


# ---------------------------------------------------------------------------- taking turns


class Turns:
    """Round-robin among contestants on one OS thread, as greenlets: one OpenMP thread pool, as a
    run alone has (threads would each start their own pool and slow every contestant down)."""

    def __init__(self, contestants: list):
        self.contestants = contestants

    def hand_over(self) -> None:
        if greenlet is not None and greenlet.getcurrent().parent is not None:
            greenlet.getcurrent().parent.switch()

    def run(self) -> list:
        if greenlet is None:
            return [contestant(self) for contestant in self.contestants]
        start = global_state()

        def fresh(contestant):
            # Each begins from the race's start, as alone in a fresh process: not from the state of the
            # contestant that handed over (Lightning's deterministic flags would pass to the Trainer).
            restore_global_state(start)
            return contestant(self)

        lets = [greenlet.greenlet(lambda c=c: fresh(c)) for c in self.contestants]
        results, order = [None] * len(lets), list(range(len(lets)))
        while any(not g.dead for g in lets):
            for i in order:
                if not lets[i].dead:
                    result = lets[i].switch()  # an exception in a contestant is raised here
                    if lets[i].dead:
                        results[i] = result
            order.reverse()  # A B C, C B A: no contestant always follows the same one
        return results


class Clock:
    """One contestant's steps: losses, and the seconds and tokens of the steps after warm-up.

    Every `window` steps past warm-up it hands over; process-wide state (random generators, the
    deterministic-algorithms flags) is kept across the hand-over, so each trains as it would alone.
    """

    def __init__(self, turns: Turns, total: int, warmup: int, window: int):
        self.turns, self.total, self.warmup, self.window = turns, total, warmup, window
        self.done, self.tokens, self.positions, self.sequences = 0, 0, 0, 0
        self.losses: list[torch.Tensor] = []
        self.step_seconds: list[float] = []  # each timed step's: their median shrugs off a burst of outside load
        self.start, self.created, self.warmup_seconds = None, time.perf_counter(), 0.0

    def step_end(self, batch: dict, loss: torch.Tensor) -> None:
        self.losses.append(loss.detach().float())
        self.done += 1
        if self.start is not None:
            _sync()
            self.step_seconds.append(time.perf_counter() - self.start)
            tokens, positions, sequences = tokens_of(batch)
            self.tokens += tokens
            self.positions, self.sequences = self.positions + positions, self.sequences + sequences
        if self.done == self.warmup:
            _sync()
            self.warmup_seconds = time.perf_counter() - self.created  # set-up, first steps, compilation
        past = self.done - self.warmup
        if self.done < self.total and past >= 0 and past % self.window == 0:
            state = global_state()
            self.turns.hand_over()
            restore_global_state(state)
        # The next step, its data loading included, is timed.
        self.start = time.perf_counter() if self.warmup <= self.done < self.total else None

    @property
    def steps(self) -> int:
        """The timed steps."""
        return len(self.step_seconds)

    @property
    def seconds(self) -> float:
        """The timed steps' seconds, summed."""
        return sum(self.step_seconds)

    def final_loss(self, last: int = 10) -> float:
        return float(torch.stack(self.losses[-last:]).mean())

    def timer(self) -> L.Callback:
        """A Lightning callback that ends this clock's step after each training batch."""
        callback = L.Callback()
        callback.on_train_batch_end = lambda trainer, module, outputs, batch, i: self.step_end(batch, outputs["loss"])
        return callback


def tokens_of(batch: dict) -> tuple[int, int, int]:
    """(non-padding tokens, positions computed, sequences) of a batch, counted alike for both sides."""
    mask, ids = batch.get("attention_mask"), batch["input_ids"]
    return (int(mask.sum()) if mask is not None else ids.numel()), ids.numel(), ids.shape[0]


def _sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def global_state() -> dict:
    state = {"torch": torch.get_rng_state(), "random": random.getstate(), "numpy": np.random.get_state(),
             "grad": torch.is_grad_enabled(), "fill": torch.utils.deterministic.fill_uninitialized_memory,
             "deterministic": (torch.are_deterministic_algorithms_enabled(),
                               torch.is_deterministic_algorithms_warn_only_enabled())}
    return {**state, "cuda": torch.cuda.get_rng_state_all()} if torch.cuda.is_available() else state


def restore_global_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["random"])
    np.random.set_state(state["numpy"])
    torch.set_grad_enabled(state["grad"])
    torch.utils.deterministic.fill_uninitialized_memory = state["fill"]
    torch.use_deterministic_algorithms(state["deterministic"][0], warn_only=state["deterministic"][1])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


class HFClock(TrainerCallback):
    """Steps end in the Trainer's callback; tokens and loss are read by hooks on the model's forward,
    so the Trainer needs no logging."""

    def __init__(self, clock: Clock, model: torch.nn.Module):
        self.clock, self.batch, self.loss = clock, None, None
        model.register_forward_pre_hook(self._inputs, with_kwargs=True)
        model.register_forward_hook(self._outputs)

    def _inputs(self, module, args, kwargs):
        if module.training:
            self.batch = {k: kwargs[k] for k in ("input_ids", "attention_mask") if k in kwargs}

    def _outputs(self, module, args, output):
        if module.training:
            self.loss = output.loss.detach()

    def on_step_end(self, args, state, control, **kwargs):
        self.clock.step_end(self.batch, self.loss)


def environment(precisions: list[str]) -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    cpus = [line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")]
    device = torch.cuda.get_device_name() if DEVICE == "cuda" else (cpus or [platform.machine()])[0]
    return {"torch": torch.__version__, "transformers": __import__("transformers").__version__,
            "lightning": L.__version__, "device": device, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
            "bf16": bf16_available(), "amx": bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()),
            "lmforge_precision": precisions, "reference_precision": "32"}


@contextlib.contextmanager
def quiet_and_restored() -> Iterator[None]:
    """Library logging and progress bars off during a benchmark; they, the random generators and
    the deterministic-algorithms flags (Lightning turns them on) are as they were afterwards."""
    import datasets
    from transformers.utils import logging as hf_logging

    saved, verbosity = global_state(), hf_logging.get_verbosity()
    bars, hf_bars = datasets.is_progress_bar_enabled(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # "Loading weights" once per contestant
    datasets.disable_progress_bars()
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    try:
        yield
    finally:
        restore_global_state(saved)
        hf_logging.set_verbosity(verbosity)
        if bars:
            datasets.enable_progress_bars()
        if hf_bars:
            hf_logging.enable_progress_bar()


def write_report(report: dict, out: str) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(report, indent=2) + "\n")
