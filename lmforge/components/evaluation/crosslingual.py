"""The `crosslingual` stage: what one BERT pretrained on two languages carries from one to the other.

Transfer. The multilingual BERT is fine-tuned on a task in the source language and scored on the
same task in the target language, which it never saw labelled (zero-shot), beside: fine-tuned on
the target language itself (the ceiling), the same recipe from random weights (what the task alone
teaches), and the majority class. Each fine-tuning is the finetune stage's own (finetune.train,
early stopping on the source's validation split), in a folder of this stage.

The language vector. As the lecture asks how BERT holds "the same meaning in different languages":
the mean contextual embedding of the corpus's target-language tokens minus the mean of its
source-language ones. A word's embedding is its tokens' mean in the corpus sentences that use it;
adding the vector to a source word's embedding, is its nearest word (Euclidean, as the lecture's
"nearest token", among the dictionary's words of both languages) its translation? Top-1 / top-5,
with and without the vector, for the pretrained model and for the same architecture with random
weights; beside it, the same among the target words only (how far the languages align apart from
the offset the vector removes). The layer
compared is by default the middle one, where multilingual BERT's languages align best
(Libovický et al. 2019, who centre each language by its mean: the same vector).

A sentence's language is its script (Latin, Han, Cyrillic, ...), counted per word and per Han
character: enough to tell English from Chinese, Russian or Arabic text; two languages written in
the same script cannot be told apart this way, and the stage says so. Sentences, not documents:
a document may switch language between sentences.
"""

from __future__ import annotations

import json
import logging
import re
import unicodedata
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from datasets import concatenate_datasets

from lmforge.components.atomic import write_json
from lmforge.components.config import CrosslingualConfig, FinetuneConfig, FinetuneRun, TrackingConfig
from lmforge.components.data import load_input
from lmforge.components.data.schemas import GLUE_TASKS
from lmforge.components.errors import LmforgeError
from lmforge.components.finetuning.metrics import glue_metrics, main_metric, task_score

log = logging.getLogger(__name__)

WORDS = re.compile(r"[^\W\d_]+")


# ------------------------------------------------------------------------------------------ scripts

def char_script(ch: str) -> str:
    """The Unicode script a letter belongs to, by its name's first word (LATIN, CJK, CYRILLIC, ...)."""
    return unicodedata.name(ch, "UNKNOWN").split(" ")[0]


def script(text: str) -> str | None:
    """A text's dominant script: each word of an alphabetic script counts once, each Han character
    once (a Chinese word is a character or two; a Latin name among them is one word). None: no letters."""
    counts: Counter[str] = Counter()
    for word in WORDS.findall(text):
        kinds = [char_script(ch) for ch in word]
        for kind, run in _runs(kinds):
            counts[kind] += run if kind == "CJK" else 1
    return counts.most_common(1)[0][0] if counts else None


def _runs(kinds: list[str]) -> list[tuple[str, int]]:
    runs: list[tuple[str, int]] = []
    for kind in kinds:
        if runs and runs[-1][0] == kind:
            runs[-1] = (kind, runs[-1][1] + 1)
        else:
            runs.append((kind, 1))
    return runs


SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s*")


def split_languages(documents: list[str], source_script: str, target_script: str, where: str) -> dict[str, list[str]]:
    """{script: its sentences} for the two scripts; a one-language corpus is a clear error."""
    by_script: dict[str, list[str]] = {}
    for doc in documents:
        for sentence in SENTENCE_END.split(doc):
            kind = script(sentence)
            if kind is not None:
                by_script.setdefault(kind, []).append(sentence)
    found = ", ".join(f"{k} {len(v)}" for k, v in sorted(by_script.items(), key=lambda kv: -len(kv[1]))) or "none"
    for kind in (source_script, target_script):
        if len(by_script.get(kind, [])) < 10:
            raise LmforgeError(f"crosslingual: {where} has {len(by_script.get(kind, []))} sentences in {kind} script "
                               f"(sentences by script: {found}); the language vector needs at least 10 in each of the "
                               "dictionary's two languages: pretrain on a corpus with both")
    return by_script


