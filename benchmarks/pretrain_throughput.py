"""Pretraining throughput: lmforge's Lightning training steps against the Hugging Face Trainer set
up as the `transformers` example scripts run_mlm.py / run_clm.py set it up by default.

Same model sizes, corpus, batch shape, learning rate and seed on both sides, in one process.
Prints a table and writes reports/bench/pretrain_throughput.json.

    python benchmarks/pretrain_throughput.py [--preset mini] [--steps 60] [--warmup 10]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from itertools import chain
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import lightning as L  # noqa: E402
import torch  # noqa: E402
from transformers import (  # noqa: E402
    BertForMaskedLM, DataCollatorForLanguageModeling, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments,
    default_data_collator,
)

from components.config import BertTokenizerConfig, DemoConfig, GptTokenizerConfig, MaskingConfig, ModelConfig, TrainConfig  # noqa: E402
from components.data.demo import build_demo  # noqa: E402
from components.pretraining.bert_data import build_bert_examples  # noqa: E402
from components.pretraining.collate import MaskingCollator, gpt_collate  # noqa: E402
from components.pretraining.gpt_data import build_gpt_blocks  # noqa: E402
from components.pretraining.models import build_bert, build_gpt, count_flops_per_token  # noqa: E402
from components.pretraining.module import BertPretrainModule, GptPretrainModule  # noqa: E402
from components.pretraining.throughput import measure_peak_flops  # noqa: E402
from components.pretraining.trainer import PretrainDataModule  # noqa: E402
from components.tokenizer import train_bert_tokenizer, train_gpt_tokenizer  # noqa: E402


def bf16_available() -> bool:
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()) or "avx512_bf16" in _cpu_flags()


def _cpu_flags() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


class StepTimer(L.Callback):
    """Tokens (non-padding) and seconds from the start of step `warmup` to the end of the last step."""

    def __init__(self, warmup: int):
        self.warmup, self.tokens, self.start, self.end, self.losses = warmup, 0, None, None, []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == self.warmup and self.start is None:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))
        if self.start is not None:
            mask = batch.get("attention_mask")
            self.tokens += int(mask.sum()) if mask is not None else batch["input_ids"].numel()
            self.end = time.perf_counter()


class HFStepTimer(TrainerCallback):
    def __init__(self, warmup: int, tokens_per_step: int):
        self.warmup, self.tokens_per_step, self.start, self.end, self.steps = warmup, tokens_per_step, None, None, 0
        self.losses: list[float] = []

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.warmup and self.start is None:
            self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self.start is not None:
            self.steps += 1
            self.end = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(logs["loss"])


def run_lmforge(kind, model, train, collate, cfg: TrainConfig, steps, warmup, precision):
    module_class = BertPretrainModule if kind == "bert" else GptPretrainModule
    module = module_class(model, cfg, steps)
    data = PretrainDataModule(train, train, collate, collate, cfg, steps)
    timer = StepTimer(warmup)
    trainer = L.Trainer(max_steps=steps, max_epochs=-1, accelerator="auto", devices=1, precision=precision,
                        gradient_clip_val=cfg.gradient_clip, limit_val_batches=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[timer], use_distributed_sampler=False, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=data)
    return timer.tokens / (timer.end - timer.start), sum(timer.losses[-10:]) / len(timer.losses[-10:])


def run_reference(model, dataset, collator, seq_len, cfg: TrainConfig, steps, warmup):
    """HF Trainer with run_mlm.py / run_clm.py's defaults: fp32, the default optimizer, no compile."""
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, per_device_train_batch_size=cfg.batch_size, max_steps=steps,
            learning_rate=cfg.learning_rate, warmup_steps=cfg.warmup_steps, weight_decay=cfg.weight_decay,
            max_grad_norm=cfg.gradient_clip, seed=cfg.seed, report_to="none", save_strategy="no",
            logging_steps=1, disable_tqdm=True, use_cpu=not torch.cuda.is_available(),
        )
        timer = HFStepTimer(warmup, cfg.batch_size * seq_len)
        Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator, callbacks=[timer]).train()
    return timer.steps * timer.tokens_per_step / (timer.end - timer.start), sum(timer.losses[-10:]) / len(timer.losses[-10:])


