"""The `seq2seq-ablation` stage: what each of BART's corruptions teaches, on a small budget.

Every row starts from the same weights: a model of pretrain.seq2seq's size, from its seed, trained
first to copy rows of random tokens (copy_warmup_steps). Why: on the demo corpus a tiny BART learns
the text as a language model long before it looks at its input (reading began near 600 steps,
measured), so 30 steps of any corruption taught none of them to read and they could not be told
apart; copying random tokens there is nothing to learn but reading (99 % copied by step 200).
From those weights, each corruption alone is pretrained for a few steps (the same batches of
documents for every one), then scored on

- restoration: held-out documents corrupted that way with a fixed seed; the decoder's token
  accuracy under teacher forcing, and the share of documents restored exactly by greedy generation;
- reading the input: that token accuracy minus the same with the encoder's input withheld (only
  <s></s>). Under teacher forcing a decoder can score well as a plain language model of its own
  prefix; only this gain says the model restores from what it was given;
- restoring every corruption: the mean token accuracy over held-out documents under each of the
  ablated corruptions. Its own corruption is easier for some (masking leaves most tokens in place)
  than for others (rotation moves them all), so only this common yardstick ranks them: the verdict
  names the corruption that restores the most across all of them;
- closed-book QA: fine-tuned briefly on questions about the demo world's "train" people ("Where was
  <person> born?" -> "<city>"), and scored by exact match of greedy answers about its "eval"
  people, whose facts only the corpus states: only pretraining can have taught them.

The starting weights, fine-tuned the same way, are the baseline (restoration scored under the mix
of pretrain.seq2seq.corruption). The runs are short and in-process, without Lightning's per-run
setup: the module's loss and optimizer, in a plain loop.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

import torch

from lmforge.components.atomic import write_json
from lmforge.components.config import CORRUPTIONS, Seq2SeqAblationConfig, Seq2SeqPretrainConfig, TrackingConfig, TrainConfig
from lmforge.components.errors import LmforgeError

log = logging.getLogger(__name__)

RANDOM_INIT = "random-init"
COPY_WARMUP = "copy-warmup"  # the baseline row's name when every row starts from copy-trained weights
MEASURES = {"restore_token_accuracy": "restoration: token accuracy",
            "input_gain": "restoration: gain from reading the input",
            "restore_all_accuracy": "restoring every corruption: token accuracy",
            "restore_exact_match": "restoration: exact match", "qa_exact_match": "closed-book QA: exact match"}
READS_INPUT = 0.02  # a gain below this: the decoder restores from its own prefix, not from the input
EVAL_SEED = 10_007  # the held-out corruption: the same for every model, unlike any training batch's


def corruption_ablation(cfg: Seq2SeqAblationConfig, pretrain: Seq2SeqPretrainConfig, raw_dir: Path,
                        tracking: TrackingConfig) -> Path:
    """One row per corruption (and random weights): write cfg.out and cfg.plot; return cfg.out."""
    if not cfg.enabled:
        from lmforge.components.evaluation.plots import not_run

        return not_run("seq2seq_ablation", Path(cfg.out), Path(cfg.plot))
    from lmforge.components.pretraining.seq2seq_data import bart_tokenizer, build_chunks
    from lmforge.components.pretraining.pretrain import load_documents

    corpus_dir = Path(raw_dir) / pretrain.corpus
    tokenizer = bart_tokenizer(Path(pretrain.tokenizer))
    qa_train, qa_eval = qa_pairs(cfg, corpus_dir, Path(raw_dir))
    train_docs, val_docs = load_documents(corpus_dir, pretrain.text_column)
    chunks = build_chunks(train_docs, tokenizer, pretrain.max_seq_length, pretrain.num_proc)
    heldout = list(build_chunks(val_docs, tokenizer, pretrain.max_seq_length, pretrain.num_proc)["input_ids"])
    heldout = heldout[:cfg.heldout_documents]
    if len(chunks) < pretrain.train.batch_size or not heldout:
        raise LmforgeError(f"{corpus_dir}: {len(chunks)} training and {len(heldout)} held-out chunks; the ablation "
                           f"needs a batch (pretrain.seq2seq.train.batch_size {pretrain.train.batch_size}) and one")

    model = new_model(pretrain, tokenizer)
    copy_warmup(model, tokenizer, pretrain, cfg.copy_warmup_steps)
    start = {k: v.clone() for k, v in model.state_dict().items()}  # the same weights for every row
    baseline = COPY_WARMUP if cfg.copy_warmup_steps else RANDOM_INIT
    corruptions = list(dict.fromkeys(cfg.corruptions))
    rows = []
    for name in [baseline, *corruptions]:
        kind = None if name == baseline else name
        model.load_state_dict(start)
        if kind is not None:
            pretrain_briefly(model, tokenizer, chunks, pretrain, kind, cfg.pretrain_steps, cfg.pretrain_learning_rate)
        row = {"model": name, "pretraining_steps": 0 if kind is None else cfg.pretrain_steps,
               "restored_under": kind or "mix", **restoration(model, tokenizer, heldout, pretrain, kind, corruptions)}
        finetune_qa(model, tokenizer, qa_train, pretrain.train, cfg)
        row["qa_exact_match"] = qa_exact_match(model, tokenizer, qa_eval, cfg.max_new_tokens)
        log.info("seq2seq ablation: %s", row)
        rows.append(row)

    trained = [r for r in rows if r["model"] != baseline]
    result = {"rows": rows, "measures": MEASURES,
              "reads_input": {r["model"]: r["input_gain"] >= READS_INPUT for r in trained},
              "verdict": verdict(trained), "heldout_chunks": len(heldout), "qa_train": len(qa_train),
              "qa_eval": len(qa_eval), "qa_source": cfg.qa_dataset or "demo world",
              "copy_warmup_steps": cfg.copy_warmup_steps, "pretrain_steps": cfg.pretrain_steps,
              "finetune_steps": cfg.finetune_steps, "seed": pretrain.train.seed}
    out = write_json(Path(cfg.out), result)
    plot(rows, Path(cfg.plot))
    log.info("seq2seq ablation: %s", result["verdict"])
    if tracking.enabled:
        from lmforge.components.tracking import client_run

        with client_run(tracking, "seq2seq-ablation", {"lmforge.stage": "seq2seq-ablation"}) as (client, run_id):
            for row in rows:
                for measure in MEASURES:
                    client.log_metric(run_id, f"{row['model']}/{measure}", row[measure])
            client.log_artifact(run_id, str(out), "reports")
            client.log_artifact(run_id, str(cfg.plot), "plots")
    return out


def verdict(rows: list[dict]) -> str:
    """One line on what the rows can teach: whether any model reads its input, and which of those
    restores the most across every corruption."""
    reading = [r for r in rows if r["input_gain"] >= READS_INPUT]
    if not reading:
        return (f"no corruption taught the model to read its input at this budget (every gain < {READS_INPUT}): "
                "the decoder restores from its own prefix alone, so the corruptions cannot be told apart here; "
                "raise seq2seq_ablation.copy_warmup_steps or pretrain_steps")
    ranked = sorted(reading, key=lambda r: -r["restore_all_accuracy"])
    line = (f"{ranked[0]['model']} taught the most: restoring every corruption, token accuracy "
            + ", ".join(f"{r['model']} {r['restore_all_accuracy']:.3f}" for r in ranked))
    unread = [r["model"] for r in rows if r not in reading]
    return line + (f"; {', '.join(unread)} did not read the input" if unread else "")


def new_model(pretrain: Seq2SeqPretrainConfig, tokenizer):
    from lmforge.components.pretraining.models import build_bart

    torch.manual_seed(pretrain.train.seed)
    return build_bart(pretrain.model, tokenizer)


def copy_warmup(model, tokenizer, pretrain: Seq2SeqPretrainConfig, steps: int) -> None:
    """`steps` steps of restoring rows of 30 random tokens, uncorrupted: nothing in them to predict but
    by reading them (a row of the corpus, the decoder learns to predict from its own prefix). At
    pretrain.seq2seq's own rate: at 2e-3 the demo's BART copied 99 % after 200 steps, at 5e-3 6 %."""
    if not steps:
        return
    special = set(tokenizer.all_special_ids)
    ordinary = torch.tensor([i for i in range(len(tokenizer)) if i not in special])
    generator = torch.Generator().manual_seed(pretrain.train.seed)
    rows = pretrain.train.batch_size

    def batches():
        while True:
            body = ordinary[torch.randint(len(ordinary), (rows, 30), generator=generator)]
            ids = torch.cat([torch.full((rows, 1), tokenizer.bos_token_id), body,
                             torch.full((rows, 1), tokenizer.eos_token_id)], 1)
            yield {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}

    train_steps(model, batches(), pretrain.train.model_copy(update={"warmup_steps": steps // 10}), steps)


def pretrain_briefly(model, tokenizer, chunks, pretrain: Seq2SeqPretrainConfig, kind: str, steps: int,
                     learning_rate: float) -> None:
    """`steps` denoising steps under corruption `kind` alone, on the batches any kind sees."""
    from torch.utils.data import DataLoader

    from lmforge.components.pretraining.collate import IndexedDataset, ResumableBatchSampler
    from lmforge.components.pretraining.seq2seq_data import DenoisingCollator

    train = pretrain.train.model_copy(update={"learning_rate": learning_rate, "warmup_steps": steps // 10})
    sampler = ResumableBatchSampler(len(chunks), train.batch_size, steps, train.seed)
    collate = DenoisingCollator(tokenizer, pretrain.corruption, train.seed, pretrain.max_seq_length, kind=kind)
    train_steps(model, DataLoader(IndexedDataset(chunks), batch_sampler=sampler, collate_fn=collate), train, steps)


def train_steps(model, batches, train: TrainConfig, steps: int) -> None:
    """Seq2SeqPretrainModule's loss, optimizer and schedule, stepped by hand for `steps` batches."""
    from lmforge.components.pretraining.module import Seq2SeqPretrainModule, ratio

    module = Seq2SeqPretrainModule(model, train, total_steps=steps)
    optimizers = module.configure_optimizers()
    optimizer, schedule = optimizers["optimizer"], optimizers["lr_scheduler"]["scheduler"]
    torch.manual_seed(train.seed)  # dropout
    model.train()
    for _, batch in zip(range(steps), batches):
        loss = ratio(module.totals(batch)["loss"])
        module.check_finite(loss)
        loss.backward()
        if train.gradient_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), train.gradient_clip)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()


