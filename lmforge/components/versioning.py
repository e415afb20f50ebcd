"""What DVC and git know about the workspace: is a stage current, record a stage, hashes for lineage.

Flows run stages themselves (each in a Prefect task) instead of calling `dvc repro`, so they ask
DVC the question `dvc repro` asks (are this stage's deps, params and outs what dvc.lock recorded?)
and record what they ran as `dvc commit -f` would. Outside a DVC repository every stage counts as
changed and nothing is recorded.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from lmforge.components.errors import LmforgeError

log = logging.getLogger(__name__)

LOCK_WAIT_S = 600  # DVC's own lock wait is seconds; a concurrent flow's stage commit can take longer
_THIS_PROCESS = threading.RLock()  # DVC's lock is a file lock: this process's other threads wait here, not polling it


@dataclass(frozen=True)
class GraphStage:
    name: str                   # as dvc.yaml names it, e.g. finetune@bert-sst2
    cmd: str                    # `lmforge stage NAME -S ...`
    upstream: frozenset[str]    # every stage whose outputs it needs, directly or not


def parse_yaml_once() -> None:
    """Make DVC parse a YAML text it has parsed before from memory. DVC reads params.yaml with ruamel's
    pure-Python parser once per stage it checks or records: 65 times per `dvc status` of the demo (5 of
    its 6 s) and per record (~17 s of a demo's 37 s of recording), profiled; the same text parses to the
    same data. Only the plain ("safe") parse is kept; the round-trip one DVC edits files with is not."""
    try:
        from dvc.utils import strictyaml
        from dvc.utils.serialize import _yaml
    except ImportError:  # a DVC that moved them: it parses as it does, only slower
        return
    global _dvc_parse_yaml
    if getattr(_yaml, "parse_yaml", _parse_yaml) is not _parse_yaml:
        _dvc_parse_yaml = _yaml.parse_yaml
        _yaml.parse_yaml = strictyaml.parse_yaml = _parse_yaml  # load_yaml finds it in _yaml, strictyaml by its own name


_dvc_parse_yaml = None  # DVC's own, once parse_yaml_once has run
_parses: dict[str, object] = {}  # text -> data (the file's path aside: the same text from two paths is one parse)


def _parse_yaml(text, path, typ="safe"):
    if typ != "safe":
        return _dvc_parse_yaml(text, path, typ=typ)
    data = _parses.get(text, _parses)
    if data is _parses:  # a failed parse is not kept: it raises every time
        data = _parses[text] = _dvc_parse_yaml(text, path, typ=typ)
        while len(_parses) > 16:
            _parses.pop(next(iter(_parses)), None)
    return copy.deepcopy(data)  # DVC may change what it is given


class DvcProject:
    def __init__(self, root: str | Path = "."):
        self.root = Path(root).resolve()
        self.enabled = (self.root / ".dvc").is_dir() and (self.root / "dvc.yaml").exists()

    def _repo(self):
        from dvc.repo import Repo

        from lmforge.components.console import through_root

        through_root("dvc", "dvc_objects", "dvc_data")  # `import dvc` gives them console handlers of their own
        parse_yaml_once()
        return Repo(str(self.root))

    def _with_lock(self, action: str, fn):
        """Run fn(repo), waiting while another DVC process holds the repository lock."""
        from dvc.lock import LockError

        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                with _THIS_PROCESS, self._repo() as repo:
                    return fn(repo)
            except LockError:
                if time.monotonic() > deadline:
                    raise LmforgeError(
                        f"DVC repository {self.root}: could not take its lock for {LOCK_WAIT_S} s to {action}; "
                        "another dvc or lmforge process holds it"
                    ) from None
                time.sleep(1.0)

    def stages(self) -> list[GraphStage]:
        """dvc.yaml's stages (foreach expanded from params.yaml), each after the stages whose outputs
        it depends on and otherwise in dvc.yaml's order: the one definition of the pipeline."""
        if not self.enabled:
            raise LmforgeError(f"{self.root}: not a DVC project (no .dvc folder and dvc.yaml); the flows take their "
                               "stages from dvc.yaml: run `dvc init` there, or run from the project's folder")

        def collect(repo) -> list[GraphStage]:
            import networkx as nx

            graph = repo.index.graph  # an edge goes from a stage to a stage it depends on
            order = {stage: n for n, stage in enumerate(repo.index.stages)}
            ordered = nx.lexicographical_topological_sort(graph.reverse(copy=False), key=order.__getitem__)
            return [GraphStage(s.addressing, s.cmd, frozenset(u.addressing for u in nx.descendants(graph, s)))
                    for s in ordered if s.cmd]  # a stage without a command is data `dvc add` tracks

        from dvc.exceptions import DvcException

        try:
            return self._with_lock("read dvc.yaml", collect)
        except DvcException as error:  # a broken dvc.yaml or params.yaml DVC cannot template
            raise LmforgeError(f"{self.root / 'dvc.yaml'}: {str(error).splitlines()[0]}") from None

    def changes(self, stage: str) -> list[str]:
        """Why `stage` would rerun (empty: deps, params and outs match dvc.lock)."""
        if not self.enabled:
            return ["not a DVC repository"]
        status = self._with_lock(f"check {stage}", lambda repo: repo.status(targets=[stage]))
        return reasons(status.get(stage, []) if isinstance(status, dict) else [])

    def stale(self) -> dict[str, list[str]] | None:
        """{stage: why it would rerun} for every stage whose deps, params or outs differ from
        dvc.lock, from one `dvc status` of the whole pipeline (None outside a DVC repository). A flow
        asks once instead of once per stage: 58 stages took 42 s one by one, 3.8 s at once (measured)."""
        if not self.enabled:
            return None
        status = self._with_lock("check the pipeline", lambda repo: repo.status())
        return {name.rsplit(":", 1)[-1]: reasons(entries) for name, entries in status.items()} \
            if isinstance(status, dict) else {}

    def record(self, *stages: str) -> None:
        """`dvc commit -f <stage>...`: outputs into the cache, hashes into dvc.lock, which is rewritten
        once for all of them. By hand from DVC's own steps because its `commit` takes one target and
        rewrites the whole dvc.lock each time (2-2.5 s for the demo's 130 KB lock, measured).
        `stages` are names of the root dvc.yaml's stages (`name`, `name@key`), as the flows run them;
        not output paths or group names, which `dvc commit` also takes."""
        if not self.enabled or not stages:
            return

        def commit(repo) -> None:
            import os
            import shutil

            from dvc.dvcfile import Lockfile, load_file

            with repo.lock:
                # The pipeline's stages, parsed once: DVC's collect_granular parses dvc.yaml and dvc.lock
                # again for every target (0.27 s each for the demo's, profiled: most of a record).
                dvcfile = load_file(repo, os.path.join(repo.root_dir, "dvc.yaml"))
                pipeline = dvcfile.stages
                missing = [name for name in stages if name not in pipeline]
                if missing:
                    raise LmforgeError(f"dvc.yaml has no stage {', '.join(missing)} to record")
                saved = []
                for name in stages:
                    stage = pipeline[name]
                    stage.save()
                    stage.commit()
                    saved.append(stage)
                # DVC rewrites dvc.lock in place: a flow killed while its recorder wrote left it truncated
                # (seen in CI). DVC writes a copy here, which then replaces dvc.lock in one step.
                lock = Path(os.path.splitext(dvcfile.path)[0] + ".lock")
                copy = Path(repo.tmp_dir) / f"lmforge-{os.getpid()}-{lock.name}"
                copy.parent.mkdir(parents=True, exist_ok=True)
                if lock.exists():
                    shutil.copyfile(lock, copy)
                try:
                    Lockfile(repo, str(copy)).dump_stages(saved)
                    os.replace(copy, lock)
                finally:
                    copy.unlink(missing_ok=True)

        self._with_lock(f"record {', '.join(stages)}", commit)

    def lock_entry(self, stage: str) -> dict:
        return self.locked_stages().get(stage, {})

    def locked_stages(self) -> dict:
        """dvc.lock's stages ({} without one). Read with libyaml where PyYAML has it: the pure-Python
        parser took a second for a pipeline's dvc.lock, three times per registration (measured);
        it is read again only when it changed."""
        lock = self.root / "dvc.lock"
        if not lock.exists():
            return {}
        stat = lock.stat()
        key = (stat.st_mtime_ns, stat.st_size)
        if getattr(self, "_locked", (None,))[0] != key:  # read again only when the file changed
            loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
            self._locked = (key, (yaml.load(lock.read_text(), Loader=loader) or {}).get("stages", {}))
        return self._locked[1]

    def out_hash(self, path: str | Path) -> str | None:
        """The md5 dvc.lock records for an output path (or the output that contains it)."""
        wanted = Path(path).as_posix().rstrip("/")
        for entry in self.locked_stages().values():
            for out in entry.get("outs", []):
                if out["path"].rstrip("/") == wanted:
                    return out.get("md5")
        return None


class Recorder:
    """Records the stages a flow ran in dvc.lock, several at once, on a thread of its own. dvc.lock is
    rewritten whole for each record (1.6 s for the demo's 65 stages, 2.4 s for five at once, measured),
    so stages are recorded when a stage about to start depends on them (`wait_for`: it reads their
    hashes, as registration does for lineage, and `dvc repro` would have recorded them first), when
    one has waited `within_s`, and when the flow ends. A process killed before then leaves the stages
    of the last `within_s` to rerun next time."""

    def __init__(self, dvc: DvcProject, within_s: float = 30.0):
        self.dvc, self.within_s = dvc, within_s
        self._pending: list[str] = []   # ran, not yet being recorded
        self._since = 0.0               # when the oldest of them ended
        self._writing: list[str] = []   # being recorded now
        self._wanted: set[str] = set()  # what a stage about to start waits for
        self._error: BaseException | None = None
        self._closing = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="dvc-recorder", daemon=True)
        self._thread.start()

    def add(self, stage: str) -> None:
        with self._changed:
            if not self._pending:
                self._since = time.monotonic()
            self._pending.append(stage)
            self._changed.notify_all()

    def wait_for(self, stages) -> None:
        """Return once each of `stages` added so far is in dvc.lock; raise what stopped the recorder."""
        stages = set(stages)
        with self._changed:
            self._wanted |= stages
            self._changed.notify_all()
            self._changed.wait_for(lambda: self._error is not None or not stages & {*self._pending, *self._writing})
            self._wanted -= stages
            if self._error is not None:
                raise self._error

    def _due(self) -> bool:
        return bool(self._pending) and (self._closing or bool(self._wanted & set(self._pending))
                                        or time.monotonic() - self._since >= self.within_s)

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._due():
                    if self._closing:
                        return
                    self._changed.wait(self._since + self.within_s - time.monotonic() if self._pending else None)
                self._writing, self._pending = self._pending, []
            try:
                self.dvc.record(*self._writing)
            except BaseException as error:  # noqa: BLE001 - raised in the flow's thread by wait_for / close
                with self._changed:
                    self._error = error
                    self._changed.notify_all()
                return
            with self._changed:
                self._writing = []
                self._changed.notify_all()

    def close(self) -> None:
        """Record what is left; raise what stopped the recorder."""
        with self._changed:
            self._closing = True
            self._changed.notify_all()
        self._thread.join()
        if self._error is not None:
            raise self._error

    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, kind, error, trace) -> None:
        if error is None:
            self.close()
        else:  # the flow's own error wins; what ran before it is still recorded
            try:
                self.close()
            except BaseException:  # noqa: BLE001
                log.exception("recording the stages that ran before the failure failed")


