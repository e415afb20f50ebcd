"""What the console shows: lmforge's own lines and one progress bar at a time.

Third-party chatter is turned down where it starts, never by swallowing errors: Lightning's INFO
lines (printed twice, by its own handler and again through the root logger: "GPU available", a
"try litlogger" advertisement per run), a deprecation warning Lightning triggers in torch on every
fit, datasets' per-map and per-save progress bars, one INFO line per HTTP request. Warnings and
errors of every library still show. `lmforge -v` (or LMFORGE_LOG_LEVEL=DEBUG) brings everything back.
"""

from __future__ import annotations

import logging
import os
import warnings

# Logged at INFO by libraries on every run; WARNING and above still show. Lightning's own loggers by
# their children: importing lightning sets "lightning.pytorch" back to INFO.
CHATTY_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                  "lightning.pytorch.accelerators.cuda", "httpx", "mlflow.store.db.utils", "alembic.runtime.migration")


def configure(verbose: bool = False) -> None:
    level = "DEBUG" if verbose else os.environ.get("LMFORGE_LOG_LEVEL", "INFO")
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if verbose or level == "DEBUG":
        return
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    # Lightning's pytree helper calls a torch API deprecated in torch 2.13: once per fit, nothing to act on.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    # A load report per fine-tuning, listing the new task head's weights as missing (lmforge checks
    # an init checkpoint itself: components/finetuning/checkpoints.py).
    # A filter, not a level: transformers checks a tensor-parallel plan (and warns) when that logger's
    # level is WARNING or above.
    logging.getLogger("transformers.modeling_utils").addFilter(lambda record: "LOAD REPORT" not in record.getMessage())
    # datasets draws a bar per .map and per save_to_disk, transformers one per save_pretrained ("Writing
    # model shards"); the stage's own bar is the one to watch. Both libraries may be imported already.
    import datasets
    import huggingface_hub.utils

    datasets.disable_progress_bars()
    huggingface_hub.utils.disable_progress_bars()
