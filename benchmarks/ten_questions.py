"""Ten questions over one document, everything a user pays included, every method in one process.

One generated haystack (default 28K tokens) holds ten distinct planted facts, one question each. On one loaded
model (SmolLM2-135M by default):
  - ``lychee``: ``engine.ingest`` into a fresh store (timed: the build), then the ten questions one at a time;
  - ``lychee-batched``: the same bank, all ten questions in one ``engine.ask_many`` (scans and decodes batched);
  - ``rag`` / ``hybrid-rag``: the MiniLM index (hybrid: with BM25 term counts) built (timed), then the questions;
  - ``memagent``: nothing to build; by default all ten questions in one ``MemAgent.ask_many`` (one read of the raw
    text, the ten memories rewritten as one batch per chunk: its best case); ``--memagent one-by-one`` asks them
    one at a time, as a single-question agent would; ``none`` skips it.
The one-at-a-time questions rotate their order per question, so load swings hit every method alike. A method's total
is its build plus every question's seconds; the table gives each total against LycheeMemory's.

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/ten_questions.py --out /tmp/ten_questions
    python benchmarks/ten_questions.py --report /tmp/ten_questions   # the table (and PNG) again

Writes records.jsonl (one line per build and per question), ten_questions.png, and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from codec_answers import answer_outcome, rotated

from lychee_memory.eval.bench import stream_rag
from lychee_memory.eval.rag import RagBaseline

ONE_AT_A_TIME = ["lychee", "rag", "hybrid-rag"]
METHODS = ["lychee", "lychee-batched", "rag", "hybrid-rag", "memagent"]
SEED = 11  # a haystack no setting was chosen on (codec_answers.py's A-D are seeds 0-3)


def record_line(path: Path, record: dict) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def timed(method: str, step: str, seconds: float, **extra) -> dict:
    """A record of one step of a method: ``build`` (ingest or index) or ``question`` (one or a batch)."""
    return {
        "method": method,
        "step": step,
        "seconds": round(seconds, 3),
        "load_1min": round(os.getloadavg()[0], 2),
        **extra,
    }


def ask_batched(method: str, ask_many, samples: list, context: str, records: Path) -> None:
    """All the questions in one batched call, timed; each question's record gets an equal share of the time."""
    started = time.perf_counter()
    answers = ask_many([sample.question for sample in samples])
    seconds = time.perf_counter() - started
    for sample, answer in zip(samples, answers):
        outcome = answer_outcome(sample, answer.text, context)
        record_line(records, timed(method, "question", seconds / len(samples), batch=len(samples), **outcome))
    print(f"{method} (batched): {len(samples)} questions in {seconds:.1f} s", flush=True)


def run(args: argparse.Namespace) -> None:
    from lychee_memory.baselines import MemAgent
    from lychee_memory.engine import LycheeMemory
    from lychee_memory.eval.haystack import generated_paragraphs
    from lychee_memory.eval.tasks import many_needle_sample
    from lychee_memory.store import MemoryStore

    engine = LycheeMemory.from_pretrained(args.model, show_progress=False)
    pool = generated_paragraphs(count=max(1500, round(1500 * args.tokens / 28_000)))
    samples = many_needle_sample(pool, engine.loaded.tokenizer, args.tokens, args.questions, args.seed)
    context = samples[0].context
    args.out.mkdir(parents=True, exist_ok=True)
    records = args.out / "records.jsonl"
    records.write_text("", encoding="utf-8")
    rags = {
        "rag": RagBaseline(engine, retrieval="dense", show_progress=False),
        "hybrid-rag": RagBaseline(engine, retrieval="hybrid", show_progress=False),
    }
    engine.ask("What is the warm-up question?", context[:2000])  # kernels and caches warm, outside every timing
    with tempfile.TemporaryDirectory(prefix="lychee-ten-") as directory:
        store = MemoryStore(directory)
        started = time.perf_counter()
        bank = engine.ingest([context], store=store, bank="ten")
        built = {"lychee": bank}
        record_line(records, timed("lychee", "build", time.perf_counter() - started, tokens=bank.num_tokens))
        print(f"lychee: ingested {bank.num_tokens:,} tokens in {time.perf_counter() - started:.1f} s", flush=True)
        for name, rag in rags.items():
            index = rag.build([context])
            built[name] = index
            record_line(records, timed(name, "build", index.build_seconds, tokens=index.num_tokens))
            print(f"{name}: index built in {index.build_seconds:.1f} s", flush=True)
        for turn, sample in enumerate(samples):
            for name in rotated(ONE_AT_A_TIME, turn):
                started = time.perf_counter()
                if name == "lychee":
                    text = engine.ask(sample.question, bank).text
                else:
                    text = stream_rag(rags[name], sample.question, built[name])[0].text
                seconds = time.perf_counter() - started
                outcome = answer_outcome(sample, text, context)
                record_line(records, timed(name, "question", seconds, **outcome))
                print(
                    f"{name:10s} {sample.sample_id}: right={outcome['right']} {seconds:.1f}s {text[:50]!r}", flush=True
                )
        ask_batched("lychee-batched", lambda questions: engine.ask_many(questions, bank), samples, context, records)
        store.close()
    agent = MemAgent(engine)
    if args.memagent == "batched":
        ask_batched("memagent", lambda questions: agent.ask_many(questions, [context]), samples, context, records)
    elif args.memagent == "one-by-one":
        for sample in samples:
            started = time.perf_counter()
            text = agent.ask(sample.question, [context]).text
            seconds = time.perf_counter() - started
            record_line(
                records, timed("memagent", "question", seconds, batch=1, **answer_outcome(sample, text, context))
            )
            print(f"memagent {sample.sample_id}: {seconds:.1f} s {text[:50]!r}", flush=True)


