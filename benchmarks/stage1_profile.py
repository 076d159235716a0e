"""Where one stage-1 pass (the key scorer over a stored bank's gate index) spends its time, before and after the
engine's gate index cache (``gate/index_cache.py``), at 7K, 224K and 1M tokens of index.

The store (``--build``, about 2 minutes of ingest with the embedded SmolLM2 on 2 CPU cores):
  - ``doc7k``: a 7K-token generated needle document, ingested with ``engine.ingest(..., store=, bank=)``;
  - ``doc32k``: a 32K-token generated needle document, ingested the same way;
  - ``copies224k`` and ``copies1m``: the 32K document's text added again under 7 and 31 distinct document ids.
    Its chunks are stored already, so nothing is compressed: the manifest lists the same blocks (and gate index
    items) 7 or 31 times. Every block's index item is read, checksummed and decoded on each pass as a real bank's
    would be (the same bytes per token: 768 for SmolLM2's preset heads); only the scores repeat across copies.

Per bank, one stage-1 pass split into read (the index items' bytes from the store), checksum (SHA-256 of each
record), decode (safetensors and the spec checks), stack (padded per batch of 64 blocks), upcast (float16 to
float32, a stored pair at a time as the kernel does), GEMM (``key_logsumexp``: the query-key products and their
logsumexp, less the upcast it does inside) and the rest (the pass end to end, measured on its own,
minus the parts); then the pass end to end without the cache (twice: at the start and after a memory update) and
with it (the first pass fills the cache, the second reads it, and a later question's first pass reads it), best
of ``--repeats``.

    OMP_NUM_THREADS=1 python benchmarks/stage1_profile.py --store /tmp/stage1-store --build
    OMP_NUM_THREADS=1 python benchmarks/stage1_profile.py --store /tmp/stage1-store

Prints a table and writes ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any

BANKS = {"doc7k": 1, "copies224k": 7, "copies1m": 31}  # bank -> copies of its document
NOTE = "The access code for the east pier storage shed is 58213."  # a memory with notes: the second pass's queries


def build(store: Path) -> dict[str, list[str]]:
    """Ingest the two needle documents and add the 32K one again as distinct documents (see the module doc)."""
    from lychee_memory import LycheeMemory
    from lychee_memory.documents import Document
    from lychee_memory.eval.haystack import generated_paragraphs
    from lychee_memory.eval.needles import single_needle
    from lychee_memory.eval.tasks import TokenCounter, haystack_with_facts

    engine = LycheeMemory.from_pretrained()
    pool = generated_paragraphs(count=400)
    questions: dict[str, list[str]] = {}
    for length in (7000, 32000):
        rng = random.Random(f"stage1-profile-{length}")
        facts, question, answer = single_needle(rng)
        text, _ = haystack_with_facts(pool, TokenCounter(engine.loaded.tokenizer), length, facts, rng)
        name = f"doc{length // 1000}k"
        engine.ingest(Document(text=text, id=name), store=store, bank=name, show_progress=False)
        questions[name] = [question, answer, text]
    text = questions["doc32k"][2]
    for name, copies in BANKS.items():
        if copies > 1:
            documents = [Document(text=text, id=f"copy-{i}") for i in range(copies)]
            engine.ingest(documents, store=store, bank=name, show_progress=False)
            questions[name] = questions["doc32k"]
    (store / "questions.json").write_text(json.dumps({k: v[:2] for k, v in questions.items()}), encoding="utf-8")
    return {k: v[:2] for k, v in questions.items()}


def best(seconds: list[float]) -> float:
    return round(min(seconds), 4)


def parts_of_a_pass(engine, bank, scorer, query) -> dict[str, float]:
    """One uncached pass, phase by phase (each phase timed on its own over the whole bank)."""
    import torch
    from lychee_memory.kernels import key_logsumexp

    from lychee_memory.gate.heads import model_geometry
    from lychee_memory.gate.index_cache import BLOCKS_PER_BATCH, stack_indexes
    from lychee_memory.store.codec import unframe
    from lychee_memory.store.gate_index import INDEX_MAGIC, INDEX_PREFIX, decode_index

    loader = bank.index_loader
    items, manifest, entries = loader.items, loader.manifest, loader.entries
    head_dim = model_geometry(engine.loaded.model.config)[3]
    times = dict.fromkeys(("read", "checksum", "decode", "stack", "upcast", "gemm"), 0.0)
    read_bytes = 0
    used = query.weights.sum(dim=0) > 0
    vectors, weights = query.vectors[:, used], query.weights[:, used]
    head_pairs = torch.tensor(scorer.spec.head_pairs, dtype=torch.long)
    for start in range(0, len(bank), BLOCKS_PER_BATCH):
        indexes = []
        for entry in entries[start : start + BLOCKS_PER_BATCH]:
            began = time.perf_counter()
            data = items.get(INDEX_PREFIX + entry.index_key)
            times["read"] += time.perf_counter() - began
            read_bytes += len(data)
            began = time.perf_counter()
            unframe(INDEX_MAGIC, data)
            checked = time.perf_counter()
            keys = decode_index(data, entry.key, manifest.gate_index, entry.token_end - entry.token_start)
            times["checksum"] += checked - began
            times["decode"] += time.perf_counter() - checked - (checked - began)  # decode_index checksums again
            indexes.append(keys)
        began = time.perf_counter()
        batch = stack_indexes(
            indexes, lambda k: scorer.spec.check(k, head_dim), len(scorer.spec.pairs), head_dim, "cpu"
        )
        times["stack"] += time.perf_counter() - began
        began = time.perf_counter()
        for pair in range(batch.keys.shape[1]):
            batch.keys[:, pair].float()  # the kernel's own upcast, a pair at a time
        upcast = time.perf_counter() - began
        times["upcast"] += upcast
        began = time.perf_counter()
        lse = key_logsumexp(vectors, batch.keys, batch.valid, head_pairs, scorer.scale)
        torch.einsum("nhq,gq->nhg", lse, weights)
        times["gemm"] += time.perf_counter() - began - upcast  # the kernel upcasts inside: counted once, above
    return {**{k: round(v, 4) for k, v in times.items()}, "index_mb": round(read_bytes / 2**20, 1)}


def profile(engine, bank, question: str, repeats: int) -> dict[str, Any]:
    scorer = engine.prefilter_for(bank)
    initial = engine.stage_one.context.questions.initial_memory
    everything = list(range(len(bank)))
    after_update = everything[1:]  # the second pass ranks the unread blocks (one read) under the new memory
    first_query, second_query = scorer.query(question, initial), scorer.query(question, NOTE)
    parts = [parts_of_a_pass(engine, bank, scorer, first_query) for _ in range(repeats)]
    result: dict[str, Any] = {
        "blocks": len(bank),
        "tokens": bank.num_tokens,
        "parts": {k: best([p[k] for p in parts]) if k != "index_mb" else parts[0][k] for k in parts[0]},
    }
    uncached: dict[str, list[float]] = {"first": [], "second": []}
    cached: dict[str, list[float]] = {"first": [], "second": [], "later": []}
    same = True
    for _ in range(repeats):
        began = time.perf_counter()
        plain_first, _ = scorer.scores(first_query, bank.gate_keys, everything)  # no bank: the uncached path
        uncached["first"].append(time.perf_counter() - began)
        began = time.perf_counter()
        plain_second, _ = scorer.scores(second_query, bank.gate_keys, after_update)
        uncached["second"].append(time.perf_counter() - began)
        engine.stage_one.index_cache.clear()
        began = time.perf_counter()
        kept_first, _ = scorer.scores(first_query, bank.gate_keys, everything, bank)
        cached["first"].append(time.perf_counter() - began)
        began = time.perf_counter()
        kept_second, _ = scorer.scores(second_query, bank.gate_keys, after_update, bank)
        cached["second"].append(time.perf_counter() - began)
        began = time.perf_counter()
        scorer.scores(first_query, bank.gate_keys, everything, bank)  # a later question (same shape): all hits
        cached["later"].append(time.perf_counter() - began)
        for plain, kept in ((plain_first, kept_first), (plain_second, kept_second)):
            same = same and plain.keys() == kept.keys() and all(abs(plain[i] - kept[i]) < 1e-4 for i in plain)
    result["uncached"] = {k: best(v) for k, v in uncached.items()}
    result["cached"] = {k: best(v) for k, v in cached.items()}
    result["parts"]["rest"] = round(result["uncached"]["first"] - sum(result["parts"][k] for k in PARTS), 4)
    result["same_scores"] = same
    result["cache_mb"] = round(engine.stage_one.index_cache.stats().bytes / 2**20, 1)
    return result


PARTS = ("read", "checksum", "decode", "stack", "upcast", "gemm")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--build", action="store_true", help="build the banks first (see above)")
    parser.add_argument("--banks", default=",".join(BANKS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/plots/stage1_profile.json"))
    args = parser.parse_args()

    from lychee_memory import LycheeMemory

    questions = build(args.store) if args.build else json.loads((args.store / "questions.json").read_text())
    engine = LycheeMemory.from_pretrained()
    results: dict[str, Any] = {}
    for name in args.banks.split(","):
        bank = engine.open_bank(name, args.store)
        results[name] = profile(engine, bank, questions[name][0], args.repeats)
        print(name, json.dumps(results[name]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2), encoding="utf-8")
    print()
    print(
        "| bank | blocks | tokens | index MB | " + " | ".join(PARTS) + " | rest | pass, uncached (1st / 2nd) | "
        "pass, cached (1st fills / 2nd reads / a later question's 1st) | cache MB | same scores |"
    )
    print("|---" * (len(PARTS) + 9) + "|")
    for name, r in results.items():
        p = r["parts"]
        print(
            f"| {name} | {r['blocks']} | {r['tokens']:,} | {p['index_mb']} | "
            + " | ".join(f"{p[k]:.3f}" for k in PARTS)
            + f" | {p['rest']:.3f} | {r['uncached']['first']:.3f} / {r['uncached']['second']:.3f} | "
            f"{r['cached']['first']:.3f} / {r['cached']['second']:.3f} / {r['cached']['later']:.3f} | {r['cache_mb']} | "
            f"{r['same_scores']} |"
        )


if __name__ == "__main__":
    main()
