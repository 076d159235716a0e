"""Persistent banks, measured side by side in one run: reuse, fresh-process queries, flat memory, bytes.

Builds needle-in-a-haystack documents from SQuAD paragraphs (read at run time from --data or
LYCHEE_DATA_DIR; nothing is copied into the repository) and measures, with the real ``lychee`` command
in fresh processes (wall time and peak RSS from /usr/bin/time):

1. first vs second ``lychee ingest DOC --store S --bank big`` of a ~120K-token document;
2. ``lychee ask --store S --bank big`` vs ``lychee ask DOC`` (no store: the document is compressed in memory);
3. peak RSS of ``lychee ask --bank`` on a ~30K-token bank vs a ~240K-token bank (two ~120K documents);
4. in this process: bytes stored per document token for float32, bfloat16 and int8 blocks, and int8 vs
   bfloat16 (and both vs float32) logit error and answer agreement on the same questions.

    python benchmarks/store_benchmark.py --data ../shared/data

Prints a table of ratios and writes JSON and a PNG plot to --out (default benchmarks/results/). Timings on
a shared CPU are approximate: another process may be running at the same time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TIME_BINARY = "/usr/bin/time"


def lychee_command() -> list[str]:
    script = Path(sys.executable).parent / "lychee"
    return [str(script)] if script.exists() else [sys.executable, "-m", "lychee_memory.cli"]


def run_cli(arguments: list[str], label: str) -> dict[str, Any]:
    """Run ``lychee ARGS`` in a fresh process; wall time and peak RSS (KiB, from /usr/bin/time)."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as measure:
        command = [TIME_BINARY, "-f", "%e %M", "-o", measure.name, *lychee_command(), *arguments]
        print(f"[{label}] lychee {' '.join(arguments)}", flush=True)
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if result.returncode != 0:
            raise RuntimeError(f"{label} failed ({result.returncode}):\n{result.stderr[-4000:]}")
        elapsed, peak_kib = measure.read().split()[-2:]
    output = json.loads(result.stdout) if result.stdout.strip().startswith("{") else {"stdout": result.stdout}
    print(f"[{label}] {wall:.1f}s, peak RSS {int(peak_kib) / 1024:.0f} MiB", flush=True)
    return {"wall_s": wall, "elapsed_s": float(elapsed), "peak_rss_mib": int(peak_kib) / 1024, "output": output}


def build_documents(args: argparse.Namespace, work: Path, tokenizer) -> dict[str, Any]:
    from lychee_memory.eval.needles import NEEDLES
    from lychee_memory.eval.tasks import data_dir, load_squad_paragraphs, needle_document

    paragraphs = load_squad_paragraphs(data_dir(args.data))
    needle, other = NEEDLES[1], NEEDLES[2]
    texts = {
        "big": needle_document(paragraphs, tokenizer, args.size, needle, 0.55, 7),
        "second": needle_document(paragraphs, tokenizer, args.size, other, 0.3, 8),
        "small": needle_document(paragraphs, tokenizer, args.small, needle, 0.55, 9),
    }
    files, tokens = {}, {}
    for name, text in texts.items():
        files[name] = work / f"needle-{name}.txt"
        files[name].write_text(text, encoding="utf-8")
        tokens[name] = len(tokenizer(text, add_special_tokens=False, verbose=False).input_ids)
    return {"texts": texts, "files": files, "tokens": tokens, "needle": needle, "paragraphs": paragraphs}


def squad_questions(directory: Path, document: str, limit: int) -> list[tuple[str, list[str]]]:
    """Answerable SQuAD questions whose paragraph is inside ``document``."""
    from lychee_memory.eval.tasks import SQUAD_FILE

    data = json.loads((directory / SQUAD_FILE).read_text(encoding="utf-8"))["data"]
    chosen = []
    for article in data:
        for paragraph in article["paragraphs"]:
            if paragraph["context"] not in document:
                continue
            for qa in paragraph["qas"]:
                if not qa.get("is_impossible") and qa["answers"]:
                    chosen.append((qa["question"], sorted({a["text"] for a in qa["answers"]})))
                    break
            if len(chosen) >= limit:
                return chosen
    return chosen


