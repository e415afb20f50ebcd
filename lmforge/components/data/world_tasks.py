"""The demo tasks: GLUE, SQuAD and CoNLL rows about the fictional world, in the Hub's schemas.

Train rows are about "train" people and validation/test rows about "eval" people, so memorising
the fine-tuning set does not help; many labels need a fact only the corpus states (which country
a city is in, where an organisation is, whether a name is a "she" or a "he").
"""

from __future__ import annotations

import random

from datasets import Dataset, DatasetDict

from lmforge.components.data.schemas import GLUE_TASKS, task_features
from lmforge.components.data.world import CHINESE, FOODS, HOBBIES, PROFESSIONS, Person, World

# (question, statement) templates per relation; {p} is the person, {v} the value.
RELATIONS = {
    "birth_city": (["Where was {p} born?", "What is the birthplace of {p}?"],
                   ["{p} was born in {v}.", "{p} is a native of {v}."], lambda p: p.birth_city.name),
    "birth_year": (["When was {p} born?", "In which year was {p} born?"],
                   ["{p} was born in {v}.", "The year {p} was born was {v}."], lambda p: str(p.birth_year)),
    "employer": (["Where does {p} work?", "Which employer does {p} work for?"],
                 ["{p} works at the {v}.", "{p} is employed by the {v}."], lambda p: p.employer.name),
    "profession": (["What is the job of {p}?", "What does {p} do for a living?"],
                   ["{p} works as a {v}.", "{p} is a {v} by profession."], lambda p: p.profession),
    "food": (["What food does {p} like?", "What is the favourite food of {p}?"],
             ["{p} likes {v}.", "The favourite food of {p} is {v}."], lambda p: p.food),
}
OTHER_VALUES = {"profession": PROFESSIONS, "food": FOODS}
POSITIVE = ["wonderful", "excellent", "delightful", "great", "superb", "lovely"]
NEGATIVE = ["terrible", "awful", "boring", "dreadful", "poor", "bland"]


def value(p: Person, relation: str) -> str:
    return RELATIONS[relation][2](p)


def other_value(world: World, p: Person, relation: str, rng: random.Random) -> str:
    """A value of the relation that is not p's."""
    while True:
        q = rng.choice(world.people)
        v = rng.choice(OTHER_VALUES[relation]) if relation in OTHER_VALUES else value(q, relation)
        if v != value(p, relation):
            return v


def statement(p: Person, relation: str, v: str, form: int) -> str:
    return RELATIONS[relation][1][form].format(p=p.name, v=v)


# --------------------------------------------------------------------------------------- GLUE rows

def cola(world, people, rng):
    p = rng.choice(people)
    subject, verb, base, rest = rng.choice([
        (p.name, "lives", "live", f"in {p.home_city.name}"),
        (p.he.capitalize(), "works", "work", f"at the {p.employer.name}"),
        (p.name, "likes", "like", f"{p.food} very much"),
    ])
    kind = rng.randrange(6)
    if kind < 3:
        return {"sentence": f"{subject} {verb} {rest}.", "label": 1}
    broken = {3: f"{subject} {rest} {verb}.", 4: f"{subject} {rest}.", 5: f"{subject} {base} {rest}."}[kind]
    return {"sentence": broken, "label": 0}


def sst2(world, people, rng):
    o, positive = rng.choice(world.orgs), rng.random() < 0.5
    adjective = rng.choice(POSITIVE if positive else NEGATIVE)
    if rng.random() < 0.3:  # negation flips the sentiment
        adjective, positive = f"not {rng.choice(NEGATIVE if positive else POSITIVE)}", positive
    return {"sentence": f"the visit to the {o.name} was {adjective} .", "label": int(positive)}


def mrpc(world, people, rng):
    p, relation = rng.choice(people), rng.choice(list(RELATIONS))
    same = rng.random() < 0.5
    first = statement(p, relation, value(p, relation), 0)
    second = statement(p, relation, value(p, relation) if same else other_value(world, p, relation, rng), 1)
    return {"sentence1": first, "sentence2": second, "label": int(same)}


