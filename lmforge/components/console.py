"""What the console shows: lmforge's own lines and one progress bar at a time; the log file keeps all.

Third-party chatter is kept off the console where it starts, never by swallowing errors: Lightning's
INFO lines on every run ("GPU available", a "try litlogger" advertisement), a deprecation warning
Lightning triggers in torch on every fit, transformers' load report for every new task head, one
INFO line per HTTP request, datasets' and transformers' progress bars. Warnings and errors of every
library still show. A flow run writes everything (but the bars) to runs/<flow-run>/log.txt
(`log_file`); `lmforge -v` (or LMFORGE_LOG_LEVEL=DEBUG) shows everything on the console too.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

FORMAT = "%(levelname)s %(name)s: %(message)s"
# Loggers whose INFO lines come on every run and say nothing about this one.
CHATTY = ("lightning.pytorch", "lightning.fabric", "httpx", "mlflow.store.db.utils", "alembic.runtime.migration")
# Warnings that come on every run with nothing to act on.
KNOWN_NOISE = ("`isinstance(treespec, LeafSpec)` is deprecated",  # Lightning's pytree helper, torch 2.13
               "LOAD REPORT")  # transformers: a new task head's weights listed as missing (we check inits)


class Quiet(logging.Filter):
    """The console's filter: drops the chatty loggers' INFO lines and the known noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING and record.name.startswith(CHATTY):
            return False
        message = record.getMessage()
        return not any(noise in message for noise in KNOWN_NOISE)


def configure(verbose: bool = False) -> None:
    level = "DEBUG" if verbose else os.environ.get("LMFORGE_LOG_LEVEL", "INFO")
    console = logging.StreamHandler()
    console.setFormatter(logging.Formatter(FORMAT))
    logging.basicConfig(level=level, handlers=[console])
    logging.captureWarnings(True)  # warnings through logging: the console filters them, the log file keeps them
    if verbose or level == "DEBUG":
        return
    console.addFilter(Quiet())
    # Libraries that print through handlers of their own (not the root's): their loggers' filters
    # and levels, which importing them leaves alone.
    for name in ("transformers.modeling_utils", "transformers.utils.loading_report"):
        logging.getLogger(name).addFilter(Quiet())
    for name in ("mlflow.store.db.utils", "alembic.runtime.migration", "dvc.dvcfile"):  # "Creating tables", "Updating lock file"
        logging.getLogger(name).setLevel(logging.WARNING)
    # datasets draws a bar per .map and per save_to_disk, transformers one per save_pretrained ("Writing
    # model shards"); the stage's own bar is the one to watch. Both libraries may be imported already.
    import datasets
    import huggingface_hub.utils

    datasets.disable_progress_bars()
    huggingface_hub.utils.disable_progress_bars()


@contextlib.contextmanager
def log_file(path: Path) -> Iterator[Path]:
    """Everything logged in this process while the block runs, unfiltered, appended to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s " + FORMAT))
    handler.setLevel(logging.INFO)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield path
    finally:
        root.removeHandler(handler)
        handler.close()


def lightning_through_root() -> None:
    """The `lightning` package gives its logger a console handler of its own, so each of its lines
    came twice (once more through the root logger's). Where logging is set up (lmforge's CLI), the
    root's handler, with the console filter, is the one; called once lightning is imported."""
    if logging.getLogger().handlers:
        logger = logging.getLogger("lightning")
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:
                logger.removeHandler(handler)
