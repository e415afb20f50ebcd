"""Real Lightning runs of both stages on a tiny model: resume, non-finite loss, export, MLflow."""

import json

import pytest
import torch
from datasets import Dataset, DatasetDict
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, pipeline

from lmforge.components.config import BertPretrainConfig, GptPretrainConfig, TrackingConfig
from lmforge.components.errors import LmforgeError
from lmforge.components.pretraining import pretrain
from lmforge.components.pretraining.module import BertPretrainModule
from tests.conftest import CORPUS, nan_loss_at

TINY = {"hidden_size": 64, "num_layers": 2, "num_heads": 2}


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus"
    DatasetDict({"train": Dataset.from_dict({"text": CORPUS * 4}), "validation": Dataset.from_dict({"text": CORPUS[:10]})}
                ).save_to_disk(str(path))
    return path


def bert_cfg(tmp_path, tokenizers_dir, name="bert", snapshot_steps=(), **train):
    train = {"max_steps": 12, "batch_size": 8, "val_every_n_steps": 6, "checkpoint_every_n_steps": 4,
             "log_every_n_steps": 2, "warmup_steps": 2, **train}
    return BertPretrainConfig.model_validate({
        "tokenizer": str(tokenizers_dir / "bert"), "out_dir": str(tmp_path / name), "run_dir": str(tmp_path / "runs" / name),
        "metrics": str(tmp_path / f"{name}.json"), "plot": str(tmp_path / f"{name}.png"),
        "max_seq_length": 48, "model": TINY, "train": train,
        "snapshot_steps": list(snapshot_steps), "snapshots_dir": str(tmp_path / "snapshots" / name),
    })


OFF = TrackingConfig(enabled=False)


class Crash(Exception):
    pass


def test_resumed_run_ends_like_an_uninterrupted_one(tmp_path, tokenizers_dir, corpus, monkeypatch):
    """Weights, metrics and the snapshots kept along the way (step 10's written before the kill and
    again after the resume from step 8) are those of a run never stopped."""
    steps = (0, 4, 10, 12)
    pretrain.pretrain_bert(bert_cfg(tmp_path, tokenizers_dir, "straight", steps), corpus, OFF)

    killed = bert_cfg(tmp_path, tokenizers_dir, "killed", steps)
    original = BertPretrainModule.training_step

    def crash_at_step_10(self, batch, batch_idx):
        if self.global_step == 10:
            raise Crash("killed")
        return original(self, batch, batch_idx)

    monkeypatch.setattr(BertPretrainModule, "training_step", crash_at_step_10)
    with pytest.raises(Crash):
        pretrain.pretrain_bert(killed, corpus, OFF)
    assert not (tmp_path / "killed").exists()  # nothing exported from the interrupted run
    assert torch.load(tmp_path / "runs/killed/checkpoints/last.ckpt", weights_only=True)["global_step"] == 8

    monkeypatch.setattr(BertPretrainModule, "training_step", original)
    pretrain.pretrain_bert(killed, corpus, OFF)
    straight, resumed = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("straight", "killed"))
    assert resumed["steps"] == straight["steps"] == 12
    assert straight["tokens_per_s"] > 0 and resumed["tokens_per_s"] > 0 and resumed["mfu"] > 0
    # Run again after it finished (as a code change reruns the stage): nothing left to train, and the
    # speed reported is still the run's, not the 0 of a process that trained no step.
    pretrain.pretrain_bert(killed, corpus, OFF)
    again = json.loads((tmp_path / "killed.json").read_text())
    assert again["steps"] == 12 and again["tokens_per_s"] == pytest.approx(resumed["tokens_per_s"])
    a = load_file(tmp_path / "straight" / "model.safetensors")
    b = load_file(tmp_path / "killed" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key
    assert resumed["val_loss"] == pytest.approx(straight["val_loss"], abs=1e-5)
    for step in steps:
        a, b = (load_file(tmp_path / "snapshots" / n / f"step-{step}" / "model.safetensors") for n in ("straight", "killed"))
        assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a), step
    first, last = (load_file(tmp_path / "snapshots/straight" / f"step-{s}" / "model.safetensors") for s in (0, 12))
    final = load_file(tmp_path / "straight" / "model.safetensors")
    assert all(torch.equal(last[k], final[k]) for k in final)  # the last snapshot is the export
    assert not all(torch.equal(first[k], final[k]) for k in final)
    assert sorted(p.name for p in (tmp_path / "snapshots/straight").iterdir()) == [
        "step-0", "step-10", "step-12", "step-4", "steps.json"]  # steps.json: the folder is never empty (DVC)
    assert json.loads((tmp_path / "snapshots/straight/steps.json").read_text()) == {"snapshot_steps": [0, 4, 10, 12]}
    # Keeping snapshots does not change the training (building a copy draws no random numbers from the run).
    pretrain.pretrain_bert(bert_cfg(tmp_path, tokenizers_dir, "plain"), corpus, OFF)
    plain = load_file(tmp_path / "plain" / "model.safetensors")
    assert all(torch.equal(plain[k], final[k]) for k in final)