def qqp(world, people, rng):
    p, relation = rng.choice(people), rng.choice(list(RELATIONS))
    duplicate = rng.random() < 0.5
    q2_person, q2_relation = p, relation
    if not duplicate:
        if rng.random() < 0.5:
            q2_person = rng.choice([q for q in people if q is not p])
        else:
            q2_relation = rng.choice([r for r in RELATIONS if r != relation])
    return {"question1": RELATIONS[relation][0][0].format(p=p.name),
            "question2": RELATIONS[q2_relation][0][1].format(p=q2_person.name), "label": int(duplicate)}


def stsb(world, people, rng):
    p, relation = rng.choice(people), rng.choice(list(RELATIONS))
    first = statement(p, relation, value(p, relation), 0)
    kind = rng.randrange(5)
    if kind == 0:
        second, score = statement(p, relation, value(p, relation), 1), 5.0
    elif kind == 1:
        second, score = statement(p, relation, other_value(world, p, relation, rng), 1), 3.0
    elif kind == 2:
        r2 = rng.choice([r for r in RELATIONS if r != relation])
        second, score = statement(p, r2, value(p, r2), 0), 2.0
    elif kind == 3:
        q = rng.choice([q for q in people if q is not p])
        second, score = statement(q, relation, value(q, relation), 0), 1.0
    else:
        c = rng.choice(world.cities)
        second, score = f"The {c.river} flows through {c.name}.", 0.0
    noise = rng.uniform(-0.3, 0.3)
    return {"sentence1": first, "sentence2": second, "label": round(min(5.0, max(0.0, score + noise)), 2)}


def _inference(world, p, rng, genre):
    """(premise, hypothesis, 0 entailment / 1 neutral / 2 contradiction); entailment needs a corpus fact."""
    kind = rng.randrange(3)
    if genre == 0:  # where an organisation is
        premise = f"{p.name} works at the {p.employer.name}."
        city = p.employer.city if kind == 0 else rng.choice([c for c in world.cities if c is not p.employer.city])
        hypothesis = f"{p.name} works in {city.name}."
    else:  # which country a city is in
        premise = f"{p.name} was born in {p.birth_city.name}."
        country = p.birth_city.country if kind == 0 else rng.choice(
            [c for c in world.countries if c is not p.birth_city.country])
        hypothesis = f"{p.name} was born in {country.name}."
    if kind == 1:
        hypothesis = f"{p.name} enjoys {rng.choice(HOBBIES)} on weekends."
    return premise, hypothesis, kind


def mnli(world, people, rng, genre=0):
    premise, hypothesis, label = _inference(world, rng.choice(people), rng, genre)
    return {"premise": premise, "hypothesis": hypothesis, "label": label}


def rte(world, people, rng):
    p = rng.choice(people)
    while True:
        premise, hypothesis, kind = _inference(world, p, rng, rng.randrange(2))
        if kind != 1:
            return {"sentence1": premise, "sentence2": hypothesis, "label": 0 if kind == 0 else 1}


def qnli(world, people, rng):
    p, relation = rng.choice(people), rng.choice(list(RELATIONS))
    answers = rng.random() < 0.5
    r2 = relation if answers else rng.choice([r for r in RELATIONS if r != relation and {r, relation} != {"birth_city", "birth_year"}])
    return {"question": RELATIONS[relation][0][rng.randrange(2)].format(p=p.name),
            "sentence": statement(p, r2, value(p, r2), rng.randrange(2)), "label": 0 if answers else 1}


def wnli(world, people, rng):
    """Whom the pronoun names is decided by the two people's genders, known only from the corpus."""
    while True:
        a, b = rng.sample(people, 2)
        if a.gender != b.gender:
            break
    giver = rng.choice([a, b])
    receiver = b if giver is a else a
    sentence1 = f"{a.name} met {b.name}, and {giver.he} gave {receiver.him} a book."
    claimed = rng.choice([a, b])
    other = b if claimed is a else a
    return {"sentence1": sentence1, "sentence2": f"{claimed.name} gave {other.name} a book.", "label": int(claimed is giver)}


GLUE_BUILDERS = {"cola": cola, "sst2": sst2, "mrpc": mrpc, "qqp": qqp, "stsb": stsb, "mnli": mnli,
                 "qnli": qnli, "rte": rte, "wnli": wnli}