# ----------------------------------------------------------------------------------------- transfer

def transfer(cfg: CrosslingualConfig, model_dir: Path, finetune: FinetuneConfig, raw_dir: Path,
             tracking: TrackingConfig) -> dict:
    """{rows, source_validation, zero_shot_beats_baselines}: zero-shot, target-trained, random-init
    and majority on the target's validation split, each with the task's metrics and score (the mean
    over cfg.seeds for the zero-shot and random-init rows, each seed's score beside it); whether
    zero-shot beats both baselines in every seed, and by how much its mean does, with an interval."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from lmforge.components.finetuning.scoring import SplitResult, score_glue
    from lmforge.components.finetuning.finetune import finetune_aside, load_task_data

    spec = GLUE_TASKS[cfg.task]
    split = spec.validation_splits[0]
    source = load_task_data(FinetuneRun(task=cfg.task, dataset=cfg.source), raw_dir, ("train", split))
    target = load_task_data(FinetuneRun(task=cfg.task, dataset=cfg.target), raw_dir, ("train", split))

    init = _model_folder(model_dir)
    finetune = finetune.model_copy(update={"freeze_embeddings": cfg.freeze_embeddings})

    def trained(dataset: str, weights: str, label: str, seed: int) -> tuple:
        run = FinetuneRun(task=cfg.task, model="bert", init=weights, dataset=dataset, seed=seed)
        folder, _ = finetune_aside(finetune, run, init, raw_dir, tracking, Path(cfg.run_dir) / f"{label}-seed{seed}")
        model = AutoModelForSequenceClassification.from_pretrained(str(folder), use_safetensors=True)
        return model, AutoTokenizer.from_pretrained(str(folder))

    def scored(model, tokenizer, data) -> SplitResult:
        return score_glue(model, tokenizer, cfg.task, data[split], split, finetune)

    zero_shot, random_init, source_metrics = {}, {}, {}
    for seed in cfg.seeds:
        model, tokenizer = trained(cfg.source, "pretrained", "crosslingual-zero-shot", seed)
        source_metrics[seed] = scored(model, tokenizer, source).metrics
        zero_shot[seed] = scored(model, tokenizer, target)
        model, tokenizer = trained(cfg.source, "scratch", "crosslingual-scratch", seed)
        random_init[seed] = scored(model, tokenizer, target)
    model, tokenizer = trained(cfg.target, "pretrained", "crosslingual-target", cfg.seeds[0])
    gold = np.asarray(target[split]["label"])
    guessed = np.full(len(gold), majority_guess(source["train"]["label"], cfg.task))
    rows = [row("zero-shot: fine-tuned on source, pretrained", cfg.source, metrics_of(zero_shot), cfg.task),
            row("fine-tuned on target, pretrained", cfg.target, {cfg.seeds[0]: scored(model, tokenizer, target).metrics},
                cfg.task),
            row("fine-tuned on source, random weights", cfg.source, metrics_of(random_init), cfg.task),
            row("majority class of source", cfg.source,
                {None: glue_metrics(cfg.task, guessed, gold)}, cfg.task)]
    source_row = row("source validation", cfg.source, source_metrics, cfg.task)
    predicted = {"zero_shot": [r.predicted for r in zero_shot.values()],
                 "random_init": [r.predicted for r in random_init.values()], "majority": guessed}
    return {"rows": rows, "source_validation": {k: source_row[k] for k in ("metrics", "score", "seeds")},
            "zero_shot_beats_baselines": beats(rows) | mean_margin(cfg.task, gold, predicted)}


def metrics_of(results: dict) -> dict:
    return {seed: result.metrics for seed, result in results.items()}


def beats(rows: list[dict]) -> dict:
    """Does zero-shot beat random weights and the majority class in every seed, and by more than the
    random-weights row's own spread over seeds? The report says which."""
    zero_shot, random_init, majority_row = rows[0], rows[2], rows[3]
    floor = max(max(random_init["seeds"].values()), majority_row["score"])
    return {"every_seed": min(zero_shot["seeds"].values()) > floor,
            "margin_of_worst_seed": min(zero_shot["seeds"].values()) - floor}


