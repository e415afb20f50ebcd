"""The `pretrain-seq2seq` stage: BART-style denoising of the corpus; HF checkpoint + metrics out.

Trained through the same `fit` as BERT and GPT (resumable, MLflow-tracked, checkpointed); the
export loads with AutoModelForSeq2SeqLM and AutoTokenizer, and generates.
"""

from __future__ import annotations

import copy
from pathlib import Path

import lightning as L
from datasets import Dataset

from lmforge.components.config import Seq2SeqPretrainConfig, TrackingConfig
from lmforge.components.pretraining.models import build_bart, count_flops_per_token
from lmforge.components.pretraining.module import Seq2SeqPretrainModule
from lmforge.components.pretraining.seq2seq_data import DenoisingCollator, bart_tokenizer, build_chunks
from lmforge.components.pretraining.pretrain import check_enough, finish, load_documents, run_metrics
from lmforge.components.pretraining.trainer import PretrainDataModule, fit
from lmforge.components.training.checkpoints import export
from lmforge.components.training.trainer import finished_model, unwrap


def pretrain_seq2seq(cfg: Seq2SeqPretrainConfig, corpus_dir: Path, tracking: TrackingConfig) -> Path:
    """Pretrain an encoder-decoder to restore corrupted documents; export to cfg.out_dir; return it."""
    tokenizer = bart_tokenizer(Path(cfg.tokenizer))
    train, val = seq2seq_examples(cfg, corpus_dir, tokenizer)
    check_enough(train, val, cfg.train.batch_size, corpus_dir)

    L.seed_everything(cfg.train.seed, workers=True, verbose=False)
    model = build_bart(cfg.model, tokenizer)
    module = Seq2SeqPretrainModule(model, cfg.train)
    data = seq2seq_data(cfg, tokenizer, train, val)
    flops = count_flops_per_token(model, cfg.max_seq_length)
    result = fit(module, data, cfg.train, Path(cfg.run_dir), "pretrain-seq2seq", tracking,
                 cfg.model_dump(mode="json"), flops)
    trained = finished_model(result.trainer, module)
    if trained is None:  # not global rank 0: rank 0 writes
        return Path(cfg.out_dir)
    # Rebuilt from its config, the model lost the generation settings (forced <s> first) build_bart gave it.
    trained.generation_config = copy.deepcopy(unwrap(module.model).generation_config)
    out = export(trained, tokenizer, Path(cfg.out_dir))
    metrics = {**run_metrics(result, train, val, len(tokenizer), set()), "train_chunks": len(train),
               **reading(trained, tokenizer, val, cfg)}
    finish(metrics, result, Path(cfg.metrics), Path(cfg.plot), tracking, "Seq2seq denoising pretraining")
    return out


def reading(model, tokenizer, val: Dataset, cfg: Seq2SeqPretrainConfig, documents: int = 32) -> dict:
    """{val_input_gain, val_restore_token_accuracy}: does the model restore from its input, or only as
    a language model of its own prefix (gain ~0)? The ablation's measure, on held-out chunks under
    the corruption mix."""
    from lmforge.components.evaluation.seq2seq_ablation import restoration  # the one definition

    scored = restoration(model.eval(), tokenizer, list(val["input_ids"][:documents]), cfg, None)
    return {"val_input_gain": scored["input_gain"], "val_restore_token_accuracy": scored["restore_token_accuracy"]}


def seq2seq_examples(cfg: Seq2SeqPretrainConfig, corpus_dir: Path, tokenizer) -> tuple[Dataset, Dataset]:
    """The train and validation document chunks of the corpus."""
    train_docs, val_docs = load_documents(corpus_dir, cfg.text_column)
    return (build_chunks(train_docs, tokenizer, cfg.max_seq_length, cfg.num_proc),
            build_chunks(val_docs, tokenizer, cfg.max_seq_length, cfg.num_proc))


def seq2seq_data(cfg: Seq2SeqPretrainConfig, tokenizer, train: Dataset, val: Dataset) -> PretrainDataModule:
    return PretrainDataModule(
        train, val, DenoisingCollator(tokenizer, cfg.corruption, cfg.train.seed, cfg.max_seq_length),
        DenoisingCollator(tokenizer, cfg.corruption, cfg.train.seed + 1, cfg.max_seq_length), cfg.train,
    )
