"""The built-in demo: a seeded fictional world, its pretraining corpus, and every demo task."""

from __future__ import annotations

import random

from datasets import Dataset, DatasetDict

from lmforge.components.config import DemoConfig
from lmforge.components.data.schemas import GLUE_TASKS, task_features
from lmforge.components.data.world import build_corpus, build_world
from lmforge.components.data.world_tasks import CHINESE_BUILDERS, conll_task, dictionary, glue_task, squad_task


def build_demo(cfg: DemoConfig) -> dict[str, DatasetDict]:
    """{name: DatasetDict}: `corpus`, the nine GLUE tasks, `squad`, `squad_v2`, `conll2003`; with
    cfg.chinese > 0 also `sst2_zh`, `rte_zh`, `qnli_zh` (the same tasks in Chinese) and
    `dictionary_en_zh` (the world's words and their translations).

    Each task draws from its own generator seeded from cfg.seed, so resizing one task leaves the
    others as they were.
    """
    world = build_world(cfg.seed, cfg.entities)
    rng = lambda name: random.Random(f"{cfg.seed}/{name}")  # noqa: E731
    corpus = build_corpus(world, cfg.corpus_documents, rng("corpus"), cfg.chinese)
    # Held-out documents: the same world told with fresh draws of the templates; a document that
    # came out word for word as one in train is left out, so validation text is unseen text.
    seen = set(corpus)
    heldout = [d for d in build_corpus(world, 0, rng("corpus/validation"), cfg.chinese) if d not in seen]
    heldout = heldout[: max(10, len(corpus) // 20)]
    data = {"corpus": DatasetDict({
        "train": Dataset.from_dict({"text": corpus}, features=task_features("corpus")),
        "validation": Dataset.from_dict({"text": heldout}, features=task_features("corpus")),
    })}
    for task in GLUE_TASKS:
        data[task] = glue_task(task, world, cfg.glue_train, cfg.glue_eval, rng(task))
    data["squad"] = squad_task(world, cfg.qa_train, cfg.qa_eval, rng("squad"), v2=False)
    data["squad_v2"] = squad_task(world, cfg.qa_train, cfg.qa_eval, rng("squad_v2"), v2=True)
    data["conll2003"] = conll_task(world, cfg.ner_train, cfg.ner_eval, rng("conll2003"))
    if cfg.chinese:
        for task in CHINESE_BUILDERS:
            data[f"{task}_zh"] = glue_task(task, world, cfg.glue_train, cfg.chinese_eval, rng(f"{task}_zh"), "zh")
        data["dictionary_en_zh"] = dictionary()
    return data


def demo_task(name: str) -> str:
    """The task of a demo dataset: its name, without the language (sst2_zh: sst2)."""
    return "dictionary" if name.startswith("dictionary") else name.removesuffix("_zh")