def measure_storage(args: argparse.Namespace, engine, document: str, questions, work: Path) -> dict[str, Any]:
    """Bytes per token for each block dtype, and what int8/bfloat16 do to logits, gate scores and answers."""
    import torch

    from lychee_memory import Document, MemoryStore
    from lychee_memory.eval import sub_em
    from lychee_memory.kv_prefix import PromptRow, logits_of, prefill

    started = time.perf_counter()
    reference = engine.ingest([Document.from_text(document, id="needle-small")])
    compress_seconds = time.perf_counter() - started
    tokens = reference.num_tokens
    banks, sizes = {}, {}
    for dtype in ("float32", "bfloat16", "int8"):
        store = MemoryStore(work / f"store-{dtype}", block_dtype=dtype)
        banks[dtype] = store.save_bank(reference, "small")  # lazy, read back in the engine's dtype
        info = store.bank_info("small")
        sizes[dtype] = {
            "block_bytes": info.stored_bytes,
            "bytes_per_token": info.stored_bytes / tokens,
            "store_bytes_per_token": store.usage().bytes / tokens,
        }
    del reference  # from here on every bank is read lazily from its store

    prompt = engine.prompts.encode_text("\n\nQuestion: " + questions[0][0])
    logit_errors: dict[str, list[float]] = {"bfloat16": [], "int8": [], "int8_vs_bfloat16": []}
    top1: dict[str, int] = {"bfloat16": 0, "int8": 0, "int8_vs_bfloat16": 0}
    with torch.inference_mode():
        for index in range(len(banks["float32"])):
            logits = {}
            for dtype, bank in banks.items():
                _, hidden = prefill(engine.loaded, [PromptRow(prompt, bank.block(index))])
                logits[dtype] = logits_of(engine.loaded, hidden[:, -1])[0]
            spread = logits["float32"].std().item()
            for name, (left, right) in {
                "bfloat16": ("bfloat16", "float32"),
                "int8": ("int8", "float32"),
                "int8_vs_bfloat16": ("int8", "bfloat16"),
            }.items():
                logit_errors[name].append((logits[left] - logits[right]).abs().max().item() / spread)
                top1[name] += int(logits[left].argmax() == logits[right].argmax())
    blocks = len(banks["float32"])

    texts = [question for question, _ in questions]
    answers: dict[str, list] = {}
    query_seconds = {}
    for dtype, bank in banks.items():
        started = time.perf_counter()
        answers[dtype] = engine.ask_many(texts, bank)
        query_seconds[dtype] = time.perf_counter() - started

    def agreement(left: str, right: str) -> dict[str, Any]:
        same_text = sum(a.text.strip() == b.text.strip() for a, b in zip(answers[left], answers[right]))
        same_blocks = sum(
            [x.index for x in a.blocks] == [x.index for x in b.blocks] for a, b in zip(answers[left], answers[right])
        )
        score_gaps = []
        for a, b in zip(answers[left], answers[right]):
            right_scores = {(s.index, s.memory_step): s.score for s in b.gate_scores}
            score_gaps.extend(
                abs(s.score - right_scores[(s.index, s.memory_step)])
                for s in a.gate_scores
                if (s.index, s.memory_step) in right_scores
            )
        return {
            "same_answer": same_text,
            "same_blocks_read": same_blocks,
            "questions": len(texts),
            "max_gate_score_gap": max(score_gaps, default=0.0),
            "mean_gate_score_gap": sum(score_gaps) / max(1, len(score_gaps)),
        }

    return {
        "document_tokens": tokens,
        "blocks": blocks,
        "compress_seconds": compress_seconds,
        "sizes": sizes,
        "logit_error_over_std": {
            name: {"max": max(values), "mean": sum(values) / len(values)} for name, values in logit_errors.items()
        },
        "logit_top1_agreement": {name: count / blocks for name, count in top1.items()},
        "answer_agreement": {
            "int8_vs_bfloat16": agreement("int8", "bfloat16"),
            "int8_vs_float32": agreement("int8", "float32"),
            "bfloat16_vs_float32": agreement("bfloat16", "float32"),
        },
        "correct": {
            dtype: sum(sub_em(a.text, gold) for a, (_, gold) in zip(answers[dtype], questions)) for dtype in answers
        },
        "answers": {dtype: [a.text for a in answers[dtype]] for dtype in answers},
        "questions": [{"question": q, "answers": gold} for q, gold in questions],
        "query_seconds": query_seconds,
    }


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 5, figsize=(21, 4))
    ingest, ask, scaling = results["ingest"], results["ask"], results["rss_scaling"]
    tokens = results["tokens"]
    axes[0].bar(["first", "second"], [ingest["first"]["wall_s"], ingest["second"]["wall_s"]], color="tab:blue")
    axes[0].set_ylabel("seconds (fresh process)")
    axes[0].set_title(f"lychee ingest, ~{tokens['big'] // 1000}K tokens: {ingest['speedup']:.0f}x")
    labels = ["ask --bank", "ask DOC"]
    colors = ["tab:green", "tab:gray"]
    axes[1].bar(labels, [ask["bank"]["wall_s"], ask["documents"]["wall_s"]], color=colors)
    axes[1].set_ylabel("seconds (fresh process)")
    axes[1].set_title(f"question time: {ask['time_ratio']:.1f}x")
    axes[2].bar(labels, [ask["bank"]["peak_rss_mib"], ask["documents"]["peak_rss_mib"]], color=colors)
    axes[2].set_ylabel("peak RSS (MiB)")
    axes[2].set_title(f"question peak RSS: {ask['rss_ratio']:.1f}x")
    large_tokens = tokens["big"] + tokens["second"]
    axes[3].bar(
        [f"{tokens['small'] // 1000}K bank", f"{large_tokens // 1000}K bank"],
        [scaling["small"]["peak_rss_mib"], scaling["large"]["peak_rss_mib"]],
        color="tab:orange",
    )
    axes[3].set_ylabel("peak RSS (MiB)")
    axes[3].set_title(f"query peak RSS vs bank size: {scaling['ratio']:.2f}x")
    sizes = results["storage"]["sizes"]
    axes[4].bar(list(sizes), [sizes[d]["bytes_per_token"] / 1024 for d in sizes], color="tab:purple")
    axes[4].set_ylabel("KiB stored per document token")
    axes[4].set_title("block storage")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=os.environ.get("LYCHEE_DATA_DIR"))
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--size", type=int, default=120_000, help="tokens of the reused document (and of each half)")
    parser.add_argument("--small", type=int, default=30_000, help="tokens of the small bank")
    parser.add_argument("--questions", type=int, default=8, help="questions for the int8/bf16 answer agreement")
    parser.add_argument("--work", type=Path, default=None, help="where stores go (default: a temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the stores and documents afterwards")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    if not Path(TIME_BINARY).exists():
        sys.exit(f"{TIME_BINARY} is needed to measure child peak RSS")

    from lychee_memory import LycheeMemory
    from lychee_memory.eval.tasks import data_dir

    work = args.work or Path(tempfile.mkdtemp(prefix="lychee-store-benchmark-"))
    work.mkdir(parents=True, exist_ok=True)
    store = str(work / "store")
    engine = LycheeMemory.from_pretrained(args.model, show_progress=False)
    documents = build_documents(args, work, engine.loaded.tokenizer)
    files, needle = documents["files"], documents["needle"]
    common = ["--model", args.model, "--no-progress", "--json"]
    print(f"work dir {work}; documents: {documents['tokens']}", flush=True)
    results: dict[str, Any] = {"model": args.model, "tokens": documents["tokens"], "work": str(work)}
    try:
        first = run_cli(["ingest", str(files["big"]), "--store", store, "--bank", "big", *common], "ingest 1")
        second = run_cli(["ingest", str(files["big"]), "--store", store, "--bank", "big", *common], "ingest 2")
        results["ingest"] = {
            "first": first,
            "second": second,
            "speedup": first["wall_s"] / second["wall_s"],
            "second_compressed": second["output"]["stored"]["compressed"],
        }
        question = ["-q", needle.question]
        bank_ask = run_cli(["ask", "--store", store, "--bank", "big", *question, *common], "ask --bank big")
        doc_ask = run_cli(["ask", str(files["big"]), *question, *common], "ask DOC (no store)")
        results["ask"] = {
            "bank": bank_ask,
            "documents": doc_ask,
            "time_ratio": doc_ask["wall_s"] / bank_ask["wall_s"],
            "rss_ratio": doc_ask["peak_rss_mib"] / bank_ask["peak_rss_mib"],
            "expected": needle.answer,
        }
        run_cli(["ingest", str(files["small"]), "--store", store, "--bank", "small", *common], "ingest small")
        small = run_cli(["ask", "--store", store, "--bank", "small", *question, *common], "ask --bank small")
        large_ingest = run_cli(
            ["ingest", str(files["big"]), str(files["second"]), "--store", store, "--bank", "large", *common],
            "ingest large",
        )
        large = run_cli(["ask", "--store", store, "--bank", "large", *question, *common], "ask --bank large")
        results["rss_scaling"] = {
            "small": small,
            "large": large,
            "large_ingest": large_ingest,
            "ratio": large["peak_rss_mib"] / small["peak_rss_mib"],
        }
        results["store_usage"] = run_cli(["store", "du", "--store", store, "--json"], "store du")["output"]

        questions = [(needle.question, [needle.answer])]
        questions += squad_questions(data_dir(args.data), documents["texts"]["small"], args.questions - 1)
        print(f"[storage] {len(questions)} questions over the small document in float32/bfloat16/int8", flush=True)
        results["storage"] = measure_storage(args, engine, documents["texts"]["small"], questions, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "store_benchmark.json").write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
    plot(results, args.out / "store_benchmark.png")
    report(results)


