"""The compatibility net: a bank written by an earlier release opens, verifies, keys and answers as it did then.

``tests/data/compat_store/`` was written by ``tests/data/make_compat_bank.py`` with the release named in
``compat_expected.json``, which also holds what that release answered over it. Never regenerate them to make
these tests pass: a failure here means users' stored banks would stop opening or change meaning.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

DATA = Path(__file__).resolve().parent / "data"
FIXTURE_STORE = DATA / "compat_store"
FIXTURE_LIMIT_BYTES = 400_000
SCORE_TOLERANCE = 1e-3


def _load_generator() -> Any:
    spec = importlib.util.spec_from_file_location("make_compat_bank", DATA / "make_compat_bank.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


generator = _load_generator()
EXPECTED: dict[str, Any] = json.loads(generator.EXPECTED_FILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def engine():
    return generator.make_engine()


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory) -> Path:
    """A copy of the checked-in store: opening a store writes leases, and the fixture must never change."""
    copy = tmp_path_factory.mktemp("compat") / "store"
    shutil.copytree(FIXTURE_STORE, copy)
    return copy


@pytest.fixture(scope="module")
def observed(engine, store_dir) -> dict[str, Any]:
    from lychee_memory.store import MemoryStore

    with MemoryStore(store_dir, create=False) as store:
        return generator.observe(engine, store)


def test_fixture_is_small_and_complete():
    files = {path.relative_to(FIXTURE_STORE).as_posix(): path.stat().st_size for path in FIXTURE_STORE.rglob("*")}
    assert "lychee-store.json" in files and "cache/cache.db" in files
    assert sum(files.values()) < FIXTURE_LIMIT_BYTES
    assert not any(name.startswith("leases/") for name in files), "a lease of the writing process was checked in"
    assert EXPECTED["engine_options"] == generator.ENGINE_OPTIONS and EXPECTED["spec"] == generator.SPEC


def test_tiny_model_is_rebuilt_bit_identically(engine):
    """The bank is only readable by the same weights: the seeded tiny model must hash as it did."""
    assert engine.loaded.fingerprint() == EXPECTED["model_fingerprint"]
    for facts in EXPECTED["banks"].values():
        assert facts["model_fingerprint"] == EXPECTED["model_fingerprint"]


def test_engine_identity_is_unchanged(observed):
    assert observed["identity"] == EXPECTED["identity"]


def test_store_and_manifest_format_versions_are_unchanged(store_dir, observed):
    marker = json.loads((FIXTURE_STORE / "lychee-store.json").read_text(encoding="utf-8"))
    assert json.loads((store_dir / "lychee-store.json").read_text(encoding="utf-8")) == marker, "opening rewrote it"
    assert marker == {"format": 1}
    for name, facts in EXPECTED["banks"].items():
        assert observed["banks"][name]["format"] == facts["format"] == 1


def test_bank_verifies_as_it_did(observed):
    assert observed["verify"] == EXPECTED["verify"]
    assert observed["verify"]["ok"] and observed["verify"]["blocks_checked"] > 10


def test_manifests_read_back_unchanged(observed):
    """Content keys (texts, blocks, gate index items), spans, sizes, identity and gate index spec."""
    assert observed["banks"] == EXPECTED["banks"]


def test_content_keys_are_computed_as_they_were(engine, tmp_path, store_dir):
    """Ingesting the same documents today gives the same keys; into the old store, it compresses nothing."""
    from lychee_memory.store import MemoryStore

    fresh = tmp_path / "fresh"
    generator.write_store(engine, fresh)
    with MemoryStore(fresh, create=False) as store:
        for name, facts in EXPECTED["banks"].items():
            assert _keys(generator.manifest_facts(store, name)) == _keys(facts)
    for name, (block_dtype, documents) in generator.BANKS.items():
        with MemoryStore(store_dir, block_dtype=block_dtype) as store:
            engine.ingest(generator.documents(documents), store=store, bank=name)
            assert store.last_ingest is not None and store.last_ingest.compressed == 0, name
            assert _keys(generator.manifest_facts(store, name)) == _keys(EXPECTED["banks"][name])


def test_stored_blocks_decode_to_todays_blocks(engine, store_dir):
    """Each codec still reads its old bytes: the stored KV matches a fresh compression within storage rounding."""
    from lychee_memory.store import MemoryStore

    tolerance = {"bfloat16": 1e-2, "int8": 2e-2}  # measured when written: 0.4% and 0.5% of the largest key
    with MemoryStore(store_dir, create=False) as store:
        for name, (block_dtype, documents) in generator.BANKS.items():
            stored = engine.open_bank(name, store)
            fresh = engine.ingest(generator.documents(documents))
            assert len(stored) == len(fresh)
            for index in range(len(fresh)):
                old, new = stored.block(index), fresh.block(index)
                assert torch.equal(old.token_ids, new.token_ids) and torch.equal(old.valid, new.valid)
                scale = new.keys.abs().max().item()
                for mine, theirs in ((old.keys, new.keys), (old.values, new.values)):
                    torch.testing.assert_close(mine, theirs, atol=tolerance[block_dtype] * scale, rtol=0)
                old_index, new_index = stored.gate_keys(index), fresh.gate_keys(index)
                assert old_index is not None and new_index is not None
                torch.testing.assert_close(old_index.float(), new_index.float(), atol=1e-3 * scale, rtol=0)


def test_an_old_bank_can_still_be_changed_and_collected(engine, tmp_path):
    """Removing a document rewrites the old manifest; gc then frees exactly that document's blocks and text."""
    from lychee_memory.store import MemoryStore

    shutil.copytree(FIXTURE_STORE, tmp_path / "store")
    harbour = EXPECTED["banks"]["harbour"]
    kept, removed = harbour["documents"]
    with MemoryStore(tmp_path / "store", create=False) as store:
        engine.remove_documents(engine.open_bank("harbour", store), [removed["id"]])
        report = store.gc()
        assert report.removed_blocks == len(removed["blocks"]) and report.removed_texts == 1
        assert report.removed_indexes == len(removed["blocks"])
        assert _keys(generator.manifest_facts(store, "harbour")) == _keys({"documents": [kept]})
        assert generator.manifest_facts(store, "garden-int8") == EXPECTED["banks"]["garden-int8"]
        assert store.verify().ok


