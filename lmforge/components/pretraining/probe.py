"""Does the pretrained BERT know the demo world's facts? Fill-mask on held-out biographies.

Each probe is a freshly written biography (new template draws, not a training document) with
one fact masked that the text states nowhere else: where the person was born, where they work,
what they like to eat. Chance is one over the candidates of that kind.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

from lmforge.components.data.world import FOODS, World, biography

RELATIONS = {
    "birth_city": lambda p: p.birth_city.name,
    "employer": lambda p: p.employer.name.split()[0],
    "food": lambda p: p.food,
}


def fact_probes(world: World, seed: int) -> list[tuple[str, str, str]]:
    """(text with one [MASK], the answer, the relation) for every person and relation."""
    rng = random.Random(f"{seed}/probes")
    probes = []
    for p in world.people:
        text = biography(p, rng)
        for relation, answer_of in RELATIONS.items():
            answer = answer_of(p)
            if text.count(answer) == 1:
                probes.append((text.replace(answer, "[MASK]"), answer, relation))
    return probes


def candidates(world: World, relation: str) -> set[str]:
    if relation == "food":
        return set(FOODS)
    return {RELATIONS[relation](p) for p in world.people} | (
        {c.name for c in world.cities} if relation == "birth_city" else {o.name.split()[0] for o in world.orgs}
    )


def fill_mask_accuracy(model_dir: Path, world: World, seed: int) -> dict[str, float]:
    """Top-1 accuracy of `pipeline("fill-mask")` on the probes, beside chance and the majority answer."""
    from transformers import pipeline

    fill = pipeline("fill-mask", model=str(model_dir), top_k=1)
    probes = fact_probes(world, seed)
    tokenizer = fill.tokenizer
    # A word the vocabulary splits cannot come out of one [MASK]: such probes are left out.
    probes = [pr for pr in probes if len(tokenizer.tokenize(pr[1])) == 1]
    results = {}
    correct_all = 0
    for relation in RELATIONS:
        chosen = [pr for pr in probes if pr[2] == relation]
        if not chosen:
            continue
        predictions = fill([text for text, _, _ in chosen], batch_size=32)
        correct = sum(pred[0]["token_str"] == tokenizer.tokenize(answer)[0]
                      for pred, (_, answer, _) in zip(predictions, chosen))
        correct_all += correct
        majority = Counter(answer for _, answer, _ in chosen).most_common(1)[0][1]
        results[relation] = {
            "accuracy": correct / len(chosen),
            "chance": 1 / len(candidates(world, relation)),
            "majority_answer": majority / len(chosen),
            "probes": len(chosen),
        }
    results["accuracy"] = correct_all / max(len(probes), 1)
    return results
