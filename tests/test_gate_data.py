"""Gate training data: evidence spans that hold their notes in hop order, question-level splits, determinism,
documents of the requested size, and HotpotQA bridge chains whose first note names the second hop."""

from __future__ import annotations

import random

import pytest

from lychee_memory.errors import ConfigurationError, DocumentError
from lychee_memory.eval import tasks
from lychee_memory.eval.needles import NEEDLE_FAMILIES
from lychee_memory.training.gate_data import (
    FAMILIES,
    GateExample,
    estimate_tokens,
    gate_examples,
    names_title,
    question_split,
    split_counts,
)

TOKENS = 3000


def _data_dir():
    try:
        directory = tasks.data_dir()  # $LYCHEE_DATA_DIR, else shared/data above the working directory
    except DocumentError:
        return None
    return directory if (directory / tasks.HOTPOT_FILE).is_file() else None


DATA = _data_dir()
requires_data = pytest.mark.skipif(DATA is None, reason="no shared HotpotQA data (set LYCHEE_DATA_DIR)")


@pytest.fixture(scope="module")
def generated() -> list[GateExample]:
    return gate_examples(None, seed=0)


@pytest.fixture(scope="module")
def shared() -> list[GateExample]:
    if DATA is None:
        pytest.skip("no shared HotpotQA data (set LYCHEE_DATA_DIR)")
    return gate_examples(DATA, seed=0)


def _title(example: GateExample, span: tuple[int, int]) -> str:
    """The title line of the numbered paragraph starting at ``span``."""
    return example.text[span[0] : span[1]].split("\n")[1]


def _check_spans(examples: list[GateExample]) -> None:
    for example in examples:
        assert len(example.evidence) == len(example.notes) >= 1, example.key
        for (start, end), note in zip(example.evidence, example.notes):
            assert 0 <= start < end <= len(example.text)
            piece = example.text[start:end]
            if example.family.startswith("needle"):
                assert piece == note  # the planted fact itself
            else:  # the gold paragraph (a HotpotQA note may join non-adjacent sentences: checked on its own)
                assert piece.startswith("Document ") and (example.family != "squad" or note in piece), example.key
                assert example.text[start - 2 : start] in ("", "\n\n") and example.text[end : end + 2] in ("", "\n\n")


def test_generated_only_gives_needles(generated):
    assert {example.family for example in generated} == {"needle", "needle-multikey", "needle-twohop"}
    counts = split_counts(generated)
    assert counts["total"]["train"] + counts["total"]["heldout"] == len(generated) == 180
    _check_spans(generated)


def test_empty_data_directory_skips_dataset_families(tmp_path):
    examples = gate_examples(tmp_path, per_family={"needle": 3, "needle-multikey": 0, "needle-twohop": 2})
    assert [example.family for example in examples] == ["needle"] * 3 + ["needle-twohop"] * 2
    with pytest.raises(DocumentError):
        gate_examples(tmp_path / "missing")


def test_twohop_hop_order_and_both_document_orders(generated):
    twohop = [example for example in generated if example.family == "needle-twohop"]
    orders = set()
    for example in twohop:
        assert example.chain and len(example.evidence) == 2
        first, second = example.notes
        assert "is employed as a surveyor by" in first and "the main office of" in second
        company = first.split(" is employed as a surveyor by ")[1].rstrip(".")
        assert second.startswith(f"Trade directory: the main office of {company} ") and example.answer in second
        orders.add(example.evidence[0][0] < example.evidence[1][0])
    assert orders == {True, False}  # the hop-1 fact comes first in some documents and last in others


def test_multikey_lookalikes_are_negatives(generated):
    for example in (e for e in generated if e.family == "needle-multikey"):
        assert not example.chain and len(example.evidence) == 1
        assert example.answer in example.notes[0] and example.text.count("Caretaker's log: the padlock on") == 4
        key = example.question.removeprefix("Which combination opens the padlock on the ").removesuffix("?")
        assert f"on the {key} opens with the combination {example.answer}." in example.notes[0]


def test_training_needles_share_no_name_or_phrase_with_the_evaluation_needles(generated):
    from lychee_memory.eval import needles as evaluation

    words = set()
    for name in ("PLACE_ADJECTIVES", "PLACE_NOUNS", "FIRST_NAMES", "LAST_NAMES", "COMPANIES", "CITIES"):
        words |= set(getattr(evaluation, name))
    for example in (e for e in generated if e.family.startswith("needle")):
        for note in example.notes:
            assert not words & set(note.rstrip(".").split()), note
            assert not any(phrase in note for phrase in ("access code", "works as an engineer", "headquarters"))


def test_needles_are_not_the_evaluation_samples(generated):
    for family in NEEDLE_FAMILIES:
        evaluation = {tuple(NEEDLE_FAMILIES[family](random.Random(f"{family}-0-{i}-{TOKENS}"))[0]) for i in range(100)}
        ours = [tuple(example.notes) for example in generated if example.family == family]
        if family == "needle-multikey":
            ours = [notes for notes in ours if any(set(notes) <= set(facts) for facts in evaluation)]
            assert not ours
        else:
            assert not evaluation.intersection(ours)


