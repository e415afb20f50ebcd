"""The finetune stage on demo CoNLL-2003 data with a tiny BERT: labels, seqeval scores, outputs, pipeline."""

import json

import pytest
from datasets import ClassLabel, Features, List, Value, load_from_disk
from seqeval.metrics.sequence_labeling import get_entities
from transformers import AutoModelForTokenClassification, pipeline

from lmforge.components.config import BertTokenizerConfig, DemoConfig, FinetuneConfig, FinetuneRun, ModelConfig, TrackingConfig
from lmforge.components.data.demo import build_demo
from lmforge.components.data.schemas import CONLL_NER_TAGS
from lmforge.components.errors import LmforgeError
from lmforge.components.finetuning.metrics import seqeval_metrics
from lmforge.components.finetuning.finetune import finetune
from lmforge.components.pretraining.models import build_bert
from lmforge.components.tokenizer import train_bert_tokenizer
from tests.conftest import init_dir

TINY = ModelConfig(hidden_size=64, num_layers=2, num_heads=2)
OFF = TrackingConfig(enabled=False)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """data/raw/conll2003 (64 train, 32 validation and test sentences); models/bert-pretrained."""
    root = tmp_path_factory.mktemp("finetune-tagging")
    demo = build_demo(DemoConfig(entities=40, corpus_documents=100, glue_train=10, glue_eval=10, qa_train=10,
                                 qa_eval=10, ner_train=64, ner_eval=32))
    demo["conll2003"].save_to_disk(str(root / "raw" / "conll2003"))
    tok = train_bert_tokenizer(demo["corpus"]["train"], BertTokenizerConfig(vocab_size=500, min_frequency=1))
    build_bert(TINY, len(tok), tok.pad_token_id, "sop").save_pretrained(root / "models" / "bert-pretrained")
    tok.save_pretrained(root / "models" / "bert-pretrained")
    return root


def config(root, **train) -> FinetuneConfig:
    return FinetuneConfig.model_validate({
        "models_dir": str(root / "models"), "reports_dir": str(root / "reports"),
        "predictions_dir": str(root / "predictions"),
        "train": {"max_steps": 6, "batch_size": 16, "val_every_n_steps": 3, "warmup_steps": 1, **train},
    })


def finetune_in(cfg: FinetuneConfig, run: FinetuneRun, root, tracking: TrackingConfig = OFF):
    """The finetune stage's call: from the run's init folder, here the workspace's."""
    return finetune(cfg, run, init_dir(root, run), root / "raw", tracking)


def test_conll_exports_a_tagger_scored_by_entity_f1(workspace, monkeypatch):
    monkeypatch.chdir(workspace)
    # Enough steps at a high rate for the tiny model to tag some entities, so the pipeline has groups.
    out = finetune_in(config(workspace, max_steps=60, val_every_n_steps=20, learning_rate=3e-3),
                      FinetuneRun(task="conll2003"), workspace)
    assert out == workspace / "models" / "bert-conll2003"

    metrics = json.loads((workspace / "reports" / "bert-conll2003.json").read_text())
    assert metrics["main_metric"] == "f1" and metrics["score"] == metrics["validation"]["f1"]
    data = load_from_disk(str(workspace / "raw" / "conll2003"))
    for split in ("validation", "test"):  # CoNLL's test split has labels: scored too
        s = metrics[split]
        assert set(s) == {"precision", "recall", "f1", "accuracy", "per_entity"}
        assert all(0 <= s[k] <= 1 for k in ("precision", "recall", "f1", "accuracy"))
        p, r = s["precision"], s["recall"]
        assert s["f1"] == pytest.approx(2 * p * r / (p + r) if p + r else 0.0)
        # Per entity type, supports that add up to the gold entities of the split.
        gold = [e for tags in data[split]["ner_tags"] for e in get_entities([CONLL_NER_TAGS[t] for t in tags])]
        assert set(s["per_entity"]) <= {"PER", "ORG", "LOC", "MISC"}
        assert sum(e["support"] for e in s["per_entity"].values()) == len(gold)
    assert metrics["validation"]["f1"] > 0.2  # it learned something in 60 steps

    # Predictions: one row per sentence, a tag per word, scoring to the reported numbers.
    rows = [json.loads(line) for line in (workspace / "predictions" / "bert-conll2003.jsonl").read_text().splitlines()]
    assert len(rows) == 64 and set(rows[0]) == {"split", "id", "tokens", "tags", "prediction"}
    assert all(len(r["tokens"]) == len(r["tags"]) == len(r["prediction"]) for r in rows)
    validation = [r for r in rows if r["split"] == "validation"]
    assert [r["tags"] for r in validation] == [[CONLL_NER_TAGS[t] for t in tags] for tags in data["validation"]["ner_tags"]]
    rescored = seqeval_metrics([r["tags"] for r in validation], [r["prediction"] for r in validation])
    assert rescored == metrics["validation"]

    model = AutoModelForTokenClassification.from_pretrained(out)
    assert model.config.finetuning_task == "conll2003" and model.config.id2label == dict(enumerate(CONLL_NER_TAGS))
    assert model.config.label2id == {t: i for i, t in enumerate(CONLL_NER_TAGS)}
    sentence = " ".join(data["validation"][0]["tokens"])
    # "first": a word takes its first sub-token's label, as the model was trained.
    groups = pipeline("token-classification", model=str(out), aggregation_strategy="first")(sentence)
    assert groups and all(g["entity_group"] in {"PER", "ORG", "LOC", "MISC"} for g in groups)
    assert all(sentence[g["start"]:g["end"]].lower() == g["word"] for g in groups)


