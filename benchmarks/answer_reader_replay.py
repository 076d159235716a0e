"""Replay recorded HotpotQA answers with the reader changed, the evidence held fixed: what limits sub_em once the
evidence holds the answer.

``hotpot_shared.py`` records the spans of the evidence that reached each answer (a LycheeMemory method's excerpts,
a RAG variant's chunks). This script rebuilds the same shared haystack and answers every recorded question again
from that evidence, once per reader variant, on the same model; nothing is read or retrieved again:

- ``as-read``: the method's own final prompt and decoding (must reproduce the recorded answers: the count is
  printed, which checks the replay itself);
- ``copy``: the same prompt, greedy decoding kept to a verbatim span of the evidence (among each step's 64 most
  likely tokens; whitespace and case aside), or to Yes / No for a question opening with an auxiliary verb;
- ``paragraphs`` (excerpts only): each excerpt widened to its whole paragraph, in reading order, while the memory
  stays within the excerpt memory's total budget;
- ``rag-prompt`` (excerpts only): the RAG baseline's prompt (the evidence as the document, then the question).

With ``--engine-option reasoner_weights=FILE`` every variant, RAG's rows included, answers with that trained reasoner.

    python benchmarks/answer_reader_replay.py --data ../shared/data --lengths 28k \\
        --records benchmarks/plots/hotpot26_28k_all60/records.jsonl --method recipe \\
        --method "rag-hybrid@recipe/evidence" --out replay.jsonl
"""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path
from typing import Any

VARIANTS = ("as-read", "copy", "paragraphs", "rag-prompt")
AUXILIARIES = frozenset(
    "is are was were do does did can could has have had will would should shall may might must".split()
)
CANDIDATES = 64  # tokens looked at per step by the copy reader
COPY_TOKENS = 48  # the copy reader's longest answer: longer than any recorded answer it is compared with


def normalised(text: str) -> str:
    return " ".join(text.split()).lower()


def copy_decode(loaded: Any, prompt_ids: list[int], evidence: str, yes_no: bool, max_tokens: int) -> str:
    """Greedy decoding where each step takes the most likely of the top ``CANDIDATES`` tokens that keeps the text a
    span of ``evidence`` (or, for a yes/no question, the word yes or no, then stops); ends at a stop token, at a
    blank line, or when no candidate fits."""
    import torch

    tokenizer, model, stops = loaded.tokenizer, loaded.model, set(loaded.stop_token_ids)
    haystack = normalised(evidence)
    generated: list[int] = []
    with torch.inference_mode():
        out = model(torch.tensor([prompt_ids], device=loaded.device), use_cache=True)
        for _ in range(max_tokens):
            chosen = None
            for token in torch.topk(out.logits[0, -1], CANDIDATES).indices.tolist():
                if token in stops:
                    if generated:
                        chosen = token
                        break
                    continue
                text = normalised(tokenizer.decode(generated + [token]))
                fits = text.rstrip(".") in ("yes", "no") if yes_no else (text == "" or text in haystack)
                if fits:
                    chosen = token
                    break
            if chosen is None or chosen in stops:
                break
            generated.append(chosen)
            if yes_no or "\n\n" in tokenizer.decode(generated):
                break
            step = torch.tensor([[chosen]], device=loaded.device)
            out = model(step, past_key_values=out.past_key_values, use_cache=True)
    return tokenizer.decode(generated).split("\n\n")[0].strip()


def paragraph_of(context: str, start: int, end: int) -> tuple[int, int]:
    """The blank-line-separated paragraph of ``context`` holding ``[start, end)``."""
    before = context.rfind("\n\n", 0, start)
    after = context.find("\n\n", end)
    return (0 if before < 0 else before + 2), (len(context) if after < 0 else after)


def widened(context: str, spans: list[tuple[int, int]], budget: int, count: Any) -> str:
    """The excerpts with their paragraphs in place of them, paragraph by paragraph in reading order while the
    text stays within ``budget`` tokens; excerpts whose paragraph did not fit stay sentences."""
    paragraphs: list[tuple[int, int]] = []
    for start, end in spans:
        if (paragraph := paragraph_of(context, start, end)) not in paragraphs:
            paragraphs.append(paragraph)

    def text(chosen: list[tuple[int, int]]) -> str:
        rest = [context[s:e] for s, e in spans if not any(a <= s and e <= b for a, b in chosen)]
        return "\n".join([context[a:b] for a, b in chosen] + rest)

    chosen: list[tuple[int, int]] = []
    for paragraph in paragraphs:
        if count(text(chosen + [paragraph])) <= budget:
            chosen.append(paragraph)
    return text(chosen)


def rag_document(context: str, spans: list[tuple[int, int]]) -> str:
    """Retrieved chunks as the RAG baseline's prompt holds them: in document order, touching chunks rejoined."""
    parts: list[str] = []
    previous = None
    for start, end in sorted(spans):
        if previous is not None:
            parts.append("" if previous == start else "\n\n")
        parts.append(context[start:end])
        previous = end
    return "".join(parts)