def test_non_finite_loss_stops_with_the_step_and_exports_nothing(tmp_path, tokenizers_dir, corpus, monkeypatch):
    nan_loss_at(monkeypatch, BertPretrainModule, 3)
    with pytest.raises(LmforgeError, match=r"pretrain-bert: training loss became nan at step 3; nothing was exported"):
        pretrain.pretrain_bert(bert_cfg(tmp_path, tokenizers_dir), corpus, OFF)
    assert not (tmp_path / "bert").exists() and not (tmp_path / "bert.json").exists()


@pytest.mark.parametrize("objective", ["nsp", "none"])
def test_bert_export_loads_with_auto_classes_and_fill_mask(tmp_path, tokenizers_dir, corpus, objective):
    cfg = bert_cfg(tmp_path, tokenizers_dir, max_steps=4)
    cfg.objective = objective
    out = pretrain.pretrain_bert(cfg, corpus, OFF)
    assert (out / "model.safetensors").exists() and not list(out.glob("*.bin"))
    model = AutoModelForMaskedLM.from_pretrained(out)
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 64
    predictions = pipeline("fill-mask", model=str(out))("talia was born in [MASK].")
    assert len(predictions) == 5 and all("token_str" in p for p in predictions)
    metrics = json.loads((tmp_path / "bert.json").read_text())
    assert ("val_pair_accuracy" in metrics) == (objective == "nsp")
    assert metrics["unigram_perplexity"] > 1 and metrics["tokens_per_s"] > 0


def test_gpt_trains_exports_and_logs_to_mlflow(tmp_path, tokenizers_dir, corpus):
    import mlflow

    tracking = TrackingConfig(uri=f"sqlite:///{tmp_path}/mlflow.db", experiment="test-pretrain")
    cfg = GptPretrainConfig.model_validate({
        "tokenizer": str(tokenizers_dir / "gpt"), "out_dir": str(tmp_path / "gpt"), "run_dir": str(tmp_path / "runs/gpt"),
        "metrics": str(tmp_path / "gpt.json"), "plot": str(tmp_path / "gpt.png"), "block_size": 32, "model": TINY,
        "train": {"max_steps": 40, "batch_size": 8, "val_every_n_steps": 20, "log_every_n_steps": 5,
                  "learning_rate": 3e-3, "warmup_steps": 5},
    })
    out = pretrain.pretrain_gpt(cfg, corpus, tracking)
    generated = pipeline("text-generation", model=str(out))("Talia Brandt", max_new_tokens=5, do_sample=False)
    assert generated[0]["generated_text"].startswith("Talia Brandt")
    assert AutoModelForCausalLM.from_pretrained(out).config.n_embd == 64

    metrics = json.loads((tmp_path / "gpt.json").read_text())
    # A repetitive corpus: 40 steps must already beat the unigram model by far.
    assert metrics["val_perplexity"] < 0.5 * metrics["unigram_perplexity"]

    client = mlflow.MlflowClient(tracking_uri=tracking.uri)
    run = client.search_runs([client.get_experiment_by_name("test-pretrain").experiment_id])[0]
    assert run.data.params["block_size"] == "32" and run.data.params["train.max_steps"] == "40"
    for key in ("train/loss", "val/loss", "val/perplexity", "train/tokens_per_s", "train/mfu", "unigram_perplexity"):
        assert key in run.data.metrics, key
    assert any(key.startswith("lr-AdamW") for key in run.data.metrics)
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) >= 5
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert artifacts == {"plots/gpt.png"}


