"""Shared test setup: offline Hub, small params, a tiny corpus."""

import os

# Set before anything imports huggingface_hub / datasets: the Hub is unreachable here.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One thread per process, this one and every process it starts: the suite runs three workers (and
# their `lmforge` children) on two cores, where the tiny models gain nothing from a second thread
# and every process loses to the contention.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# The repositories tests `dvc init` have no .dvc/config saying so: without this, each DVC command
# there starts a daemon that tries to send usage analytics (no internet here).
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

import time  # noqa: E402
from pathlib import Path  # noqa: E402

import dvc  # noqa: E402,F401 - DVC sets up its log handler on import, bound to the sys.stderr of that
#                moment: imported here, that is the session's, not a test's capsys stream (closed after the test)
import pytest  # noqa: E402
from datasets import Dataset, DatasetDict  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# Seconds a test waits for a server it starts (Prefect, MLflow): slow to start while other tests load both cores.
STARTUP_S = 180

CORPUS = [
    "Talia Brandt was born in Velmora in 1972. She studied chemistry at the Orvane Institute. "
    "After that she moved to Kestrel Bay, where she opened a bakery.",
    "The Orvane Institute is located in Velmora. It was founded in 1901 and teaches chemistry and music.",
    "Oren Vale plays the violin. He works at the Orvane Institute. Later he wrote a book about rivers.",
    "我喜欢吃苹果。苹果公司发布了新手机。银行在河岸旁边。",
    "The bank of the river was muddy. She went to the bank to borrow money for the bakery.",
] * 8


@pytest.fixture
def tiny_corpus(tmp_path) -> Path:
    """A saved corpus dataset (train + validation) like the ingest stage writes."""
    path = tmp_path / "raw" / "corpus"
    DatasetDict(
        {"train": Dataset.from_dict({"text": CORPUS}), "validation": Dataset.from_dict({"text": CORPUS[:5]})}
    ).save_to_disk(str(path))
    return path


@pytest.fixture(scope="session")
def tokenizers_dir(tmp_path_factory) -> Path:
    """BERT and GPT tokenizers trained once per session on the tiny corpus: <dir>/bert, <dir>/gpt."""
    from lmforge.components.config import TokenizerConfig
    from lmforge.components.tokenizer import train_tokenizers

    root = tmp_path_factory.mktemp("tokenizers")
    corpus = root / "corpus"
    DatasetDict({"train": Dataset.from_dict({"text": CORPUS}), "validation": Dataset.from_dict({"text": CORPUS[:5]})}
                ).save_to_disk(str(corpus))
    cfg = TokenizerConfig.model_validate(
        {"bert": {"vocab_size": 300, "min_frequency": 1}, "gpt": {"vocab_size": 400, "min_frequency": 1}}
    )
    train_tokenizers(cfg, corpus, root, root / "metrics.json")
    return root


