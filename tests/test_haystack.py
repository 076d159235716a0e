"""The generated haystack pool: deterministic, shaped like the SQuAD pool, varied, large enough for a 250K-token
haystack, and free of anything the planted needles ask about."""

from __future__ import annotations

import random
import re
import warnings

import pytest

from lychee_memory.eval import needles, tasks
from lychee_memory.eval.haystack import DEFAULT_POOL_SIZE, MAX_WORDS, MIN_WORDS, generated_paragraphs
from lychee_memory.testing import build_tiny_tokenizer

from .conftest import requires_embedded_model

# Phrases of the needle facts and questions (and their record labels) that filler text must never echo.
FORBIDDEN_PHRASES = [
    "access code", "code is", "headquarters", "works as an engineer", "research vessel", "head gardener",
    "quarterly review", "storage shed", "east pier", "survey team", "bridge project", "security note",
    "personnel record", "company register", "ship registry", "staff bulletin", "archive memo", "harbourmaster",
]  # fmt: skip
NEEDLE_NAMES = ["Silver Heron", "Arvel", "Kestrel Hall", "Odile Fenwick", "Tollan", "Marrowgate"]


@pytest.fixture(scope="module")
def pool() -> list[tuple[str, str]]:
    return generated_paragraphs()


def _pieces(pool: list[tuple[str, str]]) -> list[str]:
    """The paragraphs as a haystack numbers them, so token counts match TokenCounter's."""
    return [tasks.format_paragraph(999, title, text) for title, text in pool]


def test_the_same_seed_gives_the_same_pool_and_another_seed_another():
    assert generated_paragraphs(60, seed=3) == generated_paragraphs(60, seed=3)
    assert generated_paragraphs(60, seed=3) != generated_paragraphs(60, seed=4)
    assert generated_paragraphs(20, seed=3) == generated_paragraphs(60, seed=3)[:20]  # a smaller pool is a prefix
    assert generated_paragraphs(0) == []


def test_paragraphs_are_shaped_like_the_squad_pool(pool):
    assert len(pool) == DEFAULT_POOL_SIZE
    for title, text in pool:
        assert isinstance(title, str) and isinstance(text, str)
        assert 1 <= len(title.split()) <= 8, title
        assert MIN_WORDS <= len(text.split()) <= MAX_WORDS, text
        assert text.endswith(".") and text[0].isupper(), text
        assert re.fullmatch(r"[ -~]+", title) and re.fullmatch(r"[ -~]+", text), "plain printable ASCII only"
        assert "{" not in text + title and "[" not in text + title, "every template slot is filled"


def test_pool_is_varied(pool):
    titles = {title for title, _ in pool}
    assert len(titles) / len(pool) > 0.95  # measured 0.98 for seed 0
    grams: set[tuple[str, ...]] = set()
    total = 0
    for _, text in pool:
        words = text.split()
        grams.update(tuple(words[i : i + 8]) for i in range(len(words) - 7))
        total += max(0, len(words) - 7)
    assert len(grams) / total > 0.75  # distinct 8-grams over all 8-grams: measured 0.80 for seed 0


def test_nothing_competes_with_the_planted_needles(pool):
    text = "\n".join(f"{title}\n{paragraph}" for title, paragraph in pool).lower()
    assert [phrase for phrase in [*FORBIDDEN_PHRASES, "code"] if phrase in text] == []
    names = [*needles.FIRST_NAMES, *needles.LAST_NAMES, *needles.COMPANIES, *needles.CITIES, *NEEDLE_NAMES]
    assert [name for name in names if name.lower() in text] == []  # also inside longer invented words
    words = re.findall(r"[a-z]+", text)
    pairs = set(zip(words, words[1:]))
    assert [(a, n) for a in needles.PLACE_ADJECTIVES for n in needles.PLACE_NOUNS if (a, n) in pairs] == []
    assert re.findall(r"\d{5,}", text) == []  # the needles' codes are 10000-99999


@pytest.mark.parametrize("family", sorted(tasks.NEEDLE_FAMILIES))
def test_needle_answers_appear_only_in_the_planted_facts(pool, family):
    for sample in tasks.needle_samples(family, pool, build_tiny_tokenizer(), 6000, n=3, seed=1):
        planted = "".join(sample.context[start:end] for start, end in sample.evidence)
        assert sample.context.count(sample.answers[0]) == planted.count(sample.answers[0]) >= 1


def test_default_pool_holds_a_250k_haystack_without_repeats(pool):
    tokenizer = build_tiny_tokenizer()
    total = sum(len(ids) + 2 for ids in tokenizer(_pieces(pool), add_special_tokens=False).input_ids)
    assert total >= 250_000  # measured 1.07M: the tiny byte-level BPE spends about 3.9 tokens a word
    with warnings.catch_warnings():
        warnings.simplefilter("error", tasks.PoolRepeatWarning)
        tasks.draw_paragraphs(pool, tasks.TokenCounter(tokenizer), 250_000, random.Random(0))


@requires_embedded_model
def test_default_pool_holds_250k_smollm2_tokens(pool):
    from transformers import AutoTokenizer

    from lychee_memory.model_loading import resolve_spec

    spec = resolve_spec("smollm2-135m")
    tokenizer = AutoTokenizer.from_pretrained(spec.path, gguf_file=spec.gguf_file)  # the tokenizer only: seconds
    total = sum(len(ids) + 2 for ids in tokenizer(_pieces(pool), add_special_tokens=False).input_ids)
    assert total >= 250_000  # measured 444K, about 1.6 tokens a word (the invented names split finely)


def test_a_shared_twohop_haystack_asks_both_fact_orders_with_one_chain_per_answer(pool):
    samples = tasks.many_twohop_sample(pool, build_tiny_tokenizer(), 12000, chains=6, seed=2)
    assert len(samples) == 6 and len({s.context for s in samples}) == 1
    context = samples[0].context
    assert len({s.answers[0] for s in samples}) == 6  # distinct cities: no question is answered by another's chain
    orders = []
    for sample in samples:
        (person_start, person_end), (company_start, company_end) = sample.evidence
        person, company = context[person_start:person_end], context[company_start:company_end]
        assert person.startswith("Personnel record: ") and company.startswith("Company register: ")
        assert person.split(" works as an engineer at ")[1].rstrip(".") == company.split(": ")[1].split(" has its")[0]
        assert company.endswith(f"the city of {sample.answers[0]}.") and person.split(": ")[1].split(" works")[0] in (
            sample.question
        )
        assert context.count(person) == context.count(company) == 1
        orders.append("person-first" if person_start < company_start else "company-first")
        assert sample.sample_id.endswith(f"{orders[-1]}-12k")
    assert orders.count("person-first") == orders.count("company-first") == 3