def restoration(model, tokenizer, heldout: list[list[int]], pretrain: Seq2SeqPretrainConfig,
                kind: str | None, others: list[str] = (), batch_size: int = 32) -> dict[str, float]:
    """Held-out chunks corrupted by `kind` (None: the mix): teacher-forced token accuracy, its gain over
    the input withheld, exact restorations; with `others`, restore_all_accuracy: the mean of that
    token accuracy under each of them."""
    from lmforge.components.pretraining.module import Seq2SeqPretrainModule

    module = Seq2SeqPretrainModule(model, pretrain.train)
    special = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
    right = tokens = exact = blind = 0
    for batch, originals in corrupted_batches(tokenizer, heldout, pretrain, kind, batch_size):
        with torch.inference_mode():
            totals = module.totals(batch)
            blind += int(module.totals(withheld(batch, tokenizer))["accuracy"][0])
            written = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                     max_new_tokens=batch["labels"].shape[1] + 1, do_sample=False, num_beams=1)
        right, tokens = right + int(totals["accuracy"][0]), tokens + int(totals["accuracy"][1])
        exact += sum([t for t in row.tolist() if t not in special] == ids for row, ids in zip(written, originals))
    accuracy = right / max(tokens, 1)
    result = {"restore_token_accuracy": accuracy, "input_gain": accuracy - blind / max(tokens, 1),
              "restore_exact_match": exact / len(heldout)}
    if others:  # kind's own, measured above, counts once
        result["restore_all_accuracy"] = sum(accuracy if other == kind else token_accuracy(
            module, tokenizer, heldout, pretrain, other, batch_size) for other in others) / len(others)
    return result


