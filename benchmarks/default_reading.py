"""The embedded default's reading settings against the ones they replace, on stored many-needle haystacks.

Each setting is a named set of engine options; ``before`` is the default until this change (notes memory, key
stage 1, up to 8 blocks, 1 fallback block), ``recipe`` the multi-hop recipe (excerpt memory, lexical stage 1, up
to 4 blocks, 4 fallback blocks). Both read the same stored bank: the ``k4v3+i8`` row (default storage) that
``codec_answers.py`` prepared for haystacks A, B, C (28K, 10 facts each) and D (112K, 10 facts), so nothing is
ingested again. Every question is asked with every setting in one process, the order rotated per question, so
load swings hit the settings alike; with --memagent N, MemAgent then reads the raw text for the first N
questions. Per question and setting: right (sub_em), copying failure (a code the document does not hold), the
fact's block among stage 1's candidates and read, blocks read, decode passes, warm seconds.

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/default_reading.py --haystack D=/tmp/codec112k/D \\
        --haystack B=/tmp/codec_answers/B --records /tmp/default_reading.jsonl
    python benchmarks/default_reading.py --report /tmp/default_reading.jsonl   # the table per haystack and setting

The haystack directories are ``codec_answers.py``'s (``--store``/HAYSTACK): they must hold ``context.txt`` and a
``k4v3+i8`` store; run ``codec_answers.py --only H --rows k4v3+i8`` first to make one.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from codec_answers import BANK, HAYSTACKS, TOKENS, answer_outcome, rotated

from lychee_memory.eval.bench import stream_rag
from lychee_memory.eval.rag import RagBaseline

SETTINGS = {
    "before": {"memory": "notes", "prefilter": "keys", "max_relevant_blocks": 8, "fallback_blocks": 1},
    "recipe": {
        "memory": "excerpts",
        "prefilter": "lexical",
        "max_relevant_blocks": 4,
        "fallback_blocks": 4,
        "excerpt_total_tokens": 768,
        "excerpt_read_tokens": 192,
    },
}
ROW = "k4v3+i8"
RAGS = {"rag": "dense", "hybrid-rag": "hybrid"}  # MiniLM top 4 of 256-token chunks; BM25 + MiniLM fused by rank


def variant(text: str) -> tuple[str, dict]:
    """``--also NAME:option=value;...``: the recipe with those flat engine options changed (``min2:min_blocks=2``)."""
    from lychee_memory.eval.shared_bench import setting_value

    name, _, overrides = text.partition(":")
    options = dict(SETTINGS["recipe"])
    for pair in filter(None, overrides.split(";")):
        key, equals, value = pair.partition("=")
        if not equals or not key.strip():
            raise SystemExit(f"--also {text!r}: write NAME:option=value;option=value")
        options[key.strip()] = setting_value(value.strip())
    if not name or name in SETTINGS or name in RAGS or name == "memagent":
        raise SystemExit(f"--also {text!r}: give it a new name")
    return name, options


def engines(model: str, settings: dict[str, dict]) -> dict:
    """One engine per setting, all on one loaded model."""
    from lychee_memory.config import EngineConfig
    from lychee_memory.engine import LycheeMemory

    first = LycheeMemory.from_pretrained(model, show_progress=False, **SETTINGS["before"])
    built = {"before": first}
    for name, options in settings.items():
        if name not in built:
            built[name] = LycheeMemory(
                first.loaded, EngineConfig.from_kwargs(spec=model, show_progress=False, **options)
            )
    return built


def samples_for(haystack: str, directory: Path, tokenizer, tokens: int) -> list:
    """The haystack's questions, rebuilt as ``codec_answers.py`` built them; checked against its stored text."""
    from lychee_memory.eval.haystack import generated_paragraphs
    from lychee_memory.eval.tasks import many_needle_sample

    pool = generated_paragraphs(count=1500)  # codec_answers.py's pool
    if tokens > 28_000:
        pool = generated_paragraphs(count=round(len(pool) * tokens / 28_000))
    samples = many_needle_sample(pool, tokenizer, tokens, 10, HAYSTACKS[haystack])
    stored = (directory / "context.txt").read_text(encoding="utf-8")
    if samples[0].context != stored:
        raise SystemExit(
            f"{directory}: context.txt is not haystack {haystack}'s text; rebuild it with codec_answers.py"
        )
    return samples


