"""The answer ladder per block codec (issue 27 items 2 and 4): the same stored haystacks read through every codec.

Two generated 28K haystacks (seeds 0 and 1), each holding ``--needles`` distinct facts of the ``needle`` family at
evenly spread depths, one question per fact (``eval.tasks.many_needle_sample``). Haystack A's questions CHOOSE,
haystack B's CONFIRM. Each haystack is ingested ONCE in bfloat16 into a store (under ``--store``, reused across
runs); every other row is a copy of that store converted by the store's own model-free ``lychee store recompress``
(``--codec``, ``--index-dtype``) and ``lychee store gc``, its bytes from ``lychee store du --json``. Per question and
row: the fact's block ranked first by stage 2, the fact's block among stage-1 candidates, the answer right
(sub_em), a copying failure (the answer names a 5-digit code the document does not hold), blocks read, warm query
seconds (one warm-up question per row first). Per row: all-in bytes/token, median warm query, per-block
dequantisation ms (read, checksum and decode of every block), the questions whose outcome differs from bfloat16
and why (rank, copy, another number of the document). ``SIMULATED`` rows (``--rows k4v3g128+i8``) measure a codec
not built yet by quantising the bfloat16 bank in memory with the store's own group quantiser.

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/codec_answers.py --only A
    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/codec_answers.py --only B
    python benchmarks/codec_answers.py --report   # JSON + markdown + PNG from the records of both

Haystack D is a fresh 112K one (seed 3, ~115 blocks). ``--interleave`` times rows fairly on a loaded machine: all
banks open in one process, question q asked on every row (order rotated per question) before q + 1; the report then
gives each row's median warm query and the median over questions of its time over bfloat16's (BENCHMARKS.md,
``benchmarks/plots/codec112k.*``):

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/codec_answers.py --only D --interleave --store /tmp/codec112k \
        --records /tmp/codec112k/records.jsonl --rows bfloat16 k4v3+i8 int4+i8 k4v2+i8 int2+i8 none

Records (one JSON line per question and row) go to ``--records``; the report to ``benchmarks/plots/``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from lychee_memory.eval.metrics import copying_failure

# name -> seed; A chooses, B confirms; C (seed 2) is a fresh haystack for k4v3, chosen after A and B were seen; D
# (seed 3) is a fresh 112K haystack (issue 27's long row), built after the default was chosen
HAYSTACKS = {"A": 0, "B": 1, "C": 2, "D": 3}
ROLE = {"A": "choosing", "B": "confirming", "C": "confirming, fresh", "D": "confirming, fresh, 112K"}
TOKENS = {"D": 112_000}  # haystack -> its length in tokens when --tokens is not given (the others: 28,000)
# row label -> (block codec, gate index dtype); bfloat16 with a float16 index is today's default
ROWS = {
    "bfloat16": ("bfloat16", "float16"),
    "int8": ("int8", "float16"),
    "int4": ("int4", "float16"),
    "k4v2": ("k4v2", "float16"),
    "k4v2+i8": ("k4v2", "int8"),
    "k4v3+i8": ("k4v3", "int8"),
    "int4+i8": ("int4", "int8"),
    "int2+i8": ("int2", "int8"),
    "none": ("none", "float16"),
}
# Candidates no codec implements yet, measured by quantising the bfloat16 bank's blocks in memory with the store's
# own group quantiser (exactly what a packed codec would decode to): label -> (key bits, value bits, key group,
# value group); the index is int8. Bytes are computed (codes, float16 scale and zero per group), timings are not a
# codec's (nothing is decoded per read).
SIMULATED = {"k4v3g128+i8": (4, 3, 128, 64)}
ELEMENTS_PER_TOKEN = 11_520  # SmolLM2-135M: 30 layers x 3 KV heads x 64 channels x (keys, values)
BANK = "haystack"
PLOTS = Path(__file__).resolve().parent / "plots"
LYCHEE = [sys.executable, "-m", "lychee_memory.cli"]


def lychee(*args: str) -> dict:
    """Run a ``lychee`` CLI command in a fresh process and return its JSON output."""
    done = subprocess.run([*LYCHEE, *args, "--json"], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"lychee {' '.join(args)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout)


def why_wrong(record: dict) -> str:
    """Why an answer is wrong: rank (stage 2 did not put the fact's block first), copy (it names a code the document
    lacks), other number (it names a number the document holds elsewhere: a year, another code) or text."""
    if record["right"]:
        return "right"
    if not record["fact_first"]:
        return "rank"
    if record["copying_failure"]:
        return "copy"
    return "other number" if re.search(r"\d{3,}", record["answer"]) else "text"


def dequantisation_ms(store, name: str) -> float:
    """Mean milliseconds to read, checksum and decode one stored block of the bank (its stored codec)."""
    from lychee_memory.store.codec import INDEX_ONLY
    from lychee_memory.store.reading import check_block

    manifest = store.bank_manifest(name)
    entries = [entry for _, _, entry in manifest.entries() if entry.storage != INDEX_ONLY]
    if not entries:
        return float("nan")
    started = time.perf_counter()
    for entry in entries:
        check_block(store.objects.block(entry.key), entry, manifest, None)
    return 1000 * (time.perf_counter() - started) / len(entries)


def simulated_bank(bank, key_bits: int, value_bits: int, key_group: int, value_group: int):
    """The stored bank in memory with its blocks through group quantisation (keys per channel along slots, values
    per slot along channels) and its index through the int8 index codec."""
    import dataclasses

    from lychee_memory.blocks import MemoryBank
    from lychee_memory.gate.index_format import IndexSpec, dequantize_index, quantize_index
    from lychee_memory.store.codec import dequantize_groups, quantize_groups

    blocks = []
    for index in range(len(bank)):
        block = bank.block(index)
        codes = quantize_groups(block.keys, key_bits, key_group, dim=2, valid=block.valid)
        keys = dequantize_groups(*codes, key_group, dim=2, size=block.keys.shape[2]).to(block.keys.dtype)
        codes = quantize_groups(block.values, value_bits, value_group, dim=3)
        values = dequantize_groups(*codes, value_group, dim=3, size=block.values.shape[3]).to(block.values.dtype)
        gate = dequantize_index(*quantize_index(bank.gate_keys(index)))
        blocks.append(dataclasses.replace(block, keys=keys, values=values, gate_keys=gate))
    spec = dataclasses.replace(IndexSpec.from_description(bank.gate_index), dtype="int8").describe()
    return MemoryBank.from_blocks(bank.documents, blocks, bank.identity, gate_index=spec)


def simulated_bytes(parts: dict, key_bits: int, value_bits: int, key_group: int, value_group: int) -> dict:
    """Computed bytes per token of a simulated row: codes plus a float16 scale and zero per group, the int8 index
    at the measured 387.8 B/token (BENCHMARKS.md, a compact gate index), the bfloat16 bank's texts and manifests."""
    per_element = (key_bits / 8 + 4 / key_group + value_bits / 8 + 4 / value_group) / 2
    found = {"blocks": per_element * ELEMENTS_PER_TOKEN, "index": 387.8}
    found.update({part: value for part, value in parts.items() if part not in ("blocks", "index", "total")})
    found["total"] = sum(found.values())
    return found