def mean_margin(task: str, gold: np.ndarray, predicted: dict, resamples: int | None = None) -> dict:
    """The zero-shot score (mean over seeds) minus the better baseline's (random weights' mean over
    seeds, or the majority class), with a 95% interval from resampling the target's examples: every
    setup scored on the same resample (percentile bootstrap, scipy). The interval covers which
    examples the evaluation drew, not which seeds the fine-tuning did: each row's seeds show that."""
    from scipy.stats import bootstrap

    # Accuracy by hand: scikit-learn's checks cost ~1 ms a call, 4 s for 1,000 resamples of five setups.
    # F1, MCC and correlations stay scikit-learn's and scipy's, on fewer resamples (~6 ms a call).
    accuracy = main_metric(task) == "accuracy"  # these tasks' GLUE metric is accuracy alone
    resamples = (1000 if accuracy else 200) if resamples is None else resamples

    def score(predictions: np.ndarray, idx: np.ndarray) -> float:
        if accuracy:
            return float((predictions[idx] == gold[idx]).mean())
        return task_score(glue_metrics(task, predictions[idx], gold[idx]))

    def margin(idx: np.ndarray) -> float:
        zero_shot = np.mean([score(p, idx) for p in predicted["zero_shot"]])
        random_init = np.mean([score(p, idx) for p in predicted["random_init"]])
        # fmax: a baseline without a score (STS-B's constant majority has no correlation) is not the better one.
        return float(zero_shot - np.fmax(random_init, score(predicted["majority"], idx)))

    everything = np.arange(len(gold))
    low, high = bootstrap((everything,), margin, vectorized=False, n_resamples=resamples, method="percentile",
                          rng=np.random.default_rng(0)).confidence_interval
    return {"mean_margin": margin(everything), "mean_margin_ci95": [float(low), float(high)],
            "mean_beats": bool(low > 0), "resamples": resamples}


def row(setup: str, trained_on: str, by_seed: dict, task: str) -> dict:
    """A setup's mean metrics over its seeds (None: no training), its score, and each seed's score."""
    metrics = {k: float(np.mean([m[k] for m in by_seed.values()])) for k in next(iter(by_seed.values()))}
    return {"setup": setup, "trained_on": trained_on, "metrics": metrics, "score": task_score(metrics),
            "main_metric": main_metric(task),
            "seeds": {str(seed): task_score(m) for seed, m in by_seed.items() if seed is not None}}


def majority_guess(train_labels: list, task: str) -> float | int:
    """What the majority-class baseline predicts: the train split's most common label (regression: its mean)."""
    if GLUE_TASKS[task].is_regression:
        return float(np.mean(train_labels))
    return Counter(train_labels).most_common(1)[0][0]


def _model_folder(model_dir: Path) -> Path:
    folder = Path(model_dir)
    if not (folder / "config.json").exists():
        raise LmforgeError(f"crosslingual model {folder}: no Hugging Face model folder there "
                           "(config.json + model.safetensors); run pretrain-bert first, or set crosslingual.model")
    return folder


# ---------------------------------------------------------------------------------- language vector

def vector_inputs(cfg: CrosslingualConfig, raw_dir: Path) -> tuple[list[tuple[str, str]], str, str, dict]:
    """(dictionary pairs, source script, target script, {script: corpus sentences}), checked."""
    pairs = dictionary_pairs(Path(raw_dir) / cfg.dictionary)
    source_script, target_script = _pair_scripts(pairs, Path(raw_dir) / cfg.dictionary)
    folder = Path(raw_dir) / cfg.corpus
    if not folder.exists():
        raise LmforgeError(f"crosslingual.corpus: dataset {folder} not found; ingest it first (lmforge stage ingest)")
    corpus = load_input(folder)
    documents = [t for split in corpus.values() for t in split[cfg.text_column] if t]
    return pairs, source_script, target_script, split_languages(documents, source_script, target_script,
                                                                f"corpus {folder}")


