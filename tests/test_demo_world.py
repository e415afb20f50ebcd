"""The built-in demo: Hub schemas, determinism, balance, and labels that follow from corpus facts."""

import re
from collections import Counter

import pytest

from lmforge.components.config import DemoConfig
from lmforge.components.data.demo import build_demo, demo_task
from lmforge.components.data.schemas import GLUE_TASKS, task_features, validate
from lmforge.components.data.world import build_world

SMALL = DemoConfig(entities=60, corpus_documents=200, glue_train=120, glue_eval=40, qa_train=60, qa_eval=30,
                   ner_train=40, ner_eval=20)


@pytest.fixture(scope="module")
def demo():
    return build_demo(SMALL)


@pytest.fixture(scope="module")
def corpus_text(demo):
    return " ".join(demo["corpus"]["train"]["text"])


def test_every_dataset_has_the_hub_schema_and_splits(demo):
    assert set(demo) == {"corpus", *GLUE_TASKS, "squad", "squad_v2", "conll2003", "sst2_zh", "rte_zh", "qnli_zh",
                         "dictionary_en_zh"}
    for name, data in demo.items():
        validate(data, demo_task(name), "demo")
        for split in data.values():
            assert split.features == task_features(demo_task(name)), name
    assert list(demo["mnli"]) == ["train", "validation_matched", "validation_mismatched", "test_matched", "test_mismatched"]
    assert set(demo["rte"]["test"]["label"]) == {-1} and set(demo["stsb"]["test"]["label"]) == {-1.0}
    assert demo["cola"]["validation"]["idx"] == list(range(40))


def test_same_seed_same_data_other_seed_other_data(demo):
    again = build_demo(SMALL)
    other = build_demo(SMALL.model_copy(update={"seed": 1}))
    for name in demo:
        assert demo[name]["train"].to_list() == again[name]["train"].to_list(), name
        if name != "dictionary_en_zh":  # the world's words, whatever the seed
            assert demo[name]["train"].to_list() != other[name]["train"].to_list(), name


@pytest.mark.parametrize("task", [t for t in GLUE_TASKS if t != "stsb"])
def test_labels_are_balanced(demo, task):
    counts = Counter(demo[task]["train"]["label"])
    assert len(counts) == len(GLUE_TASKS[task].label_names)
    assert min(counts.values()) / sum(counts.values()) > 0.15


def test_stsb_scores_spread_over_the_range(demo):
    scores = demo["stsb"]["train"]["label"]
    assert min(scores) < 0.5 and max(scores) > 4.5 and len({round(s) for s in scores}) >= 5


def test_eval_rows_are_about_people_not_seen_in_training(demo):
    world = build_world(SMALL.seed, SMALL.entities)
    eval_names = {p.name for p in world.people_in("eval")}
    train_names = {p.name for p in world.people_in("train")}
    for row in demo["qnli"]["validation"]:
        assert any(n in row["question"] for n in eval_names)
        assert not any(n in row["question"] for n in train_names)


def test_mnli_and_rte_entailment_follows_from_corpus_facts(demo, corpus_text):
    world = build_world(SMALL.seed, SMALL.entities)
    org_city = {o.name: o.city.name for o in world.orgs}
    city_country = {c.name: c.country.name for c in world.cities}
    for row in demo["mnli"]["validation_matched"]:
        org = re.search(r"works at the (.+)\.$", row["premise"]).group(1)
        if row["label"] != 1:
            city = re.search(r"works in (.+)\.$", row["hypothesis"]).group(1)
            assert (city == org_city[org]) == (row["label"] == 0)
            assert f"The {org} is located in {org_city[org]}." in corpus_text  # stated only in the corpus
    for row in demo["rte"]["train"]:
        if "was born in" in row["sentence2"] and row["sentence2"].split()[-1].rstrip(".") in {c.name for c in world.countries}:
            city = row["sentence1"].split()[-1].rstrip(".")
            assert (row["sentence2"].split()[-1].rstrip(".") == city_country[city]) == (row["label"] == 0)


def test_wnli_needs_genders_the_corpus_states(demo, corpus_text):
    world = build_world(SMALL.seed, SMALL.entities)
    gender = {p.name: p.gender for p in world.people}
    for row in demo["wnli"]["train"]:
        a, b = re.match(r"(.+) met (.+), and (she|he) gave", row["sentence1"]).group(1, 2)
        pronoun = re.search(r", and (she|he) gave", row["sentence1"]).group(1)
        giver = a if (gender[a] == "f") == (pronoun == "she") else b
        assert (row["sentence2"].startswith(giver)) == (row["label"] == 1)
    person = world.people[0]
    assert re.search(rf"{person.name} was born in .{{0,80}}\. {person.he.capitalize()} grew up", corpus_text)


def test_biographies_tell_events_in_order(demo):
    for text in demo["corpus"]["train"]["text"]:
        if " grew up near " in text and "was born in" in text and "。" not in text:  # English (not code-switched)
            assert text.index("was born in") < text.index("grew up") < text.index("studied") < text.index("found work" if "found work" in text else "worked as")


