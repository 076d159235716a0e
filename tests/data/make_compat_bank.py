"""Write the compatibility bank in ``tests/data/compat_store/`` and what the release that wrote it answered over it.

Run with the release that wrote it; never regenerate to make a test pass. ``tests/test_compat.py`` opens this
store with the code under test and checks it verifies, answers, selects and keys its blocks exactly as the
release recorded in ``compat_expected.json`` did: a failure there means stored banks of users would change
meaning (or stop opening), which a refactor must not do. Regenerate only when a release deliberately changes
the store format or the answers, and say so in its notes.

    python tests/data/make_compat_bank.py --overwrite    # from the repository root, with the release to record

The bank is built by a tiny random-init Llama (``tiny-random-llama``: seeded, so rebuilt bit-identically; its
fingerprint is recorded) over three short documents, in two banks of one store: ``harbour`` (bfloat16 blocks,
two documents) and ``garden-int8`` (int8 blocks, one document), both with their gate index.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
STORE_DIR = HERE / "compat_store"
EXPECTED_FILE = HERE / "compat_expected.json"

SPEC = "tiny-random-llama"
ENGINE_OPTIONS: dict[str, Any] = dict(
    chunk_tokens=64, max_memory_tokens=12, max_answer_tokens=6, show_progress=False, temperature=0.0
)
# The release that wrote the bank indexed in float16 (its default then; int8 is today's, choices.DEFAULT_INDEX_DTYPE):
# the test re-ingests with make_engine() and compares content keys and index tensors, so it indexes as that release
# did. Today's default engine reading this bank is test_a_default_engine_answers_the_previous_release_bank
# (tests/test_codecs.py).
WRITTEN_INDEX_DTYPE = "float16"
SCORE_DIGITS = 4  # gate scores are recorded to 4 decimals and compared to 1e-3 (float32 sums vary with threads)

DOCUMENTS: dict[str, str] = {
    "arvel": (
        "The harbour of Arvel lies at the mouth of a cold river. Fishing boats leave before dawn.\n\n"
        "In the spring the keeper painted the tower white and replaced the great lamp.\n\n"
        "The access code for the east pier storage shed is 58213. Only the harbourmaster knows it.\n\n"
        "Visitors often ask about the old ship Silver Heron, which anchored in the bay for a winter.\n\n"
        "The market opens on Saturdays; bread, fish and wool are sold in the square by the church.\n\n"
    )
    * 2,
    "kestrel": (
        "Kestrel Hall has a walled garden. The new head gardener is a botanist named Odile Fenwick.\n\n"
        "She planted apple trees along the south wall and a row of lavender by the gate.\n\n"
    )
    * 3,
    "orchard": (
        "The orchard behind the mill grows twelve kinds of pear. The miller's daughter, Ines, keeps bees there.\n\n"
        "Every autumn the village presses cider in the old barn; the first barrel is opened on the feast day.\n\n"
    )
    * 2,
}
METADATA: dict[str, dict[str, Any]] = {
    "arvel": {"kind": "harbour", "year": 1901},
    "kestrel": {"kind": "garden", "year": 1923},
    "orchard": {"kind": "garden", "year": 1950},
}
# bank name -> (block dtype it is written with, its documents)
BANKS: dict[str, tuple[str, list[str]]] = {
    "harbour": ("bfloat16", ["arvel", "kestrel"]),
    "garden-int8": ("int8", ["orchard"]),
}
QUESTIONS: list[tuple[str, str]] = [  # (bank, question)
    ("harbour", "What is the access code for the east pier storage shed?"),
    ("harbour", "Who is the head gardener of Kestrel Hall?"),
    ("garden-int8", "Who keeps bees in the orchard?"),
]
SELECT_K = 3


def documents(names: list[str]) -> list[Any]:
    """The bank's documents as the public API takes them."""
    from lychee_memory import Document

    return [Document(id=name, text=DOCUMENTS[name], metadata=METADATA[name]) for name in names]


def make_engine() -> Any:
    """The engine that wrote the bank (and that reads it in the test)."""
    from lychee_memory import LycheeMemory

    return LycheeMemory.from_pretrained(SPEC, **ENGINE_OPTIONS, gate={"index_dtype": WRITTEN_INDEX_DTYPE})