def prepared_store(
    root: Path, row: str, engine, context: str, bank: str = BANK, label: str = ""
) -> tuple[Path, float | None]:
    """The row's store under ``root`` (one haystack's directory): the bfloat16 ingest of ``context`` as ``bank``
    (made once; its seconds, else None), or a copy of it converted by ``store recompress`` in a fresh process."""
    from lychee_memory.store import MemoryStore

    base = root / "bfloat16"
    ingest_seconds = None
    if not (base / "ingested").exists():
        shutil.rmtree(base, ignore_errors=True)
        print(f"{label}ingesting {len(context)} chars in bfloat16 into {base}", flush=True)
        started = time.perf_counter()
        with MemoryStore(base, block_dtype="bfloat16") as store:
            engine.ingest([context], store=store, bank=bank, show_progress=True)
        ingest_seconds = time.perf_counter() - started
        (base / "ingested").write_text(json.dumps({"seconds": ingest_seconds}))
        print(f"{label}ingested in {ingest_seconds:.0f} s", flush=True)
    if row == "bfloat16" or row in SIMULATED:
        return base, ingest_seconds
    codec, index_dtype = ROWS[row]
    target = root / row
    if not (target / "converted").exists():
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(base, target)
        conversion = ["store", "recompress", bank, "--store", str(target), "--codec", codec]
        if index_dtype != "float16":
            conversion += ["--index-dtype", index_dtype]
        report = lychee(*conversion)
        lychee("store", "gc", "--store", str(target))
        (target / "converted").write_text(json.dumps(report))
        print(f"{label}{row}: recompressed ({report['seconds']:.1f} s)", flush=True)
    return target, None


