"""The finetune stage on demo SQuAD data with a tiny BERT: windows, real validation F1, outputs, v2 scores."""

import json

import pytest
import torch
from datasets import load_from_disk
from transformers import AutoModelForQuestionAnswering, AutoTokenizer

from lmforge.components.config import BertTokenizerConfig, DemoConfig, FinetuneConfig, FinetuneRun, ModelConfig, TrackingConfig
from lmforge.components.data.demo import build_demo
from lmforge.components.errors import LmforgeError
from lmforge.components.finetuning.metrics import squad_metrics
from lmforge.components.finetuning.qa_answers import answer
from lmforge.components.finetuning.question_answering import encode_qa
from lmforge.components.finetuning.finetune import finetune
from lmforge.components.pretraining.models import build_bert
from lmforge.components.tokenizer import train_bert_tokenizer
from tests.conftest import fresh_python, init_dir

TINY = ModelConfig(hidden_size=64, num_layers=2, num_heads=2)
OFF = TrackingConfig(enabled=False)
# Windows of 40 tokens overlapping by 8: the demo's three-sentence contexts need two or three.
WINDOWS = {"max_seq_length": 40, "doc_stride": 8}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """data/raw with demo squad and squad_v2 (64 train, 32 validation questions); models/bert-pretrained."""
    root = tmp_path_factory.mktemp("finetune-qa")
    demo = build_demo(DemoConfig(entities=40, corpus_documents=100, glue_train=10, glue_eval=10, qa_train=64,
                                 qa_eval=32, ner_train=10, ner_eval=10))
    for task in ("squad", "squad_v2"):
        demo[task].save_to_disk(str(root / "raw" / task))
    tok = train_bert_tokenizer(demo["corpus"]["train"], BertTokenizerConfig(vocab_size=500, min_frequency=1))
    build_bert(TINY, len(tok), tok.pad_token_id, "sop").save_pretrained(root / "models" / "bert-pretrained")
    tok.save_pretrained(root / "models" / "bert-pretrained")
    return root


def config(root, **kwargs) -> FinetuneConfig:
    return FinetuneConfig.model_validate({
        "models_dir": str(root / "models"), "reports_dir": str(root / "reports"),
        "predictions_dir": str(root / "predictions"), **WINDOWS,
        "train": {"max_steps": 6, "batch_size": 16, "val_every_n_steps": 3, "warmup_steps": 1,
                  "learning_rate": 1e-3}, **kwargs,
    })


def finetune_in(cfg: FinetuneConfig, run: FinetuneRun, root, tracking: TrackingConfig = OFF):
    """The finetune stage's call: from the run's init folder, here the workspace's."""
    return finetune(cfg, run, init_dir(root, run), root / "raw", tracking)


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_squad_exports_a_qa_model_scored_by_the_real_f1(workspace, monkeypatch):
    monkeypatch.chdir(workspace)
    cfg = config(workspace)
    out = finetune_in(cfg, FinetuneRun(task="squad"), workspace)
    assert out == workspace / "models" / "bert-squad"

    metrics = json.loads((workspace / "reports" / "bert-squad.json").read_text())
    assert set(metrics) == {"task", "model", "init", "main_metric", "validation", "score", "steps"}
    scores = metrics["validation"]
    assert metrics["main_metric"] == "f1" and metrics["steps"] == 6 and metrics["score"] == scores["f1"]
    assert set(scores) == {"exact_match", "f1", "total"} and scores["total"] == 32
    assert 0 <= scores["exact_match"] <= scores["f1"] <= 100  # an exact match is also an F1 of 1

    # Validation during training post-processed the windows into answers and scored their F1:
    # the best checkpoint's score is the one the exported (best) model gets again.
    ckpt = torch.load(workspace / "runs" / "finetune-bert-squad" / "checkpoints" / "last.ckpt", weights_only=True)
    best = [s for k, s in ckpt["callbacks"].items() if k.startswith("ModelCheckpoint")][0]
    assert best["monitor"] == "val/f1" and float(best["best_model_score"]) == pytest.approx(scores["f1"], abs=1e-4)

    # Predictions: one per question, spans of the context, scoring to the reported numbers.
    rows = read_jsonl(workspace / "predictions" / "bert-squad.jsonl")
    validation = load_from_disk(str(workspace / "raw" / "squad"))["validation"]
    assert len(rows) == 32 and set(rows[0]) == {"split", "id", "question", "answers", "prediction"}
    contexts = dict(zip(validation["id"], validation["context"]))
    assert all(r["prediction"] in contexts[r["id"]] for r in rows)
    assert all(len(r["prediction"].split()) <= cfg.max_answer_length for r in rows)
    rescored = squad_metrics({r["id"]: r["prediction"] for r in rows}, validation)
    assert rescored == pytest.approx(scores)

    # The folder loads as a QA model and answers (transformers 5 has no question-answering pipeline).
    model = AutoModelForQuestionAnswering.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.finetuning_task == "squad" and type(model).__name__ == "BertForQuestionAnswering"
    row = validation[0]
    assert len(encode_qa(validation.select([0]), tokenizer, cfg, train=False)) > 1  # the context spans windows
    text = answer(model, tokenizer, row["question"], row["context"], cfg)
    assert text and text in row["context"]