def test_the_label_set_comes_from_the_dataset(workspace, monkeypatch):
    monkeypatch.chdir(workspace)
    # A person-only tagger: its ner_tags' ClassLabel has three names, the model gets three labels.
    names = ["O", "B-PER", "I-PER"]
    people = load_from_disk(str(workspace / "raw" / "conll2003")).map(
        lambda row: {"ner_tags": [t if t in (1, 2) else 0 for t in row["ner_tags"]]},
        features=Features({"id": Value("string"), "tokens": List(Value("string")),
                           "ner_tags": List(ClassLabel(names=names))}))
    people.save_to_disk(str(workspace / "raw" / "people"))
    out = finetune_in(config(workspace), FinetuneRun(task="conll2003", dataset="people", init="scratch"),
                      workspace)
    model = AutoModelForTokenClassification.from_pretrained(out)
    assert model.config.id2label == dict(enumerate(names)) and model.num_labels == 3
    metrics = json.loads((workspace / "reports" / "bert-scratch-conll2003.json").read_text())
    assert set(metrics["validation"]["per_entity"]) <= {"PER"} and metrics["steps"] == 6


def test_a_dataset_without_tags_fails_clearly(workspace, monkeypatch):
    monkeypatch.chdir(workspace)
    data = load_from_disk(str(workspace / "raw" / "conll2003"))
    data.remove_columns("ner_tags").save_to_disk(str(workspace / "raw" / "untagged"))
    with pytest.raises(LmforgeError, match=r"untagged \[train\] has no column\(s\) ner_tags; expected tokens, ner_tags"):
        finetune_in(config(workspace), FinetuneRun(task="conll2003", dataset="untagged"), workspace)


def test_scores_and_report_reach_the_mlflow_run(workspace, monkeypatch, tmp_path):
    import mlflow

    monkeypatch.chdir(workspace)
    tracking = TrackingConfig(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="tagging")
    finetune_in(config(workspace), FinetuneRun(task="conll2003", init="scratch"), workspace, tracking)
    client = mlflow.MlflowClient(tracking_uri=tracking.uri)
    (run,) = client.search_runs([client.get_experiment_by_name("tagging").experiment_id])
    metrics = json.loads((workspace / "reports" / "bert-scratch-conll2003.json").read_text())
    assert run.info.run_name == "finetune-bert-scratch-conll2003" and run.data.params["task"] == "conll2003"
    assert run.data.metrics["validation/f1"] == pytest.approx(metrics["validation"]["f1"])
    assert run.data.metrics["test/per_entity.PER.f1"] == pytest.approx(metrics["test"]["per_entity"]["PER"]["f1"])
    # The validation curve: one point per validation pass (every 3 of the 6 steps).
    assert len(client.get_metric_history(run.info.run_id, "val/f1")) == 2
    assert [a.path for a in client.list_artifacts(run.info.run_id, "reports")] == ["reports/bert-scratch-conll2003.json"]
    assert (run.data.tags["lmforge.task"], run.data.tags["lmforge.init"]) == ("conll2003", "scratch")
    contexts = {i.dataset.name: set() for i in run.inputs.dataset_inputs}
    for i in run.inputs.dataset_inputs:
        contexts[i.dataset.name] |= {t.value for t in i.tags if t.key == "mlflow.data.context"}
    assert contexts == {"conll2003": {"training", "validation", "testing"}}  # its test split has tags