def ask(engine, bank, sample, context: str) -> dict:
    """One question through one engine setting (``bank``) or RAG (``engine`` a RagBaseline, ``bank`` its index),
    both streamed, so the time to the first answer token is measured alike."""
    ((start, end),) = sample.evidence
    load = os.getloadavg()[0]
    if isinstance(engine, RagBaseline):  # what it retrieved is what reached the answer
        answer, first, seconds = stream_rag(engine, sample.question, bank)
        hits = [b for b in answer.blocks if b.char_start < end and start < b.char_end]
        fact_passed = fact_read = bool(hits)
        read, passes = [b.index for b in answer.blocks], 1
        phases = {"stage2_rows": 0}
    else:
        started, first = time.perf_counter(), None
        stream = engine.stream(sample.question, bank)
        for _ in stream:
            first = first if first is not None else time.perf_counter() - started
        seconds = time.perf_counter() - started
        answer = stream.answer
        facts = {i for i, s in enumerate(bank.spans) if s.char_start < end and start < s.char_end}
        passed = set().union(*answer.candidates[:1]) if answer.candidates else set(range(len(bank)))
        read = [block.index for block in answer.blocks]
        fact_passed, fact_read = bool(facts & passed), bool(facts & set(read))
        # generations: a note per block read with notes memory (memory steps after the first), then the answer
        passes = (len(answer.memory_steps) - 1 if engine.memory_strategy.name == "notes" else 0) + 1
        phases = {k: round(v, 3) for k, v in answer.timings.items() if k not in ("load_model", "ingest")}
        phases["stage2_rows"] = answer.token_counts.get("gate_rows", 0)  # where a slow question's time went
    return {
        **answer_outcome(sample, answer.text, context),
        "fact_in_stage1": fact_passed,
        "fact_read": fact_read,
        "blocks_read": read,
        "decode_passes": passes,
        "tokens_decoded": answer.token_counts.get("memory_tokens", 0) + answer.token_counts.get("answer_tokens", 0),
        "query_s": round(seconds, 3),
        "first_token_s": round(first if first is not None else seconds, 3),
        "load_1min": round(load, 2),
        "phases": phases,
    }


def ask_memagent(agent, sample, context: str) -> dict:
    """One question through MemAgent over the haystack's raw text (every chunk rewrites its memory, then the
    answer): what the settings replace wholesale, in the same process and on the same questions."""

    load = os.getloadavg()[0]
    started = time.perf_counter()
    answer = agent.ask(sample.question, [context])
    seconds = time.perf_counter() - started
    chunks = len(answer.blocks)
    return {
        **answer_outcome(sample, answer.text, context),
        "fact_in_stage1": True,  # it reads every chunk
        "fact_read": True,
        "blocks_read": list(range(chunks)),
        "decode_passes": chunks + 1,  # a memory rewrite per chunk, then the answer
        "tokens_decoded": answer.token_counts.get("memory_tokens", 0) + answer.token_counts.get("answer_tokens", 0),
        "query_s": round(seconds, 3),
        "first_token_s": None,  # not streamed
        "load_1min": round(load, 2),
    }


def prepare(spec: str, args: argparse.Namespace, built: dict, rags: dict, names: list[str]) -> dict:
    """One ``--haystack NAME=DIRECTORY[@TOKENS]``: its questions, text, opened banks, RAG indexes and the settings
    asked of it, every asker warmed up on its first question (caches, term counts, index)."""
    from lychee_memory.store import MemoryStore

    haystack, _, where = spec.partition("=")
    where, _, length = where.partition("@")
    directory = Path(where)
    tokens = int(length) if length else TOKENS.get(haystack, 28_000)
    samples = samples_for(haystack, directory, built["before"].loaded.tokenizer, tokens)
    context = samples[0].context
    store = MemoryStore(directory / ROW, create=False)
    banks = {name: engine.open_bank(BANK, store) for name, engine in built.items()}
    askers = {**built, **rags}
    asked = list(names)
    if "before" in asked and banks["before"].gate_index_key(0) is None:
        asked.remove("before")  # without the key index its stage 1 would judge every block: not "before"
        print(f"[{haystack}] before: skipped, the bank has no key index (built by the lexical default)")
    for name in [name for name in asked if name in RAGS]:
        banks[name] = rags[name].build([context])
        print(f"[{haystack}] {name}: index built in {banks[name].build_seconds:.1f} s", flush=True)
    for name in asked:
        askers[name].ask(samples[0].question, banks[name])
    return {
        "haystack": haystack,
        "tokens": tokens,
        "samples": samples[: args.questions or None],
        "context": context,
        "store": store,
        "banks": banks,
        "bank_tokens": banks["recipe"].num_tokens,
        "askers": askers,
        "asked": asked,
    }


