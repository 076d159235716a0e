"""The planted facts of the needle tasks and their questions: fixed needles, and families generated from
invented names (one code, look-alike codes, a two-hop chain), so no answer comes from a model's prior knowledge.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Needle:
    """A planted fact and the question that only it answers."""

    fact: str
    question: str
    answer: str


NEEDLES = [
    Needle(
        "Harbourmaster's note: the access code for the east pier storage shed is 58213.",
        "What is the access code for the east pier storage shed?",
        "58213",
    ),
    Needle(
        "Ship registry entry: the research vessel that carried the Arvel survey team was named the Silver Heron.",
        "What was the name of the research vessel that carried the Arvel survey team?",
        "Silver Heron",
    ),
    Needle(
        "Archive memo: the quarterly review of the Tollan bridge project was moved to the city of Marrowgate.",
        "To which city was the quarterly review of the Tollan bridge project moved?",
        "Marrowgate",
    ),
    Needle(
        "Staff bulletin: the new head gardener at Kestrel Hall is a botanist named Odile Fenwick.",
        "Who is the new head gardener at Kestrel Hall?",
        "Odile Fenwick",
    ),
]

# Invented words for generated needles, so no answer can come from a model's prior knowledge.
PLACE_ADJECTIVES = "amber northern copper eastern hollow silver western granite quiet southern iron upper".split()
PLACE_NOUNS = "warehouse boathouse archive vault workshop gatehouse depot cellar tower pavilion".split()
FIRST_NAMES = "Odile Tamsin Brannoc Ilse Corwin Maelis Idris Saoirse Lucan Perrin Ysolde Anwen".split()
LAST_NAMES = "Fenwick Varga Holloway Kestrel Marrow Quell Ashdown Brightwater Calloway Dunmore".split()
COMPANIES = "Velmora Tessaline Orvane Quintara Halvex Brisco Marlowe Dovetail Kirrin Solace".split()
CITIES = "Marrowgate Tollan Vesper Harrowmere Caldris Ostrava Linmouth Pellgrave Durnholm Ashcombe".split()


def _code(rng: random.Random) -> str:
    return str(rng.randint(10_000, 99_999))


def single_needle(rng: random.Random) -> tuple[list[str], str, str]:
    """One access code for one named place."""
    place = f"{rng.choice(PLACE_ADJECTIVES)} {rng.choice(PLACE_NOUNS)}"
    code = _code(rng)
    return (
        [f"Security note: the access code for the {place} is {code}."],
        (f"What is the access code for the {place}?"),
        code,
    )


def multikey_needle(rng: random.Random, keys: int = 4) -> tuple[list[str], str, str]:
    """Several access codes for places with similar names; the question asks for one of them."""
    adjectives = rng.sample(PLACE_ADJECTIVES, keys)
    noun = rng.choice(PLACE_NOUNS)
    codes = [_code(rng) for _ in range(keys)]
    facts = [f"Security note: the access code for the {a} {noun} is {c}." for a, c in zip(adjectives, codes)]
    asked = rng.randrange(keys)
    return facts, f"What is the access code for the {adjectives[asked]} {noun}?", codes[asked]


def _twohop_names(rng: random.Random) -> tuple[str, str, str]:
    """A chain's person, company and city."""
    person = f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"
    company = f"{rng.choice(COMPANIES)} {rng.choice(['Shipping', 'Instruments', 'Textiles', 'Foundry'])}"
    return person, company, rng.choice(CITIES)


def _twohop_chain(person: str, company: str, city: str) -> tuple[list[str], str, str]:
    facts = [
        f"Personnel record: {person} works as an engineer at {company}.",
        f"Company register: {company} has its headquarters in the city of {city}.",
    ]
    return facts, f"In which city is the headquarters of the company where {person} works?", city


def twohop_needle(rng: random.Random) -> tuple[list[str], str, str]:
    """Two chained facts: a person's employer, then where that employer is based."""
    return _twohop_chain(*_twohop_names(rng))


def distinct_needles(rng: random.Random, count: int) -> list[tuple[str, str, str]]:
    """``count`` single needles (fact, question, answer) with distinct places and distinct codes, so each question
    has exactly one fact that answers it in a haystack holding them all."""
    if count > len(PLACE_ADJECTIVES) * len(PLACE_NOUNS):
        raise ValueError(f"at most {len(PLACE_ADJECTIVES) * len(PLACE_NOUNS)} distinct needles, asked for {count}")
    needles: dict[str, tuple[str, str, str]] = {}
    codes: set[str] = set()
    while len(needles) < count:
        (fact,), question, answer = single_needle(rng)
        if question not in needles and answer not in codes:
            needles[question] = (fact, question, answer)
            codes.add(answer)
    return list(needles.values())


def distinct_twohop_chains(rng: random.Random, count: int) -> list[tuple[list[str], str, str]]:
    """``count`` two-hop chains (facts, question, answer) with distinct people, companies and cities, so each question
    has exactly one chain that answers it in a haystack holding them all."""
    if count > len(CITIES):
        raise ValueError(f"at most {len(CITIES)} chains with distinct answers, asked for {count}")
    chains: list[tuple[list[str], str, str]] = []
    people: set[str] = set()
    companies: set[str] = set()
    cities: set[str] = set()
    while len(chains) < count:
        person, company, city = _twohop_names(rng)
        if person not in people and company not in companies and city not in cities:
            chains.append(_twohop_chain(person, company, city))
            people.add(person)
            companies.add(company)
            cities.add(city)
    return chains


NEEDLE_FAMILIES: dict[str, Callable[[random.Random], tuple[list[str], str, str]]] = {
    "needle": single_needle,
    "needle-multikey": multikey_needle,
    "needle-twohop": twohop_needle,
}
