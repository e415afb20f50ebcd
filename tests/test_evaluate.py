"""The evaluate stage on demo data with tiny models: scores equal the finetune stage's, plots, errors."""

import json
from collections import Counter

import pytest
import torch
from transformers import BertForQuestionAnswering, BertForSequenceClassification, BertForTokenClassification

from lmforge.components.config import (BertTokenizerConfig, DemoConfig, EvaluateConfig, FinetuneConfig, FinetuneRun,
                               ModelConfig, TrackingConfig)
from lmforge.components.data.demo import build_demo
from lmforge.components.errors import LmforgeError
from lmforge.components.evaluation.evaluate import evaluate_model
from lmforge.components.finetuning.metrics import seqeval_metrics, squad_metrics
from lmforge.components.finetuning.finetune import finetune
from lmforge.components.pretraining.models import bert_config, build_bert
from lmforge.components.tokenizer import train_bert_tokenizer
from tests.conftest import init_dir

TINY = ModelConfig(hidden_size=64, num_layers=2, num_heads=2)
OFF = TrackingConfig(enabled=False)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """data/raw with demo tasks; models/bert-pretrained (tiny, random); bert-sst2, bert-scratch-stsb,
    bert-squad_v2 and bert-conll2003 fine-tuned for a few steps by the finetune stage, with their reports."""
    root = tmp_path_factory.mktemp("evaluate")
    demo = build_demo(DemoConfig(entities=40, corpus_documents=100, glue_train=64, glue_eval=32,
                                 qa_train=10, qa_eval=16, ner_train=10, ner_eval=16))
    for task in ("sst2", "stsb", "mnli", "squad_v2", "conll2003"):
        demo[task].save_to_disk(str(root / "raw" / task))
    tokenizer = train_bert_tokenizer(demo["corpus"]["train"], BertTokenizerConfig(vocab_size=500, min_frequency=1))
    model = build_bert(TINY, len(tokenizer), tokenizer.pad_token_id, "sop")
    model.save_pretrained(root / "models" / "bert-pretrained")
    tokenizer.save_pretrained(root / "models" / "bert-pretrained")
    ft = finetune_config(root)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)  # the finetune stage keeps checkpoints in ./runs: here, never in the repo
        for run in (FinetuneRun(task="sst2"), FinetuneRun(task="stsb", init="scratch"), FinetuneRun(task="squad_v2"),
                    FinetuneRun(task="conll2003")):
            finetune(ft, run, init_dir(root, run), root / "raw", OFF)
    return root


def finetune_config(root) -> FinetuneConfig:
    return FinetuneConfig.model_validate({
        "models_dir": str(root / "models"), "reports_dir": str(root / "reports"),
        "predictions_dir": str(root / "predictions"),
        "train": {"max_steps": 6, "batch_size": 16, "val_every_n_steps": 3, "warmup_steps": 1},
    })


def evaluate(root, model: str, **kwargs):
    cfg = EvaluateConfig(model=model, models_dir=str(root / "models"), out_dir=str(root / "eval"), **kwargs)
    return evaluate_model(cfg, root / "raw", OFF, finetune_config(root))