def reasons(entries: list) -> list[str]:
    """`dvc status` entries of one stage as lines: "changed deps: data/raw/sst2, params.yaml"."""
    lines = []
    for entry in entries:
        if isinstance(entry, dict):
            for kind, paths in entry.items():
                lines.append(f"{kind}: {', '.join(paths) if isinstance(paths, dict) else paths}")
        else:
            lines.append(str(entry))
    return lines


def git_state(root: str | Path = ".") -> tuple[str, bool]:
    """(commit, dirty) of the working tree; ("unknown", True) outside git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                    capture_output=True, text=True, check=True).stdout.strip())
        return commit, dirty
    except (OSError, subprocess.CalledProcessError):
        return "unknown", True


def params_hash(section: dict) -> str:
    """A short, order-independent hash of a params section."""
    return hashlib.sha256(json.dumps(section, sort_keys=True, default=str).encode()).hexdigest()[:16]


def tree_hash(path: str | Path, pattern: str = "*") -> str:
    """sha256 over the relative names and bytes of the files under `path` (a dataset folder) that match `pattern`."""
    digest = hashlib.sha256()
    root = Path(path)
    for file in sorted(p for p in root.rglob(pattern) if p.is_file()):
        digest.update(file.relative_to(root).as_posix().encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def dvc_hash(path: str | Path) -> str:
    """The md5 DVC gives a file or folder (DVC 3, `hash: md5`), as dvc.lock records it for an output or
    dependency with these contents: a folder's is the md5 of its manifest, the sorted list of
    {md5, relpath} of its files, with ".dir" appended. Computed here, so it is that of the files as
    they are now, not of those a stage last recorded."""
    def file_md5(file: Path) -> str:
        digest = hashlib.md5()
        with file.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest()

    root = Path(path)
    if root.is_file():
        return file_md5(root)
    files = sorted((p.relative_to(root).as_posix(), p) for p in root.rglob("*") if p.is_file())
    manifest = [{"md5": file_md5(p), "relpath": rel} for rel, p in files]
    return hashlib.md5(json.dumps(manifest, sort_keys=True).encode("utf-8")).hexdigest() + ".dir"