def test_progress_bar_counts_epochs_from_one_out_of_what_max_steps_makes():
    """Every run stops at max_steps (max_epochs -1): Lightning's own bar said "Epoch 0/-2"."""
    from types import SimpleNamespace

    from lmforge.components.training.trainer import ProgressBar

    bar = ProgressBar()
    bar._trainer = SimpleNamespace(num_training_batches=13, max_steps=65, accumulate_grad_batches=1)
    assert bar._get_train_description(0).strip() == "Epoch 1/5"
    bar._trainer = SimpleNamespace(num_training_batches=13, max_steps=66, accumulate_grad_batches=2)
    assert bar._get_train_description(4).strip() == "Epoch 5/11"
    bar._trainer = SimpleNamespace(num_training_batches=float("inf"), max_steps=500, accumulate_grad_batches=1)
    assert bar._get_train_description(0).strip() == "Epoch 1"  # an iterable of unknown length


def test_training_runs_deterministic_algorithms_without_filling_new_tensors(tmp_path):
    """Deterministic algorithms as train.deterministic asks, but not torch's NaN-fill of every new
    tensor that comes with them (4 % of a `mini` GPT step); off, neither flag is touched."""
    from lmforge.components.config import TrainConfig
    from lmforge.components.training.module import TrainingModule
    from lmforge.components.training.trainer import build_trainer

    saved = (torch.are_deterministic_algorithms_enabled(), torch.utils.deterministic.fill_uninitialized_memory)
    module = TrainingModule(torch.nn.Linear(2, 2), TrainConfig())
    try:
        torch.use_deterministic_algorithms(False)
        torch.utils.deterministic.fill_uninitialized_memory = True
        build_trainer(TrainConfig(deterministic=False), tmp_path, None, [], max_steps=1, val_check_interval=1)
        module.on_fit_start()
        assert not torch.are_deterministic_algorithms_enabled() and torch.utils.deterministic.fill_uninitialized_memory
        build_trainer(TrainConfig(), tmp_path, None, [], max_steps=1, val_check_interval=1)
        module.on_fit_start()
        assert torch.are_deterministic_algorithms_enabled() and not torch.utils.deterministic.fill_uninitialized_memory
    finally:
        torch.use_deterministic_algorithms(saved[0])
        torch.utils.deterministic.fill_uninitialized_memory = saved[1]


def test_gpt_computes_gpt2s_gelu_in_one_kernel():
    """build_gpt's fused tanh GELU is GPT-2's gelu_new: the same logits from the same weights."""
    from lmforge.components.config import ModelConfig
    from lmforge.components.pretraining.models import build_gpt

    torch.manual_seed(0)
    ours = build_gpt(ModelConfig(preset="tiny"), 100, 0).eval()
    assert ours.config.activation_function == "gelu_pytorch_tanh"
    reference = type(ours)._from_config(ours.config.__class__(**{**ours.config.to_dict(),
                                                                "activation_function": "gelu_new"})).eval()
    reference.load_state_dict(ours.state_dict())
    ids = torch.randint(0, 100, (2, 16))
    torch.testing.assert_close(ours(ids).logits, reference(ids).logits, atol=1e-5, rtol=1e-5)
    reference.config.activation_function = "gelu"  # the erf GELU: another function, and the test sees it
    erf = type(ours)._from_config(reference.config).eval()
    erf.load_state_dict(ours.state_dict())
    assert not torch.allclose(ours(ids).logits, erf(ids).logits, atol=1e-5, rtol=1e-5)