def _glue_task(task: str, world: World, n_train: int, n_eval: int, rng: random.Random, build=None) -> DatasetDict:
    spec, build = GLUE_TASKS[task], build or GLUE_BUILDERS[task]
    train_people, eval_people = world.people_in("train"), world.people_in("eval")
    splits = {"train": [build(world, train_people, rng) for _ in range(n_train)]}
    for i, split in enumerate(spec.validation_splits):
        kwargs = {"genre": i} if task == "mnli" else {}  # mismatched: the other genre of templates
        splits[split] = [build(world, eval_people, rng, **kwargs) for _ in range(n_eval)]
    for i, split in enumerate(spec.test_splits):
        kwargs = {"genre": i} if task == "mnli" else {}
        rows = [build(world, eval_people, rng, **kwargs) for _ in range(n_eval)]
        splits[split] = [{**r, "label": -1.0 if spec.is_regression else -1} for r in rows]  # hidden, as on the Hub
    features = task_features(task)
    return DatasetDict({
        split: Dataset.from_list([{**row, "idx": i} for i, row in enumerate(rows)], features=features)
        for split, rows in splits.items()
    })


# ------------------------------------------------------------------------------- GLUE rows in Chinese
# The same tasks about the same people in Chinese (names in Latin letters, as in the corpus), so a
# model fine-tuned in one language can be scored on the other (the cross-lingual report).

RELATIONS_ZH = {
    "birth_city": (["{p}出生在哪里？", "{p}的出生地是哪里？"], ["{p}出生在{v}。", "{p}是{v}人。"]),
    "birth_year": (["{p}是哪一年出生的？", "{p}出生于哪一年？"], ["{p}出生于{v}年。", "{p}是{v}年出生的。"]),
    "employer": (["{p}在哪里工作？", "{p}为哪家单位工作？"], ["{p}在{v}工作。", "{p}受雇于{v}。"]),
    "profession": (["{p}的职业是什么？", "{p}是做什么工作的？"], ["{p}是一名{v}。", "{p}的职业是{v}。"]),
    "food": (["{p}喜欢吃什么？", "{p}最喜欢的食物是什么？"], ["{p}喜欢吃{v}。", "{p}最喜欢的食物是{v}。"]),
}
POSITIVE_ZH = ["精彩", "出色", "愉快", "棒", "好", "美好"]
NEGATIVE_ZH = ["糟糕", "可怕", "无聊", "差劲", "差", "平淡"]


def value_zh(p: Person, relation: str) -> str:
    v = value(p, relation)
    return CHINESE.get(v, v)  # names and years stay as they are


def sst2_zh(world, people, rng):
    o, positive = rng.choice(world.orgs), rng.random() < 0.5
    adjective = "很" + rng.choice(POSITIVE_ZH if positive else NEGATIVE_ZH)
    if rng.random() < 0.3:  # negation flips the sentiment
        adjective = "并不" + rng.choice(NEGATIVE_ZH if positive else POSITIVE_ZH)
    return {"sentence": f"参观{o.name}的经历{adjective}。", "label": int(positive)}


def rte_zh(world, people, rng):
    p = rng.choice(people)
    entailed, genre = rng.random() < 0.5, rng.randrange(2)
    if genre == 0:
        city = p.employer.city if entailed else rng.choice([c for c in world.cities if c is not p.employer.city])
        premise, hypothesis = f"{p.name}在{p.employer.name}工作。", f"{p.name}在{city.name}工作。"
    else:
        country = p.birth_city.country if entailed else rng.choice(
            [c for c in world.countries if c is not p.birth_city.country])
        premise, hypothesis = f"{p.name}出生在{p.birth_city.name}。", f"{p.name}出生在{country.name}。"
    return {"sentence1": premise, "sentence2": hypothesis, "label": 0 if entailed else 1}


def qnli_zh(world, people, rng):
    p, relation = rng.choice(people), rng.choice(list(RELATIONS))
    answers = rng.random() < 0.5
    r2 = relation if answers else rng.choice([r for r in RELATIONS if r != relation and {r, relation} != {"birth_city", "birth_year"}])
    return {"question": RELATIONS_ZH[relation][0][rng.randrange(2)].format(p=p.name),
            "sentence": RELATIONS_ZH[r2][1][rng.randrange(2)].format(p=p.name, v=value_zh(p, r2)),
            "label": 0 if answers else 1}


CHINESE_BUILDERS = {"sst2": sst2_zh, "rte": rte_zh, "qnli": qnli_zh}


