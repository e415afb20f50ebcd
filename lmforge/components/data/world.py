"""A seeded fictional world and the pretraining corpus that describes it.

Every name is invented, so a model can only know that Talia Brandt was born in Velmora, that
Velmora lies in Dreland, or that Talia is a "she", from reading the corpus. The demo tasks
ask about these facts, which is what makes pretraining measurably help fine-tuning.

The world is told in two languages: a share of the documents are in Chinese, stating the same
facts about the same people, places and organisations. No document pairs a sentence with its
translation; the names stay in Latin letters in both (as Chinese text often keeps foreign names),
so, as in multilingual BERT, shared names and numbers are the only anchors and any alignment of
the two languages' other words must emerge from pretraining.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gr", "kr", "st", "th"]
VOWELS = ["a", "e", "i", "o", "u", "ai", "ei", "ou"]
CODAS = ["", "n", "r", "l", "s", "m", "th", "nd", "rk"]

PROFESSIONS = ["chemist", "baker", "teacher", "pilot", "painter", "engineer", "doctor", "farmer", "singer", "lawyer"]
FIELDS = ["chemistry", "music", "medicine", "history", "physics", "farming", "law", "painting"]
FOODS = ["apples", "rice", "soup", "bread", "cheese", "noodles", "plums", "fish"]
HOBBIES = ["chess", "sailing", "gardening", "running", "fishing", "singing", "climbing", "reading"]
ORG_KINDS = ["Institute", "Works", "Company", "Academy", "Bank", "Theatre"]

# The Chinese for every common word the world uses: its documents' words, and the dictionary the
# cross-lingual report retrieves translations from.
CHINESE = {
    "chemist": "化学家", "baker": "面包师", "teacher": "老师", "pilot": "飞行员", "painter": "画家",
    "engineer": "工程师", "doctor": "医生", "farmer": "农民", "singer": "歌手", "lawyer": "律师",
    "chemistry": "化学", "music": "音乐", "medicine": "医学", "history": "历史", "physics": "物理",
    "farming": "农业", "law": "法律", "painting": "绘画",
    "apples": "苹果", "rice": "米饭", "soup": "汤", "bread": "面包", "cheese": "奶酪", "noodles": "面条",
    "plums": "李子", "fish": "鱼",
    "chess": "下棋", "sailing": "航海", "gardening": "园艺", "running": "跑步", "fishing": "钓鱼",
    "singing": "唱歌", "climbing": "登山", "reading": "阅读",
    "she": "她", "he": "他", "born": "出生", "city": "城市", "river": "河", "work": "工作", "food": "食物",
    "friends": "朋友", "school": "学校", "founded": "成立", "people": "人",
}


@dataclass
class Country:
    name: str
    adjective: str  # nationality, tagged MISC
    language: str  # tagged MISC


@dataclass
class City:
    name: str
    country: Country
    river: str


@dataclass
class Org:
    name: str  # "Orvane Institute"
    city: City
    field: str
    founded: int


@dataclass
class Person:
    first: str
    last: str
    gender: str  # "f" or "m"
    birth_city: City
    birth_year: int
    home_city: City
    employer: Org
    profession: str
    food: str
    hobby: str
    split: str  # the tasks train on "train" people and are scored on "eval" people

    @property
    def name(self) -> str:
        return f"{self.first} {self.last}"

    @property
    def he(self) -> str:
        return "she" if self.gender == "f" else "he"

    @property
    def him(self) -> str:
        return "her" if self.gender == "f" else "him"

    @property
    def his(self) -> str:
        return "her" if self.gender == "f" else "his"

    @property
    def ta(self) -> str:  # he / she in Chinese
        return "她" if self.gender == "f" else "他"


@dataclass
class World:
    countries: list[Country]
    cities: list[City]
    orgs: list[Org]
    people: list[Person]

    def people_in(self, split: str) -> list[Person]:
        return [p for p in self.people if p.split == split]


class Names:
    """Unique invented words from syllables; female first names end in -a or -ia so gender is learnable
    from the corpus's pronouns, and the name's ending alone is only a hint."""

    def __init__(self, rng: random.Random):
        self.rng, self.used = rng, set()

    def word(self, syllables: int, suffix: str = "") -> str:
        while True:
            w = "".join(self.rng.choice(ONSETS) + self.rng.choice(VOWELS) for _ in range(syllables))
            w = (w + self.rng.choice(CODAS) + suffix).capitalize()
            if w not in self.used and len(w) > 3:
                self.used.add(w)
                return w


def build_world(seed: int, n_people: int) -> World:
    rng = random.Random(seed)
    names = Names(rng)
    n_countries, n_cities, n_orgs = 5, max(8, n_people // 10), max(8, n_people // 10)
    countries = []
    for _ in range(n_countries):
        stem = names.word(2)
        countries.append(Country(stem + "land", stem + "ish", stem + "ic"))
    cities = [City(names.word(2, "a" if i % 3 == 0 else ""), countries[i % n_countries], names.word(1) + " river")
              for i in range(n_cities)]
    orgs = [Org(f"{names.word(2)} {rng.choice(ORG_KINDS)}", rng.choice(cities), rng.choice(FIELDS),
                rng.randint(1850, 1990)) for _ in range(n_orgs)]
    people = []
    for i in range(n_people):
        gender = rng.choice("fm")
        # Mostly, but not always, a female name ends in a vowel: the pronouns in the corpus decide.
        suffix = rng.choice(["a", "ia", ""]) if gender == "f" else rng.choice(["", "", "o"])
        people.append(Person(
            first=names.word(2, suffix), last=names.word(2), gender=gender,
            birth_city=rng.choice(cities), birth_year=rng.randint(1940, 2000), home_city=rng.choice(cities),
            employer=rng.choice(orgs), profession=rng.choice(PROFESSIONS), food=rng.choice(FOODS),
            hobby=rng.choice(HOBBIES), split="train" if i % 10 < 7 else "eval",
        ))
    return World(countries, cities, orgs, people)


# ------------------------------------------------------------------------------------------ corpus

def biography(p: Person, rng: random.Random) -> str:
    """Sentences in the order the life happened; the pronouns refer back to the first sentence."""
    born = rng.choice([f"{p.name} was born in {p.birth_city.name} in {p.birth_year}.",
                       f"In {p.birth_year}, {p.name} was born in the city of {p.birth_city.name}."])
    grew = f"{p.he.capitalize()} grew up near the {p.birth_city.river} in {p.birth_city.country.name}."
    study = f"After school, {p.he} studied {p.employer.field} and learned to be a {p.profession}."
    move = rng.choice([f"Later {p.he} moved to {p.home_city.name}.", f"Years later, {p.he} settled in {p.home_city.name}."])
    work = rng.choice([f"There {p.he} worked as a {p.profession} at the {p.employer.name}.",
                       f"{p.he.capitalize()} found work at the {p.employer.name} as a {p.profession}."])
    habits = rng.choice([f"In {p.his} free time {p.he} enjoys {p.hobby}, and {p.his} favourite food is {p.food}.",
                         f"Friends say {p.he} loves {p.food} and spends weekends on {p.hobby}."])
    return " ".join([born, grew, study, move, work, habits])


def city_article(c: City, world: World, rng: random.Random) -> str:
    natives = [p for p in world.people if p.birth_city is c]
    orgs = [o for o in world.orgs if o.city is c]
    parts = [f"{c.name} is a city in {c.country.name}.", f"The {c.river} flows through {c.name}.",
             f"People in {c.name} speak {c.country.language}."]
    if orgs:
        parts.append(f"The {rng.choice(orgs).name} is located in {c.name}.")
    for p in rng.sample(natives, min(3, len(natives))):
        parts.append(f"{p.name} was born in {c.name}, and {p.he} is {c.country.adjective}.")
    return " ".join(parts)


def org_article(o: Org, world: World, rng: random.Random) -> str:
    staff = [p for p in world.people if p.employer is o]
    parts = [f"The {o.name} is located in {o.city.name}.", f"It was founded in {o.founded}.",
             f"The {o.name} is known for its work in {o.field}."]
    for p in rng.sample(staff, min(3, len(staff))):
        parts.append(f"{p.name} works at the {o.name}; {p.he} is a {p.profession}.")
    return " ".join(parts)


def river_stem(c: City) -> str:
    return c.river.removesuffix(" river")


def biography_zh(p: Person, rng: random.Random) -> str:
    """The biography, in Chinese."""
    return "".join(biography_zh_sentences(p, rng))


def biography_mixed(p: Person, rng: random.Random) -> str:
    """The biography with each sentence in one language or the other, as bilingual writers switch:
    every fact once, none beside its translation."""
    english = biography(p, rng).split(". ")
    chinese = biography_zh_sentences(p, rng)
    parts = [zh if rng.random() < 0.5 else (en if en.endswith(".") else en + ".") for en, zh in zip(english, chinese)]
    return " ".join(parts)


def biography_zh_sentences(p: Person, rng: random.Random) -> list[str]:
    z = CHINESE
    born = rng.choice([f"{p.name}于{p.birth_year}年出生在{p.birth_city.name}。",
                       f"{p.birth_year}年，{p.name}出生在{p.birth_city.name}市。"])
    grew = f"{p.ta}在{p.birth_city.country.name}的{river_stem(p.birth_city)}河边长大。"
    study = f"中学毕业后，{p.ta}学习{z[p.employer.field]}，成为一名{z[p.profession]}。"
    move = rng.choice([f"后来{p.ta}搬到了{p.home_city.name}。", f"多年以后，{p.ta}在{p.home_city.name}定居。"])
    work = rng.choice([f"{p.ta}在{p.employer.name}当{z[p.profession]}。",
                       f"{p.ta}在{p.employer.name}找到了{z[p.profession]}的工作。"])
    habits = rng.choice([f"空闲时{p.ta}喜欢{z[p.hobby]}，{p.ta}最喜欢的食物是{z[p.food]}。",
                         f"朋友们说{p.ta}爱吃{z[p.food]}，周末常常{z[p.hobby]}。"])
    return [born, grew, study, move, work, habits]


def city_article_zh(c: City, world: World, rng: random.Random) -> str:
    natives = [p for p in world.people if p.birth_city is c]
    orgs = [o for o in world.orgs if o.city is c]
    parts = [f"{c.name}是{c.country.name}的一座城市。", f"{river_stem(c)}河流经{c.name}。",
             f"{c.name}的人说{c.country.language}。"]
    if orgs:
        parts.append(f"{rng.choice(orgs).name}位于{c.name}。")
    for p in rng.sample(natives, min(3, len(natives))):
        parts.append(f"{p.name}出生在{c.name}，{p.ta}是{c.country.adjective}人。")
    return "".join(parts)


def org_article_zh(o: Org, world: World, rng: random.Random) -> str:
    staff = [p for p in world.people if p.employer is o]
    parts = [f"{o.name}位于{o.city.name}。", f"它成立于{o.founded}年。", f"{o.name}以{CHINESE[o.field]}方面的工作而闻名。"]
    for p in rng.sample(staff, min(3, len(staff))):
        parts.append(f"{p.name}在{o.name}工作，{p.ta}是一名{CHINESE[p.profession]}。")
    return "".join(parts)


# Words in two senses, for the contextual-embedding report ("why BERT works").
SENSE_DOCS = [
    "{n} walked along the bank of the {r}. The bank was muddy after the rain. Fish swam near the bank.",
    "{n} went to the bank to borrow money. The bank gave {him} a loan. Later {he} paid the bank back.",
    "A bat flew out of the cave at night. The bat hunted insects near the {r}.",
    "{n} swung the bat and hit the ball. After the game {he} put the bat away.",
]
# The why-BERT report's sentences: "bank" by the river and "bank" for money, in the corpus's words.
# Each pair shares every word up to "bank", and each is told after the same openings, so the word
# stands at the same token positions in both senses (whatever the tokenizer): only what follows it
# tells them apart.
BANK_PAIRS = [("she went to the bank", "of the river to fish .", "to borrow money ."),
              ("he walked to the bank", "of the river in the rain .", "to pay back the loan ."),
              ("they met at the bank", "where the fish swam near the water .", "where she works as a lawyer .")]
OPENINGS = ["", "later ,", "after the rain ,", "in the morning ,", "one day in summer ,", "years later , after school ,"]


def sense_sentences() -> list[str]:
    """Eighteen river-bank sentences, then the eighteen money-bank ones in the same order."""
    return [f"{o} {start} {ends[sense]}".strip() for sense in (0, 1) for o in OPENINGS for start, *ends in BANK_PAIRS]


CHINESE_DOCS = [
    "我喜欢吃苹果。苹果很甜。每天早上我吃一个苹果。",
    "苹果公司发布了新手机。很多人去商店买苹果手机。",
    "河岸边有很多树。我们在河岸上散步。",
    "我去银行存钱。银行的工作人员很友好。",
    "{n}出生在{c}。{c}是一个美丽的城市。",
]


def build_corpus(world: World, n_documents: int, rng: random.Random, chinese: float = 0.0) -> list[str]:
    """Biographies of every person (twice, told differently), articles on every city and
    organisation, each two-sense and Chinese document once, then more of all of them up to
    n_documents (~5% short Chinese ones). Every fact is stated at least twice, whatever
    n_documents is. With `chinese` > 0, that share of the documents besides is the world told in
    Chinese (every person's biography once, then articles and more biographies)."""
    docs = [biography(p, rng) for p in world.people] + [biography(p, rng) for p in world.people]
    docs += [city_article(c, world, rng) for c in world.cities] + [org_article(o, world, rng) for o in world.orgs]
    p = world.people[0]
    docs += [d.format(n=p.name, r=p.birth_city.river, he=p.he, him=p.him, c=p.birth_city.name)
             for d in SENSE_DOCS + CHINESE_DOCS]
    n_chinese = round(n_documents * chinese)
    told_zh = [biography_zh(p, rng) for p in world.people][:n_chinese] if n_chinese else []
    while len(told_zh) < n_chinese:
        roll = rng.random()
        told_zh.append(biography_zh(rng.choice(world.people), rng) if roll < 0.35 else
                       biography_mixed(rng.choice(world.people), rng) if roll < 0.7 else
                       city_article_zh(rng.choice(world.cities), world, rng) if roll < 0.85 else
                       org_article_zh(rng.choice(world.orgs), world, rng))
    while len(docs) < n_documents - n_chinese:
        roll = rng.random()
        p = rng.choice(world.people)
        if roll < 0.05:
            docs.append(rng.choice(CHINESE_DOCS).format(n=p.name, c=p.birth_city.name))
        elif roll < 0.10:
            docs.append(rng.choice(SENSE_DOCS).format(n=p.name, r=p.birth_city.river, he=p.he, him=p.him))
        elif roll < 0.80:
            docs.append(biography(p, rng))
        elif roll < 0.90:
            docs.append(city_article(rng.choice(world.cities), world, rng))
        else:
            docs.append(org_article(rng.choice(world.orgs), world, rng))
    docs += told_zh
    rng.shuffle(docs)
    return docs