@pytest.mark.parametrize("position", range(len(generator.QUESTIONS)))
def test_answers_are_unchanged(observed, position):
    expected, answer = EXPECTED["answers"][position], observed["answers"][position]
    for field in ("bank", "question", "text", "blocks", "fallback", "candidates", "memory_steps"):
        assert answer[field] == expected[field], field
    assert _without_scores(answer["gate_scores"]) == _without_scores(expected["gate_scores"])
    assert [s["score"] for s in answer["gate_scores"]] == pytest.approx(
        [s["score"] for s in expected["gate_scores"]], abs=SCORE_TOLERANCE
    )


@pytest.mark.parametrize("position", range(len(generator.QUESTIONS)))
def test_selections_are_unchanged(observed, position):
    expected, selection = EXPECTED["selections"][position], observed["selections"][position]
    assert _without_scores(selection["blocks"]) == _without_scores(expected["blocks"])
    assert [b["score"] for b in selection["blocks"]] == pytest.approx(
        [b["score"] for b in expected["blocks"]], abs=SCORE_TOLERANCE
    )


def _keys(facts: dict[str, Any]) -> list[tuple[str, list[tuple[str, str | None]]]]:
    return [
        (document["text_key"], [(block["key"], block["index_key"]) for block in document["blocks"]])
        for document in facts["documents"]
    ]


def _without_scores(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{key: value for key, value in row.items() if key != "score"} for row in rows]


def test_an_old_bank_recompressed_to_int4_shrinks_and_still_answers(engine, tmp_path):
    """The previous release's bfloat16 bank converts to int4 without a model: its blocks shrink (0.56x here: the tiny
    model's blocks hold few slots, so per-group scales weigh more than on SmolLM2's, 0.28x), the store verifies after
    gc, and each of its questions reads the blocks that release read and gets an answer."""
    from lychee_memory.store import MemoryStore

    shutil.copytree(FIXTURE_STORE, tmp_path / "store")
    with MemoryStore(tmp_path / "store", create=False) as store:
        report = store.recompress("harbour", "int4")
        assert report.changed and report.from_codecs == ("bfloat16",) and report.converted > 0
        assert report.bytes_after < 0.6 * report.bytes_before, (report.bytes_before, report.bytes_after)
        store.gc()
        assert store.verify().ok
        bank = engine.open_bank("harbour", store)
        for position, (bank_name, question) in enumerate(generator.QUESTIONS):
            if bank_name != "harbour":
                continue
            answer = engine.ask(question, bank)
            assert answer.text.strip()
            assert [block.index for block in answer.blocks] == EXPECTED["answers"][position]["blocks"]