def open_row(args: argparse.Namespace, haystack: str, row: str, engine, context: str) -> dict:
    """The row's bank opened from its store (prepared first), with its bytes and per-block dequantisation ms."""
    from lychee_memory.store import MemoryStore

    where, ingest_seconds = prepared_store(args.store / haystack, row, engine, context, label=f"[{haystack}] ")
    usage = lychee("store", "du", "--store", str(where))
    parts = usage["bank_parts"][BANK]
    store = MemoryStore(where, create=False)
    dequant = dequantisation_ms(store, BANK)
    bank = engine.open_bank(BANK, store)
    if row in SIMULATED:
        bank = simulated_bank(bank, *SIMULATED[row])
        parts = {**parts, "per_token": simulated_bytes(parts["per_token"], *SIMULATED[row])}
        dequant = float("nan")
    return {"bank": bank, "store": store, "parts": parts, "dequant": dequant, "ingest_s": ingest_seconds}


def answer_outcome(sample, text: str, context: str) -> dict:
    """What every per-question record says of an answer: the question, gold, answer, right (sub_em) and whether
    it names a code the document does not hold."""
    from lychee_memory.eval.metrics import sub_em

    return {
        "sample": sample.sample_id,
        "question": sample.question,
        "gold": sample.answers[0],
        "answer": text,
        "right": sub_em(text, sample.answers),
        "copying_failure": copying_failure(text, context),
    }


def ask_one(haystack: str, row: str, opened: dict, sample, engine, context: str, position: int) -> dict:
    """Ask one question of one row's bank, timed; the record of its outcome (see the module docstring)."""

    bank = opened["bank"]
    ((start, end),) = sample.evidence
    facts = [i for i, s in enumerate(bank.spans) if s.char_start < end and start < s.char_end]
    load = os.getloadavg()[0]
    started = time.perf_counter()
    answer = engine.ask(sample.question, bank)
    seconds = time.perf_counter() - started
    first = [s for s in answer.gate_scores if s.memory_step == 0]
    top = max(first, key=lambda s: (s.score, -s.index)).index if first else None
    passed = set().union(*answer.candidates[:1]) if answer.candidates else set(range(len(bank)))
    record = {
        "haystack": haystack,
        "role": ROLE[haystack],
        "row": row,
        "codec": ROWS[row][0] if row in ROWS else f"{row} (simulated)",
        "index_dtype": ROWS[row][1] if row in ROWS else "int8",
        **answer_outcome(sample, answer.text, context),
        "fact_blocks": facts,
        "stage2_first": top,
        "fact_first": top in facts,
        "fact_in_stage1": any(i in passed for i in facts),
        "blocks_read": [b.index for b in answer.blocks],
        "query_s": round(seconds, 3),
        "order_position": position,  # where in this question's row order it ran (interleaved runs), else -1
        "load_1min": round(load, 2),
        "blocks": len(bank),
        "tokens": bank.num_tokens,
        "bytes_per_token": opened["parts"]["per_token"],
        "dequant_ms_per_block": round(opened["dequant"], 3),
        "ingest_s": opened["ingest_s"],
    }
    print(
        f"[{haystack}] {row:9s} {sample.sample_id}: right={record['right']} first={record['fact_first']} "
        f"stage1={record['fact_in_stage1']} read={record['blocks_read']} {seconds:.1f}s load={load:.2f} "
        f"answer={answer.text[:60]!r}",
        flush=True,
    )
    return record


def rotated(rows: list[str], turn: int) -> list[str]:
    """``rows`` started at position ``turn`` (modulo their number), so each row runs first in turn."""
    shift = turn % len(rows) if rows else 0
    return rows[shift:] + rows[:shift]