def language_vector(cfg: CrosslingualConfig, model_dir: Path, raw_dir: Path, inputs=None) -> dict:
    """Word-translation retrieval over the dictionary, with and without the language vector, for the
    pretrained model and the same architecture with random weights."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    pairs, source_script, target_script, by_script = inputs or vector_inputs(cfg, raw_dir)

    folder = _model_folder(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    results = {}
    for weights in ("pretrained", "random"):
        if weights == "pretrained":
            model = AutoModel.from_pretrained(str(folder), use_safetensors=True)
        else:
            torch.manual_seed(0)
            model = AutoModel.from_config(AutoConfig.from_pretrained(str(folder)))
        layer = cfg.layer if cfg.layer is not None else (model.config.num_hidden_layers + 1) // 2
        encoder = Encoder(model.eval(), tokenizer, layer)
        rng = np.random.default_rng(0)
        means = {}
        for kind in (source_script, target_script):
            docs = by_script[kind]
            chosen = [docs[i] for i in sorted(rng.choice(len(docs), min(len(docs), cfg.documents_per_language),
                                                         replace=False))]
            means[kind] = encoder.mean(chosen)
        vector = means[target_script] - means[source_script]
        sources = np.stack([encoder.word(w, by_script[source_script], cfg.contexts_per_word) for w, _ in pairs])
        targets = np.stack([encoder.word(w, by_script[target_script], cfg.contexts_per_word) for _, w in pairs])
        results[weights] = {"without_vector": translation(sources, targets, 0.0),
                            "with_vector": translation(sources, targets, vector),
                            "target_words_only": {"without_vector": retrieval(sources, targets),
                                                  "with_vector": retrieval(sources + vector, targets)},
                            "vector_norm": float(np.linalg.norm(vector)),
                            "examples": examples(sources + vector, np.concatenate([sources, targets]),
                                                 [s for s, _ in pairs] + [t for _, t in pairs], pairs)}
    return {"pairs": len(pairs), "scripts": [source_script, target_script], "layer": layer, **results}


def dictionary_pairs(folder: Path) -> list[tuple[str, str]]:
    if not folder.exists():
        raise LmforgeError(f"crosslingual.dictionary: dataset {folder} not found; ingest a file with columns "
                           "source, target (task: dictionary), or set crosslingual.dictionary empty")
    data = load_input(folder)
    rows = concatenate_datasets(list(data.values()))
    missing = [c for c in ("source", "target") if c not in rows.column_names]
    if missing:
        raise LmforgeError(f"crosslingual.dictionary {folder}: no column(s) {', '.join(missing)}; expected source, "
                           f"target (found {', '.join(rows.column_names)})")
    pairs = list(dict.fromkeys(zip(rows["source"], rows["target"])))  # unique, in order
    if len(pairs) < 5:
        raise LmforgeError(f"crosslingual.dictionary {folder}: {len(pairs)} word pairs; retrieval needs at least 5")
    return pairs


def _pair_scripts(pairs: list[tuple[str, str]], folder: Path) -> tuple[str, str]:
    source = Counter(script(s) for s, _ in pairs).most_common(1)[0][0]
    target = Counter(script(t) for _, t in pairs).most_common(1)[0][0]
    if source == target:
        raise LmforgeError(f"crosslingual.dictionary {folder}: both columns are in {source} script; the stage tells "
                           "the two languages apart by script, so it needs two (e.g. Latin and Han)")
    return source, target


class Encoder:
    """Contextual embeddings from one layer of a BERT encoder."""

    def __init__(self, model, tokenizer, layer: int, max_length: int = 128):
        self.model, self.tokenizer, self.layer, self.max_length = model, tokenizer, layer, max_length

    @torch.no_grad()
    def states(self, texts: list[str]):
        enc = self.tokenizer(texts, truncation=True, max_length=self.max_length, padding=True,
                             return_offsets_mapping=True, return_special_tokens_mask=True, return_tensors="pt")
        offsets, special = enc.pop("offset_mapping"), enc.pop("special_tokens_mask")
        out = self.model(**enc, output_hidden_states=True)
        return out.hidden_states[self.layer], enc["attention_mask"].bool() & ~special.bool(), offsets

    def mean(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """The mean embedding over every (non-special) token of the texts."""
        total, count = 0.0, 0
        for i in range(0, len(texts), batch_size):
            hidden, real, _ = self.states(texts[i:i + batch_size])
            total = total + hidden[real].double().sum(0)
            count += int(real.sum())
        return (total / max(count, 1)).float().numpy()

    def word(self, word: str, documents: list[str], contexts: int) -> np.ndarray:
        """The mean embedding of the word's tokens over up to `contexts` documents that use it (a
        Latin word as a whole word, a Han word as a substring), else of the word alone."""
        pattern = re.compile(re.escape(word) if script(word) == "CJK" else rf"\b{re.escape(word)}\b", re.IGNORECASE)
        spans = []
        for doc in documents:
            match = pattern.search(doc[: self.max_length * 2])  # within what the truncated tokens cover
            if match:
                spans.append((doc, match.span()))
                if len(spans) == contexts:
                    break
        if not spans:
            spans = [(word, (0, len(word)))]
        hidden, real, offsets = self.states([d for d, _ in spans])
        vectors = []
        for i, (_, (start, end)) in enumerate(spans):
            inside = real[i] & (offsets[i, :, 0] < end) & (offsets[i, :, 1] > start)
            if inside.any():
                vectors.append(hidden[i][inside].mean(0))
        if not vectors:  # the word fell past the truncation: the word alone
            hidden, real, _ = self.states([word])
            vectors.append(hidden[0][real[0]].mean(0))
        return torch.stack(vectors).mean(0).numpy()


def distances(queries: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    return ((queries[:, None, :] - candidates[None, :, :]) ** 2).sum(-1)


def retrieval(queries: np.ndarray, candidates: np.ndarray) -> dict:
    """Top-1 and top-5 accuracy of finding row i of candidates nearest (Euclidean) to query i."""
    ranks = distances(queries, candidates).argsort(axis=1)
    hit = ranks == np.arange(len(queries))[:, None]
    return {"top1": float(hit[:, :1].any(1).mean()), "top5": float(hit[:, :5].any(1).mean()),
            "chance_top1": 1 / len(candidates)}


def translation(sources: np.ndarray, targets: np.ndarray, vector) -> dict:
    """The lecture's test: source word i plus the vector, among every word of both languages (itself
    left out), is its nearest word target i? Among target words only, the vector reorders candidates
    only by how far each lies along it; here it must carry the word past its own language's words."""
    n = len(sources)
    d = distances(sources + vector, np.concatenate([sources, targets]))
    d[np.arange(n), np.arange(n)] = np.inf  # the word itself
    hit = d.argsort(axis=1) == (n + np.arange(n))[:, None]
    return {"top1": float(hit[:, :1].any(1).mean()), "top5": float(hit[:, :5].any(1).mean()),
            "chance_top1": 1 / (2 * n - 1)}


