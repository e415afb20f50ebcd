"""Outputs written to a temporary sibling and moved into place: whole or not at all, usual permissions."""

import os
import stat
import subprocess
import sys

import pytest

from lmforge.components.atomic import HOST, atomic_dir, remove_stale, umask, write_json


@pytest.fixture
def group_umask():
    """umask 027, so the expected modes differ from both mkstemp's 0600 and the common 0644."""
    previous = os.umask(0o027)
    yield
    os.umask(previous)


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_outputs_get_the_umask_modes_not_private_temporary_ones(tmp_path, group_umask):
    """Regression: folders came out 0700 and files 0600 (mkdtemp/mkstemp), unreadable to the DVC cache's other users."""
    assert umask() == 0o027
    with atomic_dir(tmp_path / "model") as out:
        (out / "config.json").write_text("{}")
    metrics = write_json(tmp_path / "metrics.json", {"accuracy": 0.5})
    assert mode(tmp_path / "model") == 0o750
    assert mode(metrics) == 0o640


def test_a_failed_write_leaves_the_previous_output_and_no_debris(tmp_path):
    with atomic_dir(tmp_path / "model") as out:
        (out / "weights").write_text("v1")
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "model") as out:
        (out / "weights").write_text("half of v2")
        raise RuntimeError("killed mid-write")
    assert (tmp_path / "model" / "weights").read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_stale_temporaries_of_a_dead_process_are_removed_live_ones_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".model.tmp-{dead_pid}@{HOST}-abc"
    live = tmp_path / f".model.tmp-{os.getpid()}@{HOST}-def"
    foreign = tmp_path / f".model.tmp-{dead_pid}@another-host-ghi"  # cannot tell whether it is alive: kept
    for folder in (stale, live, foreign):
        folder.mkdir()
    assert remove_stale(tmp_path / "model") == [stale]
    assert not stale.exists() and live.exists() and foreign.exists()


def test_a_previous_version_moved_aside_by_a_killed_writer_is_put_back(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    aside = tmp_path / f".model.old-{int(dead.stdout)}@{HOST}-x"
    aside.mkdir()
    (aside / "weights").write_text("v1")
    remove_stale(tmp_path / "model")
    assert (tmp_path / "model" / "weights").read_text() == "v1" and not aside.exists()
