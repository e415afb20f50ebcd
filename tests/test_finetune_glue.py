"""The finetune stage on demo GLUE data with tiny models: outputs, loading, init choices, errors."""

import json

import pytest
from transformers import AutoModelForSequenceClassification, pipeline

from lmforge.components.config import BertTokenizerConfig, DemoConfig, FinetuneConfig, FinetuneRun, GptTokenizerConfig, ModelConfig, TrackingConfig
from lmforge.components.data.demo import build_demo
from lmforge.components.errors import LmforgeError
from lmforge.components.finetuning.finetune import finetune_glue
from lmforge.components.pretraining.models import build_bert, build_gpt
from lmforge.components.tokenizer import train_bert_tokenizer, train_gpt_tokenizer
from tests.conftest import init_dir

TINY = ModelConfig(hidden_size=64, num_layers=2, num_heads=2)
OFF = TrackingConfig(enabled=False)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """data/raw with demo rte, stsb, sst2; models/{bert,gpt}-pretrained as tiny random models."""
    root = tmp_path_factory.mktemp("finetune")
    demo = build_demo(DemoConfig(entities=40, corpus_documents=100, glue_train=64, glue_eval=32))
    for task in ("rte", "stsb", "sst2", "corpus"):
        demo[task].save_to_disk(str(root / "raw" / task))
    texts = demo["corpus"]["train"]
    bert_tok = train_bert_tokenizer(texts, BertTokenizerConfig(vocab_size=500, min_frequency=1))
    gpt_tok = train_gpt_tokenizer(texts, GptTokenizerConfig(vocab_size=500, min_frequency=1))
    for name, model, tok in [("bert", build_bert(TINY, len(bert_tok), bert_tok.pad_token_id, "sop"), bert_tok),
                             ("gpt", build_gpt(TINY, len(gpt_tok), gpt_tok.eos_token_id), gpt_tok)]:
        model.save_pretrained(root / "models" / f"{name}-pretrained")
        tok.save_pretrained(root / "models" / f"{name}-pretrained")
    return root


def config(root, **kwargs) -> FinetuneConfig:
    return FinetuneConfig.model_validate({
        "models_dir": str(root / "models"), "reports_dir": str(root / "reports"),
        "predictions_dir": str(root / "predictions"),
        "train": {"max_steps": 6, "batch_size": 16, "val_every_n_steps": 3, "warmup_steps": 1}, **kwargs,
    })


def finetune_in(cfg: FinetuneConfig, run: FinetuneRun, root, tracking: TrackingConfig = OFF):
    """finetune_glue as the finetune stage calls it: from the run's init folder, here the workspace's."""
    return finetune_glue(cfg, run, init_dir(root, run), root / "raw", tracking)


def test_bert_on_rte_exports_a_text_classifier_with_metrics_and_predictions(workspace, monkeypatch):
    monkeypatch.chdir(workspace)
    run = FinetuneRun(task="rte", model="bert")
    out = finetune_in(config(workspace), run, workspace)
    assert out == workspace / "models" / "bert-rte"
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.id2label == {0: "entailment", 1: "not_entailment"}
    result = pipeline("text-classification", model=str(out))({"text": "A was born in B.", "text_pair": "A was born in C."})
    assert result["label"] in ("entailment", "not_entailment")
    metrics = json.loads((workspace / "reports" / "bert-rte.json").read_text())
    assert metrics["main_metric"] == "accuracy" and 0 <= metrics["validation"]["accuracy"] <= 1
    assert metrics["score"] == metrics["validation"]["accuracy"] and metrics["steps"] == 6
    rows = (workspace / "predictions" / "bert-rte.jsonl").read_text().splitlines()
    assert len(rows) == 32 and set(json.loads(rows[0])) == {"split", "sentence1", "sentence2", "label", "prediction"}


def test_stsb_is_regression_and_scored_by_correlation(workspace, monkeypatch):
    monkeypatch.chdir(workspace)
    finetune_in(config(workspace), FinetuneRun(task="stsb", init="scratch"), workspace)
    metrics = json.loads((workspace / "reports" / "bert-scratch-stsb.json").read_text())
    assert set(metrics["validation"]) == {"pearson", "spearmanr"} and metrics["main_metric"] == "pearson"
    model = AutoModelForSequenceClassification.from_pretrained(workspace / "models" / "bert-scratch-stsb")
    assert model.config.num_labels == 1 and model.config.problem_type == "regression"


def test_gpt_head_and_any_local_checkpoint_folder(workspace, monkeypatch):
    monkeypatch.chdir(workspace)
    finetune_in(config(workspace), FinetuneRun(task="sst2", model="gpt"), workspace)
    gpt = AutoModelForSequenceClassification.from_pretrained(workspace / "models" / "gpt-sst2")
    assert type(gpt).__name__ == "GPT2ForSequenceClassification" and gpt.config.pad_token_id is not None
    # A local HF folder (here: the model just fine-tuned on sst2, same label count) works as init.
    run = FinetuneRun(task="sst2", model="gpt", init=str(workspace / "models" / "gpt-sst2"))
    out = finetune_in(config(workspace), run, workspace)
    assert out.name == "gpt-gpt-sst2-sst2"


