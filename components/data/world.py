"""A seeded fictional world and the pretraining corpus that describes it.

Every name is invented, so a model can only know that Talia Brandt was born in Velmora, that
Velmora lies in Dreland, or that Talia is a "she", from reading the corpus. The demo tasks
ask about these facts, which is what makes pretraining measurably help fine-tuning.
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


# Words in two senses, for the contextual-embedding report ("why BERT works").
SENSE_DOCS = [
    "{n} walked along the bank of the {r}. The bank was muddy after the rain. Fish swam near the bank.",
    "{n} went to the bank to borrow money. The bank gave {him} a loan. Later {he} paid the bank back.",
    "A bat flew out of the cave at night. The bat hunted insects near the {r}.",
    "{n} swung the bat and hit the ball. After the game {he} put the bat away.",
]
CHINESE_DOCS = [
    "我喜欢吃苹果。苹果很甜。每天早上我吃一个苹果。",
    "苹果公司发布了新手机。很多人去商店买苹果手机。",
    "河岸边有很多树。我们在河岸上散步。",
    "我去银行存钱。银行的工作人员很友好。",
    "{n}出生在{c}。{c}是一个美丽的城市。",
]


def build_corpus(world: World, n_documents: int, rng: random.Random) -> list[str]:
    """Biographies of every person (twice, told differently), articles on every city and
    organisation, each two-sense and Chinese document once, then more of all of them up to
    n_documents (~5% Chinese). Every fact is stated at least twice, whatever n_documents is."""
    docs = [biography(p, rng) for p in world.people] + [biography(p, rng) for p in world.people]
    docs += [city_article(c, world, rng) for c in world.cities] + [org_article(o, world, rng) for o in world.orgs]
    p = world.people[0]
    docs += [d.format(n=p.name, r=p.birth_city.river, he=p.he, him=p.him, c=p.birth_city.name)
             for d in SENSE_DOCS + CHINESE_DOCS]
    while len(docs) < n_documents:
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
    rng.shuffle(docs)
    return docs
