"""Recording stages in dvc.lock beside the next stage: one rewrite of dvc.lock for the stages that end
together, a stage waits until those it depends on are recorded, and a failed record fails the flow."""

import threading
from pathlib import Path

import pytest
import yaml

from lmforge.components import versioning
from lmforge.components.versioning import DvcProject, Recorder
from tests.conftest import sh

DVC_YAML = {"stages": {
    "a": {"cmd": "echo a > a.txt", "outs": ["a.txt"]},
    "b": {"cmd": "echo b > b.txt", "outs": ["b.txt"]},
    "c": {"cmd": "cat a.txt > c.txt", "deps": ["a.txt"], "outs": ["c.txt"]},
}}


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # DVC reads stage names relative to the working directory, as the flows run
    sh("git", "init", "-q", cwd=tmp_path)
    sh("dvc", "init", "-q", cwd=tmp_path)
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML))
    for name, text in [("a.txt", "a\n"), ("b.txt", "b\n"), ("c.txt", "a\n")]:  # the stages' commands, run
        (tmp_path / name).write_text(text)
    return tmp_path


def locked(root) -> dict:
    return yaml.safe_load((root / "dvc.lock").read_text())["stages"]


def test_stages_recorded_together_rewrite_dvc_lock_once_and_are_then_current(project, monkeypatch):
    dumps = count_dumps(monkeypatch)
    dvc = DvcProject(project)
    assert set(dvc.stale()) == {"a", "b", "c"}
    dvc.record("a", "b", "c")
    assert dumps == [["a", "b", "c"]]
    assert set(locked(project)) == {"a", "b", "c"}
    assert locked(project)["c"]["deps"][0]["md5"] == locked(project)["a"]["outs"][0]["md5"]
    assert dvc.stale() == {}
    assert "up to date" in sh("dvc", "status", cwd=project)


def test_a_stage_waits_until_what_it_depends_on_is_recorded(project, monkeypatch):
    release, started = threading.Event(), threading.Event()
    record = DvcProject.record

    def slow_record(self, *stages):
        started.set()
        release.wait(10)  # DVC still writing when the flow asks
        record(self, *stages)

    monkeypatch.setattr(DvcProject, "record", slow_record)
    with Recorder(DvcProject(project)) as recorder:
        recorder.add("a")
        started.wait(10)
        recorder.wait_for({"b"})  # not added: nothing to wait for
        waited = threading.Thread(target=recorder.wait_for, args=({"a"},))
        waited.start()
        waited.join(0.5)
        assert waited.is_alive()  # "a" is being written
        release.set()
        waited.join(10)
        assert not waited.is_alive()
        assert "a" in locked(project)
        recorder.add("b")
        recorder.add("c")
    assert set(locked(project)) == {"a", "b", "c"}  # what was left is recorded when the flow ends


def count_dumps(monkeypatch) -> list[list[str]]:
    from dvc.dvcfile import Lockfile

    dumps, original = [], Lockfile.dump_stages
    monkeypatch.setattr(Lockfile, "dump_stages", lambda self, stages, **kw: (dumps.append([s.name for s in stages]),
                                                                               original(self, stages, **kw))[1])
    return dumps


def test_stages_nothing_waits_for_are_recorded_together_at_the_end_or_once_they_waited_long_enough(project,
                                                                                                   monkeypatch):
    dumps = count_dumps(monkeypatch)
    with Recorder(DvcProject(project)) as recorder:
        recorder.add("a")
        recorder.add("b")
        assert not (project / "dvc.lock").exists()  # nothing waits for them yet
    assert dumps == [["a", "b"]] and set(locked(project)) == {"a", "b"}

    (project / "dvc.lock").unlink()
    dumps.clear()
    recorder = Recorder(DvcProject(project), within_s=0.5)
    recorder.add("a")
    for _ in range(100):
        if (project / "dvc.lock").exists():
            break
        threading.Event().wait(0.1)
    assert dumps == [["a"]]  # recorded after half a second with no stage waiting and the flow still running
    recorder.close()


def test_a_failed_record_fails_the_next_stage_and_the_flow_with_dvcs_message(project):
    (project / "b.txt").unlink()  # stage b "ran" but its output is gone
    recorder = Recorder(DvcProject(project))
    recorder.add("b")
    with pytest.raises(Exception, match="b.txt"):
        recorder.wait_for({"b"})
    with pytest.raises(Exception, match="b.txt"):
        recorder.close()
    assert not (project / "dvc.lock").exists()  # nothing half-written


class Killed(BaseException):
    pass


