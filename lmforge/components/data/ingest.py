"""The `ingest` stage: every configured dataset into data/raw/<name>/, plus a manifest.

Everything is read and validated first and written last, into a temporary folder that replaces
data/raw in one move: a bad file leaves the previous data/raw exactly as it was. A dataset
without a validation split gets one carved from train (holdout.py), recorded in the manifest.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path

from datasets import DatasetDict

from lmforge.components.atomic import atomic_dir, write_json
from lmforge.components.config import HoldoutConfig, IngestConfig, SourceConfig
from lmforge.components.data import holdout
from lmforge.components.data.hub import infer_hub_task, load_hub, parse_hub_spec
from lmforge.components.data.local import input_files, read_local, resolve_data_files
from lmforge.components.data.schemas import GLUE_TASKS, task_features, validate
from lmforge.components.errors import LmforgeError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


def ingest(cfg: IngestConfig, out_dir: Path, base_dir: Path = Path(".")) -> Path:
    """Read, validate and save every dataset; return out_dir. Relative local paths are from base_dir."""
    collected: dict[str, tuple[DatasetDict, dict]] = {}
    with quiet_progress():  # a bad file then prints its one error line, not progress bars before it
        if cfg.demo.enabled:
            from lmforge.components.data.demo import build_demo, demo_task

            for name, data in build_demo(cfg.demo).items():
                task = demo_task(name)
                validate(data, task, f"demo:{name}")
                collected[name] = (data, {"source": "demo", "task": task, "demo": cfg.demo.model_dump()})
        for source in cfg.sources:
            if source.name in collected:
                raise LmforgeError(
                    f"ingest.sources: dataset name {source.name!r} is already taken by the demo; choose another name"
                )
            collected[source.name] = read_source(source, base_dir, cfg.validation)
    if not collected:
        raise LmforgeError("ingest: nothing to ingest; enable ingest.demo or list ingest.sources")

    manifest = {}
    with atomic_dir(out_dir) as tmp:
        for name, (data, entry) in collected.items():
            log.info("saving %s: %s", name, {s: len(d) for s, d in data.items()})
            data.save_to_disk(str(tmp / name))
            manifest[name] = {**entry, **describe(data)}
        write_json(tmp / MANIFEST, manifest)
    return Path(out_dir)


@contextlib.contextmanager
def quiet_progress() -> Iterator[None]:
    """`datasets`' progress bars off while the inputs are read and checked (saving shows them)."""
    from datasets.utils.logging import disable_progress_bar, enable_progress_bar, is_progress_bar_enabled

    was_enabled = is_progress_bar_enabled()
    disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            enable_progress_bar()


def read_source(source: SourceConfig, base_dir: Path, validation: HoldoutConfig) -> tuple[DatasetDict, dict]:
    """One configured source as a validated DatasetDict with a validation split, and its manifest entry."""
    carved = None
    if source.source == "local":
        to_read, carved = _carve_text_files(source, base_dir, validation)
        data = read_local(to_read, base_dir)
        task = source.task or _local_task(source, base_dir)
        origin = f"dataset {source.name!r} ({source.format} {source.data_files})"
        entry = {
            "source": "local",
            "format": source.format,
            "data_files": source.data_files,
            "sha256": {str(p): sha256(p) for p in input_files(source, base_dir)},
        }
    else:
        name, config = parse_hub_spec(source.source)
        data = load_hub(source.source, source.revision)
        task = source.task or infer_hub_task(name, config)
        origin = f"dataset {source.name!r} ({source.source})"
        entry = {"source": source.source, "revision": source.revision, "fingerprints": _fingerprints(data)}
    if task in GLUE_TASKS:
        data = _with_idx(data)
    if task is not None:
        validate(data, task, origin)
        data = _cast(data, task, origin)
    if carved is None and "train" in data and not holdout.has_validation(data):
        split = holdout.validation_split_name(task)
        data = holdout.carve_rows(data, split, validation, origin)
        carved = {"by": "row", "split": split, "documents": len(data[split])}
    if carved is not None:
        entry["validation_carved"] = {**carved, "from": "train", **validation.model_dump()}
    entry["task"] = task
    return data, entry


def _carve_text_files(source: SourceConfig, base_dir: Path, validation: HoldoutConfig) -> tuple[SourceConfig, dict | None]:
    """A plain-text source of several train files and no validation files: the same source with
    some files given as its validation split (a file is a document), and what was carved."""
    if source.format != "text":
        return source, None
    files = resolve_data_files(source.data_files, base_dir)
    if holdout.has_validation(files) or len(files.get("train", [])) < 2:
        return source, None
    train, held = holdout.carve_files(files["train"], base_dir, validation, f"dataset {source.name!r}")
    data_files = {**{s: [str(p) for p in ps] for s, ps in files.items()},
                  "train": [str(p) for p in train], "validation": [str(p) for p in held]}
    carved = {"by": "file", "split": "validation", "documents": len(held)}
    return source.model_copy(update={"data_files": data_files}), carved


def _with_idx(data: DatasetDict) -> DatasetDict:
    """GLUE rows carry their position as `idx`; files that lack it get it, as the Hub's loader does."""
    return DatasetDict(
        {s: ds if "idx" in ds.column_names else ds.add_column("idx", list(range(len(ds)))) for s, ds in data.items()}
    )


def _local_task(source: SourceConfig, base_dir: Path) -> str | None:
    if source.format == "text":
        return "corpus"
    if source.format == "squad_json":
        from lmforge.components.data.squad_json import squad_task

        files = resolve_data_files(source.data_files, base_dir)
        return squad_task({split: paths[0] for split, paths in files.items()})
    if source.format == "conll":
        return "conll2003"
    return None


def _cast(data: DatasetDict, task: str, origin: str) -> DatasetDict:
    """Give columns the task's exact feature types (e.g. a CSV's int label becomes a ClassLabel)."""
    features = task_features(task)
    out = {}
    for split, ds in data.items():
        wanted = {**ds.features, **features}
        try:
            out[split] = ds.cast(type(features)(wanted)) if ds.features != wanted else ds
        except (ValueError, TypeError) as e:
            raise LmforgeError(f"{origin} [{split}]: columns do not fit task {task!r}: {e}") from None
    return DatasetDict(out)


def describe(data: DatasetDict) -> dict:
    return {
        "rows": {split: len(ds) for split, ds in data.items()},
        "columns": {name: str(feature) for name, feature in next(iter(data.values())).features.items()},
    }


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fingerprints(data: DatasetDict) -> dict[str, str]:
    return {split: ds._fingerprint for split, ds in data.items()}
