"""Agent memory: what ``LycheeMemoryBlock._aget`` recalls over a long scripted conversation, against LlamaIndex's
``VectorMemoryBlock`` over the local all-MiniLM-L6-v2 (the project's RAG embedding).

The conversation is generated from templates with a seed (nothing is downloaded): a user states facts about
themselves early, chats about other things for hundreds of turns across several sessions, updates some facts
(moves, changes a preference), and is then probed. Each probe is one user message given to ``_aget``; a probe
passes when the recalled text holds the right value and not the stale one. Kinds: ``single`` (a fact stated once),
``updated`` (stated, then changed: the new value must be there, the old one not), ``multi`` (two facts from two
sessions, both needed), ``never`` (never mentioned: nothing right to find; reported as how often nothing was
recalled, and for the gate how often it still selected something). Both blocks are flushed the same exchanges (one ``aput`` per user+assistant pair)
and return the same number of messages (k). Latency: seconds per flush and per turn, p50/p95 of ``_aget``.

    python benchmarks/agent_memory.py --turns 320 --seed 0 --k 2 --recalls gate,lexical:supersede:floor=0 --out x.json
    python benchmarks/agent_memory.py --puts 1000 --batches 1,100 --model tiny-random-llama   # LangGraph puts
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

# attribute: (statement template, update template or None, probe question, values to draw from)
FACTS: dict[str, tuple[str, str | None, str, list[str]]] = {
    "city": (
        "By the way, I live in {v} these days.",
        "Big news: I moved to {v} last month, the new flat is lovely.",
        "Which city do I live in now?",
        ["Oslo", "Lyon", "Quito", "Porto", "Tallinn", "Nagoya", "Cork", "Bergen"],
    ),
    "drink": (
        "My favourite drink is {v}, I have it every morning.",
        "I have switched: my favourite drink is now {v}.",
        "What is my favourite drink?",
        ["green tea", "espresso", "rooibos", "hot chocolate", "matcha", "chai"],
    ),
    "job": (
        "I work as a {v} at a small firm.",
        "I changed jobs, I now work as a {v}.",
        "What do I do for a living?",
        ["pharmacist", "welder", "cartographer", "librarian", "radiologist", "carpenter"],
    ),
    "car": (
        "I drive a {v} car.",
        "I sold my old car and now drive a {v} one.",
        "What colour is my car?",
        ["crimson", "teal", "mustard", "silver", "olive"],
    ),
    "gym": (
        "I go climbing every {v}.",
        "Climbing moved, I now go every {v}.",
        "Which day do I go climbing?",
        ["Monday", "Tuesday", "Thursday", "Saturday", "Sunday"],
    ),
    "team": (
        "I support {v} in football.",
        "I gave up on my old club and now support {v}.",
        "Which football team do I support?",
        ["Rosenborg", "Celtic", "Boca Juniors", "Ajax", "Benfica"],
    ),
    "pet": (
        "I have a cat called {v}.",
        None,
        "What is my cat called?",
        ["Miso", "Pickle", "Tofu", "Biscuit", "Juniper"],
    ),
    "allergy": (
        "I am allergic to {v}.",
        None,
        "What am I allergic to?",
        ["peanuts", "penicillin", "shellfish", "kiwi"],
    ),
    "sister": ("My sister is called {v}.", None, "What is my sister's name?", ["Ingrid", "Marisol", "Yuki", "Agnes"]),
    "instrument": (
        "I play the {v} in a band.",
        None,
        "Which instrument do I play?",
        ["cello", "oboe", "banjo", "tuba"],
    ),
    "birthday": ("My birthday is in {v}.", None, "When is my birthday?", ["March", "July", "October", "January"]),
    "book": ("My favourite book is {v}.", None, "What is my favourite book?", ["Dune", "Middlemarch", "Solaris"]),
    "language": ("I am learning {v} at night school.", None, "Which language am I learning?", ["Finnish", "Korean"]),
    "bike": ("My bike is a {v} frame.", None, "What kind of frame is my bike?", ["steel", "carbon", "bamboo"]),
    "plant": ("I grow {v} on my balcony.", None, "What do I grow on my balcony?", ["chillies", "basil", "tomatoes"]),
    "school": ("I studied at {v}.", None, "Where did I study?", ["Uppsala", "Leiden", "Coimbra", "Ghent"]),
}
MULTI = [  # (question, attribute from an early session, attribute from a later one)
    ("What do I drink and where do I live now?", "drink", "city"),
    ("What is my cat called and what am I allergic to?", "pet", "allergy"),
    ("Which instrument do I play and who is my sister?", "instrument", "sister"),
    ("What is my job and which team do I support?", "job", "team"),
    ("Which language am I learning and where did I study?", "language", "school"),
    ("What do I grow and what is my bike frame?", "plant", "bike"),
]
NEVER = [
    "What is my blood type?",
    "What is my brother's name?",
    "What is my dog called?",
    "Which airline do I fly with?",
    "What is my shoe size?",
    "What is my daughter's favourite toy?",
    "Which hospital was I born in?",
    "What is my neighbour's name?",
    "How many cousins do I have?",
    "Which podcast do I listen to?",
]
FILLER_USER = [
    "Can you suggest a recipe with {a} and {b}?",
    "What is a good way to learn about {a}?",
    "I read an article about {a} today, it was about {b}.",
    "Do you think {a} is better than {b} for a weekend trip?",
    "Remind me how to convert {n} miles to kilometres.",
    "The weather today is {w}, what should I wear?",
    "I watched a documentary on {a} last night.",
    "Give me three facts about {a}.",
    "How long should I boil {a}?",
    "What rhymes with {a}?",
]
FILLER_WORDS = [
    "volcanoes", "lentils", "sailing", "origami", "glaciers", "chess", "sourdough", "owls", "jazz", "mosaics",
    "comets", "kayaks", "fennel", "lanterns", "beetles", "tapestry", "pottery", "tides", "moss", "radio",
]  # fmt: skip
WEATHER = ["rainy", "windy", "sunny", "foggy", "cold", "humid"]
REPLIES = ["Sure, happy to help with that.", "Here is what I found.", "Good question.", "Thanks for telling me."]


@dataclass
class Probe:
    kind: str
    question: str
    right: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)


@dataclass
class Script:
    exchanges: list[tuple[int, str, str]]  # (session, user message, assistant reply)
    probes: list[Probe]


def make_script(turns: int, seed: int, sessions: int = 6) -> Script:
    """The scripted conversation: ``turns`` messages (user and assistant alternate) and its probes."""
    rng = random.Random(seed)
    exchanges_count = turns // 2
    values = {name: rng.sample(pool, 2) for name, (_, _, _, pool) in FACTS.items()}
    early = exchanges_count // 3
    slots = rng.sample(range(early), len(FACTS))  # facts stated in the first third
    late = rng.sample(range(2 * exchanges_count // 3, exchanges_count), len(FACTS))  # updates in the last third
    events: dict[int, str] = {}
    for (name, (statement, update, _, _)), slot, later in zip(FACTS.items(), slots, late):
        events[slot] = statement.format(v=values[name][0])
        if update is not None:
            events[later] = update.format(v=values[name][1])
    exchanges = []
    for index in range(exchanges_count):
        session = index * sessions // exchanges_count
        if index in events:
            user = events[index]
        else:
            a, b = rng.sample(FILLER_WORDS, 2)
            user = rng.choice(FILLER_USER).format(a=a, b=b, n=rng.randint(2, 90), w=rng.choice(WEATHER))
        exchanges.append((session, user, rng.choice(REPLIES)))
    probes = []
    for name, (_, update, question, _) in FACTS.items():
        if update is None:
            probes.append(Probe("single", question, [values[name][0]]))
        else:
            probes.append(Probe("updated", question, [values[name][1]], [values[name][0]]))
    for question, first, second in MULTI:
        probes.append(Probe("multi", question, [current(values, first), current(values, second)]))
    probes += [Probe("never", question) for question in NEVER]
    return Script(exchanges, probes)


def current(values: dict[str, list[str]], name: str) -> str:
    return values[name][1] if FACTS[name][1] is not None else values[name][0]


def passes(probe: Probe, recalled: str) -> bool:
    text = recalled.lower()
    return all(value.lower() in text for value in probe.right) and not any(
        value.lower() in text for value in probe.stale
    )


def newer_first(probe: Probe, recalled: str) -> bool | None:
    """For an updated fact with both values recalled: whether the new one comes first (None if not both)."""
    text = recalled.lower()
    new, old = probe.right[0].lower(), probe.stale[0].lower()
    if new not in text or old not in text:
        return None
    return text.index(new) < text.index(old)


def parse_recall(spec: str) -> Any:
    """A RecallSettings from ``ranker[:judged=N][:prior][:supersede][:floor=X]`` (e.g. ``lexical:supersede:floor=0``)."""
    from lychee_memory.integrations.recall import RecallSettings

    ranker, *options = spec.strip().split(":")
    fields: dict[str, Any] = {"ranker": ranker}
    for option in options:
        name, _, value = option.partition("=")
        if name in ("prior", "supersede"):
            fields[name] = True
        elif name == "judged":
            fields[name] = int(value)
        elif name == "floor":
            fields[name] = float(value)
        else:
            raise SystemExit(f"unknown recall option {option!r} in {spec!r}")
    return RecallSettings(**fields)


async def flush(block: Any, script: Script) -> list[float]:
    """One ``aput`` per exchange (user message and reply, with the session id); the seconds of each."""
    from llama_index.core.base.llms.types import ChatMessage

    seconds = []
    for session, user, reply in script.exchanges:
        started = time.perf_counter()
        await block.aput(
            [ChatMessage(role="user", content=user), ChatMessage(role="assistant", content=reply)],
            session_id=f"session-{session}",
        )
        seconds.append(time.perf_counter() - started)
    return seconds


async def run_block(
    block: Any, script: Script, configs: list[tuple[str, Any, float]] | None = None
) -> dict[str, dict[str, Any]]:
    """Flush the conversation into ``block`` once, then run the probes once per (label, recall settings, recency
    margin) for Lychee."""
    from llama_index.core.base.llms.types import ChatMessage

    flush_seconds = await flush(block, script)
    runs = {}
    for label, settings, margin in configs or [("", None, None)]:
        if settings is not None:
            block.recall_settings = settings
            block.recency_margin = margin
        results, get_seconds = [], []
        for probe in script.probes:
            started = time.perf_counter()
            recalled = await block.aget([ChatMessage(role="user", content=probe.question)])
            get_seconds.append(time.perf_counter() - started)
            row: dict[str, Any] = {"kind": probe.kind, "question": probe.question, "recalled": recalled}
            if probe.kind != "never":
                row["pass"] = passes(probe, recalled)
            if probe.kind == "updated":
                row["newer_first"] = newer_first(probe, recalled)
            if hasattr(block, "last_sources"):
                row["gate_selected"] = any(source["selected"] for source in block.last_sources)
            row["nothing"] = not recalled.strip()
            results.append(row)
        runs[label] = {
            "probes": results,
            "flush_seconds_mean": statistics.fmean(flush_seconds),
            "seconds_per_turn": sum(flush_seconds) / (2 * len(script.exchanges)),
            "aget_p50": statistics.median(get_seconds),
            "aget_p95": sorted(get_seconds)[max(0, round(0.95 * len(get_seconds)) - 1)],
        }
    return runs


def summary(run: dict[str, Any]) -> dict[str, Any]:
    by_kind: dict[str, Any] = {}
    for kind in ("single", "updated", "multi", "never"):
        rows = [row for row in run["probes"] if row["kind"] == kind]
        entry: dict[str, Any] = {"n": len(rows)}
        if kind != "never":
            entry["pass"] = sum(row["pass"] for row in rows)
        if kind == "updated":
            both = [row["newer_first"] for row in rows if row["newer_first"] is not None]
            entry["both_recalled"] = len(both)
            entry["newer_first"] = sum(both)
        if rows and "gate_selected" in rows[0]:
            entry["gate_selected"] = sum(row["gate_selected"] for row in rows)
        entry["nothing"] = sum(row["nothing"] for row in rows)
        by_kind[kind] = entry
    scored = [row for row in run["probes"] if "pass" in row]
    return {
        "pass": sum(row["pass"] for row in scored),
        "scored": len(scored),
        "by_kind": by_kind,
        "flush_seconds_mean": round(run["flush_seconds_mean"], 4),
        "seconds_per_turn": round(run["seconds_per_turn"], 4),
        "aget_p50": round(run["aget_p50"], 4),
        "aget_p95": round(run["aget_p95"], 4),
    }


def text_vector_store() -> Any:
    """An in-memory vector store that keeps node text (VectorMemoryBlock needs one; SimpleVectorStore keeps only
    embeddings): exact cosine top-k over every node."""
    import numpy as np
    from llama_index.core.vector_stores.types import BasePydanticVectorStore, VectorStoreQueryResult

    class TextVectorStore(BasePydanticVectorStore):
        stores_text: bool = True
        nodes: list[Any] = []

        @property
        def client(self) -> Any:
            return None

        def add(self, nodes: list[Any], **kwargs: Any) -> list[str]:
            self.nodes.extend(nodes)
            return [node.node_id for node in nodes]

        def delete(self, ref_doc_id: str, **kwargs: Any) -> None:
            self.nodes = [node for node in self.nodes if node.ref_doc_id != ref_doc_id]

        def query(self, query: Any, **kwargs: Any) -> VectorStoreQueryResult:
            if not self.nodes:
                return VectorStoreQueryResult(nodes=[], similarities=[], ids=[])
            matrix = np.array([node.embedding for node in self.nodes])
            wanted = np.array(query.query_embedding)
            scores = matrix @ wanted / (np.linalg.norm(matrix, axis=1) * np.linalg.norm(wanted) + 1e-12)
            best = np.argsort(-scores)[: query.similarity_top_k]
            return VectorStoreQueryResult(
                nodes=[self.nodes[i] for i in best],
                similarities=[float(scores[i]) for i in best],
                ids=[self.nodes[i].node_id for i in best],
            )

    return TextVectorStore()


def measure_puts(model: str | None, count: int, batch: int) -> dict[str, Any]:
    """``count`` LycheeStore puts, one ``put`` each (batch 1) or ``batch`` PutOps per ``batch()`` call: seconds per
    put and the manifest bytes written per put (the bank's manifest is rewritten whole at each commit)."""
    from langgraph.store.base import PutOp
    from lychee_memory.integrations.engines import resolve_engine
    from lychee_memory.integrations.langgraph import LycheeStore

    from lychee_memory import MemoryStore

    engine = resolve_engine(model)
    with tempfile.TemporaryDirectory() as directory:
        store = LycheeStore(store=directory, model=engine)
        handle = MemoryStore(directory)
        written = 0
        started = time.perf_counter()
        for start in range(0, count, batch):
            ops = [
                PutOp(
                    ("bench", f"user{index % 10}"),
                    f"k{index}",
                    {"text": f"Fact {index}: locker {index} holds {index * 7} keys."},
                )
                for index in range(start, min(count, start + batch))
            ]
            store.batch(ops)
            written += handle.bank_parts("langgraph").manifests
        seconds = time.perf_counter() - started
        final = handle.bank_parts("langgraph").manifests
    return {
        "puts": count,
        "batch": batch,
        "seconds_per_put": round(seconds / count, 5),
        "manifest_bytes_per_put": round(written / count),
        "final_manifest_bytes": final,
        "manifest_bytes_per_item": round(final / count),
    }


# The recall sweep: every probe scored against every message block by each candidate scorer once, then the
# variants ranked offline from those scores (how the memory block's default was chosen, seed 0, and confirmed, seed 1).

NULL_QUESTIONS = ["N/A", "What is it?", "Tell me about it.", "What do I like?"]


def score_matrix(engine: Any, bank: Any, script: Script) -> dict[str, Any]:
    """Per probe: the gate rule's gain for every block (``s2``), the stage-1 scores (keys, lexical BM25,
    hybrid_sum), and per block its gain for each null question (the prior). Blocks with equal text are scored once."""
    from lychee_memory.gate import SCORERS, GateScan, ScanState
    from lychee_memory.lexical import terms

    gate = engine.config.gate
    scan = GateScan(engine.loaded, engine.prompts, engine.rule, gate, engine.threshold, gate.boundary_tolerance)
    initial = engine.config.prompts.initial_memory
    texts = [span.text for span in bank.spans]
    first = {text: index for index, text in reversed(list(enumerate(texts)))}
    unique = sorted(first.values())

    def gains(question: str) -> list[float]:
        found = dict(zip(unique, scan.gains(bank, ScanState(question, initial), unique)))
        return [found[first[text]] for text in texts]

    scorers = {name: SCORERS[name].for_bank(engine.stage_one.context, bank) for name in ("keys", "hybrid_sum")}
    lexical = SCORERS["lexical"].for_bank(engine.stage_one.context, bank)
    matrix: dict[str, Any] = {"texts": texts, "null": {q: gains(q) for q in NULL_QUESTIONS}, "probes": []}
    everything = list(range(len(bank)))
    for probe in script.probes:
        row: dict[str, Any] = {"kind": probe.kind, "question": probe.question, "right": probe.right}
        row["stale"] = probe.stale
        row["s2"] = gains(probe.question)
        for name, scorer in scorers.items():
            scores, _ = scorer.rank(bank, probe.question, initial, everything)
            row[name] = [scores.get(index, float("-inf")) for index in everything]
        row["lexical"] = lexical.bm25(bank, terms(probe.question), everything)
        matrix["probes"].append(row)
        print(probe.kind, probe.question, flush=True)
    return matrix


def _z(values: Any) -> Any:
    import numpy as np

    values = np.asarray(values, dtype=float)
    spread = values.std()
    return (values - values.mean()) / (spread if spread > 0 else 1.0)


def variant_scores(matrix: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
    """Each ranking tried, as one score per block."""
    import numpy as np

    s2 = np.asarray(row["s2"], dtype=float)
    nulls = {q: np.asarray(values, dtype=float) for q, values in matrix["null"].items()}
    found = {"gate rule, every block (s2)": s2}
    for question, null in nulls.items():
        found[f"s2 - prior[{question}]"] = s2 - null
    found["s2 - prior[mean of 4]"] = s2 - np.mean(list(nulls.values()), axis=0)
    found["keys"] = np.asarray(row["keys"], dtype=float)
    found["lexical"] = np.asarray(row["lexical"], dtype=float)
    found["hybrid_sum"] = np.asarray(row["hybrid_sum"], dtype=float)
    found["z(lexical) + z(s2)"] = _z(row["lexical"]) + _z(s2)
    found["z(lexical) + z(s2 - prior[N/A])"] = _z(row["lexical"]) + _z(s2 - nulls["N/A"])
    for n in (4, 16):
        top = np.argsort(-found["lexical"], kind="stable")[:n]
        staged = np.full(len(s2), -1e9)
        staged[top] = (s2 - nulls["N/A"])[top]
        found[f"lexical top {n} -> s2 - prior[N/A]"] = staged
    return found


def sweep(matrix: dict[str, Any], k: int = 2, candidates: int = 4) -> list[dict[str, Any]]:
    """Pass counts of every variant: plain, with superseding, and with superseding and the lexical floor (a block
    must share a term with the probe), the memory block's way: the best ``k * candidates``, then the best k."""
    import numpy as np
    from lychee_memory.integrations.recall import superseded

    from lychee_memory import SelectedBlock

    texts = matrix["texts"]
    names = list(variant_scores(matrix, matrix["probes"][0]))
    table = []
    for name in names:
        for supersede, floor in ((False, False), (True, False), (True, True)):
            counts: dict[str, int] = {"single": 0, "updated": 0, "multi": 0, "never_nothing": 0, "real_nothing": 0}
            for row in matrix["probes"]:
                scores = variant_scores(matrix, row)[name]
                order = [int(index) for index in np.argsort(-scores, kind="stable")[: k * candidates]]
                if floor:
                    order = [index for index in order if row["lexical"][index] > 0]
                if supersede:
                    blocks = [SelectedBlock(index, 0.0, f"d{index}", 0, 0, texts[index]) for index in order]
                    order = [block.index for block in superseded(row["question"], blocks)]
                recalled = "\n".join(texts[index] for index in order[:k])
                if row["kind"] == "never":
                    counts["never_nothing"] += not order
                    continue
                counts["real_nothing"] += not order
                counts[row["kind"]] += passes(Probe(row["kind"], row["question"], row["right"], row["stale"]), recalled)
            counts["all"] = counts["single"] + counts["updated"] + counts["multi"]
            table.append({"variant": name, "supersede": supersede, "lexical_floor": floor, **counts})
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=320)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--model", default=None, help="Lychee model spec (default: the embedded default)")
    parser.add_argument("--margins", default="0", help="recency margins to run Lychee with")
    parser.add_argument(
        "--recalls",
        default="gate,lexical:supersede:floor=0",
        help="recall settings to run Lychee with, ranker[:judged=N][:prior][:supersede][:floor=X], comma-separated",
    )
    parser.add_argument("--skip-vector", action="store_true")
    parser.add_argument("--out", default=None)
    parser.add_argument("--sweep", action="store_true", help="score every probe x block, then rank the variants")
    parser.add_argument("--sweep-from", default=None, help="rank the variants of a score matrix saved by --sweep")
    parser.add_argument("--puts", type=int, default=0, help="measure this many LycheeStore puts instead")
    parser.add_argument("--batches", default="1,100", help="puts per batch() call to measure with --puts")
    args = parser.parse_args()
    if args.puts:
        rows = [measure_puts(args.model, args.puts, int(size)) for size in args.batches.split(",")]
        for row in rows:
            print(json.dumps(row))
        if args.out:
            with open(args.out, "w") as handle:
                json.dump(rows, handle, indent=1)
        return
    if args.sweep_from:
        with open(args.sweep_from) as handle:
            matrix = json.load(handle)
        table = sweep(matrix, args.k)
        for row in table:
            print(json.dumps(row))
        if args.out:
            with open(args.out, "w") as handle:
                json.dump(
                    {"seed": matrix.get("seed"), "turns": matrix.get("turns"), "k": args.k, "table": table}, handle
                )
        return
    script = make_script(args.turns, args.seed)
    if args.sweep:
        from lychee_memory.integrations.engines import resolve_engine
        from lychee_memory.integrations.llama_index import LycheeMemoryBlock

        engine = resolve_engine(args.model)
        with tempfile.TemporaryDirectory() as directory:
            block = LycheeMemoryBlock(name="lychee", model=engine, store=directory, k=args.k)
            asyncio.run(flush(block, script))
            bank = engine.open_bank(block.bank, store=block.memory_store)
            matrix = {"seed": args.seed, "turns": args.turns, **score_matrix(engine, bank, script)}
        with open(args.out or "agent_memory_matrix.json", "w") as handle:
            json.dump(matrix, handle)
        return
    report: dict[str, Any] = {
        "turns": 2 * len(script.exchanges),
        "probes": len(script.probes),
        "seed": args.seed,
        "k": args.k,
        "runs": {},
    }
    if not args.skip_vector:
        from llama_index.core.memory import VectorMemoryBlock

        from lychee_memory.eval.rag import minilm_embedding

        vector = VectorMemoryBlock(
            name="vector", vector_store=text_vector_store(), embed_model=minilm_embedding(), similarity_top_k=args.k
        )
        run = asyncio.run(run_block(vector, script))[""]
        report["runs"]["vector_minilm"] = {**summary(run), "rows": run["probes"]}
        print("vector_minilm", json.dumps(summary(run)))
    from lychee_memory.integrations.engines import resolve_engine
    from lychee_memory.integrations.llama_index import LycheeMemoryBlock

    engine = resolve_engine(args.model)
    margins = [float(value) for value in args.margins.split(",")]
    configs = [
        (f"lychee_{spec}_margin_{margin}", parse_recall(spec), margin)
        for spec in args.recalls.split(",")
        for margin in margins
    ]
    with tempfile.TemporaryDirectory() as directory:
        block = LycheeMemoryBlock(name="lychee", model=engine, store=directory, k=args.k)
        runs = asyncio.run(run_block(block, script, configs))
    for label, run in runs.items():
        report["runs"][label] = {**summary(run), "rows": run["probes"]}
        print(label, json.dumps(summary(run)))
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(report, handle, indent=1, default=str)


if __name__ == "__main__":
    main()
