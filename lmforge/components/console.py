"""What the console shows: one line per stage, one progress bar at a time, warnings and errors;
the log file keeps everything.

A record logged with `extra=CONSOLE` is one of lmforge's console lines (a stage that ran, was skipped
or failed, a flow's first line, where the UI is) and prints as its bare message. Every other INFO line
(lmforge's own details, Lightning's "GPU available" and "try litlogger", Prefect's task-run states,
one per HTTP request) goes to the log file only. Warnings and errors of every library still show, but
for known noise with nothing to act on (a deprecation warning Lightning triggers in torch on every fit,
transformers' load report for every new task head); datasets' and transformers' own progress bars are
off. A flow run writes everything (but the bars) to runs/<flow-run>/log.txt (`log_file`); `lmforge -v`
(or LMFORGE_LOG_LEVEL=DEBUG) shows everything on the console too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

FORMAT = "%(levelname)s %(name)s: %(message)s"
PROGRESS_BAR_ENV = "LMFORGE_PROGRESS_BAR"  # "0": no live bar (stages run at once would garble each other's)
CONSOLE = {"console": True}  # `log.info(..., extra=CONSOLE)`: a line for the console, not only the log file
# Warnings that come on every run with nothing to act on.
KNOWN_NOISE = ("`isinstance(treespec, LeafSpec)` is deprecated",  # Lightning's pytree helper, torch 2.13
               "LOAD REPORT",  # transformers: a new task head's weights listed as missing (we check inits)
               "is smaller than the logging interval",  # Lightning, for a small dataset: logging is per step here
               # MLflow, on every pyfunc registration: our wrappers are pickled and their inputs checked
               # against the signature we give, by design (registry/packaging.py).
               "Add type hints to the `predict` method", "Passing a Python object as `python_model`",
               # MLflow, for a dataset input with empty lists (SQuAD v2's unanswerable questions): the input
               # is logged with its digest and source, without a column schema.
               "Failed to infer schema for Hugging Face dataset")


def for_console(record: logging.LogRecord) -> bool:
    return getattr(record, "console", False)


class Quiet(logging.Filter):
    """The console's filter: lmforge's console lines, and warnings and errors but the known noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return for_console(record)
        message = record.getMessage()
        return not any(noise in message for noise in KNOWN_NOISE)


class ConsoleFormatter(logging.Formatter):
    """A console line prints as its message; anything else with its level and logger."""

    def format(self, record: logging.LogRecord) -> str:
        if for_console(record) and record.levelno < logging.WARNING:
            return record.getMessage()
        return super().format(record)


def configure(verbose: bool = False) -> None:
    level = "DEBUG" if verbose else os.environ.get("LMFORGE_LOG_LEVEL", "INFO")
    console = logging.StreamHandler()
    console.setFormatter(ConsoleFormatter(FORMAT))
    logging.basicConfig(level=level, handlers=[console])
    logging.captureWarnings(True)  # warnings through logging: the console filters them, the log file keeps them
    # MLflow gives its loggers a handler of its own on import (bypassing the filter and the log file)
    # unless told not to.
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
    if verbose or debugging():
        return
    console.addFilter(Quiet())
    # Libraries that print through handlers of their own (not the root's): their loggers' filters
    # and levels, which importing them leaves alone.
    for name in ("transformers.modeling_utils", "transformers.utils.loading_report"):
        logging.getLogger(name).addFilter(Quiet())
    for name in ("mlflow.store.db.utils", "alembic.runtime.migration", "dvc.dvcfile"):  # "Creating tables", "Updating lock file"
        logging.getLogger(name).setLevel(logging.WARNING)
    quiet_library_bars()


def debugging() -> bool:
    """Whether this process logs at DEBUG (`lmforge -v`, LMFORGE_LOG_LEVEL=DEBUG): every library's output
    then stays on, their bars too."""
    return (os.environ.get("LMFORGE_LOG_LEVEL", "").upper() == "DEBUG"
            or logging.getLogger().getEffectiveLevel() <= logging.DEBUG)


def quiet_library_bars() -> None:
    """datasets draws a bar per .map and per save_to_disk, transformers one per save_pretrained ("Writing
    model shards"), MLflow one per artifact download; the stage's own bar is the one to watch. Both HF
    libraries may be imported already. `configure` calls this for the CLI; a flow calls it too, for the
    runs Prefect starts itself (a worker's, `lmforge serve`'s), where the CLI never ran."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import huggingface_hub.utils

    huggingface_hub.utils.disable_progress_bars()
    if "datasets" in sys.modules:
        sys.modules["datasets"].disable_progress_bars()
    else:  # read when it is imported: importing it here cost every command, `lmforge params` too, 1.5 s
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:  # it copies the hub's setting when imported: set after, it must be told
        sys.modules["transformers"].utils.logging.disable_progress_bar()


def file_handler(path: Path) -> logging.Handler:
    """Every INFO line and above, unfiltered, appended to `path` (a flow's log file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s " + FORMAT))
    handler.setLevel(logging.INFO)
    return handler


@contextlib.contextmanager
def log_file(path: Path) -> Iterator[Path]:
    """Everything logged in this process while the block runs, unfiltered, appended to `path`."""
    handler = file_handler(path)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield path
    finally:
        root.removeHandler(handler)
        handler.close()


def through_root(*names: str) -> None:
    """Libraries that give their loggers a console handler of their own (`lightning`; `dvc` on import)
    printed each line twice, once more through the root logger's. Where logging is set up (lmforge's
    CLI), the root's handlers, with the console filter and the log file, are the ones; called once
    the library is imported."""
    if not logging.getLogger().handlers:
        return
    for name in names:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                logger.removeHandler(handler)
        logger.propagate = True
