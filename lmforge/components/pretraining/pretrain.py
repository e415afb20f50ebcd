"""The `pretrain-bert` and `pretrain-gpt` stages: corpus + tokenizer in, HF checkpoint + metrics out.

Every process of a multi-process run executes the stage; they train together, and global rank 0
alone exports the model (gathered whole), writes the metrics and plot and logs them to MLflow.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import lightning as L
from datasets import Dataset
from transformers import AutoTokenizer

from lmforge.components.atomic import write_json
from lmforge.components.config import BertPretrainConfig, GptPretrainConfig, TrackingConfig
from lmforge.components.errors import LmforgeError
from lmforge.components.pretraining.bert_data import build_bert_examples
from lmforge.components.pretraining.collate import MaskingCollator, gpt_collate
from lmforge.components.pretraining.gpt_data import build_gpt_blocks
from lmforge.components.pretraining.models import build_bert, build_gpt, count_flops_per_token
from lmforge.components.pretraining.module import BertPretrainModule, GptPretrainModule
from lmforge.components.pretraining.snapshots import Snapshots
from lmforge.components.pretraining.trainer import PretrainDataModule, fit, plot_losses, unigram_perplexity
from lmforge.components.training.checkpoints import export
from lmforge.components.training.trainer import build_trainer, finished_model

log = logging.getLogger(__name__)


def pretrain_bert(cfg: BertPretrainConfig, corpus_dir: Path, tracking: TrackingConfig) -> Path:
    """Pretrain BERT (masked LM + NSP/SOP or MLM alone); export to cfg.out_dir; return it."""
    tokenizer = load_tokenizer(cfg.tokenizer, need="mask_token")
    train, val = bert_examples(cfg, corpus_dir, tokenizer)
    check_enough(train, val, cfg.train.batch_size, corpus_dir)

    L.seed_everything(cfg.train.seed, workers=True, verbose=False)
    model = build_bert(cfg.model, len(tokenizer), tokenizer.pad_token_id, cfg.objective)
    module = BertPretrainModule(model, cfg.train)
    data = bert_data(cfg, tokenizer, train, val)
    masked = cfg.masking.mlm_probability  # what the MLM loss reads: the head and the last layer run there
    flops = count_flops_per_token(model, cfg.max_seq_length, head_fraction=masked, top_fraction=masked)
    # Always there (DVC records the folder as an output), empty without snapshot_steps.
    snapshots = Snapshots(cfg.snapshot_steps, Path(cfg.snapshots_dir), tokenizer)
    result = fit(module, data, cfg.train, Path(cfg.run_dir), "pretrain-bert", tracking,
                 cfg.model_dump(mode="json"), flops, [snapshots])
    trained = finished_model(result.trainer, module)
    if trained is None:  # not global rank 0: rank 0 writes
        return Path(cfg.out_dir)
    out = export(trained, tokenizer, Path(cfg.out_dir))

    special = set(tokenizer.all_special_ids)
    metrics = {**run_metrics(result, train, val, len(tokenizer), special), "train_examples": len(train)}
    world = demo_world_of(Path(corpus_dir))
    if world is not None:  # the corpus is the built-in demo: ask the model its facts
        from lmforge.components.pretraining.probe import fill_mask_accuracy

        metrics["fact_probe"] = fill_mask_accuracy(out, *world)
    finish(metrics, result, Path(cfg.metrics), Path(cfg.plot), tracking, "BERT pretraining")
    return out


def pretrain_gpt(cfg: GptPretrainConfig, corpus_dir: Path, tracking: TrackingConfig) -> Path:
    """Pretrain GPT (causal LM); export to cfg.out_dir; return it."""
    tokenizer = load_tokenizer(cfg.tokenizer, need="eos_token")
    train, val = gpt_examples(cfg, corpus_dir, tokenizer)
    check_enough(train, val, cfg.train.batch_size, corpus_dir)

    L.seed_everything(cfg.train.seed, workers=True, verbose=False)
    model = build_gpt(cfg.model, len(tokenizer), tokenizer.eos_token_id)
    module = GptPretrainModule(model, cfg.train)
    data = gpt_data(cfg, train, val)
    flops = count_flops_per_token(model, cfg.block_size)
    result = fit(module, data, cfg.train, Path(cfg.run_dir), "pretrain-gpt", tracking,
                 cfg.model_dump(mode="json"), flops)
    trained = finished_model(result.trainer, module)
    if trained is None:
        return Path(cfg.out_dir)
    out = export(trained, tokenizer, Path(cfg.out_dir))
    metrics = {**run_metrics(result, train, val, len(tokenizer), set()), "train_blocks": len(train)}
    finish(metrics, result, Path(cfg.metrics), Path(cfg.plot), tracking, "GPT pretraining")
    return out


def bert_examples(cfg: BertPretrainConfig, corpus_dir: Path, tokenizer) -> tuple[Dataset, Dataset]:
    """BERT's train and validation examples from the corpus's splits."""
    train_docs, val_docs = load_documents(corpus_dir, cfg.text_column)
    build = dict(tokenizer=tokenizer, max_seq_length=cfg.max_seq_length, objective=cfg.objective,
                 short_seq_prob=cfg.short_seq_prob, num_proc=cfg.num_proc)
    return (build_bert_examples(train_docs, seed=cfg.train.seed, **build),
            build_bert_examples(val_docs, seed=cfg.train.seed + 1, **build))


def bert_data(cfg: BertPretrainConfig, tokenizer, train: Dataset, val: Dataset) -> PretrainDataModule:
    return PretrainDataModule(train, val, MaskingCollator(tokenizer, cfg.masking, cfg.train.seed),
                              MaskingCollator(tokenizer, cfg.masking, cfg.train.seed + 1), cfg.train)


def gpt_examples(cfg: GptPretrainConfig, corpus_dir: Path, tokenizer) -> tuple[Dataset, Dataset]:
    train_docs, val_docs = load_documents(corpus_dir, cfg.text_column)
    return (build_gpt_blocks(train_docs, tokenizer, cfg.block_size, cfg.num_proc),
            build_gpt_blocks(val_docs, tokenizer, cfg.block_size, cfg.num_proc))


def gpt_data(cfg: GptPretrainConfig, train: Dataset, val: Dataset) -> PretrainDataModule:
    return PretrainDataModule(train, val, gpt_collate, gpt_collate, cfg.train)


def validate_exported(cfg: BertPretrainConfig | GptPretrainConfig, corpus_dir: Path, model_dir: Path) -> dict[str, float]:
    """The stage's validation metrics for an exported model folder, in one process: what a run on any
    number of processes reports for the same weights (its validation batches do not depend on them)."""
    from transformers import AutoModelForCausalLM, AutoModelForPreTraining

    bert = isinstance(cfg, BertPretrainConfig)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    auto = AutoModelForPreTraining if bert else AutoModelForCausalLM
    model = auto.from_pretrained(str(model_dir), use_safetensors=True, attn_implementation="sdpa")
    train = cfg.train.model_copy(update={"devices": 1, "num_nodes": 1, "strategy": "auto"})
    cfg = cfg.model_copy(update={"train": train})
    if bert:
        module = BertPretrainModule(model, train)
        train_set, val = bert_examples(cfg, corpus_dir, tokenizer)
        data = bert_data(cfg, tokenizer, train_set, val)
    else:
        module = GptPretrainModule(model, train)
        train_set, val = gpt_examples(cfg, corpus_dir, tokenizer)
        data = gpt_data(cfg, train_set, val)
    trainer = build_trainer(train, Path(cfg.run_dir), None, [], max_steps=1, val_check_interval=1.0,
                            use_distributed_sampler=False)
    trainer.validate(module, datamodule=data, verbose=False)
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}


def demo_world_of(corpus_dir: Path):
    """(world, seed) when ingest's manifest says this corpus came from the built-in demo, else None."""
    manifest = corpus_dir.parent / "manifest.json"
    if not manifest.exists():
        return None
    entry = json.loads(manifest.read_text()).get(corpus_dir.name, {})
    if entry.get("source") != "demo":
        return None
    from lmforge.components.data.world import build_world

    demo = entry["demo"]
    return build_world(demo["seed"], demo["entities"]), demo["seed"]


