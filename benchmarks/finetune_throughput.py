"""Fine-tuning throughput: lmforge's GLUE fine-tuning against the Hugging Face Trainer, twice: set
up as `transformers`' run_glue.py sets it up by default (every row padded to max_seq_length, fp32),
and as fast as the Trainer's documentation allows (dynamic padding, group_by_length, bf16 where
lmforge uses bf16, fused AdamW, torch_compile where lmforge compiles). Speed-ups are reported
against the faster Trainer row.

Same model on both sides (one HF folder that both load with `from_pretrained`, the same seed
before the new head is drawn), same data, batch size, learning rate, schedule, warm-up, weight
decay, gradient clipping and epochs. The contestants take turns on one thread (racing.py), so
outside load hits them alike; the first `--skip` steps are not timed. Afterwards every model is
scored on the task's dev split(s) by one scorer (the finetune stage's), so speed is compared at the
dev metric each side reached. Prints a table and writes reports/bench/finetune_throughput.json.

    python benchmarks/finetune_throughput.py [--tasks sst2,qnli,mnli] [--epochs 1] [--init models/bert-pretrained]
    python benchmarks/finetune_throughput.py --glue-dir glue_data/SST-2 --task sst2 --init path/to/bert
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import lightning as L  # noqa: E402
from transformers import (  # noqa: E402
    AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, BertForSequenceClassification, PrinterCallback,
    DataCollatorWithPadding, Trainer, TrainingArguments, default_data_collator, set_seed,
)

from lmforge.components.config import (BertTokenizerConfig, DemoConfig, FinetuneConfig, FinetuneRun, ModelConfig,  # noqa: E402
                                       PretrainConfig)
from lmforge.components.data.demo import build_demo  # noqa: E402
from lmforge.components.data.schemas import GLUE_TASKS  # noqa: E402
from lmforge.components.finetuning.checkpoints import WEIGHT_FILES, load_init  # noqa: E402
from lmforge.components.finetuning.classification import ClassificationModule, encode_glue, glue_loader  # noqa: E402
from lmforge.components.finetuning.metrics import task_score  # noqa: E402
from lmforge.components.finetuning.scoring import score_glue  # noqa: E402
from lmforge.components.pretraining.models import build_bert  # noqa: E402
from lmforge.components.training.distributed import resolve_accelerator  # noqa: E402
from lmforge.components.training.trainer import total_steps  # noqa: E402
from lmforge.components.tokenizer import train_bert_tokenizer  # noqa: E402
from racing import (BEST, DEVICE, REFERENCE, Clock, HFClock, Turns, best_trainer_settings, bf16_available,  # noqa: E402
                    environment, greenlet, quiet_and_restored, write_report)

DEMO_BERT = PretrainConfig().model_dir("bert")  # where `make demo` (the default params) leaves its BERT


# ---------------------------------------------------------------------------- the two sides


def label_config(task: str) -> tuple[int, dict]:
    """(num_labels, config overrides) as the finetune stage sets them for a GLUE task."""
    spec = GLUE_TASKS[task]
    labels = ["score"] if spec.is_regression else list(spec.label_names)
    extra = {"problem_type": "regression"} if spec.is_regression else {}
    return len(labels), extra | {"id2label": dict(enumerate(labels)), "label2id": {n: i for i, n in enumerate(labels)}}


def lmforge_contestant(task: str, train_split, folder: Path, ft: FinetuneConfig, args):
    """lmforge's path (finetune_glue up to `fit`): load_init, encode_glue, the length-grouped
    dynamically padded loader, ClassificationModule, under a Trainer set up as `fit()` sets it up,
    without validation, checkpointing, MLflow and the progress bar."""
    cfg = ft.train

    def contest(turns: Turns) -> dict:
        L.seed_everything(cfg.seed, workers=True, verbose=False)  # before the head is drawn, as the stage does
        num_labels, extra = label_config(task)
        run = FinetuneRun(task=task, model="bert", init=str(folder))
        model, tokenizer = load_init(run, folder, num_labels, BertForSequenceClassification,
                                     max_seq_length=ft.max_seq_length, **extra)
        loader = glue_loader(encode_glue(train_split, task, tokenizer, ft.max_seq_length), tokenizer,
                             cfg.batch_size, True, cfg.seed, cfg.num_workers)
        module = ClassificationModule(model, task, cfg, total_steps(cfg, len(loader)))
        clock = Clock(turns, module.total_steps, args.skip, args.window)
        with tempfile.TemporaryDirectory() as root:
            trainer = L.Trainer(
                max_steps=module.total_steps, max_epochs=-1, accelerator=resolve_accelerator(cfg.accelerator),
                devices=cfg.devices, strategy=cfg.strategy, num_nodes=cfg.num_nodes, precision=cfg.precision,
                accumulate_grad_batches=cfg.accumulate_grad_batches, gradient_clip_val=cfg.gradient_clip or None,
                limit_val_batches=0, num_sanity_val_steps=0, log_every_n_steps=cfg.log_every_n_steps, logger=False,
                deterministic=cfg.deterministic, callbacks=[clock.timer()], default_root_dir=root,
                enable_model_summary=False, enable_checkpointing=False, enable_progress_bar=False,
            )
            trainer.fit(module, train_dataloaders=loader)
        return {"model": module.model, "tokenizer": tokenizer, "clock": clock}

    return contest


def reference_contestant(task: str, train_split, folder: Path, ft: FinetuneConfig, args, best: bool,
                         attention: str = "sdpa"):
    """The Hugging Face Trainer on the same model, data and optimisation settings.

    best=False: run_glue.py's defaults (pad_to_max_length: every row padded to max_seq_length, then
    default_data_collator; fp32; the Trainer's random sampler).
    best=True: as fast as the Trainer's documentation allows: dynamic padding (DataCollatorWithPadding),
    train_sampling_strategy="group_by_length", bf16 where lmforge trains in bf16, fused AdamW with
    lmforge's betas and epsilon (the Trainer also leaves biases and LayerNorm weights undecayed),
    torch_compile where lmforge compiles. `attention`: the model's attn_implementation; HF's "eager" is
    the faster one on CPU when attention dropout is on (SDPA then leaves its fused kernel)."""
    cfg, spec = ft.train, GLUE_TASKS[task]

    def contest(turns: Turns) -> dict:
        set_seed(cfg.seed)  # run_glue.py seeds before it loads the model
        num_labels, extra = label_config(task)
        config = AutoConfig.from_pretrained(str(folder), num_labels=num_labels, finetuning_task=task, **extra)
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        model = AutoModelForSequenceClassification.from_pretrained(str(folder), config=config,
                                                                   attn_implementation=attention)

        def preprocess(batch: dict) -> dict:
            texts = [batch[c] for c in spec.text_columns]
            padding = False if best else "max_length"
            encoded = tokenizer(*texts, padding=padding, max_length=ft.max_seq_length, truncation=True)
            if best:  # the lengths group_by_length reads, precomputed as its documentation advises
                encoded["length"] = [len(ids) for ids in encoded["input_ids"]]
            return encoded

        train = train_split.map(preprocess, batched=True, remove_columns=[c for c in train_split.column_names
                                                                         if c != "label"])
        clock = Clock(turns, epochs_steps(len(train), cfg.batch_size, cfg.max_epochs), args.skip, args.window)
        settings = {}
        if best:
            settings = {**best_trainer_settings(cfg), "train_sampling_strategy": "group_by_length"}
        with tempfile.TemporaryDirectory() as out:
            training = TrainingArguments(
                output_dir=out, per_device_train_batch_size=cfg.batch_size, num_train_epochs=cfg.max_epochs,
                learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_steps,
                lr_scheduler_type=cfg.schedule, max_grad_norm=cfg.gradient_clip, seed=cfg.seed,
                report_to="none", save_strategy="no", logging_strategy="no", eval_strategy="no", disable_tqdm=True,
                use_cpu=DEVICE == "cpu", **settings,
            )
            collator = DataCollatorWithPadding(tokenizer) if best else default_data_collator
            trainer = Trainer(model=model, args=training, train_dataset=train, data_collator=collator,
                              callbacks=[HFClock(clock, model)])
            trainer.remove_callback(PrinterCallback)
            trainer.train()
        return {"model": model, "tokenizer": tokenizer, "clock": clock}

    return contest


def epochs_steps(rows: int, batch_size: int, epochs: int) -> int:
    return math.ceil(rows / batch_size) * epochs


# ---------------------------------------------------------------------------- the model both start from


def resolve_init(args, texts, root: Path) -> tuple[Path, str]:
    """The HF folder both sides load: --init, the demo's pretrained BERT when present (auto), or
    (random, or auto without it) a fresh BERT of --preset with a WordPiece tokenizer trained on the
    task's texts, its random weights saved once so both sides load the same ones."""
    if args.init not in ("auto", "random"):
        return Path(args.init), f"local checkpoint {args.init}"
    if args.init == "auto" and any((DEMO_BERT / name).exists() for name in WEIGHT_FILES):
        return DEMO_BERT, f"the demo's pretrained BERT ({DEMO_BERT})"
    tokenizer = train_bert_tokenizer(texts, BertTokenizerConfig(vocab_size=args.vocab))
    heads = None if args.hidden is None else max(1, args.hidden // 64)
    model_cfg = ModelConfig(preset=args.preset, hidden_size=args.hidden, num_layers=args.layers, num_heads=heads)
    L.seed_everything(0, verbose=False)
    model = build_bert(model_cfg, len(tokenizer), tokenizer.pad_token_id, "none")
    folder = root / "init"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, f"random weights, preset {args.preset}, {model_cfg.sizes} (layers, hidden, heads, intermediate)"


# ---------------------------------------------------------------------------- the run


def bench_task(task: str, data, folder: Path, args, precisions: list[str]) -> dict:
    """Race lmforge at each precision against the Trainer (defaults, and at its best) on one task,
    once per seed in --seeds (both sides the same seed each time); their rows (speed over every seed's
    timed steps, dev score the mean over seeds), and each lmforge row against the fastest Trainer row."""
    best_precision = next((p for p in precisions if "bf16" in p), "32")
    # The faster of HF's two CPU attentions is the strongest rival: both race.
    references = {REFERENCE: ("32", False, "sdpa"), f"{BEST} {best_precision}": (best_precision, True, "sdpa"),
                  f"{BEST} eager {best_precision}": (best_precision, True, "eager")}
    names = [f"lmforge {precision}" for precision in precisions] + list(references)
    runs = []
    for seed in args.seeds:
        contestants = [lmforge_contestant(task, data["train"], folder, finetune_config(args, precision, seed), args)
                       for precision in precisions]
        contestants += [reference_contestant(task, data["train"], folder, finetune_config(args, precision, seed), args,
                                             best, attention) for precision, best, attention in references.values()]
        runs.append(dict(zip(names, Turns(contestants).run())))

    scoring_cfg = finetune_config(args, "32")
    dev_splits = [s for s in GLUE_TASKS[task].validation_splits if s in data]
    rows = {}
    for name in names:
        clocks = [run[name]["clock"] for run in runs]
        dev_by_seed = {}
        for seed, run in zip(args.seeds, runs):
            model, tokenizer = run[name]["model"].float(), run[name]["tokenizer"]
            dev_by_seed[seed] = {s: score_glue(model, tokenizer, task, data[s], s, scoring_cfg).metrics for s in dev_splits}
        scores = {seed: sum(task_score(m) for m in dev.values()) / len(dev) for seed, dev in dev_by_seed.items()}
        seconds, sequences = sum(c.seconds for c in clocks), sum(c.sequences for c in clocks)
        tokens, positions = sum(c.tokens for c in clocks), sum(c.positions for c in clocks)
        rows[name] = {
            "examples_per_s": sequences / seconds, "tokens_per_s": tokens / seconds,
            "positions_per_s": positions / seconds, "padding_fraction": 1 - tokens / positions,
            "timed_steps": sum(c.steps for c in clocks), "timed_seconds": seconds, "timed_examples": sequences,
            "steps": clocks[0].done, "warmup_seconds": sum(c.warmup_seconds for c in clocks) / len(clocks),
            "final_loss": sum(c.final_loss() for c in clocks) / len(clocks),
            "final_loss_by_seed": {seed: c.final_loss() for seed, c in zip(args.seeds, clocks)},
            "dev": dev_by_seed[args.seeds[0]], "dev_by_seed": dev_by_seed,
            "dev_score": sum(scores.values()) / len(scores), "dev_score_by_seed": scores,
            "precision": name.split()[-1], "side": "trainer" if name in references else "lmforge",
        }
    strongest = max(references, key=lambda n: rows[n]["examples_per_s"])
    ratios = {name: {"speedup": row["examples_per_s"] / rows[strongest]["examples_per_s"],
                     "dev_score_difference": row["dev_score"] - rows[strongest]["dev_score"],
                     "dev_score_difference_by_seed": {seed: row["dev_score_by_seed"][seed]
                                                      - rows[strongest]["dev_score_by_seed"][seed] for seed in args.seeds},
                     "speedup_vs_defaults": row["examples_per_s"] / rows[REFERENCE]["examples_per_s"]}
              for name, row in rows.items() if name not in references}
    return {"rows": rows, "strongest_reference": strongest, "vs_strongest": ratios,
            "train_examples": len(data["train"]), "dev_examples": sum(len(data[s]) for s in dev_splits)}


def finetune_config(args, precision: str, seed: int | None = None) -> FinetuneConfig:
    """lmforge's fine-tuning defaults, with the benchmark's epochs, batch size, learning rate and seed."""
    ft = FinetuneConfig(max_seq_length=args.max_seq_length)
    seed = args.seeds[0] if seed is None else seed
    train = ft.train.model_copy(update={"max_epochs": args.epochs, "batch_size": args.batch_size,
                                        "learning_rate": args.lr, "precision": precision, "seed": seed})
    return ft.model_copy(update={"train": train})


def summarise(results: dict) -> dict:
    """Over all tasks, per lmforge row: the geometric-mean speed-up and the dev differences."""
    summary = {}
    for name in next(iter(results.values()))["vs_strongest"]:
        speedups = [r["vs_strongest"][name]["speedup"] for r in results.values()]
        diffs = [r["vs_strongest"][name]["dev_score_difference"] for r in results.values()]
        summary[name] = {"speedup_geomean": math.prod(speedups) ** (1 / len(speedups)), "speedup_min": min(speedups),
                         "dev_score_difference_mean": sum(diffs) / len(diffs),
                         "dev_score_difference_worst": min(diffs)}
    best = max(summary, key=lambda n: summary[n]["speedup_geomean"])
    return {"by_row": summary, "best": best, "speedup": summary[best]["speedup_geomean"]}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="sst2,qnli,mnli", help="GLUE tasks of the demo world")
    parser.add_argument("--glue-dir", default=None,
                        help="a GLUE-format task folder (train.tsv, dev.tsv, as GLUE's download lays it out) "
                             "to benchmark on instead of the demo world; with --task")
    parser.add_argument("--task", default=None, help="the GLUE task of --glue-dir, e.g. sst2")
    parser.add_argument("--init", default="auto",
                        help="HF BERT folder both sides start from; random: a fresh --preset model; "
                             "auto: models/bert-pretrained if `make demo` made it, else random")
    parser.add_argument("--preset", default="mini", choices=["tiny", "mini", "small", "base"],
                        help="the random-weights model's size, when there is no checkpoint")
    parser.add_argument("--hidden", type=int, default=None)
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--vocab", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=FinetuneConfig().train.learning_rate)
    parser.add_argument("--max-seq-length", type=int, default=128,
                        help="run_glue.py's default; the defaults reference pads every row to it")
    parser.add_argument("--precision", default="32,auto",
                        help="lmforge's rows: comma-separated; auto: bf16-mixed where supported, else 32")
    parser.add_argument("--seeds", type=lambda text: [int(seed) for seed in text.split(",")],
                        default=[FinetuneConfig().train.seed],
                        help="training seeds, comma-separated: each task races once per seed (the dev score of "
                             "one run moves by points with its dropout draws and batch order)")
    parser.add_argument("--skip", type=int, default=3, help="first steps left out of the timing")
    parser.add_argument("--window", type=int, default=5, help="timed steps per turn before handing over")
    parser.add_argument("--glue-train", type=int, default=5000, help="demo train rows per task")
    parser.add_argument("--glue-eval", type=int, default=500, help="demo dev rows per task (and split)")
    parser.add_argument("--documents", type=int, default=1500, help="demo corpus documents (the tokenizer's)")
    parser.add_argument("--out", default="reports/bench/finetune_throughput.json")
    args = parser.parse_args(argv)
    if (args.glue_dir is None) != (args.task is None):
        parser.error("--glue-dir and --task go together")
    return args


