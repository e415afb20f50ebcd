"""Pretraining throughput: lmforge's Lightning training steps against the Hugging Face Trainer set
up as the `transformers` example scripts run_mlm.py / run_clm.py set it up by default.

Same model sizes, corpus, batch size, learning rate, warm-up and seed on both sides, in one
process. The contestants (lmforge eager, lmforge compiled, the reference) take turns on one
thread: each trains `--window` steps, then hands over to the next (order A B C, C B A, ...), so
load from outside hits all of them alike. Steps before `--warmup` are not timed. Prints a table
and writes reports/bench/pretrain_throughput.json.

    python benchmarks/pretrain_throughput.py [--preset mini] [--steps 60] [--warmup 10]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
from itertools import chain
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import lightning as L  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from transformers import (  # noqa: E402
    BertForMaskedLM, DataCollatorForLanguageModeling, GPT2LMHeadModel, PrinterCallback, Trainer,
    TrainingArguments, default_data_collator,
)

from lmforge.components.config import BertTokenizerConfig, DemoConfig, GptTokenizerConfig, MaskingConfig, ModelConfig, TrainConfig  # noqa: E402
from lmforge.components.data.demo import build_demo  # noqa: E402
from lmforge.components.pretraining.bert_data import build_bert_examples  # noqa: E402
from lmforge.components.pretraining.collate import MaskingCollator, gpt_collate  # noqa: E402
from lmforge.components.pretraining.gpt_data import build_gpt_blocks  # noqa: E402
from lmforge.components.pretraining.models import build_bert, build_gpt, count_flops_per_token  # noqa: E402
from lmforge.components.pretraining.module import BertPretrainModule, GptPretrainModule  # noqa: E402
from lmforge.components.pretraining.throughput import ThroughputLogger, measure_peak_flops  # noqa: E402
from lmforge.components.pretraining.trainer import PretrainDataModule  # noqa: E402
from lmforge.components.training.distributed import resolve_accelerator  # noqa: E402
from lmforge.components.training.trainer import unwrap  # noqa: E402
from lmforge.components.tokenizer import train_bert_tokenizer, train_gpt_tokenizer  # noqa: E402
from racing import (BEST, DEVICE, REFERENCE, Clock, HFClock, Turns, best_trainer_settings, bf16_available,  # noqa: E402
                    environment, greenlet, quiet_and_restored, write_report)

# ---------------------------------------------------------------------------- the two sides


def lmforge_contestant(kind, build_model, train, collate, cfg: TrainConfig, args, flops_for, peak):
    """lmforge's path: its LightningModule and DataModule under a Trainer set up as `fit()` sets it
    up, without checkpointing, MLflow, validation and the progress bar."""

    def contest(turns: Turns) -> dict:
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        model = build_model()
        module = (BertPretrainModule if kind == "bert" else GptPretrainModule)(model, cfg, args.steps)
        data = PretrainDataModule(train, train, collate, collate, cfg)
        data.total_batches = args.steps
        clock, accelerator = Clock(turns, args.steps, args.warmup, args.window), resolve_accelerator(cfg.accelerator)
        callbacks = [ThroughputLogger(flops_for(model, args.seq_len), peak), clock.timer()]
        with tempfile.TemporaryDirectory() as root:
            trainer = L.Trainer(
                max_steps=args.steps, max_epochs=-1, accelerator=accelerator, devices=cfg.devices,
                strategy=cfg.strategy, num_nodes=cfg.num_nodes, precision=cfg.precision,
                accumulate_grad_batches=cfg.accumulate_grad_batches, gradient_clip_val=cfg.gradient_clip or None,
                val_check_interval=cfg.val_every_n_steps, check_val_every_n_epoch=None, limit_val_batches=0,
                num_sanity_val_steps=0, log_every_n_steps=cfg.log_every_n_steps, use_distributed_sampler=False,
                deterministic=cfg.deterministic, logger=False, callbacks=callbacks, default_root_dir=root,
                enable_model_summary=False, enable_checkpointing=False, enable_progress_bar=False,
            )
            trainer.fit(module, datamodule=data)
        return {"model": unwrap(module.model), "clock": clock}

    return contest


# run_mlm.py / run_clm.py train from scratch on the model type's default config with these overridden.
SIZES = {"bert": ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                  "max_position_embeddings", "pad_token_id"),
         "gpt": ("vocab_size", "n_embd", "n_layer", "n_head", "n_inner", "n_positions", "bos_token_id", "eos_token_id")}


def reference_contestant(kind, ours_config, dataset, collator, cfg: TrainConfig, args, best: bool,
                         attention: str = "sdpa"):
    """HF Trainer at lmforge's sizes, batch size, learning rate, warm-up and seed; no logging, saving
    or evaluation.

    best=False: run_mlm.py / run_clm.py's defaults: the model type's default config (dropout 0.1,
    GPT-2's gelu_new, ...), fp32, the default optimizer settings, no compile, their own blocks.
    best=True: as fast as the Trainer's documentation allows, on lmforge's own model and packed examples:
    bf16 where lmforge trains in bf16, adamw_torch_fused with lmforge's betas, epsilon, weight decay
    and clipping, torch_compile where lmforge compiles. `attention`: the model's attn_implementation; HF's
    "eager" is the faster one on CPU when attention dropout is on (SDPA then leaves its fused kernel)."""
    # best: lmforge's own model config, so both sides train the same model (GPT: its fused tanh GELU)
    config = (copy.deepcopy(ours_config) if best
              else type(ours_config)(**{key: getattr(ours_config, key) for key in SIZES[kind]}))
    settings = best_trainer_settings(cfg) if best else {}

    def contest(turns: Turns) -> dict:
        clock = Clock(turns, args.steps, args.warmup, args.window)
        with tempfile.TemporaryDirectory() as out:
            training = TrainingArguments(
                output_dir=out, per_device_train_batch_size=cfg.batch_size, max_steps=args.steps,
                learning_rate=cfg.learning_rate, warmup_steps=cfg.warmup_steps, seed=cfg.seed,
                report_to="none", save_strategy="no", logging_strategy="no", disable_tqdm=True,
                use_cpu=DEVICE == "cpu", **settings,
            )
            torch.manual_seed(cfg.seed)  # run_*.py builds the model after set_seed(training_args.seed)
            model = (BertForMaskedLM if kind == "bert" else GPT2LMHeadModel)._from_config(
                config, attn_implementation=attention)
            trainer = Trainer(model=model, args=training, train_dataset=dataset, data_collator=collator,
                              callbacks=[HFClock(clock, model)])
            trainer.remove_callback(PrinterCallback)  # its summary line after training, not timed anyway
            trainer.train()
        return {"model": model, "clock": clock}

    return contest


# ---------------------------------------------------------------------------- data and held-out loss


def group_texts(examples: dict, block_size: int) -> dict:
    """run_mlm.py / run_clm.py's group_texts: concatenate, then cut into blocks (the tail dropped)."""
    concatenated = {k: list(chain(*examples[k])) for k in examples}
    total = len(concatenated["input_ids"]) // block_size * block_size
    return {k: [t[i : i + block_size] for i in range(0, total, block_size)] for k, t in concatenated.items()}


def reference_data(kind: str, docs, tokenizer, seq_len: int):
    """run_mlm.py's (special-tokens mask kept for the collator) or run_clm.py's (labels = inputs) blocks."""
    if kind == "bert":
        return docs.map(lambda b: tokenizer(b["text"], return_special_tokens_mask=True), batched=True,
                        remove_columns=["text"]).map(group_texts, batched=True, fn_kwargs={"block_size": seq_len})
    return docs.map(lambda b: tokenizer(b["text"]), batched=True, remove_columns=["text"]).map(
        group_texts, batched=True, fn_kwargs={"block_size": seq_len}).map(
        lambda b: {"labels": b["input_ids"]}, batched=True)


def heldout_batches(kind: str, val_docs, tokenizer, seq_len: int, draws: int = 4) -> dict[str, list[dict]]:
    """The validation documents in each side's format; for BERT, `draws` fixed maskings of them."""
    if kind == "gpt":
        ours, ref = build_gpt_blocks(val_docs, tokenizer, seq_len), reference_data("gpt", val_docs, tokenizer, seq_len)
        return {"lmforge_format": [gpt_collate(list(ours))],
                "reference_format": [{"input_ids": torch.tensor(ref["input_ids"])}]}
    ours = build_bert_examples(val_docs, tokenizer, seq_len, "none", 0.0, seed=1)
    ref = reference_data("bert", val_docs, tokenizer, seq_len)
    masker, ref_masker = MaskingCollator(tokenizer, MaskingConfig(), seed=1), DataCollatorForLanguageModeling(tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        return {"lmforge_format": [masker([{**ex, "batch_no": d} for ex in ours]) for d in range(draws)],
                "reference_format": [ref_masker(list(ref)) for _ in range(draws)]}


@torch.no_grad()
def heldout_loss(model: torch.nn.Module, kind: str, batches: list[dict]) -> float:
    """Token-weighted mean loss, fp32, eval mode: on masked positions (BERT) or next tokens (GPT)."""
    model = model.float().eval()
    total, count = 0.0, 0
    for batch in batches:
        inputs = {k: v.to(model.device) for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        labels = batch.get("labels", batch["input_ids"]).to(model.device)
        logits = model(**inputs).logits
        if kind == "gpt":
            logits, labels = logits[:, :-1], labels[:, 1:]
        total += float(F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum"))
        count += int((labels != -100).sum())
    return total / count


# ---------------------------------------------------------------------------- the run


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="mini", choices=["tiny", "mini", "small", "base"])
    parser.add_argument("--hidden", type=int, default=None, help="override the preset's hidden size (heads = hidden/64)")
    parser.add_argument("--layers", type=int, default=None, help="override the preset's layers")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10, help="steps left out of the timing (and LR warm-up)")
    parser.add_argument("--window", type=int, default=10, help="timed steps per turn before handing over")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--precision", default="auto",
                        help="lmforge's: auto (bf16-mixed where supported, else 32), or a comma-separated list")
    parser.add_argument("--compile", default="both", choices=["off", "on", "both"], help="torch.compile lmforge's model")
    parser.add_argument("--models", default="bert,gpt")
    parser.add_argument("--documents", type=int, default=6000, help="demo corpus documents (6000: about 1.3 MB)")
    parser.add_argument("--corpus", default=None,
                        help="your own plain-text files instead of the demo corpus: a path or glob "
                             "(a document per blank-line-separated paragraph; 5%% held out)")
    parser.add_argument("--vocab", type=int, default=3000)
    parser.add_argument("--peak-seconds", type=float, default=1.0, help="seconds of matmul per measured peak")
    parser.add_argument("--out", default="reports/bench/pretrain_throughput.json")
    return parser.parse_args(argv)


def bench_model(kind: str, args, model_cfg: ModelConfig, corpus, peaks: dict, precisions: list[str]) -> dict:
    """Race lmforge's variants against the reference on one model; their rows and ratios."""
    docs = corpus["train"]
    if kind == "bert":  # masked LM alone on both sides: run_mlm.py trains BertForMaskedLM, no sentence pairs
        tokenizer = train_bert_tokenizer(docs, BertTokenizerConfig(vocab_size=args.vocab))
        # Full rows, as RoBERTa packs them and run_mlm.py's group_texts cuts them: one shorter row in a
        # batch pads it, and a padded batch takes SDPA's masked path on CPU (+20 % a step, measured).
        train = build_bert_examples(docs, tokenizer, args.seq_len, "none", 0.0, seed=0)
        collate, ref_collate = MaskingCollator(tokenizer, MaskingConfig(), seed=0), DataCollatorForLanguageModeling(tokenizer)
        build_model = lambda: build_bert(model_cfg, len(tokenizer), tokenizer.pad_token_id, "none")  # noqa: E731
        # Useful FLOPs: the MLM loss reads 15 % of the positions (the head, and BERT's last layer past its keys/values)
        flops_for = lambda m, s: count_flops_per_token(m, s, head_fraction=0.15, top_fraction=0.15)  # noqa: E731
    else:  # causal LM on blocks of seq_len, no padding on either side
        tokenizer = train_gpt_tokenizer(docs, GptTokenizerConfig(vocab_size=args.vocab))
        train, collate, ref_collate = build_gpt_blocks(docs, tokenizer, args.seq_len), gpt_collate, default_data_collator
        build_model = lambda: build_gpt(model_cfg, len(tokenizer), tokenizer.eos_token_id)  # noqa: E731
        flops_for = count_flops_per_token
    names, contestants = [], []
    for precision in precisions:
        for compiled in {"off": [False], "on": [True], "both": [False, True]}[args.compile]:
            cfg = TrainConfig(batch_size=args.batch_size, learning_rate=args.lr, warmup_steps=args.warmup,
                              max_steps=args.steps, seed=0, precision=precision, compile=compiled)
            peak = peaks["bf16" if "bf16" in precision else "fp32"]
            names.append(f"lmforge {precision}{' compiled' if compiled else ''}")
            contestants.append(lmforge_contestant(kind, build_model, train, collate, cfg, args, flops_for, peak))
    names.append(REFERENCE)
    contestants.append(reference_contestant(kind, build_model().config, reference_data(kind, docs, tokenizer, args.seq_len),
                                            ref_collate, cfg.model_copy(update={"precision": "32", "compile": False}),
                                            args, best=False))
    # The best Trainer: lmforge's examples (GPT: its blocks, labels the inputs; BERT: its packed
    # examples, HF's masking collator), at lmforge's best precision and compile setting.
    best_cfg = cfg.model_copy(update={"precision": precisions[-1], "compile": args.compile != "off"})
    best_data = train.map(lambda b: {"labels": b["input_ids"]}, batched=True) if kind == "gpt" else train
    for attention in ("sdpa", "eager"):  # the faster of HF's two CPU attentions is the strongest rival
        names.append(f"{BEST}{' eager' if attention == 'eager' else ''} {best_cfg.precision}"
                     f"{' compiled' if best_cfg.compile else ''}")
        contestants.append(reference_contestant(kind, build_model().config, best_data, ref_collate, best_cfg, args,
                                                best=True, attention=attention))
    raced = Turns(contestants).run()

    heldout = heldout_batches(kind, corpus["validation"], tokenizer, args.seq_len)
    rows = {}
    for name, result in zip(names, raced):
        clock, model = result["clock"], result["model"]
        mean_len = clock.positions / max(clock.sequences, 1)
        # Useful FLOPs per trained token: the defaults reference projects every position onto the vocabulary.
        flops = count_flops_per_token(model, mean_len) if name == REFERENCE else flops_for(model, mean_len)
        speed, per_step = clock.tokens / clock.seconds, clock.tokens / max(clock.steps, 1)
        median_step = statistics.median(clock.step_seconds)
        losses = {fmt: heldout_loss(model, kind, batches) for fmt, batches in heldout.items()}
        rows[name] = {
            "tokens_per_s": speed, "timed_steps": clock.steps, "timed_seconds": clock.seconds,
            "warmup_seconds": clock.warmup_seconds, "tokens_per_step": per_step, "median_step_seconds": median_step,
            # every step has the same tokens here (full blocks), so this is the speed of the median step
            "tokens_per_s_median": per_step / median_step,
            "mean_sequence_length": mean_len, "final_loss": clock.final_loss(),
            "heldout_loss": sum(losses.values()) / len(losses), "heldout_loss_by_format": losses,
            "flops_per_token": flops, "mfu": {p: speed * flops / peak for p, peak in peaks.items()},
            "mfu_at_precision": speed * flops / peaks["bf16" if "bf16" in name else "fp32"],
            "precision": next(w for w in name.split() if w[0].isdigit() or w.startswith("bf16")),
            "compiled": name.endswith("compiled"), "side": "lmforge" if name.startswith("lmforge") else "trainer",
        }
    return summarise(rows)


def summarise(rows: dict) -> dict:
    """The rows, and each lmforge row against the fastest Trainer row: speed ratio and loss differences."""
    trainers = [name for name, row in rows.items() if row["side"] == "trainer"]
    strongest = max(trainers, key=lambda n: rows[n]["tokens_per_s"])
    ref = rows[strongest]
    ref_median = max(rows[n]["tokens_per_s_median"] for n in trainers)
    ratios = {
        name: {"speedup": row["tokens_per_s"] / ref["tokens_per_s"],
               # the same against the fastest Trainer row's median step: less moved by a burst of outside load
               "speedup_median_step": row["tokens_per_s_median"] / ref_median,
               "speedup_vs_defaults": row["tokens_per_s"] / rows[REFERENCE]["tokens_per_s"],
               "final_loss_relative_difference": (row["final_loss"] - ref["final_loss"]) / ref["final_loss"],
               "heldout_loss_relative_difference": (row["heldout_loss"] - ref["heldout_loss"]) / ref["heldout_loss"]}
        for name, row in rows.items() if row["side"] == "lmforge"
    }
    best = max(ratios, key=lambda n: ratios[n]["speedup"])
    return {"rows": rows, "strongest_reference": strongest, "vs_strongest": ratios, "best": best,
            "speedup": ratios[best]["speedup"]}


def load_corpus(args):
    """The benchmark's train and validation documents: --corpus files, or the demo world's corpus."""
    if args.corpus is None:
        return build_demo(DemoConfig(entities=40, corpus_documents=args.documents))["corpus"]
    from lmforge.components.config import HoldoutConfig, SourceConfig
    from lmforge.components.data.holdout import carve_rows
    from lmforge.components.data.local import read_local

    source = SourceConfig(name="corpus", source="local", format="text", data_files=args.corpus, text_unit="paragraph")
    return carve_rows(read_local(source, Path(".")), "validation", HoldoutConfig(fraction=0.05), "corpus")


def main(argv=None) -> dict:
    args = parse_args(argv)
    with quiet_and_restored():
        heads = None if args.hidden is None else max(1, args.hidden // 64)
        model_cfg = ModelConfig(preset=args.preset, hidden_size=args.hidden, num_layers=args.layers, num_heads=heads,
                                dropout=0.1, max_position_embeddings=max(512, args.seq_len))
        precisions = [("bf16-mixed" if bf16_available() else "32") if p == "auto" else p for p in args.precision.split(",")]
        peaks = {"fp32": measure_peak_flops(DEVICE, torch.float32, seconds=args.peak_seconds)}
        if bf16_available():
            peaks["bf16"] = measure_peak_flops(DEVICE, torch.bfloat16, seconds=args.peak_seconds)
        corpus = load_corpus(args)
        results = {kind: bench_model(kind, args, model_cfg, corpus, peaks, precisions) for kind in args.models.split(",")}
    report = {
        "config": {**vars(args), "corpus_bytes": sum(len(t.encode()) for t in corpus["train"]["text"]), "layers_hidden_heads_intermediate": list(model_cfg.sizes), "dropout": model_cfg.dropout,
                   "bert_loss": "masked-LM loss alone: lmforge trains objective 'none' (no sentence-pair head), "
                                "as run_mlm.py trains BertForMaskedLM",
                   "final_loss": "mean training loss of the last 10 steps",
                   "heldout_loss": "fp32 eval loss on the demo's validation documents, mean of both sides' formats",
                   "interleaved": greenlet is not None},
        "peak_flops": peaks,
        "results": results,
        "environment": environment(precisions),
    }
    print_table(report)
    write_report(report, args.out)
    return report


def print_table(report: dict) -> None:
    print(f"\n{'model':<5} {'side':<28} {'tokens/s':>8} {'final loss':>10} {'held-out: ours/ref fmt':>22} {'MFU':>6} "
          f"{'warm-up s':>9}")
    for kind, result in report["results"].items():
        for name, row in result["rows"].items():
            held = row["heldout_loss_by_format"]
            print(f"{kind:<5} {name:<28} {row['tokens_per_s']:>8.0f} {row['final_loss']:>10.3f} "
                  f"{held['lmforge_format']:>12.3f} / {held['reference_format']:<7.3f} {row['mfu_at_precision']:>6.1%} "
                  f"{row['warmup_seconds']:>9.1f}")
        for name, r in result["vs_strongest"].items():
            print(f"{kind:<5} {name} / {result['strongest_reference']}: {r['speedup']:.2f}x tokens/s "
                  f"({r['speedup_median_step']:.2f}x by median step); loss "
                  f"{r['final_loss_relative_difference']:+.1%} (train), {r['heldout_loss_relative_difference']:+.1%} (held-out)")
    peaks = ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in report["peak_flops"].items())
    env = report["environment"]
    print(f"MFU against the matmul peak of the row's precision: {peaks}; {env['device']}, {env['threads']} threads, "
          f"torch {env['torch']}")


if __name__ == "__main__":
    main()