def load_tokenizer(path: str, need: str):
    folder = Path(path)
    if not (folder / "tokenizer.json").exists() and not (folder / "tokenizer_config.json").exists():
        raise LmforgeError(f"{folder}: no tokenizer found; run `lmforge stage tokenizer` first")
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if getattr(tokenizer, need) is None:
        raise LmforgeError(f"{folder}: the tokenizer has no {need}; expected the one `lmforge stage tokenizer` writes")
    return tokenizer


def load_documents(corpus_dir: Path, text_column: str) -> tuple[Dataset, Dataset]:
    """The corpus's train and validation documents."""
    from lmforge.components.tokenizer import load_corpus

    return load_corpus(Path(corpus_dir), text_column)


def check_enough(train: Dataset, val: Dataset, batch_size: int, corpus_dir: Path) -> None:
    if len(train) < batch_size:
        raise LmforgeError(
            f"{corpus_dir}: only {len(train)} training examples, fewer than train.batch_size {batch_size}; "
            "use a larger corpus or a smaller batch"
        )
    if len(val) == 0:
        raise LmforgeError(f"{corpus_dir}: the validation documents make no example; add validation text")


def run_metrics(result, train: Dataset, val: Dataset, vocab_size: int, special: set[int]) -> dict:
    """What every pretraining stage reports: its validation metrics, the unigram baseline to beat, speed."""
    return {**{k.replace("val/", "val_"): v for k, v in result.metrics.items()},
            "unigram_perplexity": unigram_perplexity(train["input_ids"], val["input_ids"], vocab_size, special),
            "tokens_per_s": result.tokens_per_s, "mfu": result.mfu}


def finish(metrics: dict, result, metrics_path: Path, plot_path: Path, tracking: TrackingConfig, title: str) -> None:
    write_json(metrics_path, metrics)
    plot_losses(result.history, plot_path, title)
    if result.run_id is not None:
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=tracking.uri)
        for key in ("unigram_perplexity", "tokens_per_s", "mfu", "val_input_gain"):  # the last: seq2seq only
            if key in metrics:
                client.log_metric(result.run_id, key, metrics[key])
        if "fact_probe" in metrics:
            client.log_metric(result.run_id, "fact_probe_accuracy", metrics["fact_probe"]["accuracy"])
        client.log_artifact(result.run_id, str(plot_path), "plots")
        client.log_artifact(result.run_id, str(metrics_path), "reports")
    log.info("%s: %s", title, metrics)