def run_haystack(args: argparse.Namespace, haystack: str, engine, pool) -> None:
    """Every row of ``args.rows`` on the haystack's questions: row after row, or with ``--interleave`` every row
    on question q (in an order rotated per question) before question q + 1, so load swings hit the rows alike."""
    from lychee_memory.eval.tasks import many_needle_sample

    tokens = args.tokens or TOKENS.get(haystack, 28_000)
    if tokens > 28_000:  # a pool as long as the haystack, so no paragraph repeats (A, B and C keep their 1,500)
        from lychee_memory.eval.haystack import generated_paragraphs

        pool = generated_paragraphs(count=round(len(pool) * tokens / 28_000))
    samples = many_needle_sample(pool, engine.loaded.tokenizer, tokens, args.needles, HAYSTACKS[haystack])
    samples = samples[: args.questions] if args.questions else samples
    context = samples[0].context
    (args.store / haystack).mkdir(parents=True, exist_ok=True)
    (args.store / haystack / "context.txt").write_text(context, encoding="utf-8")  # for --report's copy check

    def write(record: dict) -> None:
        record["interleaved"] = args.interleave
        with args.records.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    print(f"[{haystack}] load average at start: {os.getloadavg()}", flush=True)
    if not args.interleave:
        for row in args.rows:
            opened = open_row(args, haystack, row, engine, context)
            engine.ask(samples[0].question, opened["bank"])  # warm-up: model, caches, index
            for sample in samples:
                write(ask_one(haystack, row, opened, sample, engine, context, -1))
            del opened["bank"]
            opened["store"].close()
    else:
        opened = {row: open_row(args, haystack, row, engine, context) for row in args.rows}
        for row in args.rows:
            started = time.perf_counter()
            engine.ask(samples[0].question, opened[row]["bank"])  # warm-up: model, caches, index
            print(f"[{haystack}] {row}: warm-up {time.perf_counter() - started:.1f} s", flush=True)
        for turn, sample in enumerate(samples):
            for position, row in enumerate(rotated(list(args.rows), turn)):
                write(ask_one(haystack, row, opened[row], sample, engine, context, position))
        for entry in opened.values():
            del entry["bank"]
            entry["store"].close()
    print(f"[{haystack}] load average at end: {os.getloadavg()}", flush=True)


def latency(records: list[dict]) -> list[dict]:
    """Warm query seconds per haystack and row from the interleaved records: the median, and the median over
    questions of the row's time over bfloat16's on the same question (asked in the same turn, same process)."""
    timed = [record for record in records if record.get("interleaved")]
    base = {(r["haystack"], r["sample"]): r["query_s"] for r in timed if r["row"] == "bfloat16"}
    groups: dict[tuple[str, str], list[dict]] = {}
    for record in timed:
        groups.setdefault((record["haystack"], record["row"]), []).append(record)
    found = []
    for (haystack, row), group in groups.items():
        seconds = [r["query_s"] for r in group]
        ratios = [r["query_s"] / base[haystack, r["sample"]] for r in group if (haystack, r["sample"]) in base]
        loads = [r["load_1min"] for r in group if "load_1min" in r]
        found.append(
            {
                "haystack": haystack,
                "row": row,
                "n": len(group),
                "median_query_s": statistics.median(seconds),
                "min_query_s": min(seconds),
                "max_query_s": max(seconds),
                "median_ratio_to_bfloat16": statistics.median(ratios) if ratios else None,
                "ratios_n": len(ratios),
                "load_1min": [min(loads), max(loads)] if loads else None,
                "bytes_per_token": group[0]["bytes_per_token"]["total"],
            }
        )
    return found