def replay(engine: Any, haystack: Any, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per record: each applicable variant's answer and sub_em beside the recorded ones."""
    from dataclasses import replace

    from lychee_memory.eval.metrics import sub_em
    from lychee_memory.excerpts import Excerpt
    from lychee_memory.gate import ScanState
    from lychee_memory.generation import DecodingSettings, generate
    from lychee_memory.kv_prefix import PromptRow

    questions = {question.sample_id: question for question in haystack.questions}
    context, prompts, loaded = haystack.context, engine.prompts, engine.loaded
    settings = engine.config.reasoner
    decoding = DecodingSettings.for_reasoner(settings, settings.max_answer_tokens)
    strategy = engine.memory_strategy
    unbounded = replace(strategy, total_tokens=10**9)

    def count(text: str) -> int:
        return len(prompts.encode_text(text))

    def reader() -> Any:
        """The engine's trained reasoner adapter on, for every variant and for RAG's evidence too (none: a no-op)."""
        adapter = engine.reasoner.adapter
        return adapter.active() if adapter is not None else contextlib.nullcontext()

    rows = []
    for record in records:
        question = questions[record["sample_id"]].question
        spans = [tuple(span) for span in record["spans"]]
        if record["kind"] == "rag":
            evidence = rag_document(context, spans)
            prompt = prompts.full_context_prompt(question, evidence)
            variants = {"as-read": prompt, "copy": prompt}
        else:
            kept = [Excerpt(context[s:e], "haystack", s, e, 0, 0.0) for s, e in spans]
            state = ScanState(question, "")
            state.excerpts = unbounded.fit(question, kept, count)
            evidence = strategy.render(state.excerpts)
            prompt = prompts.final_prompt(question, evidence)
            wide = widened(context, spans, strategy.total_tokens, count)
            variants = {
                "as-read": prompt,
                "copy": prompt,
                "paragraphs": prompts.final_prompt(question, wide),
                "rag-prompt": prompts.full_context_prompt(question, evidence),
            }
        row = {key: record[key] for key in ("sample_id", "split", "type", "method", "answers", "answer", "sub_em")}
        yes_no = question.split()[0].lower() in AUXILIARIES
        for variant, prompt_ids in variants.items():
            with reader():
                if variant == "copy":
                    limit = min(COPY_TOKENS, settings.max_answer_tokens)
                    text = copy_decode(loaded, prompt_ids, evidence, yes_no, limit)
                else:
                    text = generate(loaded, [PromptRow(prompt_ids)], decoding)[0].text
            row[variant] = text
            row[f"sub_em_{variant}"] = sub_em(text, list(record["answers"]))
        rows.append(row)
        print(
            f"{record['method']} {record['sample_id']}: recorded {record['sub_em']:d}, "
            + ", ".join(f"{v} {row[f'sub_em_{v}']:d}" for v in variants),
            flush=True,
        )
    return rows


def summary(rows: list[dict[str, Any]]) -> str:
    """Per method and split: replays reproducing the recorded answer, and each variant's sub_em with its paired
    wins and losses against ``as-read``."""
    lines = ["| method | split | n | reproduced | " + " | ".join(VARIANTS) + " |", "|---|---|---|---|" + "---|" * 4]
    for method in dict.fromkeys(row["method"] for row in rows):
        for split in ("tuning", "confirming", "all"):
            chosen = [r for r in rows if r["method"] == method and (split == "all" or r["split"] == split)]
            if not chosen:
                continue
            same = sum(r["as-read"].strip() == r["answer"].strip() for r in chosen)
            cells = []
            for variant in VARIANTS:
                if variant not in chosen[0]:
                    cells.append("-")
                    continue
                right = sum(r[f"sub_em_{variant}"] for r in chosen)
                wins = sum(r[f"sub_em_{variant}"] and not r["sub_em_as-read"] for r in chosen)
                losses = sum(r["sub_em_as-read"] and not r[f"sub_em_{variant}"] for r in chosen)
                cells.append(str(right) if variant == "as-read" else f"{right} (+{wins} / -{losses})")
            lines.append(f"| {method} | {split} | {len(chosen)} | {same} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from lychee_memory.errors import ConfigurationError
    from lychee_memory.eval.replay import add_replay_arguments, replay_inputs

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_replay_arguments(parser)
    parser.add_argument("--method", action="append", required=True, help="a recorded method to replay (repeat)")
    parser.add_argument("--n", type=int, default=0, help="replay only each method's first N records (0 = all)")
    parser.add_argument("--out", type=Path, default=Path("answer_reader_replay.jsonl"))
    args = parser.parse_args(argv)
    try:
        inputs = replay_inputs(args, args.method, args.n)
    except ConfigurationError as error:
        raise SystemExit(str(error)) from None
    if any(r["kind"] != "rag" and r["evidence"] != "excerpts" for r in inputs.records):
        raise SystemExit("a LycheeMemory method here answered from blocks, not excerpts: replay excerpt methods")
    rows = replay(inputs.engine, inputs.haystack, inputs.records)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    print(summary(rows))


if __name__ == "__main__":
    main()