def token_accuracy(module, tokenizer, heldout: list[list[int]], pretrain: Seq2SeqPretrainConfig, kind: str,
                   batch_size: int) -> float:
    """Teacher-forced token accuracy restoring the held-out chunks corrupted by `kind` (no withheld
    input, no generation: what restoring every corruption needs)."""
    right = tokens = 0
    for batch, _ in corrupted_batches(tokenizer, heldout, pretrain, kind, batch_size):
        with torch.inference_mode():
            row_right, row_tokens = module.totals(batch)["accuracy"]
        right, tokens = right + int(row_right), tokens + int(row_tokens)
    return right / max(tokens, 1)


def corrupted_batches(tokenizer, heldout: list[list[int]], pretrain: Seq2SeqPretrainConfig, kind: str | None,
                      batch_size: int):
    """(batch, its original chunks): the held-out corruption, the same on every call."""
    from lmforge.components.pretraining.seq2seq_data import DenoisingCollator

    collate = DenoisingCollator(tokenizer, pretrain.corruption, EVAL_SEED, pretrain.max_seq_length, kind=kind)
    for b, first in enumerate(range(0, len(heldout), batch_size)):
        originals = heldout[first:first + batch_size]
        yield collate([{"input_ids": ids, "batch_no": b} for ids in originals]), originals