def group_texts(examples, block_size):
    """run_mlm.py / run_clm.py's group_texts: concatenate, then cut into blocks (the tail dropped)."""
    concatenated = {k: list(chain(*examples[k])) for k in examples}
    total = len(concatenated["input_ids"]) // block_size * block_size
    return {k: [t[i : i + block_size] for i in range(0, total, block_size)] for k, t in concatenated.items()}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="mini")
    parser.add_argument("--hidden", type=int, default=None)
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--compile", action="store_true", help="torch.compile lmforge's model")
    parser.add_argument("--out", default="reports/bench/pretrain_throughput.json")
    args = parser.parse_args(argv)

    heads = None if args.hidden is None else max(1, args.hidden // 64)
    model_cfg = ModelConfig(preset=args.preset, hidden_size=args.hidden, num_layers=args.layers, num_heads=heads, dropout=0.1)
    cfg = TrainConfig(batch_size=args.batch_size, learning_rate=args.lr, warmup_steps=args.warmup, max_steps=args.steps,
                      seed=0, compile=args.compile)
    precision = "bf16-mixed" if bf16_available() else "32"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    peaks = {"fp32": measure_peak_flops(device, torch.float32)}
    if bf16_available():
        peaks["bf16"] = measure_peak_flops(device, torch.bfloat16)

    corpus = build_demo(DemoConfig(entities=40, corpus_documents=1500))["corpus"]["train"]
    bert_tok = train_bert_tokenizer(corpus, BertTokenizerConfig(vocab_size=3000))
    gpt_tok = train_gpt_tokenizer(corpus, GptTokenizerConfig(vocab_size=3000))
    results = {}

    # BERT: masked LM alone on both sides (run_mlm.py trains BertForMaskedLM, no sentence-pair task).
    ours = build_bert_examples(corpus, bert_tok, args.seq_len, "none", 0.1, seed=0)
    L.seed_everything(0, verbose=False)
    model = build_bert(model_cfg, len(bert_tok), bert_tok.pad_token_id, "none")
    flops = count_flops_per_token(model, args.seq_len, head_fraction=0.15)
    lm_speed, lm_loss = run_lmforge("bert", model, ours, MaskingCollator(bert_tok, MaskingConfig(), 0), cfg,
                                    args.steps, args.warmup, precision)
    ref_data = corpus.map(lambda b: bert_tok(b["text"], return_special_tokens_mask=True), batched=True,
                          remove_columns=["text"]).map(group_texts, batched=True, fn_kwargs={"block_size": args.seq_len})
    L.seed_everything(0, verbose=False)
    ref_model = BertForMaskedLM._from_config(model.config)
    ref_speed, ref_loss = run_reference(ref_model, ref_data, DataCollatorForLanguageModeling(bert_tok, mlm_probability=0.15),
                                        args.seq_len, cfg, args.steps, args.warmup)
    ref_flops = count_flops_per_token(ref_model, args.seq_len)  # the reference projects every position
    results["bert"] = summarise(lm_speed, lm_loss, ref_speed, ref_loss, flops, ref_flops, peaks, precision)

    # GPT: causal LM on blocks of seq_len, no padding on either side.
    blocks = build_gpt_blocks(corpus, gpt_tok, args.seq_len)
    L.seed_everything(0, verbose=False)
    model = build_gpt(model_cfg, len(gpt_tok), gpt_tok.eos_token_id)
    flops = count_flops_per_token(model, args.seq_len)
    lm_speed, lm_loss = run_lmforge("gpt", model, blocks, gpt_collate, cfg, args.steps, args.warmup, precision)
    ref_data = corpus.map(lambda b: gpt_tok(b["text"]), batched=True, remove_columns=["text"]).map(
        group_texts, batched=True, fn_kwargs={"block_size": args.seq_len}).map(
        lambda b: {"labels": b["input_ids"]}, batched=True)
    L.seed_everything(0, verbose=False)
    ref_model = GPT2LMHeadModel._from_config(model.config)
    ref_speed, ref_loss = run_reference(ref_model, ref_data, default_data_collator, args.seq_len, cfg, args.steps, args.warmup)
    results["gpt"] = summarise(lm_speed, lm_loss, ref_speed, ref_loss, flops, flops, peaks, precision)

    report = {
        "config": {**vars(args), "precision": precision, "layers_hidden_heads": list(model_cfg.sizes[:3])},
        "peak_flops": peaks,
        "results": results,
        "environment": {"torch": torch.__version__, "device": torch.cuda.get_device_name() if device == "cuda"
                        else platform.processor() or platform.machine(), "threads": torch.get_num_threads()},
    }
    print_table(report)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return report


def summarise(lm_speed, lm_loss, ref_speed, ref_loss, flops, ref_flops, peaks, precision):
    peak = peaks["bf16" if precision.startswith("bf16") else "fp32"]
    return {
        "lmforge": {"tokens_per_s": lm_speed, "final_loss": lm_loss, "mfu": lm_speed * flops / peak, "precision": precision},
        "reference": {"tokens_per_s": ref_speed, "final_loss": ref_loss, "mfu": ref_speed * ref_flops / peaks["fp32"],
                      "precision": "32"},
        "speedup": lm_speed / ref_speed,
        "loss_relative_difference": (lm_loss - ref_loss) / ref_loss,
    }


def print_table(report: dict) -> None:
    print(f"\n{'model':<6} {'side':<10} {'precision':<11} {'tokens/s':>10} {'final loss':>11} {'MFU':>7}")
    for name, result in report["results"].items():
        for side in ("lmforge", "reference"):
            r = result[side]
            print(f"{name:<6} {side:<10} {r['precision']:<11} {r['tokens_per_s']:>10.0f} {r['final_loss']:>11.3f} {r['mfu']:>7.1%}")
        print(f"{name:<6} speed-up {result['speedup']:.2f}x, loss difference {result['loss_relative_difference']:+.1%}")


if __name__ == "__main__":
    main()