def report(records: list[dict], out: Path, contexts: dict[str, str], name: str = "codec_answers") -> str:
    """JSON summary, markdown tables (answers; interleaved warm latency) and PNG (answers right and latency ratio
    vs bytes/token) of the records, written as ``out/name.*`` (copying failures checked again against each
    haystack's text when ``contexts`` holds it)."""
    rows: dict[str, list[dict]] = {}
    for record in records:
        if record["haystack"] in contexts:
            record["copying_failure"] = copying_failure(record["answer"], contexts[record["haystack"]])
        rows.setdefault(record["row"], []).append(record)
    reference = {(r["haystack"], r["sample"]): r for r in rows.get("bfloat16", [])}
    summary = []
    for row, group in rows.items():
        differs = []
        for record in group:
            ref = reference.get((record["haystack"], record["sample"]))
            if ref is None:
                continue
            what = [
                key for key in ("right", "fact_first", "fact_in_stage1") if record[key] != ref[key]
            ]  # outcomes that changed vs bfloat16
            if what:
                changes = ", ".join(f"{k} {ref[k]}->{record[k]}" for k in what)
                differs.append(f"{record['sample']} ({changes}; {why_wrong(record)}: {record['answer'][-24:]!r})")
        entry = {"row": row, "codec": group[0]["codec"], "index_dtype": group[0]["index_dtype"]}
        for haystack in HAYSTACKS:
            part = [r for r in group if r["haystack"] == haystack]
            if part:
                entry[haystack] = {
                    "n": len(part),
                    "right": sum(r["right"] for r in part),
                    "fact_first": sum(r["fact_first"] for r in part),
                    "fact_in_stage1": sum(r["fact_in_stage1"] for r in part),
                    "copying_failures": sum(r["copying_failure"] for r in part),
                    "blocks_read_mean": statistics.mean(len(r["blocks_read"]) for r in part),
                    "median_query_s": statistics.median(r["query_s"] for r in part),
                    "bytes_per_token": part[0]["bytes_per_token"],
                    "dequant_ms_per_block": part[0]["dequant_ms_per_block"],
                }
        entry["differences_vs_bfloat16"] = differs
        summary.append(entry)
    timings = latency(records)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(
        json.dumps({"rows": summary, "latency": timings, "records": records}, indent=1) + "\n"
    )

    lines = [
        "| row (blocks + index) | haystack | all-in B/token | right | fact first (stage 2) | fact in stage 1 | "
        "copying failures | blocks read | median warm query s | dequant ms/block | differences vs bfloat16 |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for entry in summary:
        for haystack in HAYSTACKS:
            if haystack not in entry:
                continue
            part = entry[haystack]
            mine = [d for d in entry["differences_vs_bfloat16"] if d.startswith(f"needles{HAYSTACKS[haystack]}-")]
            lines.append(
                f"| {entry['row']} | {haystack} ({ROLE[haystack]}) | {part['bytes_per_token']['total']:,.0f} | "
                f"{part['right']}/{part['n']} | {part['fact_first']}/{part['n']} | "
                f"{part['fact_in_stage1']}/{part['n']} | "
                f"{part['copying_failures']} | {part['blocks_read_mean']:.1f} | {part['median_query_s']:.2f} | "
                f"{part['dequant_ms_per_block']:.1f} | {'; '.join(mine) or '-'} |"
            )
    if timings:
        lines += [
            "",
            "| row | haystack | n | median warm query s | min-max s | median ratio to bfloat16 (same question) | "
            "load (1 min) during |",
            "|---|---|---:|---:|---:|---:|---|",
        ]
        for entry in timings:
            ratio = entry["median_ratio_to_bfloat16"]
            load = entry["load_1min"]
            lines.append(
                f"| {entry['row']} | {entry['haystack']} | {entry['n']} | {entry['median_query_s']:.2f} | "
                f"{entry['min_query_s']:.1f}-{entry['max_query_s']:.1f} | "
                f"{'-' if ratio is None else f'{ratio:.2f}'} | {'-' if load is None else f'{load[0]:.1f}-{load[1]:.1f}'} |"
            )
    table = "\n".join(lines) + "\n"
    (out / f"{name}.md").write_text(table)
    _plot(summary, timings, out / f"{name}.png")
    return table


def _plot(summary: list[dict], timings: list[dict], path: Path) -> None:
    """Answers right per haystack (left) and the interleaved latency ratio to bfloat16 (right) vs all-in bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2 if timings else 1, figsize=(13 if timings else 8, 5), squeeze=False)
    answers = axes[0][0]
    haystacks = [h for h in HAYSTACKS if any(h in entry for entry in summary)]
    named: set[str] = set()
    for shade, haystack in enumerate(haystacks):
        ranked = sorted(
            (entry for entry in summary if haystack in entry), key=lambda e: e[haystack]["bytes_per_token"]["total"]
        )
        xs = [entry[haystack]["bytes_per_token"]["total"] for entry in ranked]
        ys = [entry[haystack]["right"] for entry in ranked]
        label = f"{haystack} ({ROLE[haystack]}), of {ranked[0][haystack]['n']}"
        answers.plot(xs, ys, linestyle="none", marker="ox^s"[shade % 4], color=f"C{shade}", label=label)
        for number, (entry, x, y) in enumerate(zip(ranked, xs, ys)):
            if entry["row"] not in named:  # a row is named once: its bytes are the same on every haystack
                named.add(entry["row"])
                offset = (4, -12 + 9 * (number % 3))
                answers.annotate(entry["row"], (x, y), textcoords="offset points", xytext=offset, fontsize=7)
    answers.set_xscale("log")
    answers.set_xlabel("all-in bytes per document token (log; lychee store du)")
    answers.set_ylabel("answers right")
    answers.set_title("SmolLM2-135M needles: answers right per codec")
    answers.legend(fontsize=8)
    for axis in axes[0]:
        axis.axvline(6000, color="grey", linestyle=":", linewidth=1)
        axis.axvline(3500, color="grey", linestyle=":", linewidth=1)
    if timings:
        ratios = axes[0][1]
        for shade, haystack in enumerate(haystacks):
            mine = sorted(
                (t for t in timings if t["haystack"] == haystack and t["median_ratio_to_bfloat16"] is not None),
                key=lambda t: t["bytes_per_token"],
            )
            if not mine:
                continue
            xs = [t["bytes_per_token"] for t in mine]
            ys = [t["median_ratio_to_bfloat16"] for t in mine]
            ratios.plot(
                xs,
                ys,
                linestyle="none",
                marker="ox^s"[shade % 4],
                color=f"C{shade}",
                label=f"{haystack}, n={mine[0]['n']} per row",
            )
            for entry, x, y in zip(mine, xs, ys):
                label = f"{entry['row']} {entry['median_query_s']:.1f} s"
                ratios.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4 - 12 * shade), fontsize=7)
        ratios.axhline(1.0, color="grey", linewidth=1)
        ratios.set_xscale("log")
        ratios.set_xlabel("all-in bytes per document token (log)")
        ratios.set_ylabel("warm query time / bfloat16's, median over questions")
        ratios.set_title("interleaved rows, one process, one thread")
        ratios.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=list(HAYSTACKS), action="append", help="haystacks to run (default all)")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=[*ROWS, *SIMULATED])
    parser.add_argument("--tokens", type=int, default=None, help="haystack length (default 28,000; D: 112,000)")
    parser.add_argument("--needles", type=int, default=10)
    parser.add_argument("--questions", type=int, default=0, help="ask only the first N questions (0: all)")
    parser.add_argument(
        "--interleave", action="store_true", help="every row on question q (rotated order) before q + 1: fair timing"
    )
    parser.add_argument("--store", type=Path, default=Path("/tmp/codec_answers"), help="stores kept here across runs")
    parser.add_argument("--records", type=Path, default=Path("/tmp/codec_answers/records.jsonl"))
    parser.add_argument("--report", action="store_true", help="only write the report from --records")
    parser.add_argument("--out", type=Path, default=PLOTS)
    parser.add_argument("--name", default="codec_answers", help="report file stem under --out")
    args = parser.parse_args()
    args.store.mkdir(parents=True, exist_ok=True)
    if not args.report:
        from lychee_memory import LycheeMemory
        from lychee_memory.eval.haystack import generated_paragraphs

        # Today's engine, pinned (bfloat16 blocks are pinned at the ingest): the float16 index every row starts from.
        # key stage 1, as every recorded row was measured: its float16 key index is what the +i8 rows convert (the
        # embedded default now ranks by BM25 and builds no key index)
        engine = LycheeMemory.from_pretrained(show_progress=False, gate={"index_dtype": "float16", "prefilter": "keys"})
        print(f"engine: {engine.config.model.spec} read_mode={engine.config.reasoner.read_mode}", flush=True)
        pool = generated_paragraphs(count=1500)
        for haystack in args.only or list(HAYSTACKS):
            run_haystack(args, haystack, engine, pool)
    records = [json.loads(line) for line in args.records.read_text().splitlines() if line.strip()]
    records = [record for record in records if not args.only or record["haystack"] in args.only]
    contexts = {
        name: (args.store / name / "context.txt").read_text(encoding="utf-8")
        for name in HAYSTACKS
        if (args.store / name / "context.txt").exists()
    }
    print(report(records, args.out, contexts, args.name))


if __name__ == "__main__":
    main()