def read_rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def save_head(root, name: str, model_class, task: str, **config):
    """A task model with random weights, saved as the finetune stage saves one (weights + tokenizer)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(root / "models" / "bert-pretrained")
    torch.manual_seed(0)
    cfg = bert_config(TINY, len(tokenizer), tokenizer.pad_token_id)
    for key, value in {"finetuning_task": task, **config}.items():
        setattr(cfg, key, value)
    model_class(cfg).save_pretrained(root / "models" / name)
    tokenizer.save_pretrained(root / "models" / name)
    return root / "models" / name


def test_sst2_scores_equal_the_finetune_report_and_the_confusion_matrix_counts_predictions(workspace):
    out = evaluate(workspace, "bert-sst2")
    assert out == workspace / "eval" / "bert-sst2"
    metrics = json.loads((out / "metrics.json").read_text())
    report = json.loads((workspace / "reports" / "bert-sst2.json").read_text())
    assert metrics["task"] == "sst2" and metrics["main_metric"] == report["main_metric"]
    assert metrics["validation"] == report["validation"] and metrics["score"] == report["score"]
    # Row for row the predictions the finetune stage made with the same weights.
    rows = read_rows(out / "predictions.jsonl")
    assert rows == read_rows(workspace / "predictions" / "bert-sst2.jsonl")
    confusion = json.loads((out / "confusion.json").read_text())["validation"]
    assert confusion["labels"] == ["negative", "positive"]
    counts = confusion["counts"]
    assert sum(map(sum, counts)) == len(rows) == 32
    pairs = Counter((r["label"], r["prediction"]) for r in rows)
    assert counts == [[pairs[(gold, pred)] for pred in (0, 1)] for gold in (0, 1)]
    assert sum(counts[i][i] for i in range(2)) / 32 == pytest.approx(metrics["validation"]["accuracy"])
    assert (out / "confusion_validation.png").stat().st_size > 5000
    assert not list((workspace / "eval").glob(".*tmp*"))  # the atomic write left nothing behind


def test_stsb_task_from_the_name_and_a_score_scatter(workspace):
    out = evaluate(workspace, str(workspace / "models" / "bert-scratch-stsb"), split="validation")
    metrics = json.loads((out / "metrics.json").read_text())
    report = json.loads((workspace / "reports" / "bert-scratch-stsb.json").read_text())
    assert metrics["task"] == "stsb" and metrics["validation"] == report["validation"]
    assert (out / "scatter_validation.png").exists() and not (out / "confusion.json").exists()


def test_task_from_config_and_every_validation_split(workspace):
    save_head(workspace, "my-classifier", BertForSequenceClassification, "mnli", num_labels=3,
              id2label={0: "entailment", 1: "neutral", 2: "contradiction"})
    out = evaluate(workspace, "my-classifier")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "mnli" and set(metrics) >= {"validation_matched", "validation_mismatched"}
    confusion = json.loads((out / "confusion.json").read_text())
    rows = read_rows(out / "predictions.jsonl")
    for split in ("validation_matched", "validation_mismatched"):
        counts = confusion[split]["counts"]
        assert len(counts) == 3 and sum(map(sum, counts)) == sum(r["split"] == split for r in rows) == 32
        assert (out / f"confusion_{split}.png").exists()
    assert metrics["score"] == pytest.approx(
        (metrics["validation_matched"]["accuracy"] + metrics["validation_mismatched"]["accuracy"]) / 2)


def test_squad_v2_scores_equal_the_finetune_report(workspace):
    from datasets import load_from_disk

    out = evaluate(workspace, "bert-squad_v2")
    metrics = json.loads((out / "metrics.json").read_text())
    report = json.loads((workspace / "reports" / "bert-squad_v2.json").read_text())
    assert metrics["task"] == "squad_v2" and metrics["validation"] == report["validation"]
    rows = read_rows(out / "predictions.jsonl")
    assert rows == read_rows(workspace / "predictions" / "bert-squad_v2.jsonl")
    gold = load_from_disk(str(workspace / "raw" / "squad_v2"))["validation"]
    scores = squad_metrics({r["id"]: r["prediction"] for r in rows}, gold, v2=True)
    assert scores.items() <= metrics["validation"].items()
    assert scores["HasAns_total"] + scores["NoAns_total"] == len(rows) == 16
    assert (out / "qa_validation.png").exists()


def test_conll_scores_equal_the_finetune_report_with_per_entity_f1(workspace):
    out = evaluate(workspace, "bert-conll2003")
    metrics = json.loads((out / "metrics.json").read_text())
    report = json.loads((workspace / "reports" / "bert-conll2003.json").read_text())
    assert metrics["task"] == "conll2003" and metrics["validation"] == report["validation"]
    rows = read_rows(out / "predictions.jsonl")
    finetuned = read_rows(workspace / "predictions" / "bert-conll2003.jsonl")
    assert rows == [r for r in finetuned if r["split"] == "validation"]
    assert metrics["validation"] == seqeval_metrics([r["tags"] for r in rows], [r["prediction"] for r in rows])
    assert (out / "entity_f1_validation.png").exists()


def test_a_head_that_does_not_fit_the_task_fails_clearly(workspace):
    save_head(workspace, "bert-pretrained-conll2003", BertForTokenClassification, "conll2003", num_labels=3,
              id2label={0: "O", 1: "B-X", 2: "I-X"})
    with pytest.raises(LmforgeError, match=r"model's labels \['O', 'B-X', 'I-X'\] are not the dataset's tags"):
        evaluate(workspace, "bert-pretrained-conll2003")
    save_head(workspace, "qa-as-sst2", BertForQuestionAnswering, "sst2")
    with pytest.raises(LmforgeError, match=r"a BertForQuestionAnswering cannot be scored on 'sst2'"):
        evaluate(workspace, "qa-as-sst2")


def test_mistakes_fail_clearly(workspace, tmp_path):
    with pytest.raises(LmforgeError, match=r"model folder .*bert-nowhere not found; fine-tune it first"):
        evaluate(workspace, "bert-nowhere")
    empty = tmp_path / "bert-rte"
    empty.mkdir()
    (empty / "config.json").write_text((workspace / "models" / "bert-sst2" / "config.json").read_text())
    with pytest.raises(LmforgeError, match=r"no model.safetensors \(found config.json\)"):
        evaluate(workspace, str(empty))
    with pytest.raises(LmforgeError, match=r"the end of its name 'bert-pretrained' names task 'pretrained'"):
        evaluate(workspace, "bert-pretrained")
    with pytest.raises(LmforgeError, match=r"has no split 'train2' \(found train, validation, test\)"):
        evaluate(workspace, "bert-sst2", split="train2")
    with pytest.raises(LmforgeError, match=r"dataset .*raw/rte not found; ingest it first"):
        evaluate(workspace, "bert-sst2", dataset="rte")


def test_tracking_logs_a_run_with_metrics_and_plots(workspace, tmp_path):
    import mlflow

    tracking = TrackingConfig(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="eval-test")
    cfg = EvaluateConfig(model="bert-sst2", models_dir=str(workspace / "models"), out_dir=str(tmp_path / "eval"))
    evaluate_model(cfg, workspace / "raw", tracking.model_copy(update={"enabled": False}), finetune_config(workspace))
    assert not (tmp_path / "mlflow.db").exists()  # tracking off: MLflow is not even opened
    evaluate_model(cfg, workspace / "raw", tracking, finetune_config(workspace))
    client = mlflow.MlflowClient(tracking_uri=tracking.uri)
    [run] = client.search_runs([client.get_experiment_by_name("eval-test").experiment_id])
    assert run.info.run_name == "evaluate-bert-sst2" and run.info.status == "FINISHED"
    report = json.loads((workspace / "reports" / "bert-sst2.json").read_text())
    assert run.data.metrics["validation/accuracy"] == report["validation"]["accuracy"]
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert {"evaluation/metrics.json", "evaluation/confusion_validation.png"} <= logged
    assert {k: run.data.tags[k] for k in ("lmforge.task", "lmforge.model", "lmforge.init", "lmforge.stage")} == {
        "lmforge.task": "sst2", "lmforge.model": "bert", "lmforge.init": "pretrained", "lmforge.stage": "evaluate"}
    assert [(i.dataset.name, {t.key: t.value for t in i.tags}["mlflow.data.context"])
            for i in run.inputs.dataset_inputs] == [("sst2", "validation")]
