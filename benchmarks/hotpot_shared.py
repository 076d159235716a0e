"""HotpotQA in one shared haystack: both-gold coverage, sub_em, whether the evidence holds the answer, and
supporting-fact recall per method and block size.

For each length one haystack holds the gold paragraphs of the shared file's questions (as many as fit in
--gold-share of it) among all the questions' other paragraphs (eval.shared_haystack); it is ingested once per
block size and every question is asked with every method. Methods are named engine-setting overrides
(``NAME`` or ``NAME:section.field=value;...``); each RAG variant (eval.shared_bench.RAG_VARIANTS, MiniLM over
256-token chunks) retrieves, per question, as many tokens as that method's run read (``--rag-match evidence``: as
many as the evidence that reached its answer, its excerpts). Questions are split as the
gate trainer split them: its held-out ~40 % confirm what the others tuned; every measure is given per split,
with exact 95 % intervals and paired wins/losses against each RAG (eval.paired).

    python benchmarks/hotpot_shared.py --data ../shared/data --lengths 28k --block-tokens 256,512,1024 --n 10
    python benchmarks/hotpot_shared.py --lengths 28k,56k --method default \\
        --method excerpts:reasoner.memory=excerpts --method hybrid:gate.prefilter=hybrid --rag rag
    python benchmarks/hotpot_shared.py --lengths 56k --method recipe --method wide:reasoner.excerpt_total_tokens=1024 \\
        --rag-for recipe --resume old/records.jsonl --out new   # go on from a stopped run; add a method

Writes records.jsonl, summary.md (shares, paired table, banks) and shares.png to --out.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def block_sizes(text: str) -> list[int | None]:
    """``"256,512,1024"`` -> sizes; ``preset`` (or an empty value) keeps the engine's own block size."""
    sizes: list[int | None] = []
    for item in filter(None, (piece.strip() for piece in text.split(","))):
        if item == "preset":
            sizes.append(None)
        elif item.isdigit() and int(item) > 0:
            sizes.append(int(item))
        else:
            raise SystemExit(f"--block-tokens: {item!r} is neither a positive number of tokens nor 'preset'")
    return sizes or [None]


SPLIT_CHOICES = ("all", "tuning", "confirming")