def test_bad_inits_fail_clearly(workspace, monkeypatch, tmp_path):
    monkeypatch.chdir(workspace)
    with pytest.raises(LmforgeError, match=r"init checkpoint .*nowhere: folder not found"):
        finetune_in(config(workspace), FinetuneRun(task="rte", init=str(tmp_path / "nowhere")), workspace)
    empty = tmp_path / "no-weights"
    empty.mkdir()
    (empty / "config.json").write_text((workspace / "models" / "bert-pretrained" / "config.json").read_text())
    with pytest.raises(LmforgeError, match=r"no model.safetensors \(found config.json\)"):
        finetune_in(config(workspace), FinetuneRun(task="rte", init=str(empty)), workspace)
    # A 2-label RTE model cannot start STS-B (1 output) or MNLI (3 labels).
    finetune_in(config(workspace), FinetuneRun(task="rte"), workspace)
    with pytest.raises(LmforgeError, match=r"its head has 2 labels \(entailment, not_entailment\) but task 'stsb' has 1"):
        finetune_in(config(workspace), FinetuneRun(task="stsb", init=str(workspace / "models" / "bert-rte")),
                    workspace)
    with pytest.raises(LmforgeError, match=r"dataset .*qnli not found; ingest it first"):
        finetune_in(config(workspace), FinetuneRun(task="qnli"), workspace)


def test_gpt1_auxiliary_lm_loss_is_the_lm_heads_loss_and_trains_with_the_head(workspace, monkeypatch):
    """GPT-1's L3 = L2 + λ L1: the auxiliary term is exactly GPT-2's own LM loss on the real tokens,
    and a run with λ is its own run (name, metrics) beside the plain head."""
    import torch
    from transformers import AutoTokenizer, GPT2LMHeadModel

    from lmforge.components.finetuning.classification import causal_lm_loss

    folder = workspace / "models" / "gpt-pretrained"
    lm, tok = GPT2LMHeadModel.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
    tok.pad_token = tok.eos_token
    batch = tok(["the visit was great .", "a much longer sentence about the visit to the bank ."],
                padding=True, return_tensors="pt")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    with torch.no_grad():
        out = lm(**batch, labels=labels, output_hidden_states=True)
        ours = causal_lm_loss(out.hidden_states[-1], lm.get_input_embeddings().weight, batch["input_ids"],
                              batch["attention_mask"])
    assert abs(ours.item() - out.loss.item()) < 1e-5

    import lmforge.components.finetuning.classification as classification

    calls = []
    monkeypatch.setattr(classification, "causal_lm_loss", lambda *a: calls.append(1) or causal_lm_loss(*a))
    monkeypatch.chdir(workspace)
    run = FinetuneRun(task="sst2", model="gpt", aux_lm_weight=0.5)
    assert run.name == "gpt-sst2-auxlm0p5"
    out_dir = finetune_in(config(workspace), run, workspace)
    assert out_dir.name == "gpt-sst2-auxlm0p5"
    metrics = json.loads((workspace / "reports" / "gpt-sst2-auxlm0p5.json").read_text())
    assert 0 <= metrics["validation"]["accuracy"] <= 1 and metrics["steps"] == 6
    assert len(calls) == 6  # every training step added the LM term
    with pytest.raises(ValueError, match=r"aux_lm_weight 0.5: the auxiliary LM loss is GPT's"):
        FinetuneRun(task="sst2", model="bert", aux_lm_weight=0.5)


def test_frozen_embeddings_stay_as_pretrained_while_the_rest_trains(workspace, monkeypatch):
    import torch
    from transformers import AutoModel

    monkeypatch.chdir(workspace)
    cfg = config(workspace, freeze_embeddings=True, reports_dir=str(workspace / "frozen"),
                 models_dir=str(workspace / "models"))
    out = finetune_in(cfg, FinetuneRun(task="rte", seed=3), workspace)
    start = AutoModel.from_pretrained(workspace / "models" / "bert-pretrained")
    tuned = AutoModelForSequenceClassification.from_pretrained(out).bert
    assert torch.equal(start.embeddings.word_embeddings.weight, tuned.embeddings.word_embeddings.weight)
    assert not torch.equal(start.encoder.layer[0].attention.self.query.weight,
                           tuned.encoder.layer[0].attention.self.query.weight)


def test_length_grouped_sampler_reads_its_lengths_from_a_list_not_a_lazy_column():
    # A datasets Column answered the sampler's 5,000 lookups one Arrow query at a time: 0.4 s an epoch.
    from datasets import Dataset

    from lmforge.components.finetuning.training import padded_loader

    data = Dataset.from_dict({"input_ids": [[1] * (i % 7 + 1) for i in range(64)], "length": [i % 7 + 1 for i in range(64)]})
    loader = padded_loader(data, lambda rows: rows, batch_size=8, shuffle=True, seed=0)
    assert type(loader.sampler.lengths) is list and loader.sampler.lengths == data["length"][:]
    batches = [[len(r["input_ids"]) for r in batch] for batch in loader]
    assert sorted(n for b in batches for n in b) == sorted(data["length"][:])