def fresh_python(code: str, *args: str, env: dict[str, str] | None = None) -> str:
    """What `python -c code args` prints in a new interpreter: for what a process imports on its own,
    which this test process, with everything imported already, cannot show."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True,
                          env=env).stdout


def shell_env() -> dict[str, str]:
    """This environment as a shell would start a command: without what a quiet lmforge run in this test
    process set for the processes it starts (datasets' bars off)."""
    return {k: v for k, v in os.environ.items() if k != "HF_DATASETS_DISABLE_PROGRESS_BARS"}


# ------------------------------------------------------------------ one Prefect server per test process


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_shared_prefect: dict = {}  # the xdist controller's Prefect server: {"api": url, "process": Popen}


def start_shared_prefect(home: Path) -> str:
    """Start (without waiting for it) the Prefect server every test process of this run shares."""
    import subprocess
    import sys

    api = f"http://127.0.0.1:{free_port()}/api"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    port = api.split(":")[2].split("/")[0]
    _shared_prefect.update(api=api, process=subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", port], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
    return api


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    """xdist, in the controller: every worker is told the one Prefect server of the run."""
    if not _shared_prefect:
        import tempfile

        start_shared_prefect(Path(tempfile.mkdtemp(prefix="lmforge-prefect-")))
    node.workerinput["lmforge_prefect_api"] = _shared_prefect["api"]


def pytest_unconfigure(config):
    if process := _shared_prefect.pop("process", None):
        process.terminate()
        process.wait(timeout=60)


@pytest.fixture(scope="session")
def prefect_api(request, tmp_path_factory) -> str:
    """A Prefect server on 127.0.0.1 for every test that runs flows, in-process (the settings) or through
    `lmforge` subprocesses (PREFECT_API_URL in the environment). Under xdist, one for the whole run,
    started by the controller; without it, one for this process. A server start costs seconds of both
    cores: one instead of a test harness or an ephemeral server per test saves minutes of the suite.
    Tests find their own flow runs, experiments and models by name or id."""
    from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    from lmforge.flows.serve import server_is_up

    api = getattr(request.config, "workerinput", {}).get("lmforge_prefect_api")
    if api is None:
        api = start_shared_prefect(tmp_path_factory.mktemp("prefect-home"))
    deadline = time.monotonic() + STARTUP_S
    while not server_is_up(api):
        assert time.monotonic() < deadline, f"the Prefect server at {api} did not start within {STARTUP_S} s"
        time.sleep(1.0)
    saved = os.environ.get("PREFECT_API_URL")
    # The server answers 503 while its sqlite store is locked, and clients retry: 5 times over ~1 min by
    # default, which the suite's load on 2 cores outlasted (`prefect deploy` failed so, twice in CI).
    # 8 retries wait up to ~8.5 min in all; without trouble, nothing changes.
    os.environ.update(PREFECT_API_URL=api, PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_CLIENT_MAX_RETRIES="8")
    try:
        with temporary_settings(updates={PREFECT_API_URL: api, PREFECT_CLIENT_MAX_RETRIES: 8}):
            yield api
    finally:
        if saved is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = saved


# ------------------------------------------------------------------ a fresh copy of the project

TINY_MODEL = {"hidden_size": 64, "num_layers": 2, "num_heads": 2}
FAST_TRAIN = {"max_steps": 20, "batch_size": 8, "val_every_n_steps": 10, "checkpoint_every_n_steps": 10,
              "warmup_steps": 2}
SMALL_DEMO = {"entities": 40, "corpus_documents": 120, "glue_train": 40, "glue_eval": 20, "chinese_eval": 20,
              "qa_train": 40, "qa_eval": 20, "ner_train": 40, "ner_eval": 20}


def sh(*cmd, cwd, check: bool = True):
    """Run a command with this venv's scripts first on PATH; fail the test with its output."""
    import subprocess
    import sys

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check:
        assert result.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def nan_loss_at(monkeypatch, module_class, step: int) -> None:
    """Make a pretraining module's training loss NaN at `step`, for the tests of the non-finite guard."""
    original = module_class.totals

    def totals(self, batch):
        out = original(self, batch)
        if self.global_step == step:
            loss, count = out["loss"]
            out["loss"] = (loss * float("nan"), count)
        return out

    monkeypatch.setattr(module_class, "totals", totals)


def init_dir(root: Path, run) -> Path:
    """The folder a FinetuneRun or PromptRun starts from, resolved as the stages resolve it, in a test
    workspace whose tiny pretrained models are root/models/<model>-pretrained (its pretrain.*.out_dir)."""
    from lmforge.components.config import PretrainConfig

    pretrain = PretrainConfig.model_validate({model: {"out_dir": str(root / "models" / f"{model}-pretrained")}
                                              for model in ("bert", "gpt")})
    return run.init_dir(pretrain)


def run_stage_in(root: Path, name: str, *overrides: str) -> list[Path]:
    """`lmforge stage NAME -S ...` in `root`, called in this process: for a test's preparation, where a
    process of its own would cost its imports and show nothing more."""
    from lmforge.components.params_file import load_params
    from lmforge.components.stages import STAGES

    before = os.getcwd()
    os.chdir(root)
    try:
        return STAGES[name](load_params("params.yaml", list(overrides)))
    finally:
        os.chdir(before)


def make_project(tmp_path: Path, finetune_runs: dict | None = None, prompt_runs: dict | None = None,
                 lecture_reports: bool = False, parallel_stages: int | None = 1) -> Path:
    """The repository's pipeline in a new git + DVC repo, with tiny models and demo data. The three
    lecture reports (crosslingual, when-BERT-learns, the seq2seq ablation) fine-tune or pretrain
    several models each: they run as stages either way, but do their work only with `lecture_reports`
    (one end-to-end test), so the suite stays within its time. `parallel_stages`: the flows'
    orchestration.max_parallel_stages; 1 unless a test asks (None: params.yaml's default, two at once in
    worker processes): on the suite's three workers on 2 cores, a fork server's imports per flow (~10 s)
    cost more than two of these tiny stages at once save (the suite went from 10-11.7 to 12.2 min)."""
    import shutil

    import yaml

    root = tmp_path / "project"
    root.mkdir()
    for name in ["dvc.yaml", ".dvcignore", ".gitignore"]:
        shutil.copy(REPO / name, root / name)
    for name in [".dvc", "lmforge"]:
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("tmp", "cache", "__pycache__"))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["ingest"]["demo"].update(SMALL_DEMO)
    params["tokenizer"]["bert"]["vocab_size"] = 500
    params["tokenizer"]["gpt"]["vocab_size"] = 500
    for model in ("bert", "gpt", "seq2seq"):
        params["pretrain"][model]["model"] = {**params["pretrain"][model]["model"], **TINY_MODEL}
        params["pretrain"][model]["train"] = {**params["pretrain"][model]["train"], **FAST_TRAIN}
    params["finetune"]["runs"] = finetune_runs if finetune_runs is not None else {
        "bert-rte": {"task": "rte", "model": "bert", "init": "pretrained"},
        "gpt-sst2": {"task": "sst2", "model": "gpt", "init": "pretrained"},
        "bert-squad": {"task": "squad", "model": "bert", "init": "pretrained"}}
    params["finetune"]["train"] = {**params["finetune"]["train"], "max_epochs": 1}
    params["seq2seq_ablation"].update({"pretrain_steps": 2, "finetune_steps": 2, "heldout_documents": 4,
                                       "copy_warmup_steps": 2,
                                       "corruptions": ["mask", "infill"]})
    params["pretrain"]["bert"]["snapshot_steps"] = [0, 20] if lecture_reports else []
    params["crosslingual"].update({"documents_per_language": 20, "contexts_per_word": 2, "enabled": lecture_reports})
    params["when_bert_learns"].update({"enabled": lecture_reports, "max_epochs": 1})
    params["seq2seq_ablation"]["enabled"] = lecture_reports
    params["prompt"]["runs"] = prompt_runs if prompt_runs is not None else {
        "gpt-0shot-sst2": {"task": "sst2", "shots": 0, "init": "pretrained"}}
    params["prompt"]["max_eval_examples"] = 10
    params["tracking"]["uri"] = f"sqlite:///{root}/mlflow.db"
    if parallel_stages is not None:
        params["orchestration"]["max_parallel_stages"] = parallel_stages
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh("git", "init", "-q", cwd=root)
    sh("git", "add", "-A", cwd=root)
    sh("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init", cwd=root)
    return root


# ------------------------------------------------------------------ docs/reliability.md from tests/faults/

_reliability = None  # the ReliabilityReport of the xdist controller (or of a run without xdist)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    if call.when == "setup" and item.nodeid.startswith("tests/faults/"):
        from tests.reliability import describe

        item.user_properties.extend(describe(item))  # every phase's report carries them, across xdist too
    yield


def pytest_configure(config):
    global _reliability
    if not hasattr(config, "workerinput"):
        from tests.reliability import ReliabilityReport

        _reliability = ReliabilityReport(config)


def pytest_runtest_logreport(report):
    if _reliability is not None:
        _reliability.add(report)


def pytest_sessionfinish(session):
    if _reliability is not None and (path := _reliability.write()):
        session.config.get_terminal_writer().line(f"\nwrote {path.relative_to(REPO)}")