def asked_questions(questions: list, split: str = "all", skip: int = 0, n: int = 0) -> list:
    """The questions a run asks: one split's in the haystack's order, or both alternating (so a small ``n`` samples
    both), then ``skip`` left out and at most ``n`` kept (0 = all)."""
    if split not in SPLIT_CHOICES:
        raise SystemExit(f"--split: {split!r} is not one of {', '.join(SPLIT_CHOICES)}")
    tuning = [q for q in questions if q.split == "tuning"]
    confirming = [q for q in questions if q.split == "confirming"]
    if split == "all":
        order = [q for pair in zip(tuning, confirming) for q in pair]
        order += tuning[len(confirming) :] + confirming[len(tuning) :]
    else:
        order = tuning if split == "tuning" else confirming
    return order[skip : skip + n] if n else order[skip:]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="dataset directory holding hotpotqa/ (else $LYCHEE_DATA_DIR)")
    parser.add_argument("--hotpot-file", type=Path, default=None, help="a HotpotQA JSON file instead of --data's")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--lengths", default="28k")
    parser.add_argument("--block-tokens", default="preset", help="comma-separated block sizes, or 'preset'")
    parser.add_argument(
        "--method", action="append", default=None, help="NAME[:key=value;...] (repeat; default: default)"
    )
    parser.add_argument(
        "--rag", action="append", default=None, help="RAG variant (repeat; default: rag; none = no RAG)"
    )
    parser.add_argument("--n", type=int, default=0, help="questions asked per length, splits alternating (0 = all)")
    parser.add_argument("--skip", type=int, default=0, help="leave out the first SKIP questions of that order")
    parser.add_argument(
        "--split", choices=SPLIT_CHOICES, default="all", help="ask only this split (all: both, alternating)"
    )
    parser.add_argument(
        "--rag-for", action="append", default=None, help="a method RAG is matched to (repeat; default: every method)"
    )
    parser.add_argument(
        "--rag-match",
        action="append",
        default=None,
        help="what RAG's tokens are matched on (repeat): read = the blocks the method read (default), evidence = "
        "the evidence that reached its answer (its excerpts); evidence rows are named rag@method/evidence",
    )
    parser.add_argument(
        "--resume",
        type=Path,
        nargs="+",
        default=None,
        help="records.jsonl of stopped runs with the same --data/--seed/--gold-share: their answers are kept, not "
        "asked again, and their RAG answers serve methods reading as many tokens",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gold-share", type=float, default=None, help="largest share of a length that is gold")
    parser.add_argument("--engine-option", action="append", default=[], help="key=value for every method's engine")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/hotpot_shared"))
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "--from-records",
        type=Path,
        nargs="+",
        default=None,
        help="write the summary and plot of earlier runs' records.jsonl files (their banks.json beside them) to --out",
    )
    args = parser.parse_args(argv)

    if args.from_records:
        return write_outputs(read_runs(args.from_records), args.out, argv)

    from lychee_memory import LycheeMemory
    from lychee_memory.eval.evidence import answer_in_evidence
    from lychee_memory.eval.shared_bench import (
        parse_method,
        parse_methods,
        rag_matches,
        rag_variants,
        run_shared,
    )
    from lychee_memory.eval.shared_haystack import DEFAULT_GOLD_SHARE, build_shared_haystack
    from lychee_memory.eval.tasks import TokenCounter, data_dir, load_hotpot, parse_lengths

    methods = parse_methods(args.method or ["default"])
    rags = rag_variants([name for name in args.rag or ["rag"] if name != "none"])
    matches = rag_matches(args.rag_match or ["read"])
    sizes = block_sizes(args.block_tokens)
    rows = json.loads(args.hotpot_file.read_text()) if args.hotpot_file else load_hotpot(data_dir(args.data))
    common = parse_method("all:" + ";".join(args.engine_option)).options
    base = LycheeMemory.from_pretrained(args.model, show_progress=not args.quiet, **common)
    count = TokenCounter(base.loaded.tokenizer)
    args.out.mkdir(parents=True, exist_ok=True)
    earlier, banks = read_runs(args.resume) if args.resume else ([], [])
    haystacks = {
        length: build_shared_haystack(rows, count, length, args.seed, args.gold_share or DEFAULT_GOLD_SHARE)
        for length in parse_lengths(args.lengths)
    }
    for record in earlier:  # records from before the measure existed gain it from their spans
        if "answer_in_evidence" not in record and record["length"] in haystacks:
            context = haystacks[record["length"]].context
            record["answer_in_evidence"] = answer_in_evidence(context, record["spans"], record["answers"])
    records = list(earlier)
    with open(args.out / "records.jsonl", "w", encoding="utf-8") as log:
        log.writelines(json.dumps(record) + "\n" for record in earlier)
        for length, haystack in haystacks.items():
            asked = asked_questions(haystack.questions, args.split, args.skip, args.n)
            print(
                f"{length} tokens: {haystack.paragraphs} paragraphs (~{haystack.tokens} tokens), "
                f"{len(haystack.questions)} questions in it ({len(haystack.left_out)} left out), {len(asked)} asked",
                flush=True,
            )
            kept = [record for record in earlier if record["length"] == length]
            for record in run_shared(
                base, haystack, methods, sizes, rags, asked, not args.quiet, banks, kept, args.rag_for, matches
            ):
                records.append(record)
                log.write(json.dumps(record) + "\n")
                log.flush()
                (args.out / "banks.json").write_text(json.dumps(banks, indent=2), encoding="utf-8")
    write_outputs((records, banks), args.out, argv)


def read_runs(paths: list[Path]) -> tuple[list[dict], list[dict]]:
    """Records and bank rows of earlier runs (a run stopped early still has every record it finished)."""
    records, banks = [], []
    for path in paths:
        records += [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if (path.parent / "banks.json").is_file():
            banks += json.loads((path.parent / "banks.json").read_text(encoding="utf-8"))
    return records, banks


def write_outputs(run: tuple[list[dict], list[dict]], out: Path, argv: list[str] | None) -> None:
    """summary.md (with the command) and shares.png in ``out``; the summary is printed too."""
    from lychee_memory.eval.shared_bench import plot_shares, summary_markdown

    records, banks = run
    groups: dict[tuple, set[str]] = {}
    for record in records:
        groups.setdefault((record["length"], record["block_tokens"], record["method"]), set()).add(record["sample_id"])
    common = {  # per length, the questions every block size and method answered (runs stopped early differ)
        length: set.intersection(*[ids for key, ids in groups.items() if key[0] == length])
        for length in {key[0] for key in groups}
    }
    kept = [record for record in records if record["sample_id"] in common[record["length"]]]
    if len(kept) != len(records):
        print(f"kept the questions every block size and method answered: {len(kept)} of {len(records)} records")
        records = kept
    out.mkdir(parents=True, exist_ok=True)
    summary = summary_markdown(records, banks)
    command = "python benchmarks/hotpot_shared.py " + " ".join(argv if argv is not None else sys.argv[1:])
    (out / "summary.md").write_text(f"`{command}`\n\n{summary}\n", encoding="utf-8")
    plot_shares(records, out / "shares.png")
    print(summary)


if __name__ == "__main__":
    main()
