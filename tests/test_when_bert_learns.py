"""The when-BERT-learns report: one row per kept snapshot, each scored four ways."""

import json

import pytest

from lmforge.components.config import BertTokenizerConfig, DemoConfig, ModelConfig, Params
from lmforge.components.data.demo import build_demo
from lmforge.components.errors import LmforgeError
from lmforge.components.evaluation.when_bert_learns import when_bert_learns_report
from lmforge.components.pretraining.models import build_bert
from lmforge.components.tokenizer import train_bert_tokenizer

TINY = ModelConfig(hidden_size=64, num_layers=2, num_heads=2)


def params_for(root) -> Params:
    return Params.model_validate({
        "ingest": {"out_dir": str(root / "raw")},
        "pretrain": {"bert": {"snapshots_dir": str(root / "snapshots"), "max_seq_length": 64}},
        "finetune": {"train": {"max_steps": 3, "batch_size": 16, "val_every_n_steps": 3, "warmup_steps": 1}},
        "when_bert_learns": {"heldout_documents": 5, "run_dir": str(root / "run"), "out": str(root / "wbl.json"),
                             "plot": str(root / "wbl.png")},
        "tracking": {"enabled": False},
    })


def test_one_row_per_snapshot_scored_four_ways(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    demo = build_demo(DemoConfig(entities=40, corpus_documents=60, glue_train=32, glue_eval=16))
    for name in ("corpus", "sst2", "qnli"):
        demo[name].save_to_disk(str(tmp_path / "raw" / name))
    params = params_for(tmp_path)
    with pytest.raises(LmforgeError, match=r"no snapshots in .*snapshots; set pretrain.bert.snapshot_steps"):
        when_bert_learns_report(params)

    tok = train_bert_tokenizer(demo["corpus"]["train"], BertTokenizerConfig(vocab_size=500, min_frequency=1))
    for step in (0, 20, 5):
        model = build_bert(TINY, len(tok), tok.pad_token_id, "sop")
        model.save_pretrained(tmp_path / "snapshots" / f"step-{step}")
        tok.save_pretrained(tmp_path / "snapshots" / f"step-{step}")
    result = json.loads(when_bert_learns_report(params).read_text())
    assert [r["step"] for r in result["rows"]] == [0, 5, 20]  # by step, not by name
    for r in result["rows"]:
        assert 0 <= r["masked_word_accuracy"] <= 1 and 0 <= r["probe"] <= 1 and 0 <= r["finetuned"] <= 1
        assert -2 <= r["sense_gap"] <= 2
    assert result["probe_task"] == "sst2" and result["finetune_task"] == "qnli" and result["word"] == "bank"
    assert (tmp_path / "wbl.png").stat().st_size > 5000
    assert not (tmp_path / "models").exists()  # fine-tuned on the side, in its run folder
