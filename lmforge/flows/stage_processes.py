"""Stages a flow runs at once, each beside the others in a process of its own.

With orchestration.max_parallel_stages > 1, stages whose inputs are ready run side by side. As threads
of the flow's process they shared torch's global random generator (a seeded run was no longer
repeatable), the GIL (the Python half of a tiny model's step ran one at a time) and torch's thread pool
(two stages on two threads each oversubscribed the cores). A stage that starts while another runs now
runs in a worker process; one that starts alone runs in the flow's process, with its progress bar.
Each gets the same share of the cores (torch.set_num_threads), so what it computes does not depend on
what else was ready when it started. The workers are forked
from multiprocessing's fork server, which imports torch, Lightning, transformers, MLflow and the stages
once, when the flow first starts a stage beside another (a flow whose stages never overlap starts none);
a worker serves one stage after another, its imports warm.
Measured on 2 cores, the demo's 17 fine-tuning runs: 70.8 s one after another on 2 threads, 58.4 s two
at once as threads, 52.1 s two at once as processes of 1 thread each.

A worker logs to the flow's log file and nests its MLflow runs under the flow's run; the stage's result
or its error comes back to the flow's task. Each stage seeds its own generators, so a worker's earlier
stages do not change what a later one draws.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from contextvars import ContextVar
from pathlib import Path

from lmforge.components.stages import PlannedStage

# What the stages import, imported once by the fork server rather than by each worker (a fresh process
# per stage spent 3-4 s importing MLflow and scikit-learn for a registration of 0.3 s, measured).
PRELOAD = ["torch", "lightning", "transformers", "datasets", "mlflow", "sklearn.metrics", "scipy.stats",
           "lmforge.components.stages", "lmforge.components.finetuning.finetune",
           "lmforge.components.evaluation.evaluate", "lmforge.components.registry.gate",
           "lmforge.components.pretraining.pretrain", "lmforge.components.tracking"]

stage_processes: ContextVar[StageProcesses | None] = ContextVar("lmforge_stage_processes", default=None)


class StageProcesses:
    """Up to `width` stages at once: those started beside another in worker processes."""

    def __init__(self, width: int, log_path: Path | None = None):
        context = start_fork_server()
        self.log_path = log_path
        self.pool = ProcessPoolExecutor(width, mp_context=context, initializer=die_with_parent)

    def run(self, planned: PlannedStage, threads: int) -> list[Path]:
        from lmforge.components.tracking import flow_run, parent_run

        return self.pool.submit(run_in_worker, planned, threads, os.getcwd(), self.log_path,
                                parent_run.get(), flow_run.get()).result()

    @contextlib.contextmanager
    def installed(self):
        """While the block runs, run_stage hands stages started beside another to these workers."""
        token = stage_processes.set(self)
        try:
            yield self
        finally:
            stage_processes.reset(token)
            self.pool.shutdown(wait=True, cancel_futures=True)


def start_fork_server():
    """The context workers start from: the fork server, started now if it is not running (its imports
    take ~10 s, which the first workers wait for); on Windows, which has none, spawn."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")  # each worker imports what its first stage needs
    from multiprocessing import forkserver

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    forkserver.ensure_running()
    return context


def die_with_parent() -> None:
    """A worker ends when the fork server does, which ends when the flow's process does: a flow killed
    outright (SIGKILL) must not leave a stage running on, writing or registering after it. Linux only
    (prctl PR_SET_PDEATHSIG); elsewhere a worker finishes its stage and then finds its flow gone."""
    import ctypes
    import signal
    import sys

    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG


_worker_log: list = []  # the worker's handler on the flow's log file, once added


def run_in_worker(planned: PlannedStage, threads: int, cwd: str, log_path: Path | None, parent: str | None,
                  flow: str | None) -> list[Path]:
    """A stage in a worker: the flow's working directory, log file and MLflow parent run, no live bar."""
    import torch

    from lmforge.components.console import PROGRESS_BAR_ENV, configure, file_handler, through_root
    from lmforge.components.tracking import flow_run, parent_run

    os.chdir(cwd)  # the fork server stays where it started; the flow may be elsewhere now
    torch.set_num_threads(threads)
    if not _worker_log:
        os.environ[PROGRESS_BAR_ENV] = "0"  # bars of stages run at once would overwrite each other's line
        configure()
        through_root("lightning", "lightning.pytorch", "lightning.fabric", "dvc", "dvc_objects", "dvc_data")  # imported before logging was set up
        if log_path is not None:
            logging.getLogger().addHandler(file_handler(log_path))
        _worker_log.append(log_path)
    parent_run.set(parent)
    flow_run.set(flow)
    return planned.function(planned.params)


@contextlib.contextmanager
def torch_threads(threads: int):
    """torch's intra-op threads set to `threads` while the block runs (0: left as they are)."""
    if not threads:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
