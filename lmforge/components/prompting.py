"""GPT without training: classify a GLUE task from a prompt (zero- or k-shot), and continue free text.

As GPT-2 and GPT-3 use a language model downstream: the task becomes text ("Review: ...\nSentiment:"),
each label becomes a word (its verbalizer), and the prediction is the label whose word the model finds
most likely to come next. With k shots, k labelled train rows, each followed by its label's word, come
before the question so the model sees the format in context. No weight changes.

Every number is reported beside the majority-class baseline: a small model often predicts one label
for every row, and only the gap to that baseline says whether the prompt worked.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections import Counter
from pathlib import Path

import torch
from datasets import Dataset, DatasetDict
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

from lmforge.components.atomic import write_json, write_text
from lmforge.components.config import PromptConfig, PromptRun, TrackingConfig
from lmforge.components.data import load_input
from lmforge.components.data.schemas import GLUE_TASKS, GlueTask
from lmforge.components.errors import LmforgeError
from lmforge.components.finetuning.checkpoints import check_checkpoint
from lmforge.components.finetuning.metrics import glue_metrics, main_metric, task_score

log = logging.getLogger(__name__)

# The task as text; the model continues it with a verbalizer. Columns are stripped before filling.
TEMPLATES: dict[str, str] = {
    "cola": "{sentence}\nQuestion: Is this sentence correct English?\nAnswer:",
    "sst2": "Review: {sentence}\nSentiment:",
    "mrpc": "{sentence1}\n{sentence2}\nQuestion: Do both sentences say the same thing?\nAnswer:",
    "qqp": "{question1}\n{question2}\nQuestion: Do both questions ask the same thing?\nAnswer:",
    "mnli": "{premise}\nQuestion: {hypothesis} True, False or Neither?\nAnswer:",
    "qnli": "{question}\n{sentence}\nQuestion: Does the sentence answer the question?\nAnswer:",
    "rte": "{sentence1}\nQuestion: {sentence2} True or False?\nAnswer:",
    "wnli": "{sentence1}\nQuestion: {sentence2} True or False?\nAnswer:",
}

# One word per label, in the order of GLUE_TASKS[task].label_names.
VERBALIZERS: dict[str, tuple[str, ...]] = {
    "cola": ("no", "yes"),  # unacceptable, acceptable
    "sst2": ("terrible", "great"),  # negative, positive
    "mrpc": ("no", "yes"),  # not_equivalent, equivalent
    "qqp": ("no", "yes"),  # not_duplicate, duplicate
    "mnli": ("True", "Neither", "False"),  # entailment, neutral, contradiction
    "qnli": ("yes", "no"),  # entailment (the sentence answers), not_entailment
    "rte": ("True", "False"),  # entailment, not_entailment
    "wnli": ("False", "True"),  # not_entailment, entailment: WNLI's order is the other way round
}

DEMO_SEPARATOR = "\n\n"


# ------------------------------------------------------------------------------------ the task


def prompt_task(task: str, overrides: dict[str, list[str]]) -> tuple[GlueTask, str, list[str]]:
    """(schema, template, verbalizers) for a classification task; overrides come from prompt.verbalizers."""
    if task not in GLUE_TASKS:
        raise LmforgeError(f"prompt task {task!r}: unknown, expected one of {', '.join(TEMPLATES)}")
    spec = GLUE_TASKS[task]
    if spec.is_regression:
        raise LmforgeError(f"prompt task {task!r}: a regression task (a similarity score) cannot be prompted as "
                           f"labels; expected a classification task, one of {', '.join(TEMPLATES)}")
    words = [w.strip() for w in overrides.get(task) or VERBALIZERS[task]]
    if len(words) != len(spec.label_names):
        raise LmforgeError(f"prompt.verbalizers.{task}: {len(words)} word(s) {words} but task {task!r} has "
                           f"{len(spec.label_names)} labels ({', '.join(spec.label_names)}); expected one word per "
                           "label, in that order")
    if not all(words) or len(set(words)) != len(words):
        raise LmforgeError(f"prompt.verbalizers.{task}: {words}; expected distinct, non-blank words")
    return spec, TEMPLATES[task], words


def fill(template: str, row: dict, spec: GlueTask) -> str:
    return template.format(**{c: row[c].strip() for c in spec.text_columns})


def pick_demonstrations(labels: list[int], k: int, num_labels: int, seed: int) -> list[int]:
    """Indices of k train rows, as balanced over labels as the rows allow, in a seeded random order.

    Balanced, so the demonstrations alone do not tilt the model towards one label; shuffled, so the
    last one (the most influential) is not always the same label.
    """
    if k > len(labels):
        raise LmforgeError(f"prompt.shots {k}: the train split has only {len(labels)} rows")
    rng = random.Random(seed)
    pools = [[i for i, label in enumerate(labels) if label == c] for c in range(num_labels)]
    for pool in pools:
        rng.shuffle(pool)
    picked: list[int] = []
    while len(picked) < k:  # round-robin over labels that still have rows
        for pool in pools:
            if pool and len(picked) < k:
                picked.append(pool.pop())
    rng.shuffle(picked)
    return picked


def demonstration(template: str, row: dict, spec: GlueTask, words: list[str]) -> str:
    return f"{fill(template, row, spec)} {words[row['label']]}"


def encode_prompt(tokenizer, demos: list[str], query: str, max_tokens: int) -> tuple[list[int], int]:
    """(token ids, demonstrations kept) of the prompt, at most `max_tokens` long.

    Starts with end-of-text, as every pretraining document follows one. When too long, the earliest
    demonstrations go first; if the query alone is still too long, its start is cut.
    """
    bos = [tokenizer.eos_token_id]
    for kept in range(len(demos), -1, -1):
        text = DEMO_SEPARATOR.join([*demos[len(demos) - kept:], query])
        ids = bos + tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) <= max_tokens:
            return ids, kept
    return bos + ids[len(ids) - max_tokens + 1:], 0


def majority_label(labels: list[int], num_labels: int) -> int:
    """The most frequent train label; on a tie, the lowest id."""
    counts = Counter(labels)
    return max(range(num_labels), key=lambda c: (counts[c], -c))


# --------------------------------------------------------------------------------- the model


def load_causal_lm(folder: Path):
    """(model, tokenizer) of a local HF causal-LM folder, in eval mode, on the GPU when there is one."""
    check_checkpoint(folder, need_weights=True)
    saved = json.loads((folder / "config.json").read_text())
    architectures = saved.get("architectures") or []
    if architectures and not any(a.endswith(("LMHeadModel", "ForCausalLM")) for a in architectures):
        raise LmforgeError(f"prompt init {folder}: a {', '.join(architectures)} checkpoint, expected a causal "
                           "language model (GPT2LMHeadModel, ...ForCausalLM) such as pretrain.gpt.out_dir's")
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    try:
        model = AutoModelForCausalLM.from_pretrained(str(folder), use_safetensors=True, attn_implementation="sdpa")
    except ValueError as e:  # a config type with no causal-LM class
        raise LmforgeError(f"prompt init {folder}: not a causal language model ({str(e).splitlines()[0]})") from None
    if tokenizer.eos_token_id is None:
        raise LmforgeError(f"prompt init {folder}: the tokenizer has no end-of-text token; expected a GPT tokenizer")
    if model.config.vocab_size < len(tokenizer):
        raise LmforgeError(f"prompt init {folder}: the tokenizer has {len(tokenizer)} tokens but the model's "
                           f"vocab_size is {model.config.vocab_size}; the tokenizer does not belong to this model")
    model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
    return model, tokenizer


def context_size(model) -> int:
    """How many positions the model has: the longest prompt plus continuation it can read."""
    config = model.config
    return getattr(config, "n_positions", None) or config.max_position_embeddings


@torch.inference_mode()
def label_log_likelihoods(model, context: list[int], continuations: list[list[int]]) -> list[float]:
    """log P(continuation | context), summed over its tokens, for every label in one batched forward pass.

    Rows are right-padded: a causal model's earlier positions never see the padding after them.
    """
    seqs = [context + c for c in continuations]
    width = max(map(len, seqs))
    ids = torch.tensor([s + [0] * (width - len(s)) for s in seqs], device=model.device)
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=model.device)
    start = len(context) - 1  # the position whose logits predict the first continuation token
    logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=width - start).logits
    logprobs = logits.float().log_softmax(-1)
    return [logprobs[i, torch.arange(len(c)), torch.tensor(c, device=model.device)].sum().item()
            for i, c in enumerate(continuations)]


def classify(model, tokenizer, rows: Dataset, spec: GlueTask, template: str, words: list[str],
             demos: list[str], max_positions: int | None = None, desc: str = "prompt") -> list[dict]:
    """Per row: the predicted label id, every label's log-likelihood, the shots kept and the prompt length.

    Prompt plus label word fit in `max_positions`, never more than the model's positions (default: all of them).
    """
    continuations = [tokenizer(" " + w, add_special_tokens=False)["input_ids"] for w in words]
    positions = min(max_positions or context_size(model), context_size(model))  # a cap: a smaller model caps lower
    longest = max(map(len, continuations))
    if positions - longest < 2:
        raise LmforgeError(f"{positions} positions leave no room for a prompt before the longest verbalizer "
                           f"({longest} tokens); expected more positions or shorter words than {words}")
    max_tokens = positions - longest
    out = []
    for row in tqdm(rows, desc=desc, leave=False, disable=None):  # None: no bar where no terminal shows it
        ids, kept = encode_prompt(tokenizer, demos, fill(template, row, spec), max_tokens)
        scores = label_log_likelihoods(model, ids, continuations)
        out.append({"prediction": max(range(len(scores)), key=scores.__getitem__), "log_likelihoods": scores,
                    "shots": kept, "prompt_tokens": len(ids)})
    return out


def continue_text(model, tokenizer, prompts: list[str], max_new_tokens: int, temperature: float, top_k: int,
                  seed: int) -> list[str]:
    """Each prompt's continuation (without the prompt): greedy at temperature 0, else sampled.

    Each prompt is seeded alike, so its text does not depend on the others in the list; the global
    random state is restored afterwards.
    """
    room = context_size(model) - max_new_tokens
    if room < 2:
        raise LmforgeError(f"max_new_tokens {max_new_tokens}: leaves no room for a prompt in the model's "
                           f"{context_size(model)} positions")
    sampling = {"do_sample": False} if temperature == 0 else {"do_sample": True, "temperature": temperature,
                                                               "top_k": top_k}
    texts = []
    with torch.random.fork_rng(devices=[model.device] if model.device.type == "cuda" else []):
        for prompt in prompts:
            torch.manual_seed(seed)
            ids = [tokenizer.eos_token_id] + tokenizer(prompt, add_special_tokens=False)["input_ids"]
            ids = ids[:1] + ids[1:][-(room - 1):]  # keep the document start, cut the prompt's beginning
            input_ids = torch.tensor([ids], device=model.device)
            with torch.inference_mode():
                out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=max_new_tokens,
                                     pad_token_id=tokenizer.eos_token_id, **sampling)
            texts.append(tokenizer.decode(out[0, len(ids):], skip_special_tokens=True))
    return texts


def generate(model_dir: Path, prompts: list[str], max_new_tokens: int = 40, temperature: float = 0.8,
             top_k: int = 50, seed: int = 0) -> list[str]:
    """Free text continuations of `prompts` by the causal LM in `model_dir`."""
    model, tokenizer = load_causal_lm(Path(model_dir))
    return continue_text(model, tokenizer, prompts, max_new_tokens, temperature, top_k, seed)


# --------------------------------------------------------------------------------- the stage


def load_prompt_data(run: PromptRun, spec: GlueTask, raw_dir: Path) -> DatasetDict:
    folder = Path(raw_dir) / (run.dataset or run.task)
    if not folder.exists():
        raise LmforgeError(f"task {run.task!r}: dataset {folder} not found; ingest it first (lmforge stage ingest)")
    data = load_input(folder)
    if "train" not in data:  # the demonstrations and the majority baseline come from train
        raise LmforgeError(f"task {run.task!r}: dataset {folder} has no 'train' split (found {', '.join(data)})")
    if not any(s in data for s in spec.validation_splits):
        raise LmforgeError(f"task {run.task!r}: dataset {folder} has no {' or '.join(spec.validation_splits)} "
                           f"split to score (found {', '.join(data)})")
    return data


def prompt_classify(cfg: PromptConfig, run: PromptRun, init_dir: Path, raw_dir: Path, tracking: TrackingConfig) -> Path:
    """Score `run.task` by prompting the causal LM in `init_dir` (run.init_dir(params.pretrain)) with
    `run.shots` demonstrations; return the metrics JSON's path."""
    spec, template, words = prompt_task(run.task, cfg.verbalizers)
    data = load_prompt_data(run, spec, raw_dir)
    model, tokenizer = load_causal_lm(Path(init_dir))

    train = data["train"]
    train_labels = list(train["label"])
    num_labels = len(spec.label_names)
    demos = [demonstration(template, train[i], spec, words)
             for i in pick_demonstrations(train_labels, run.shots, num_labels, cfg.seed)]
    majority = majority_label(train_labels, num_labels)

    results, baseline, predictions = {}, {}, []
    for split in (s for s in spec.validation_splits if s in data):
        rows = data[split].select(range(min(cfg.max_eval_examples, len(data[split]))))
        scored = classify(model, tokenizer, rows, spec, template, words, demos, cfg.max_positions, desc=f"{run.name} {split}")
        gold = list(rows["label"])
        results[split] = glue_metrics(run.task, [s["prediction"] for s in scored], gold)
        baseline[split] = glue_metrics(run.task, [majority] * len(gold), gold)
        for row, s in zip(rows, scored):
            predictions.append({
                "split": split, **{c: row[c] for c in spec.text_columns}, "label": row["label"],
                "prediction": s["prediction"], "log_likelihoods": dict(zip(spec.label_names, s["log_likelihoods"])),
                "shots": s["shots"], "prompt_tokens": s["prompt_tokens"],
            })

    metrics = {"task": run.task, "model": "gpt", "method": "prompt", "shots": run.shots, "init": run.init,
               "main_metric": main_metric(run.task), **results, "majority_baseline": baseline,
               "score": sum(task_score(m) for m in results.values()) / len(results),
               "verbalizers": dict(zip(spec.label_names, words)), "template": template}
    if cfg.generate_prompts:
        texts = continue_text(model, tokenizer, cfg.generate_prompts, cfg.max_new_tokens, cfg.temperature,
                              cfg.top_k, cfg.seed)
        metrics["generations"] = [{"prompt": p, "continuation": t} for p, t in zip(cfg.generate_prompts, texts)]

    metrics_path = write_json(Path(cfg.reports_dir) / f"{run.name}.json", metrics)
    write_text(Path(cfg.predictions_dir) / f"{run.name}.jsonl",
               "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in predictions))
    if tracking.enabled:
        from lmforge.components.tracking import data_used

        used = data_used(Path(raw_dir) / (run.dataset or run.task), data,
                         ["train", *(s for s in spec.validation_splits if s in data)])
        log_to_mlflow(tracking, cfg, run, metrics, metrics_path, used)
    log.info("prompt %s: %s", run.name, {s: results[s] for s in results} | {"majority_baseline": baseline})
    return metrics_path


def log_to_mlflow(tracking: TrackingConfig, cfg: PromptConfig, run: PromptRun, metrics: dict, report: Path,
                  data=None) -> None:
    """One client run per prompt run (no process-wide active run): params, metrics, the report, and
    `data` (a tracking.DataUsed: the demonstrations' and the scored splits) as dataset inputs."""
    from mlflow.entities import Metric, Param

    from lmforge.components.tracking import client_run, log_data

    params = {**run.model_dump(), "seed": cfg.seed, "max_eval_examples": cfg.max_eval_examples,
              "template": metrics["template"], "verbalizers": json.dumps(metrics["verbalizers"])}
    values = {"score": metrics["score"]}
    for split in metrics["majority_baseline"]:
        values |= {f"{split}/{k}": v for k, v in metrics[split].items()}
        values |= {f"majority_baseline/{split}/{k}": v for k, v in metrics["majority_baseline"][split].items()}
    now = int(time.time() * 1000)
    with client_run(tracking, f"prompt-{run.name}", task=run.task, model="gpt", init=run.init,
                    stage="prompt") as (client, run_id):
        if data is not None:
            log_data(client, run_id, data)
        client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in values.items()],
                         params=[Param(k, str(v)) for k, v in params.items()])
        client.log_artifact(run_id, str(report), "reports")