def test_splits_by_question(generated):
    for examples in (generated, gate_examples(None, seed=3, heldout_share=0.5)):
        train = {example.question for example in examples if example.split == "train"}
        heldout = {example.question for example in examples if example.split == "heldout"}
        assert train and heldout and not train & heldout
        assert len({example.question for example in examples}) == len(examples)
        assert len({example.key for example in examples}) == len(examples)
        assert all(example.split == question_split(example.question, 0.4) for example in generated)
    share = sum(example.split == "heldout" for example in generated) / len(generated)
    assert 0.25 < share < 0.55
    assert question_split("q", 0.0) == "train" and question_split("q", 1.0) == "heldout"


def test_deterministic_for_a_seed(generated):
    again = gate_examples(None, seed=0)
    assert again == generated
    other = gate_examples(None, seed=1)
    assert [example.text for example in other] != [example.text for example in generated]
    assert len({example.key for example in other} & {example.key for example in generated}) == 0


def test_documents_about_the_requested_size(generated):
    for example in generated:
        assert 0.95 * TOKENS <= estimate_tokens(example.text) <= 1.25 * TOKENS, example.key

    def words(text: str) -> int:
        return len(text.split())

    small = gate_examples(None, tokens=800, per_family={"needle": 4, "needle-twohop": 4}, count_tokens=words)
    for example in small:
        assert 800 <= words(example.text) <= 1.5 * 800


def test_bad_arguments():
    with pytest.raises(ConfigurationError):
        gate_examples(None, per_family={"hotpot": 3})
    with pytest.raises(ConfigurationError):
        gate_examples(None, heldout_share=1.5)
    with pytest.raises(ConfigurationError):
        gate_examples(None, tokens=10)


def test_names_title():
    assert names_title("directed by Tim Burton and starring Johnny Depp", "Tim Burton (director)")
    assert names_title("the game Tunnels & Trolls", "Tunnels &amp; Trolls")
    assert not names_title("a film by someone else", "Tim Burton")


@requires_data
def test_shared_data_families_and_spans(shared):
    counts = split_counts(shared)
    assert list(counts) == [*FAMILIES, "total"]
    for family in FAMILIES:
        assert counts[family]["train"] > 0 and counts[family]["heldout"] > 0, family
    assert 150 <= counts["total"]["train"] <= 250
    _check_spans(shared)
    for example in shared:
        assert 0.95 * TOKENS <= estimate_tokens(example.text) <= 1.25 * TOKENS, example.key
    train = {example.question for example in shared if example.split == "train"}
    assert not train & {example.question for example in shared if example.split == "heldout"}


@requires_data
def test_hotpot_evidence_and_chains(shared):
    rows = {row["question"]: row for row in tasks.load_hotpot(DATA)}
    hotpot = [example for example in shared if example.family.startswith("hotpot-")]
    assert len(hotpot) == len(rows)
    for example in hotpot:
        row = rows[example.question]
        assert example.family == f"hotpot-{row['type']}" and example.answer == row["answer"]
        titles = [_title(example, span) for span in example.evidence]
        assert sorted(titles) == sorted(set(row["supporting_facts"]["title"]))
        sentences = dict(zip(row["context"]["title"], row["context"]["sentences"]))
        for title, sent_id in zip(row["supporting_facts"]["title"], row["supporting_facts"]["sent_id"]):
            if sent_id < len(sentences[title]):
                note = example.notes[titles.index(title)]
                assert sentences[title][sent_id].strip() in note
        # The question's own distractors come first: others only once they are all in (long rows hold them
        # only in part).
        present = {piece.split("\n")[1] for piece in example.text.split("\n\nDocument ")}
        if not set(row["context"]["title"]) <= present:
            assert present < set(row["context"]["title"]), example.key
        if row["type"] == "comparison":
            assert not example.chain
    chained = [example for example in hotpot if example.chain]
    assert len(chained) >= 20 and all(example.family == "hotpot-bridge" for example in chained)
    for example in chained:
        second = _title(example, example.evidence[1])
        assert names_title(example.notes[0], second)  # hop 1 names the bridge entity, the hop-2 title
        assert not names_title(example.notes[1], _title(example, example.evidence[0]))


@requires_data
def test_squad_answers_in_evidence(shared):
    squad = [example for example in shared if example.family == "squad"]
    assert len(squad) == 100
    for example in squad:
        assert not example.chain and len(example.evidence) == 1
        start, end = example.evidence[0]
        assert example.answer in example.notes[0] and example.answer in example.text[start:end]
        others = example.text[:start] + example.text[end:]
        assert example.answer.lower() not in others.lower() or example.answer.lower() in ("yes", "no")