def task_data(args) -> tuple[dict, object]:
    """{task: DatasetDict} to race on, and the texts a random-weights model's tokenizer learns from."""
    if args.glue_dir:
        from datasets import Dataset

        from lmforge.components.data.glue_tsv import read_glue_dir

        data = read_glue_dir(Path(args.glue_dir), args.task)
        task = args.task.lower().replace("-", "")
        texts = [t for c in GLUE_TASKS[task].text_columns for t in data["train"][c] if t]
        return {task: data}, Dataset.from_dict({"text": texts})
    demo = build_demo(DemoConfig(corpus_documents=args.documents, glue_train=args.glue_train,
                                 glue_eval=args.glue_eval))
    return {task: demo[task] for task in args.tasks.split(",")}, demo["corpus"]["train"]


def main(argv=None) -> dict:
    args = parse_args(argv)
    precisions = list(dict.fromkeys(("bf16-mixed" if bf16_available() else "32") if p == "auto" else p
                                    for p in args.precision.split(",")))
    with quiet_and_restored():
        tasks, texts = task_data(args)
        with tempfile.TemporaryDirectory() as root:
            folder, init = resolve_init(args, texts, Path(root))
            results = {task: bench_task(task, data, folder, args, precisions) for task, data in tasks.items()}
    report = {
        "config": {**vars(args), "init_used": init,
                   "examples_per_s": "training examples per second over the timed steps (optimizer steps after --skip)",
                   "dev_score": "GLUE's score of the task (mean of its metrics; MNLI: over matched and mismatched), "
                                "both sides scored by the finetune stage's scorer in fp32; the mean over --seeds, "
                                "each seed's in dev_score_by_seed",
                   "data": f"GLUE folder {args.glue_dir} ({args.task})" if args.glue_dir else "the demo world",
                   "references": "HF Trainer, lmforge's lr, batch size, epochs, schedule, warm-up, weight decay, "
                                 "clipping and seed on every row. 'Trainer defaults': as run_glue.py sets it up "
                                 "(padding='max_length', default_data_collator, fp32). 'Trainer best': "
                                 "DataCollatorWithPadding, train_sampling_strategy='group_by_length', bf16 where "
                                 "lmforge uses bf16, adamw_torch_fused with lmforge's betas and epsilon, "
                                 "torch_compile where lmforge compiles; 'Trainer best eager': the same with HF's eager "
                                 "attention (on CPU with attention dropout, SDPA leaves its fused kernel). Speed-ups "
                                 "are against the fastest Trainer row",
                   "interleaved": greenlet is not None},
        "results": results,
        "summary": summarise(results),
        "environment": environment(precisions),
    }
    print_table(report)
    write_report(report, args.out)
    return report


