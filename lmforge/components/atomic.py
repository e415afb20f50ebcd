"""Write outputs to a temporary sibling path and move them into place, so nothing is half-written.

A temporary path names the process writing it (`.<name>.tmp-<pid>@<host>-<random>`). A process
killed mid-write (SIGKILL, out of memory) cannot remove its own; the next write of the same target
removes those whose process is gone, so killed runs leave no debris in DVC-tracked folders.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

HOST = socket.gethostname()


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside `target`; on success it replaces `target`.

    On any exception the temporary folder is removed and `target` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(target)
    tmp = Path(tempfile.mkdtemp(prefix=_temporary_prefix(target, "tmp"), dir=target.parent))
    tmp.chmod(0o777 & ~umask())  # mkdtemp makes it private (0700); the output gets a folder's usual mode
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if _exchange(tmp, target):  # one step: `target` is never missing, not even for a moment
        shutil.rmtree(tmp, ignore_errors=True)
        return
    old = target.with_name(f"{_temporary_prefix(target, 'old')}x")
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths atomically (Linux renameat2 RENAME_EXCHANGE); False where that is
    not available (another OS, an old kernel, a filesystem without it) or `b` does not exist."""
    global _renameat2
    if _renameat2 is None or not b.exists():
        return False
    try:
        if _renameat2 == "unknown":
            import ctypes

            _renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
            _renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        at_fdcwd, rename_exchange = -100, 2
        return _renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0
    except (OSError, AttributeError):  # no libc symbol renameat2
        _renameat2 = None
        return False


_renameat2 = "unknown" if sys.platform.startswith("linux") else None


def write_json(path: str | os.PathLike, obj, indent: int = 2) -> Path:
    """Write JSON through a temporary file and an atomic rename."""
    return write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a text file through a temporary file and an atomic rename."""
    with atomic_file(path, "w") as f:
        f.write(text)
    return Path(path)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb", durable: bool = False) -> Iterator[IO]:
    """Yield a file open for writing beside `path`; on success it replaces `path` (with `durable`,
    synced to disk first). On any exception it is removed and `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path)
    fd, tmp = tempfile.mkstemp(prefix=_temporary_prefix(path, "tmp"), dir=path.parent)
    os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes it private (0600); the output gets a file's usual mode
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def umask() -> int:
    """The process's umask, read without changing it (os.umask sets it, a race with other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:  # not Linux
        pass
    return 0o022


def _temporary_prefix(target: Path, kind: str) -> str:
    return f".{target.name}.{kind}-{os.getpid()}@{HOST}-"


def remove_stale(target: str | os.PathLike) -> list[Path]:
    """Remove the temporary siblings of `target` that a process now gone left behind; return them.

    A process killed between moving the old `target` aside and moving the new one in leaves no
    `target` but its `.old-` sibling: that previous, complete version is put back.
    """
    target = Path(target)
    removed = []
    pattern = f".{glob.escape(target.name)}."
    for path in sorted(target.parent.glob(f"{pattern}tmp-*")) + sorted(target.parent.glob(f"{pattern}old-*")):
        owner = _owner(path.name[len(pattern) + 4:])
        if owner is None or owner[1] != HOST or process_alive(owner[0], since=_mtime(path)):
            continue
        if path.name[len(pattern):].startswith("old-") and not target.exists():
            with contextlib.suppress(OSError):
                os.replace(path, target)
                continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        removed.append(path)
    return removed


def _owner(rest: str) -> tuple[int, str] | None:
    """(pid, host) from '<pid>@<host>-<random>', or None for a name lmforge did not make."""
    pid, at, host_and_random = rest.partition("@")
    host = host_and_random.rpartition("-")[0]
    if not (at and pid.isdigit() and host):
        return None
    return int(pid), host


def _mtime(path: Path) -> float:
    try:
        return path.lstat().st_mtime
    except FileNotFoundError:
        return time.time()


def process_alive(pid: int, since: float | None = None) -> bool:
    """Whether process `pid` of this host still runs (a zombie does not). With `since` (a Unix time
    the owner is known to have been running at), a process started after it is another one that
    reuses the pid: the owner is gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        pass
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil comes with dvc
        return True
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return since is None or process.create_time() <= since + 1.0
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True


def host_lock(kind: str, key: str):
    """An exclusive lock named by `kind` and `key`, shared by every lmforge process on this host. The
    lock file sits in the system's temporary folder, so neither git nor DVC sees it."""
    import hashlib

    from filelock import FileLock

    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    return FileLock(Path(tempfile.gettempdir()) / f"lmforge-{kind}-{digest}.lock")