def load(records: Path) -> list[dict]:
    return [json.loads(line) for line in records.read_text(encoding="utf-8").splitlines() if line.strip()]


def totals(rows: list[dict]) -> dict[str, dict]:
    """Per method: build seconds, questions seconds, total, answers right, questions, and how MemAgent batched.

    ``lychee-batched`` shares ``lychee``'s build: it reads the same bank."""
    result: dict[str, dict] = {}
    builds = {r["method"]: r["seconds"] for r in rows if r["step"] == "build"}
    for method in METHODS:
        asked = [r for r in rows if r["method"] == method and r["step"] == "question"]
        if not asked:
            continue
        build = builds.get("lychee" if method == "lychee-batched" else method, 0.0)
        questions = sum(r["seconds"] for r in asked)
        result[method] = {
            "build_s": build,
            "questions_s": questions,
            "total_s": build + questions,
            "right": sum(bool(r["right"]) for r in asked),
            "n": len(asked),
            "copying_failures": sum(bool(r.get("copying_failure")) for r in asked),
            "median_question_s": statistics.median(r["seconds"] for r in asked),
            "batch": max(r.get("batch", 1) for r in asked),
        }
    return result


def report(records: Path) -> str:
    summary = totals(load(records))
    lychee = summary.get("lychee", {}).get("total_s")
    lines = [
        "| method | build s | questions s | total s | right | copying failures | median question s | batch "
        "| total / LycheeMemory's |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for method, row in summary.items():
        ratio = f"{row['total_s'] / lychee:.2f}" if lychee else "-"
        lines.append(
            f"| {method} | {row['build_s']:.1f} | {row['questions_s']:.1f} | {row['total_s']:.1f} | "
            f"{row['right']}/{row['n']} | {row['copying_failures']} | {row['median_question_s']:.2f} | "
            f"{row['batch']} | {ratio} |"
        )
    return "\n".join(lines)


def plot(records: Path, out: Path) -> None:
    """Each method's total as a stacked bar (build, then questions), labelled with its seconds and answers right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = totals(load(records))
    names = list(summary)
    figure, axis = plt.subplots(figsize=(8, 0.6 * len(names) + 1.6))
    builds = [summary[n]["build_s"] for n in names]
    questions = [summary[n]["questions_s"] for n in names]
    axis.barh(names, builds, color="C0", label="build (ingest or index)")
    asked = max(summary[n]["n"] for n in names)
    axis.barh(names, questions, left=builds, color="C1", label=f"{asked} questions")
    for position, name in enumerate(names):
        row = summary[name]
        axis.text(row["total_s"], position, f" {row['total_s']:.0f} s, {row['right']}/{row['n']} right", va="center")
    axis.invert_yaxis()
    axis.set_xlabel("seconds, build included")
    axis.set_xlim(0, 1.3 * max(summary[n]["total_s"] for n in names))  # room for the labels
    axis.legend(loc="upper right", fontsize=8)
    axis.set_title(f"{asked} questions over one document, one process")
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=28_000, help="the document's length in tokens")
    parser.add_argument("--questions", type=int, default=10, help="facts planted, one question each")
    parser.add_argument("--seed", type=int, default=SEED, help="which generated haystack (and ten facts)")
    parser.add_argument("--memagent", choices=["batched", "one-by-one", "none"], default="batched")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--out", type=Path, default=Path("ten_questions"))
    parser.add_argument("--report", type=Path, help="a finished run's --out: print its table, redraw its plot, stop")
    args = parser.parse_args()
    if args.report is None:
        run(args)
    folder = args.report or args.out
    print(report(folder / "records.jsonl"))
    plot(folder / "records.jsonl", folder / "ten_questions.png")


if __name__ == "__main__":
    main()
