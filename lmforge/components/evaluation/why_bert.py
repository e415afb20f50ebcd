"""Why BERT works: a word's vector depends on its context.

The lecture's experiment: take one word (there "果", here "bank") in sentences where it has
different senses, and compare its vectors by cosine similarity. A pretrained BERT's contextual
vectors for the same sense should be more alike than those for different senses. Two baselines:
the same architecture with random weights (context mixes in, but no meaning was learnt), and the
static input embedding, which is one row of a lookup table: the same vector in every sentence,
so every similarity is 1.0 and it cannot tell the senses apart at all.

Senses: the sentences' first half uses the word in one sense, the second half in the other
(`sentences[:n // 2]` is sense A, the rest sense B). The default: the demo world's 18 river-bank
then 18 money-bank sentences, told after the same openings so the word stands at the same token
positions in both senses (four sentences, the word at different places, could not carry the point:
position alone made two sentences alike).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer

from lmforge.components.atomic import write_json
from lmforge.components.config import EvaluateConfig
from lmforge.components.errors import LmforgeError
from lmforge.components.evaluation.plots import similarity_heatmaps
from lmforge.components.finetuning.checkpoints import check_checkpoint


def why_bert_report(cfg: EvaluateConfig, pretrained_dir: Path, out_dir: Path, seed: int = 0) -> Path:
    """Write <out_dir>/why_bert.json and why_bert.png; return the JSON's path.

    `seed` makes the random-weight ("scratch") model the same on every run.
    """
    pretrained_dir = Path(pretrained_dir)
    check_checkpoint(pretrained_dir, need_weights=True)
    tokenizer = AutoTokenizer.from_pretrained(str(pretrained_dir))
    pretrained = AutoModel.from_pretrained(str(pretrained_dir), use_safetensors=True, attn_implementation="sdpa")
    torch.manual_seed(seed)
    scratch = AutoModel.from_config(AutoConfig.from_pretrained(str(pretrained_dir)), attn_implementation="sdpa")

    word, sentences = cfg.why_bert_word, cfg.sense_sentences()
    positions = [word_tokens(tokenizer, word, s, i) for i, s in enumerate(sentences)]
    senses = sense_groups(len(sentences))
    vectors = {
        "pretrained": word_vectors(pretrained, tokenizer, sentences, positions),
        "scratch": word_vectors(scratch, tokenizer, sentences, positions),
        "static": word_vectors(pretrained, tokenizer, sentences, positions, static=True),
    }
    # The token positions too: with random weights the vector is mostly token + position
    # embedding, so two sentences with the word at the same position look alike whatever the sense.
    report = {"word": word, "sentences": sentences, "senses": ["AB"[g] for g in senses], "positions": positions,
              "subtokens": [tokenizer.convert_ids_to_tokens(tokenizer(s)["input_ids"][p[0]:p[-1] + 1])
                            for s, p in zip(sentences, positions)]}
    matrices = {}
    for name, v in vectors.items():
        matrices[name] = cosine_matrix(v)
        same, different = sense_means(matrices[name], senses)
        report[name] = {"similarity": matrices[name].tolist(), "same_sense_mean": same,
                        "different_sense_mean": different,
                        "gap": None if same is None or different is None else same - different}
    report["note"] = ("cosine similarity of the word's vector between sentences; pretrained and scratch: last "
                      "hidden state averaged over the word's sub-tokens, scratch with random weights (seed "
                      f"{seed}); static: the input (word-piece) embedding, the same in every sentence. Senses: "
                      "the first half of the sentences (A) vs the second half (B).")

    out_dir = Path(out_dir)
    path = write_json(out_dir / "why_bert.json", report)
    ticks = [f"{'AB'[g]}{i + 1}" for i, g in enumerate(senses)]
    caption = "\n".join(f"{t} (token {p[0]}): {s}" for t, p, s in zip(ticks, positions, sentences))
    if len(sentences) > 8:  # the sentences themselves are in why_bert.json
        caption = (f"A1-A{senses.count(0)}: {sentences[0]} ...; B1-B{senses.count(1)}: {sentences[senses.index(1)]} ...; "
                   "the same openings (and token positions) in both senses; every sentence in why_bert.json")
    titles = {f"{name}\nsame {_fmt(report[name]['same_sense_mean'])} / different "
              f"{_fmt(report[name]['different_sense_mean'])}": m for name, m in matrices.items()}
    similarity_heatmaps(titles, ticks, caption, f"cosine similarity of {word!r} across sentences (A, B: senses)",
                        out_dir / "why_bert.png")
    return path


def word_tokens(tokenizer, word: str, sentence: str, index: int) -> list[int]:
    """Token positions of the word's first whole-word occurrence (case-insensitive, as BERT lowercases)."""
    match = re.search(rf"(?<!\w){re.escape(word)}(?!\w)", sentence, flags=re.IGNORECASE)
    if match is None:
        raise LmforgeError(f"evaluate.why_bert_sentences[{index}]: word {word!r} is not in the sentence {sentence!r}; "
                           "every sentence must contain evaluate.why_bert_word")
    offsets = tokenizer(sentence, return_offsets_mapping=True)["offset_mapping"]
    # Special tokens have the empty span (0, 0); a sub-token belongs to the word when it lies inside it.
    inside = [i for i, (a, b) in enumerate(offsets) if b > a and a >= match.start() and b <= match.end()]
    if not inside:
        raise LmforgeError(f"evaluate.why_bert_sentences[{index}]: word {word!r} was cut off by the tokenizer's "
                           f"maximum length in {sentence!r}")
    return inside


@torch.no_grad()
def word_vectors(model, tokenizer, sentences: list[str], positions: list[list[int]],
                 static: bool = False) -> np.ndarray:
    """One vector per sentence: the mean over the word's sub-tokens of the last hidden state, or
    with `static` of the input word-piece embedding (no position, no context)."""
    model.eval()
    rows = []
    for sentence, where in zip(sentences, positions):
        enc = tokenizer(sentence, return_tensors="pt")
        if static:
            hidden = model.get_input_embeddings()(enc["input_ids"])
        else:
            hidden = model(**enc).last_hidden_state
        rows.append(hidden[0, where].mean(0).double().numpy())
    return np.stack(rows)


def cosine_matrix(vectors: np.ndarray) -> np.ndarray:
    """Pairwise cosine similarity, in float64, made exactly symmetric."""
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    sims = unit @ unit.T
    return (sims + sims.T) / 2


def sense_groups(n: int) -> list[int]:
    """0 for the first half of the sentences (sense A), 1 for the rest (sense B); an odd middle goes to B."""
    return [0] * (n // 2) + [1] * (n - n // 2)


def sense_means(sims: np.ndarray, senses: list[int]) -> tuple[float | None, float | None]:
    """Mean similarity over pairs of different sentences in the same sense, and in different senses."""
    n = len(senses)
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    same = [sims[i, j] for i, j in pairs if senses[i] == senses[j]]
    different = [sims[i, j] for i, j in pairs if senses[i] != senses[j]]
    return (float(np.mean(same)) if same else None), (float(np.mean(different)) if different else None)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