def examples(queries: np.ndarray, candidates: np.ndarray, words: list[str], pairs: list[tuple[str, str]],
             n: int = 8) -> list[dict]:
    """The first n source words with their nearest other word among `candidates` (named by `words`)."""
    d = distances(queries[:n], candidates)
    d[np.arange(min(n, len(queries))), np.arange(min(n, len(queries)))] = np.inf  # candidates start with the queries
    return [{"word": s, "translation": t, "nearest": words[j]} for (s, t), j in zip(pairs[:n], d.argmin(1))]


# ------------------------------------------------------------------------------------------- report

def crosslingual_report(cfg: CrosslingualConfig, model_dir: Path, finetune: FinetuneConfig, raw_dir: Path,
                        tracking: TrackingConfig) -> Path:
    """Write cfg.out (JSON) and cfg.plot for the BERT in `model_dir` (crosslingual.model, else
    pretrain.bert.out_dir); log both to MLflow when tracking is on; return cfg.out."""
    if not cfg.enabled:
        from lmforge.components.evaluation.plots import not_run

        return not_run("crosslingual", Path(cfg.out), Path(cfg.plot))
    for key in ("source", "target"):
        if not (Path(raw_dir) / getattr(cfg, key)).exists():
            raise LmforgeError(f"crosslingual.{key}: dataset {Path(raw_dir) / getattr(cfg, key)} not found; ingest the "
                               "task in both languages, or set crosslingual.enabled: false")
    _model_folder(model_dir)
    inputs = vector_inputs(cfg, raw_dir) if cfg.dictionary else None  # a one-language corpus fails before training
    result = {"task": cfg.task, "source": cfg.source, "target": cfg.target, "model": str(model_dir),
              **transfer(cfg, model_dir, finetune, raw_dir, tracking)}
    if cfg.dictionary:
        result["language_vector"] = language_vector(cfg, model_dir, raw_dir, inputs)
    out = write_json(Path(cfg.out), result)
    plot(result, Path(cfg.plot))
    log.info("crosslingual: %s", json.dumps({r["setup"]: round(r["score"], 3) for r in result["rows"]}))
    if tracking.enabled:
        from lmforge.components.tracking import client_run

        with client_run(tracking, "crosslingual", {"lmforge.stage": "crosslingual"}) as (client, run_id):
            for i, r in enumerate(result["rows"]):
                client.log_metric(run_id, f"{['zero_shot', 'target_trained', 'random_init', 'majority'][i]}_score",
                                  r["score"])
            for key in ("margin_of_worst_seed", "mean_margin"):
                client.log_metric(run_id, f"zero_shot_{key}", result["zero_shot_beats_baselines"][key])
            for weights in ("pretrained", "random"):
                for side in ("without_vector", "with_vector"):
                    lv = result.get("language_vector", {}).get(weights)
                    if lv:
                        client.log_metric(run_id, f"retrieval_{weights}_{side}_top1", lv[side]["top1"])
            client.log_artifact(run_id, str(out), "reports")
            client.log_artifact(run_id, str(cfg.plot), "plots")
    return out