def manifest_facts(store: Any, bank: str) -> dict[str, Any]:
    """What a bank's manifest pins: format, identity, and the content key of every text, block and index item."""
    manifest = store.bank_manifest(bank)
    return {
        "format": manifest.format,
        "fingerprint_scheme": manifest.fingerprint_scheme,
        "model_fingerprint": manifest.model_fingerprint,
        "compressor": manifest.compressor,
        "chunk_tokens": manifest.chunk_tokens,
        "opening": manifest.opening,
        "gate_index": manifest.gate_index,
        "documents": [
            {
                "id": document.id,
                "metadata": document.metadata,
                "text_key": document.text_key,
                "characters": document.characters,
                "blocks": [
                    {
                        "key": block.key,
                        "storage": block.storage,
                        "char_start": block.char_start,
                        "char_end": block.char_end,
                        "token_start": block.token_start,
                        "token_end": block.token_end,
                        "slots": block.slots,
                        "nbytes": block.nbytes,
                        "index_key": block.index_key,
                        "index_bytes": block.index_bytes,
                    }
                    for block in document.blocks
                ],
            }
            for document in manifest.documents
        ],
    }


def observe(engine: Any, store: Any) -> dict[str, Any]:
    """Everything the test compares: verify's report, each bank's manifest facts, answers and selections."""
    results: dict[str, Any] = {
        "model_fingerprint": engine.loaded.fingerprint(),
        "identity": {
            "model_fingerprint": engine.identity.model_fingerprint,
            "compressor": dict(engine.identity.compressor),
            "chunk_tokens": engine.identity.chunk_tokens,
            "opening": list(engine.identity.opening) if engine.identity.opening is not None else None,
        },
        "verify": store.verify().to_dict(),
        "banks": {name: manifest_facts(store, name) for name in sorted(BANKS)},
        "answers": [],
        "selections": [],
    }
    for bank_name, question in QUESTIONS:
        bank = engine.open_bank(bank_name, store)
        answer = engine.ask(question, bank)
        results["answers"].append(
            {
                "bank": bank_name,
                "question": question,
                "text": answer.text,
                "blocks": [block.index for block in answer.blocks],
                "fallback": [block.fallback for block in answer.blocks],
                "candidates": answer.candidates,
                "memory_steps": answer.memory_steps,
                "gate_scores": [
                    {
                        "index": score.index,
                        "score": round(score.score, SCORE_DIGITS),
                        "relevant": score.relevant,
                        "memory_step": score.memory_step,
                        "rejudged": score.rejudged,
                    }
                    for score in answer.gate_scores
                ],
            }
        )
        selected = engine.select(question, bank, k=SELECT_K)
        results["selections"].append(
            {
                "bank": bank_name,
                "question": question,
                "k": SELECT_K,
                "blocks": [
                    {
                        "index": block.index,
                        "score": round(block.score, SCORE_DIGITS),
                        "document_id": block.document_id,
                        "char_start": block.char_start,
                        "char_end": block.char_end,
                        "fallback": block.fallback,
                        "selected": block.selected,
                    }
                    for block in selected
                ],
            }
        )
    return results


def write_store(engine: Any, directory: Path) -> None:
    """Ingest each bank into a new store at ``directory`` with its block dtype."""
    from lychee_memory.store import MemoryStore

    for bank_name, (block_dtype, names) in BANKS.items():
        with MemoryStore(directory, block_dtype=block_dtype) as store:  # type: ignore[arg-type]
            engine.ingest(documents(names), store=store, bank=bank_name)


def main() -> int:
    import lychee_memory
    from lychee_memory.store import MemoryStore

    if STORE_DIR.exists() or EXPECTED_FILE.exists():
        if "--overwrite" not in sys.argv[1:]:
            print(f"{STORE_DIR.name} is the record of an earlier release: pass --overwrite only to record a new one")
            return 2
        shutil.rmtree(STORE_DIR, ignore_errors=True)
    engine = make_engine()
    write_store(engine, STORE_DIR)
    with MemoryStore(STORE_DIR, create=False) as store:
        results = observe(engine, store)
    shutil.rmtree(STORE_DIR / "leases", ignore_errors=True)  # open-bank leases of this process, not the bank
    results = {"written_by": lychee_memory.__version__, "spec": SPEC, "engine_options": ENGINE_OPTIONS, **results}
    EXPECTED_FILE.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    size = sum(path.stat().st_size for path in STORE_DIR.rglob("*") if path.is_file())
    print(f"wrote {STORE_DIR} ({size} bytes) and {EXPECTED_FILE}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parents[1]))
    sys.exit(main())