def ask_turn(prepared: dict, turn: int, records: Path) -> None:
    """Question ``turn`` of a prepared haystack, asked of each of its settings, the order rotated per turn."""
    haystack, sample, context = prepared["haystack"], prepared["samples"][turn], prepared["context"]
    banks, askers = prepared["banks"], prepared["askers"]
    for position, name in enumerate(rotated(prepared["asked"], turn)):
        record = ask(askers[name], banks[name], sample, context)
        record.update(haystack=haystack, setting=name, position=position, tokens=banks[name].num_tokens)
        with records.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        print(
            f"[{haystack}] {name:7s} {sample.sample_id}: right={record['right']} "
            f"stage1={record['fact_in_stage1']} read={record['blocks_read']} {record['query_s']:.1f}s "
            f"load={record['load_1min']} answer={record['answer'][:60]!r}",
            flush=True,
        )


def run(args: argparse.Namespace) -> None:
    from lychee_memory.baselines import MemAgent

    settings = {**SETTINGS, **dict(variant(text) for text in args.also)}
    built = engines(args.model, settings)
    rags = {name: RagBaseline(built["before"], retrieval=kind, show_progress=False) for name, kind in RAGS.items()}
    names = list(settings) + [name for name in RAGS if not args.no_rag]
    if args.settings:
        unknown = set(args.settings) - set(names)
        if unknown:
            raise SystemExit(f"--settings: {sorted(unknown)} unknown; known: {', '.join(names)}")
        names = [name for name in names if name in args.settings]
    if args.interleave:  # every haystack open at once; question i of each, in turn, so load hits each length alike
        prepared = [prepare(spec, args, built, rags, names) for spec in args.haystack]
        for turn in range(max(len(p["samples"]) for p in prepared)):
            for part in rotated(prepared, turn):
                if turn < len(part["samples"]):
                    ask_turn(part, turn, args.records)
    else:  # one haystack at a time (only one bank and index in memory)
        prepared = []
        for spec in args.haystack:
            part = prepare(spec, args, built, rags, names)
            for turn in range(len(part["samples"])):
                ask_turn(part, turn, args.records)
            part["store"].close()
            prepared.append({key: part[key] for key in ("haystack", "tokens", "samples", "context", "bank_tokens")})
    for part in prepared:
        if "store" in part:
            part["store"].close()
        asks_memagent = not args.memagent_lengths or part["tokens"] in args.memagent_lengths
        for sample in part["samples"][: args.memagent if asks_memagent else 0]:  # last: longer than all of the above
            record = ask_memagent(MemAgent(built["before"]), sample, part["context"])
            record.update(haystack=part["haystack"], setting="memagent", position=0, tokens=part["bank_tokens"])
            with args.records.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
            print(
                f"[{part['haystack']}] memagent {sample.sample_id}: right={record['right']} {record['query_s']:.1f}s "
                f"answer={record['answer'][:60]!r}",
                flush=True,
            )


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile, linearly interpolated between order statistics (numpy's default)."""
    ordered = sorted(values)
    at = (len(ordered) - 1) * q / 100
    low = int(at)
    return ordered[low] + (ordered[min(low + 1, len(ordered) - 1)] - ordered[low]) * (at - low)


def first_token(rows: list[dict]) -> str:
    """Median seconds to the first answer token, where it was measured (streamed settings)."""
    seconds = [r["first_token_s"] for r in rows if r.get("first_token_s") is not None]
    return f"{statistics.median(seconds):.2f}" if seconds else "-"


def report(path: Path) -> str:
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    lines = [
        "| haystack | tokens | setting | n | right | copying failures | fact in stage 1 | fact read | blocks read (mean) "
        "| decode passes (mean) | warm s (median) | warm s p95 | first token s (median) | / before | / rag "
        "| / hybrid-rag | MemAgent / this |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    by_key: dict[tuple[str, str], list[dict]] = {}
    for record in records:  # a haystack is its seed's name and its length (the sample ids end in it: "-28k")
        haystack = f"{record['haystack']} {record['sample'].rsplit('-', 1)[-1]}"
        by_key.setdefault((haystack, record["setting"]), []).append(record)
    for (haystack, setting), rows in sorted(
        by_key.items(), key=lambda item: (int(item[0][0].split()[1][:-1]), item[0])
    ):
        ratios = []
        for other in ("before", "rag", "hybrid-rag"):  # median over questions of this row's time over the other's
            theirs = {r["sample"]: r["query_s"] for r in by_key.get((haystack, other), [])}
            mine = [r["query_s"] / theirs[r["sample"]] for r in rows if r["sample"] in theirs]
            ratios.append(f"{statistics.median(mine):.2f}" if mine else "-")
        memagent = {r["sample"]: r["query_s"] for r in by_key.get((haystack, "memagent"), [])}
        speedup = [memagent[r["sample"]] / r["query_s"] for r in rows if r["sample"] in memagent]
        ratios.append(f"{statistics.median(speedup):.0f}x" if speedup else "-")  # on the questions MemAgent asked
        lines.append(
            f"| {haystack} | {rows[0]['tokens']:,} | {setting} | {len(rows)} | {sum(r['right'] for r in rows)} "
            f"| {sum(r['copying_failure'] for r in rows)} | {sum(r['fact_in_stage1'] for r in rows)} "
            f"| {sum(r['fact_read'] for r in rows)} | {statistics.mean(len(r['blocks_read']) for r in rows):.1f} "
            f"| {statistics.mean(r['decode_passes'] for r in rows):.1f} "
            f"| {statistics.median(r['query_s'] for r in rows):.2f} | {percentile([r['query_s'] for r in rows], 95):.2f} "
            f"| {first_token(rows)} | {' | '.join(ratios)} |"
        )
    return "\n".join(lines)


def plot(path: Path, out: Path) -> None:
    """Answers right (left) and the median warm query (right) per haystack and setting, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    haystacks = sorted(
        {f"{r['haystack']} {r['sample'].rsplit('-', 1)[-1]}" for r in records},
        key=lambda h: (int(h.split()[1][:-1]), h),
    )
    settings = list(dict.fromkeys(r["setting"] for r in records))
    figure, (answers, seconds) = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / len(settings)
    for shade, setting in enumerate(settings):
        rows = [
            [r for r in records if r["setting"] == setting and f"{r['haystack']} {r['sample'].rsplit('-', 1)[-1]}" == h]
            for h in haystacks
        ]
        xs = [i + (shade - (len(settings) - 1) / 2) * width for i in range(len(haystacks))]
        label = {"before": "before (notes, keys)", "recipe": "default now (excerpts, lexical)"}.get(setting, setting)
        shares = [sum(r["right"] for r in group) / len(group) if group else 0 for group in rows]
        answers.bar(xs, shares, width, label=label, color=f"C{shade}")
        seconds.bar(
            xs,
            [statistics.median(r["query_s"] for r in group) if group else 0 for group in rows],
            width,
            color=f"C{shade}",
        )
    if "memagent" in settings:  # minutes against seconds: only a log axis shows both
        seconds.set_yscale("log")
    for axis, title in ((answers, "share of answers right"), (seconds, "median warm query (s)")):
        axis.set_xticks(range(len(haystacks)), haystacks)
        axis.set_title(title)
    figure.legend(*answers.get_legend_handles_labels(), loc="lower center", ncol=len(settings), fontsize=8)
    figure.suptitle("SmolLM2-135M, stored many-needle haystacks, every setting on the same questions in one process")
    figure.tight_layout(rect=(0, 0.07, 1, 1))  # room for the legend under both panels
    figure.savefig(out, dpi=120)
    print(f"plot: {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--haystack",
        action="append",
        default=[],
        help="NAME=DIRECTORY[@TOKENS] (codec_answers.py's; NAME sets the seed, TOKENS the length it was built at)",
    )
    parser.add_argument("--no-rag", action="store_true", help="only the engine settings, no RAG rows")
    parser.add_argument(
        "--memagent", type=int, default=0, help="MemAgent also asks the first N questions of each haystack, last"
    )
    parser.add_argument(
        "--memagent-lengths",
        type=lambda text: {int(item) for item in text.split(",")},
        default=None,
        help="comma-separated haystack lengths (TOKENS) MemAgent asks at (default: every haystack)",
    )
    parser.add_argument("--questions", type=int, default=0, help="ask only each haystack's first N questions")
    parser.add_argument(
        "--interleave",
        action="store_true",
        help="open every haystack at once and ask question i of each in turn (a growth ratio under one load)",
    )
    parser.add_argument(
        "--also", action="append", default=[], help="NAME:option=value;... the recipe with options changed (repeat)"
    )
    parser.add_argument(
        "--settings", type=lambda text: text.split(","), default=None, help="ask only these settings and RAGs"
    )
    parser.add_argument("--records", type=Path, default=Path("default_reading.jsonl"))
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--report", type=Path, help="print the table of these records and stop")
    parser.add_argument("--plot", type=Path, help="with --report: also draw it as this PNG")
    args = parser.parse_args()
    if args.report:
        print(report(args.report))
        if args.plot:
            plot(args.report, args.plot)
        return
    if not args.haystack:
        parser.error("give at least one --haystack NAME=DIRECTORY")
    run(args)


if __name__ == "__main__":
    main()