def test_a_record_stopped_while_writing_leaves_dvc_lock_as_it_was(project, monkeypatch):
    # DVC writes dvc.lock in place; a flow killed mid-write (its recorder writes beside the next stage) once
    # left a truncated dvc.lock that every later flow failed to read.
    import dvc.utils.serialize._yaml as dvc_yaml

    dvc = DvcProject(project)
    dvc.record("a", "b")
    before = (project / "dvc.lock").read_text()

    dump = dvc_yaml._dump

    def killed_mid_write(data, stream):
        if not getattr(stream, "name", "").endswith("dvc.lock"):
            return dump(data, stream)
        stream.write("schema: '2.0'\nstages:\n  a:\n    cmd: ec")
        stream.flush()
        raise Killed  # the process stops here

    monkeypatch.setattr(dvc_yaml, "_dump", killed_mid_write)
    with pytest.raises(Killed):
        dvc.record("c")
    assert (project / "dvc.lock").read_text() == before
    monkeypatch.setattr(dvc_yaml, "_dump", dump)
    assert set(dvc.stale()) == {"c"}  # DVC reads it; c is recorded next time
    dvc.record("c")
    assert set(locked(project)) == {"a", "b", "c"}
    assert not list((project / ".dvc" / "tmp").glob("lmforge-*"))  # no copy left behind


def test_the_flows_error_wins_over_a_failed_record(project, caplog):
    (project / "b.txt").unlink()
    with pytest.raises(RuntimeError, match="the stage failed"):
        with Recorder(DvcProject(project)) as recorder:
            recorder.add("a")
            recorder.add("b")
            raise RuntimeError("the stage failed")
    assert "recording the stages that ran before the failure failed" in caplog.text


def test_threads_of_one_process_take_turns_at_dvcs_lock(project):
    # DVC's file lock refuses a second holder in the same process; _with_lock's poll would wait 1 s a try.
    dvc = DvcProject(project)
    errors = []
    threads = [threading.Thread(target=lambda s=s: errors.extend(_record(dvc, s))) for s in "abc"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and set(locked(project)) == {"a", "b", "c"}
    assert isinstance(versioning._THIS_PROCESS, type(threading.RLock()))


def _record(dvc, stage) -> list:
    try:
        dvc.record(stage)
        return []
    except Exception as error:  # noqa: BLE001
        return [error]


def test_a_record_parses_the_pipeline_once_however_many_stages_it_records(project, monkeypatch):
    """DVC's collect_granular parsed dvc.yaml and dvc.lock again per stage: most of a record's time."""
    from dvc.dvcfile import ProjectFile

    loads = []
    original = ProjectFile._load
    monkeypatch.setattr(ProjectFile, "_load", lambda self, *a, **k: loads.append(self.path) or original(self, *a, **k))
    DvcProject(project).record("a", "b", "c")
    assert len(loads) == 1 and set(locked(project)) == {"a", "b", "c"}


def test_recording_a_stage_dvc_yaml_does_not_have_says_so(project):
    from lmforge.components.errors import LmforgeError

    with pytest.raises(LmforgeError, match="dvc.yaml has no stage nope to record"):
        DvcProject(project).record("a", "nope")
    assert not (project / "dvc.lock").exists()  # nothing half-recorded


def test_params_parsed_once_per_text_and_an_edit_is_still_seen(project, monkeypatch):
    """DVC parses params.yaml once per stage it checks; lmforge keeps the parse of a text it has seen.
    An edited file is new text: its stage must turn stale at once, and back when the edit is undone."""
    from dvc.utils.serialize import _yaml

    (project / "params.yaml").write_text("lr: 0.1\nother: 1\n")
    stages = {f"s{i}": {"cmd": f"echo {i} > s{i}.txt", "params": ["lr"], "outs": [f"s{i}.txt"]} for i in range(6)}
    (project / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    for i in range(6):
        (project / f"s{i}.txt").write_text(f"{i}\n")
    dvc = DvcProject(project)
    dvc.stale()  # installs the cache
    parsed, parse = [], versioning._dvc_parse_yaml
    monkeypatch.setattr(versioning, "_dvc_parse_yaml", lambda text, path, typ: parsed.append((Path(path).name, typ))
                        or parse(text, path, typ=typ))
    monkeypatch.setattr(versioning, "_parses", {})
    dvc.record(*stages)
    assert dvc.stale() == {}
    assert parsed.count(("params.yaml", "safe")) == 1  # six stages recorded, then checked: one parse

    (project / "params.yaml").write_text("lr: 0.2\nother: 1\n")
    stale = dvc.stale()
    assert set(stale) == set(stages) and all("params.yaml" in " ".join(r) for r in stale.values())
    (project / "params.yaml").write_text("lr: 0.1\nother: 1\n")
    assert dvc.stale() == {}
    # the cached data is DVC's to change: a copy each time
    first = _yaml.parse_yaml("a: {b: 1}\n", "x.yaml")
    first["a"]["b"] = 2
    assert _yaml.parse_yaml("a: {b: 1}\n", "x.yaml") == {"a": {"b": 1}}
    with pytest.raises(Exception, match="x.yaml"):  # a broken file fails each time, not once
        _yaml.parse_yaml("a: [\n", "x.yaml")
    with pytest.raises(Exception, match="x.yaml"):
        _yaml.parse_yaml("a: [\n", "x.yaml")