def print_table(report: dict) -> None:
    print(f"\n{'task':<6} {'side':<22} {'examples/s':>10} {'padding':>8} {'final loss':>10} {'dev score':>9} "
          f"{'speed-up':>8} {'dev diff':>8}")
    for task, result in report["results"].items():
        for name, row in result["rows"].items():
            ratio = result["vs_strongest"].get(name)
            extra = f"{ratio['speedup']:>7.2f}x {ratio['dev_score_difference']:>+8.3f}" if ratio else ""
            seeds = (f"  seeds {' '.join(f'{v:.3f}' for v in row['dev_score_by_seed'].values())}"
                     if len(row["dev_score_by_seed"]) > 1 else "")
            print(f"{task:<6} {name:<22} {row['examples_per_s']:>10.1f} {row['padding_fraction']:>8.0%} "
                  f"{row['final_loss']:>10.3f} {row['dev_score']:>9.3f} {extra}{seeds}")
    for name, s in report["summary"]["by_row"].items():
        print(f"{name} / fastest Trainer row: {s['speedup_geomean']:.2f}x examples/s (geometric mean; lowest {s['speedup_min']:.2f}x); "
              f"dev score {s['dev_score_difference_mean']:+.3f} on average, {s['dev_score_difference_worst']:+.3f} at worst")
    env = report["environment"]
    print(f"init: {report['config']['init_used']}; {env['device']}, {env['threads']} threads, torch {env['torch']}")


if __name__ == "__main__":
    main()