def glue_task(task: str, world: World, n_train: int, n_eval: int, rng: random.Random,
              language: str = "en") -> DatasetDict:
    """A GLUE task's splits about the world, in English or (sst2, rte, qnli) in Chinese."""
    return _glue_task(task, world, n_train, n_eval, rng, CHINESE_BUILDERS[task] if language == "zh" else None)


def dictionary(words: dict[str, str] = CHINESE) -> DatasetDict:
    """The world's English-Chinese dictionary, one word per row."""
    from lmforge.components.data.schemas import DICTIONARY_FEATURES

    return DatasetDict({"train": Dataset.from_dict({"source": list(words), "target": list(words.values())},
                                                   features=DICTIONARY_FEATURES)})


# ------------------------------------------------------------------------------------------- SQuAD

def squad_rows(world: World, people: list[Person], n: int, rng: random.Random, v2: bool, prefix: str) -> list[dict]:
    """Questions on a paragraph about one person; for v2 a third ask a fact the paragraph leaves out."""
    rows = []
    while len(rows) < n:
        p = rng.choice(people)
        relations = rng.sample(list(RELATIONS), 3)
        if "birth_city" in relations and "birth_year" in relations:  # one sentence states both
            continue
        sentences, answers = [], {}
        for relation in relations:
            text = statement(p, relation, value(p, relation), rng.randrange(2))
            start = len(" ".join(sentences)) + (1 if sentences else 0)
            answers[relation] = start + text.rindex(value(p, relation))  # every template ends with the value
            sentences.append(text)
        context = " ".join(sentences)
        asked = rng.choice(relations)
        if v2 and rng.random() < 1 / 3:
            asked = rng.choice([r for r in RELATIONS if r not in relations])
        question = RELATIONS[asked][0][rng.randrange(2)].format(p=p.name)
        if asked in answers:
            answer = {"text": [value(p, asked)], "answer_start": [answers[asked]]}
        else:
            answer = {"text": [], "answer_start": []}
        rows.append({"id": f"{prefix}-{len(rows)}", "title": p.name, "context": context, "question": question,
                     "answers": answer})
    return rows


def squad_task(world, n_train, n_eval, rng, v2: bool) -> DatasetDict:
    features = task_features("squad_v2" if v2 else "squad")
    return DatasetDict({
        "train": Dataset.from_list(squad_rows(world, world.people_in("train"), n_train, rng, v2, "train"), features=features),
        "validation": Dataset.from_list(squad_rows(world, world.people_in("eval"), n_eval, rng, v2, "val"), features=features),
    })


# ----------------------------------------------------------------------------------------- CoNLL

def ner_sentence(world: World, people: list[Person], rng: random.Random) -> tuple[list[str], list[str]]:
    p = rng.choice(people)
    parts = rng.choice([
        [(p.name, "PER"), ("visited", None), (p.birth_city.name, "LOC"), ("with a", None),
         (p.birth_city.country.adjective, "MISC"), ("delegation .", None)],
        [(p.name, "PER"), ("joined the", None), (p.employer.name, "ORG"), ("in", None), (p.home_city.name, "LOC"), (".", None)],
        [("The", None), (p.employer.name, "ORG"), ("hired", None), (p.name, "PER"), ("to teach", None),
         (p.birth_city.country.language, "MISC"), (".", None)],
        [(p.last, "PER"), ("flew from", None), (p.birth_city.name, "LOC"), ("to", None), (p.home_city.name, "LOC"), (".", None)],
    ])
    tokens, tags = [], []
    for text, kind in parts:
        words = text.split()
        tokens += words
        tags += ["O"] * len(words) if kind is None else [f"B-{kind}"] + [f"I-{kind}"] * (len(words) - 1)
    return tokens, tags


def conll_task(world, n_train, n_eval, rng) -> DatasetDict:
    features = task_features("conll2003")
    names = features["ner_tags"].feature.names

    def rows(people, n):
        out = []
        for i in range(n):
            tokens, tags = ner_sentence(world, people, rng)
            out.append({"id": str(i), "tokens": tokens, "ner_tags": [names.index(t) for t in tags]})
        return Dataset.from_list(out, features=features)

    return DatasetDict({"train": rows(world.people_in("train"), n_train),
                        "validation": rows(world.people_in("eval"), n_eval),
                        "test": rows(world.people_in("eval"), n_eval)})