def test_squad_v2_scores_answerable_and_unanswerable_questions(workspace, monkeypatch):
    monkeypatch.chdir(workspace)
    finetune_in(config(workspace), FinetuneRun(task="squad_v2", init="scratch"), workspace)
    metrics = json.loads((workspace / "reports" / "bert-scratch-squad_v2.json").read_text())
    s = metrics["validation"]
    assert s["HasAns_total"] > 0 and s["NoAns_total"] > 0 and s["HasAns_total"] + s["NoAns_total"] == s["total"] == 32
    for name, overall in (("exact", "exact_match"), ("f1", "f1")):  # overall = the groups' weighted mean
        weighted = (s[f"HasAns_{name}"] * s["HasAns_total"] + s[f"NoAns_{name}"] * s["NoAns_total"]) / s["total"]
        assert s[overall] == pytest.approx(weighted)
        # The best threshold is searched over thresholds that include the one used (0.0).
        assert s[f"best_{name}"] >= s[overall] - 1e-9
    rows = read_jsonl(workspace / "predictions" / "bert-scratch-squad_v2.jsonl")
    assert set(rows[0]) == {"split", "id", "question", "answers", "prediction", "null_score_diff"}
    # "No answer" exactly where the null score beats the best span by more than the threshold.
    assert all(r["prediction"] == "" for r in rows if r["null_score_diff"] > 0.0)
    assert all(r["null_score_diff"] <= 0.0 for r in rows if r["prediction"])
    model = AutoModelForQuestionAnswering.from_pretrained(workspace / "models" / "bert-scratch-squad_v2")
    assert model.config.finetuning_task == "squad_v2"


def test_a_dataset_without_answers_fails_clearly(workspace, monkeypatch):
    monkeypatch.chdir(workspace)
    data = load_from_disk(str(workspace / "raw" / "squad"))
    data.remove_columns("answers").save_to_disk(str(workspace / "raw" / "squad-no-answers"))
    with pytest.raises(LmforgeError, match=r"squad-no-answers \[train\] has no column\(s\) answers; "
                                           r"expected id, question, context, answers"):
        finetune_in(config(workspace), FinetuneRun(task="squad", dataset="squad-no-answers"), workspace)


def requirement_closure(names: list[str]) -> set[str]:
    """The distributions `pip install names` brings: each one's requirements, recursively (no extras)."""
    from importlib.metadata import PackageNotFoundError, distribution

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen, todo = set(), [Requirement(n).name for n in names]
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = distribution(name).requires or []
        except PackageNotFoundError:  # an optional one not installed here
            continue
        todo += [r.name for r in map(Requirement, requires) if r.marker is None or r.marker.evaluate({"extra": ""})]
    return seen


def test_a_served_qa_model_imports_only_what_its_requirements_install(workspace, tmp_path):
    """A registered QA model is a pyfunc that runs lmforge's answer(); served from its requirements
    (mlflow, transformers, torch, ...) it must not import datasets or Lightning, which answer's module
    did (through the fine-tuning module): predict failed with "No module named 'datasets'"."""
    from importlib.metadata import packages_distributions

    from packaging.utils import canonicalize_name
    from transformers import AutoConfig, BertForQuestionAnswering

    from lmforge.components.registry.packaging import pip_requirements

    folder = tmp_path / "qa"
    torch.manual_seed(0)  # a random head whose best span is a span, not ""
    BertForQuestionAnswering(AutoConfig.from_pretrained(workspace / "models" / "bert-pretrained")).save_pretrained(folder)
    AutoTokenizer.from_pretrained(workspace / "models" / "bert-pretrained").save_pretrained(folder)
    # First what serving any such model loads (MLflow's pyfunc, the model, its tokenizer, a forward pass,
    # with whatever those import when installed), then what lmforge's answer() adds to it.
    code = """
import json, sys
import mlflow.pyfunc
from transformers import AutoModelForQuestionAnswering, AutoTokenizer
model, tokenizer = AutoModelForQuestionAnswering.from_pretrained(sys.argv[1]), AutoTokenizer.from_pretrained(sys.argv[1])
model(**tokenizer("Where?", "Here.", return_tensors="pt"))
before = set(sys.modules)
from lmforge.components.serving import QuestionAnsweringModel
served = QuestionAnsweringModel()
served.load_context(type("Context", (), {"artifacts": {"model": sys.argv[1]}}))
context = "Talia Brandt was born in Velmora in 1972."
answers = served.predict(None, [{"question": "Where was Talia Brandt born?", "context": context}])
print(json.dumps({"in_context": [bool(a) and a in context for a in answers],
                  "added": sorted({m.split(".")[0] for m in set(sys.modules) - before})}))
"""
    result = json.loads(fresh_python(code, str(folder)).splitlines()[-1])
    assert result["in_context"] == [True]
    allowed = requirement_closure(pip_requirements()) | {"lmforge"}  # lmforge travels as the model's code
    owners = packages_distributions()
    outside = {m: owners[m] for m in result["added"]
               if m in owners and not {canonicalize_name(d) for d in owners[m]} & allowed}
    assert not outside, f"imported beyond the model's requirements: {outside}"
