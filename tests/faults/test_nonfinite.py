"""Non-finite loss or metric: the run stops naming the step; nothing is exported or registered.

A training loss that becomes NaN or inf stops pretraining and fine-tuning at that step with one
LmforgeError naming the stage and the step. The model folder, metrics JSON and predictions are
written only after training, so they are not created, and a previous run's are left byte for byte;
the MLflow run is marked FAILED. The registry refuses a candidate whose gate metric is NaN or inf
(a comparison with NaN is always false: it could never be promoted nor beaten), creating no version.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

from lmforge.components.config import Params
from lmforge.components.errors import LmforgeError
from tests.conftest import CORPUS, nan_loss_at

TINY = {"hidden_size": 64, "num_layers": 2, "num_heads": 2}
WORDS = "the a film fine dull great movie is was not very good bad plot story scene end long short funny sad".split()


def snapshot(*paths: Path) -> dict[str, str]:
    """sha256 of every file under `paths`: what 'left as it was' is checked against."""
    files = [f for p in paths for f in ([p] if p.is_file() else sorted(p.rglob("*"))) if f.is_file()]
    return {str(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def make_params(root: Path, tokenizers_dir: Path, **train) -> Params:
    """Tiny GPT pretraining and BERT fine-tuning on sst2, relative to `root`, MLflow in root/mlflow.db."""
    return Params.model_validate({
        "ingest": {"demo": {"enabled": False}},
        "pretrain": {"gpt": {"tokenizer": str(tokenizers_dir / "gpt"), "block_size": 32, "model": TINY,
                             "train": {"max_steps": 6, "batch_size": 8, "val_every_n_steps": 3, "warmup_steps": 1,
                                       "checkpoint_every_n_steps": 3, "log_every_n_steps": 1, **train}}},
        "finetune": {"task": "sst2", "model": "bert", "init": "pretrained", "max_seq_length": 32, "doc_stride": 8,
                     "runs": {"bert-sst2": {"task": "sst2", "model": "bert", "init": "pretrained"}},
                     "train": {"max_steps": 4, "batch_size": 4, "val_every_n_steps": 2, "warmup_steps": 1,
                               "log_every_n_steps": 1, **train}},
        "registry": {"model": "bert-sst2"},
        "tracking": {"uri": f"sqlite:///{root}/mlflow.db", "experiment": "nonfinite"},
    })


@pytest.fixture
def project(tmp_path, tokenizers_dir, monkeypatch) -> Path:
    """data/raw/{corpus,sst2} and a tiny models/bert-pretrained, in a fresh folder that is the cwd."""
    from transformers import AutoTokenizer

    from lmforge.components.config import ModelConfig
    from lmforge.components.pretraining.models import build_bert

    monkeypatch.chdir(tmp_path)
    raw = tmp_path / "data" / "raw"
    DatasetDict({"train": Dataset.from_dict({"text": CORPUS * 4}), "validation": Dataset.from_dict({"text": CORPUS[:10]})}
                ).save_to_disk(str(raw / "corpus"))
    features = Features({"sentence": Value("string"), "label": ClassLabel(names=["negative", "positive"]),
                         "idx": Value("int32")})
    sentences = [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(3 + i % 4)) for i in range(32)]
    rows = {"sentence": sentences, "label": [i % 2 for i in range(32)], "idx": list(range(32))}
    DatasetDict({s: Dataset.from_dict(rows, features=features) for s in ("train", "validation")}
                ).save_to_disk(str(raw / "sst2"))
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizers_dir / "bert"))
    bert = build_bert(ModelConfig(**TINY), len(tokenizer), tokenizer.pad_token_id, "sop")
    bert.save_pretrained(tmp_path / "models" / "bert-pretrained")
    tokenizer.save_pretrained(tmp_path / "models" / "bert-pretrained")
    return tmp_path


def runs(params: Params, name: str) -> list:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=params.tracking.uri)
    experiment = client.get_experiment_by_name(params.tracking.experiment)
    return client.search_runs([experiment.experiment_id], f"attributes.run_name = '{name}'",
                              order_by=["attributes.start_time ASC"])


def registered_models(params: Params) -> list:
    import mlflow

    return mlflow.MlflowClient(tracking_uri=params.tracking.uri).search_registered_models()


def test_pretraining_loss_nan_stops_at_the_step_and_leaves_the_previous_model(project, tokenizers_dir, monkeypatch):
    """Pretraining loss becomes NaN at step 3: stops naming pretrain-gpt and step 3; the previous model and metrics untouched"""
    from lmforge.components import stages
    from lmforge.components.pretraining.module import GptPretrainModule

    params = make_params(project, tokenizers_dir)
    stages.pretrain_gpt(params)  # a good run: the model and metrics a failed rerun must not touch
    cfg = params.pretrain.gpt
    before = snapshot(Path(cfg.out_dir), Path(cfg.metrics), Path(cfg.plot))
    assert len(before) >= 5

    nan_loss_at(monkeypatch, GptPretrainModule, 3)
    rerun = make_params(project, tokenizers_dir, learning_rate=0.5)  # other params: a fresh run, not a resume
    with pytest.raises(LmforgeError, match=r"^pretrain-gpt: training loss became nan at step 3; nothing was exported"):
        stages.pretrain_gpt(rerun)
    assert snapshot(Path(cfg.out_dir), Path(cfg.metrics), Path(cfg.plot)) == before
    assert not list(Path(cfg.out_dir).parent.glob(".gpt-pretrained.tmp-*"))  # no half-written export beside it
    first, failed = runs(params, "pretrain-gpt")
    assert first.info.status == "FINISHED" and failed.info.status == "FAILED"
    assert failed.data.params["train.learning_rate"] == "0.5"
    losses = mlflow_history(params, failed.info.run_id, "train/loss")
    assert [step for step, _ in losses] == [0, 1, 2] and all(math.isfinite(v) for _, v in losses)  # no NaN logged


def mlflow_history(params: Params, run_id: str, key: str) -> list[tuple[int, float]]:
    import mlflow

    history = mlflow.MlflowClient(tracking_uri=params.tracking.uri).get_metric_history(run_id, key)
    return sorted((m.step, m.value) for m in history)


def test_finetuning_loss_inf_stops_at_the_step_and_exports_nothing(project, tokenizers_dir, monkeypatch):
    """Fine-tuning loss becomes inf at step 2: stops naming the task and step 2; no model, metrics or predictions; no registration"""
    from lmforge.components import stages
    from lmforge.components.finetuning.classification import ClassificationModule
    from lmforge.components.registry.register import candidate

    original = ClassificationModule.forward  # GLUE's module: its own forward (BERT's [CLS]-only last layer)

    def overflow_at_step_2(self, batch):
        output = original(self, batch)
        if self.training and self.global_step == 2:
            output.loss = output.loss * float("inf")
        return output

    monkeypatch.setattr(ClassificationModule, "forward", overflow_at_step_2)
    params = make_params(project, tokenizers_dir)
    with pytest.raises(LmforgeError, match=r"^finetune sst2: training loss became inf at step 2; nothing was exported"):
        stages.finetune(params)
    assert not (project / "models" / "bert-sst2").exists()
    assert not (project / "reports").exists()  # neither metrics/bert-sst2.json nor predictions/bert-sst2.jsonl
    assert not list((project / "models").glob(".bert-sst2*"))
    (failed,) = runs(params, "finetune-bert-sst2")
    assert failed.info.status == "FAILED"
    with pytest.raises(LmforgeError, match="registry: model folder models/bert-sst2 not found"):
        candidate(params, "bert-sst2")
    assert registered_models(params) == []


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_registry_refuses_a_non_finite_metric(project, tokenizers_dir, value):
    """The gate metric in the metrics JSON is NaN or inf: registration refused naming the model and value; no version"""
    from lmforge.components import stages
    from lmforge.components.registry.gate import register
    from lmforge.components.registry.register import candidate

    params = make_params(project, tokenizers_dir, max_steps=2)
    stages.finetune(params)
    metrics_path = project / "reports" / "metrics" / "bert-sst2.json"
    metrics = json.loads(metrics_path.read_text())
    metrics["validation"]["accuracy"] = value  # as a scorer writes for a degenerate model (STS-B's pearson of a constant)
    metrics_path.write_text(json.dumps(metrics))  # json writes NaN / Infinity, and reads them back

    model = candidate(params, "bert-sst2")
    assert model.value != model.value if math.isnan(value) else model.value == value
    with pytest.raises(LmforgeError, match=rf"^registry: bert-sst2 has accuracy = {value}, not a number the gate can "
                                           r"compare; models/bert-sst2 is not registered$"):
        register(model, params.registry, params.tracking)
    assert registered_models(params) == []
    assert runs(params, "register-bert-sst2") == []  # refused before any MLflow run was opened