def answer_of(run: dict[str, Any]) -> str:
    return str(run["output"].get("answer", "")).strip().replace("\n", " ")[:60]


def report(results: dict[str, Any]) -> None:
    ingest, ask, scaling, storage = results["ingest"], results["ask"], results["rss_scaling"], results["storage"]
    tokens = results["tokens"]
    rows = [
        (
            "second vs first `lychee ingest`",
            f"{ingest['first']['wall_s']:.1f}s -> {ingest['second']['wall_s']:.1f}s",
            f"{ingest['speedup']:.1f}x faster ({ingest['second_compressed']} blocks recompressed)",
        ),
        (
            "`ask --bank` vs `ask DOC`, time",
            f"{ask['bank']['wall_s']:.1f}s vs {ask['documents']['wall_s']:.1f}s",
            f"{ask['time_ratio']:.1f}x faster",
        ),
        (
            "`ask --bank` vs `ask DOC`, peak RSS",
            f"{ask['bank']['peak_rss_mib']:.0f} vs {ask['documents']['peak_rss_mib']:.0f} MiB",
            f"{ask['rss_ratio']:.1f}x less",
        ),
        (
            f"peak RSS, {tokens['small'] // 1000}K vs {(tokens['big'] + tokens['second']) // 1000}K-token bank",
            f"{scaling['small']['peak_rss_mib']:.0f} vs {scaling['large']['peak_rss_mib']:.0f} MiB",
            f"{scaling['ratio']:.3f}x ({(scaling['ratio'] - 1) * 100:+.1f} %)",
        ),
    ]
    for dtype, size in storage["sizes"].items():
        ratio = storage["sizes"]["float32"]["bytes_per_token"] / size["bytes_per_token"]
        rows.append(
            (
                f"bytes per document token, {dtype}",
                f"{size['bytes_per_token']:.0f} B",
                f"{ratio:.2f}x smaller than float32",
            )
        )
    for name, error in storage["logit_error_over_std"].items():
        rows.append(
            (
                f"max |logit error| / logit std, {name}",
                f"{error['max']:.4f} (mean {error['mean']:.4f})",
                f"top-1 same on {storage['logit_top1_agreement'][name] * 100:.0f} % of blocks",
            )
        )
    for name, agreement in storage["answer_agreement"].items():
        rows.append(
            (
                f"answers, {name}",
                f"{agreement['same_answer']}/{agreement['questions']} identical",
                f"same blocks read {agreement['same_blocks_read']}/{agreement['questions']}, "
                f"gate score gap max {agreement['max_gate_score_gap']:.4f}",
            )
        )
    rows.append(
        (
            "correct answers (sub_em) f32/bf16/int8",
            "/".join(str(storage["correct"][d]) for d in ("float32", "bfloat16", "int8")),
            f"of {len(storage['questions'])}",
        )
    )
    width = max(len(row[0]) for row in rows)
    middle = max(len(row[1]) for row in rows)
    print("\n" + "measure".ljust(width) + " | " + "values".ljust(middle) + " | ratio")
    print("-" * (width + middle + 30))
    for name, values, ratio in rows:
        print(name.ljust(width) + " | " + values.ljust(middle) + " | " + ratio)
    print(
        f"\nanswers: --bank {answer_of(ask['bank'])!r}, DOC {answer_of(ask['documents'])!r}, "
        f"expected {ask['expected']!r}; timings are approximate on a shared CPU"
    )


if __name__ == "__main__":
    main()