def plot(result: dict, path: Path) -> Path:
    from lmforge.components.evaluation.plots import _pyplot, save_figure

    plt = _pyplot()
    panels = 2 if "language_vector" in result else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4), squeeze=False)
    ax = axes[0][0]
    labels = [r["setup"].replace(": ", ":\n").replace(", ", ",\n") for r in result["rows"]]
    ax.bar(range(len(labels)), [r["score"] for r in result["rows"]], color=["C0", "C2", "C1", "C7"])
    for i, r in enumerate(result["rows"]):  # each seed's score on its mean's bar: the spread at a glance
        seeds = list(r.get("seeds", {}).values())
        ax.scatter([i] * len(seeds), seeds, color="k", s=12, zorder=3)
    ax.set_xticks(range(len(labels)), labels, fontsize=7)
    verdict = result["zero_shot_beats_baselines"]
    low, high = verdict["mean_margin_ci95"]
    ax.set(ylim=(0, 1), ylabel=f"{result['task']} score on {result['target']}",
           title=f"{result['source']} → {result['target']}: zero-shot minus the better baseline "
                 f"{verdict['mean_margin']:+.3f}\n(95% interval over the examples {low:+.3f} to {high:+.3f})")
    if panels == 2:
        lv, ax = result["language_vector"], axes[0][1]
        keys = [(w, s) for w in ("pretrained", "random") for s in ("without_vector", "with_vector")]
        for k, metric in enumerate(("top1", "top5")):
            ax.bar([i + 0.4 * k for i in range(len(keys))], [lv[w][s][metric] for w, s in keys], width=0.4,
                   label=metric)
        ax.set_xticks([i + 0.2 for i in range(len(keys))],
                      [f"{w}\n{s.replace('_', ' ')}" for w, s in keys], fontsize=7)
        ax.set(ylim=(0, 1), ylabel="nearest word is the translation",
               title=f"language vector: {lv['pairs']} word pairs, both languages' words as candidates")
        ax.legend()
    fig.tight_layout()
    return save_figure(fig, path)