def withheld(batch: dict, tokenizer) -> dict:
    """The batch with the encoder given nothing (<s></s>), the decoder's labels unchanged."""
    rows = batch["input_ids"].shape[0]
    empty = torch.tensor([[tokenizer.bos_token_id, tokenizer.eos_token_id]]).expand(rows, 2)
    return {**batch, "input_ids": empty, "attention_mask": torch.ones_like(empty)}


# ---------------------------------------------------------------------------------- closed-book QA


def qa_pairs(cfg: Seq2SeqAblationConfig, corpus_dir: Path, raw_dir: Path) -> tuple[list[tuple[str, str]], list]:
    """(train, eval) (question, answer) pairs: seq2seq_ablation.qa_dataset's, or the demo world's."""
    if cfg.qa_dataset:
        return dataset_pairs(raw_dir / cfg.qa_dataset)
    from lmforge.components.pretraining.pretrain import demo_world_of

    world = demo_world_of(corpus_dir)
    if world is None:
        raise LmforgeError(f"seq2seq_ablation.qa_dataset: {corpus_dir} is not the built-in demo corpus, so there are "
                           "no demo questions; name an ingested dataset with question and answer columns")
    return world_pairs(world[0])


def world_pairs(world) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Every question template of every relation: about "train" people to fine-tune, "eval" people to score."""
    from lmforge.components.data.world_tasks import RELATIONS, value

    def pairs(split: str) -> list[tuple[str, str]]:
        return [(question.format(p=p.name), value(p, relation)) for p in world.people_in(split)
                for relation, (questions, _, _) in RELATIONS.items() for question in questions]

    return pairs("train"), pairs("eval")


def dataset_pairs(path: Path) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    from lmforge.components.data import load_input

    if not path.exists():
        raise LmforgeError(f"seq2seq_ablation.qa_dataset: {path} not found; ingest it first")
    data = load_input(path)
    out = []
    for split in ("train", "validation"):
        if split not in data or not {"question", "answer"} <= set(data[split].column_names):
            raise LmforgeError(f"seq2seq_ablation.qa_dataset: {path} needs train and validation splits with "
                               f"question and answer columns (found {', '.join(data)})")
        out.append([(q, str(a)) for q, a in zip(data[split]["question"], data[split]["answer"])])
    return out[0], out[1]


def finetune_qa(model, tokenizer, pairs: list[tuple[str, str]], pretrain_train: TrainConfig,
                cfg: Seq2SeqAblationConfig) -> None:
    """cfg.finetune_steps steps on (question -> answer), shuffled each pass through the pairs."""
    from lmforge.components.pretraining.seq2seq_data import pad_pairs

    train = pretrain_train.model_copy(update={"learning_rate": cfg.finetune_learning_rate,
                                              "warmup_steps": cfg.finetune_steps // 10})
    batch_size = min(cfg.finetune_batch_size, len(pairs))
    encoded = list(zip(tokenizer([q for q, _ in pairs])["input_ids"], tokenizer([a for _, a in pairs])["input_ids"]))

    def batches():
        rng = random.Random(train.seed)
        while True:
            order = rng.sample(range(len(encoded)), len(encoded))
            for first in range(0, len(order) - batch_size + 1, batch_size):
                yield pad_pairs([encoded[i] for i in order[first:first + batch_size]], tokenizer.pad_token_id)

    train_steps(model, batches(), train, cfg.finetune_steps)


def qa_exact_match(model, tokenizer, pairs: list[tuple[str, str]], max_new_tokens: int, batch_size: int = 64) -> float:
    """Share of greedy answers equal to the gold one (case and spacing aside)."""
    norm = lambda text: " ".join(text.casefold().split())  # noqa: E731
    right = 0
    for first in range(0, len(pairs), batch_size):
        chunk = pairs[first:first + batch_size]
        enc = tokenizer([q for q, _ in chunk], return_tensors="pt", padding=True)
        with torch.inference_mode():
            written = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
        answers = tokenizer.batch_decode(written, skip_special_tokens=True)
        right += sum(norm(a) == norm(gold) for a, (_, gold) in zip(answers, chunk))
    return right / max(len(pairs), 1)


def plot(rows: list[dict], path: Path) -> Path:
    """One bar panel per measure: accuracies on a 0-1 scale; the gain from reading the input on its
    own scale (it can be below zero), with the READS_INPUT line a model must clear."""
    from lmforge.components.evaluation.plots import _pyplot, save_figure

    plt = _pyplot()
    fig, axes = plt.subplots(1, len(MEASURES), figsize=(4.2 * len(MEASURES), 3.8))
    names = [r["model"] for r in rows]
    colors = ["#999999" if n in (RANDOM_INIT, COPY_WARMUP) else f"C{CORRUPTIONS.index(n)}" for n in names]
    for ax, (measure, title) in zip(axes, MEASURES.items()):
        values = [r[measure] for r in rows]
        gain = measure == "input_gain"
        low, high = (min(0.0, *values) - 0.02, max(0.1, *values) + 0.02) if gain else (0.0, 1.05)
        ax.bar(names, values, color=colors)
        for x, v in enumerate(values):
            ax.text(x, v + (high - low) * 0.02, f"{v:.3f}" if gain else f"{v:.2f}", ha="center", fontsize=8)
        if gain:
            ax.axhline(READS_INPUT, color="black", linestyle="--", linewidth=0.8, label="reads its input above")
            ax.legend(fontsize=7, loc="upper right")
        ax.set(title=title.replace(": ", ":\n"), ylim=(low, high))
        ax.tick_params(axis="x", rotation=45)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Seq2seq pretraining: each corruption alone, from the same weights, the same steps", y=1.1)
    return save_figure(fig, path)