def test_squad_offsets_are_exact_and_v2_has_unanswerable(demo):
    for name in ("squad", "squad_v2"):
        for row in demo[name]["validation"]:
            for text, start in zip(row["answers"]["text"], row["answers"]["answer_start"]):
                assert row["context"][start : start + len(text)] == text
    unanswerable = sum(not r["answers"]["text"] for r in demo["squad_v2"]["train"])
    assert 0.2 < unanswerable / len(demo["squad_v2"]["train"]) < 0.45
    assert all(r["answers"]["text"] for r in demo["squad"]["train"])


def test_ner_tags_are_bio_with_every_entity_type(demo):
    names = task_features("conll2003")["ner_tags"].feature.names
    seen = set()
    for row in demo["conll2003"]["train"]:
        tags = [names[t] for t in row["ner_tags"]]
        for prev, tag in zip(["O", *tags], tags):
            if tag.startswith("I-"):
                assert prev[2:] == tag[2:]
        seen |= {t[2:] for t in tags if t != "O"}
    assert seen == {"PER", "ORG", "LOC", "MISC"}


def test_corpus_has_chinese_and_two_sense_words(corpus_text):
    assert "苹果" in corpus_text and "银行" in corpus_text
    assert "bank of the" in corpus_text and "to the bank to borrow" in corpus_text


def test_default_demo_builds_quickly():
    data = build_demo(DemoConfig())
    assert len(data["corpus"]["train"]) == DemoConfig().corpus_documents


def test_fact_probes_mask_one_fact_stated_nowhere_else_in_the_text():
    from lmforge.components.pretraining.probe import candidates, fact_probes

    world = build_world(0, 30)
    probes = fact_probes(world, seed=0)
    assert len(probes) > 60
    for text, answer, relation in probes:
        assert text.count("[MASK]") == 1 and answer not in text
    assert candidates(world, "birth_city") == {c.name for c in world.cities}
    assert fact_probes(world, seed=0) == probes


def test_the_world_is_told_in_chinese_with_the_same_facts_and_no_translated_pairs(demo):
    """Half the corpus is Chinese; each Chinese biography states its person's facts (names in Latin
    letters, common words in Chinese), and no document holds a sentence and its translation (a
    code-switched biography tells each fact once, in one language or the other)."""
    import random

    from lmforge.components.data.world import CHINESE, biography, biography_zh

    docs = demo["corpus"]["train"]["text"]
    chinese = [d for d in docs if "。" in d]
    assert 0.4 < len(chinese) / len(docs) < 0.6
    world = build_world(SMALL.seed, SMALL.entities)
    for p in world.people[:10]:
        zh, en = biography_zh(p, random.Random(1)), biography(p, random.Random(1))
        for fact in (p.name, str(p.birth_year), p.birth_city.name, p.birth_city.country.name, p.home_city.name,
                     p.employer.name):
            assert fact in zh and fact in en
        for word in (p.profession, p.food, p.hobby, p.employer.field):
            assert CHINESE[word] in zh and word in en and word not in zh
        assert ("她" if p.gender == "f" else "他") in zh
    assert not any("出生" in d and "was born in" in d for d in docs)  # the birth sentence in one language only
    assert not any("中学毕业后" in d and "After school" in d for d in docs)
    mixed = [d for d in chinese if re.search(r"\b(was|the|in)\b", d)]
    assert 0 < len(mixed) < len(chinese) / 2  # some documents switch language between sentences
    # The same tasks in Chinese, about the same people: an RTE row's entailment follows the same fact.
    by_name = {p.name: p for p in world.people}
    for row in demo["rte_zh"]["validation"]:
        person = by_name[row["sentence1"].split("在")[0].split("出生")[0]]
        if "出生" in row["sentence1"]:
            country = row["sentence2"].removeprefix(person.name + "出生在").rstrip("。")
            assert (row["label"] == 0) == (country == person.birth_city.country.name)
    assert set(demo["qnli_zh"]["train"]["label"]) == {0, 1} and set(demo["sst2_zh"]["train"]["label"]) == {0, 1}
    pairs = dict(zip(demo["dictionary_en_zh"]["train"]["source"], demo["dictionary_en_zh"]["train"]["target"]))
    assert pairs["chemist"] == "化学家" and len(pairs) == len(CHINESE)
    # The Chinese tasks are scored zero-shot, so they get their own, larger validation and test splits;
    # a resize draws the train rows first, so it leaves them as they were.
    assert {name: len(demo[name]["validation"]) for name in ("qnli_zh", "rte", "qnli")} == \
        {"qnli_zh": SMALL.chinese_eval, "rte": 40, "qnli": 40}
    assert len(demo["qnli_zh"]["test"]) == SMALL.chinese_eval
    smaller = build_demo(SMALL.model_copy(update={"chinese_eval": 30}))
    assert smaller["qnli_zh"]["train"]["question"] == demo["qnli_zh"]["train"]["question"]
    assert len(smaller["qnli_zh"]["validation"]) == 30
    english_only = build_demo(SMALL.model_copy(update={"chinese": 0.0}))
    assert "qnli_zh" not in english_only and not any("中学毕业后" in d for d in english_only["corpus"]["train"]["text"])
