"""Which sentence score finds HotpotQA's supporting facts: lexical (BM25), the gate index's keys, or both?

For each question its own 10 paragraphs (2 gold + 8 distractors, ``Document i:\\ntitle\\ntext``) are one document,
ingested once with the embedded default (its gate index on). Every sentence of the document (``excerpts``'
splitting) is scored against the question by

- lexical: ``excerpts.LexicalScorer`` (BM25 over the document's sentences),
- keys: per sentence and chosen head, the mean over the question's tokens of ``logsumexp_t q.k_t/sqrt(d)`` over the
  sentence's index keys, minus the same for the null question; z-scored over the sentences per head, averaged
  (the key scorer of stage 1 applied to sentences instead of blocks: no extra forward),
- hybrid: the sum of both z-scored;

and the best sentences are kept until a token budget. Reported: the share of gold sentences (``supporting_facts``)
kept, and of questions with all of them kept, on the questions the gate trainer trains on (to choose) and on the
ones it holds out (to confirm; ``training.gate_data.question_split``).

    python benchmarks/excerpt_scoring.py --data ../shared/data --budgets 64 128 256
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path


def gold_spans(row: dict, document_offsets: list[int]) -> list[tuple[int, int]]:
    """Character spans in the joined document of a row's supporting sentences (stripped)."""
    spans = []
    titles = row["context"]["title"]
    for title, sent_id in zip(row["supporting_facts"]["title"], row["supporting_facts"]["sent_id"]):
        if title not in titles:
            continue
        position = titles.index(title)
        sentences = row["context"]["sentences"][position]
        if sent_id >= len(sentences):
            continue
        start = document_offsets[position] + len(f"Document {position + 1}:\n{title}\n")
        start += sum(len(sentence) for sentence in sentences[:sent_id])
        text = sentences[sent_id]
        left = len(text) - len(text.lstrip())
        spans.append((start + left, start + len(text.rstrip())))
    return spans


def kept_share(gold: list[tuple[int, int]], kept: list[tuple[int, int]]) -> float:
    """Share of gold sentences at least half covered by kept spans."""
    hits = 0
    for start, end in gold:
        covered = sum(max(0, min(end, b) - max(start, a)) for a, b in kept)
        hits += covered >= 0.5 * (end - start)
    return hits / len(gold) if gold else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=os.environ.get("LYCHEE_DATA_DIR"))
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--n", type=int, default=60)
    parser.add_argument("--budgets", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "excerpt_scoring.json")
    args = parser.parse_args()

    import torch

    from lychee_memory import LycheeMemory
    from lychee_memory.chunking import tokenize_with_offsets
    from lychee_memory.eval.tasks import data_dir, hotpot_paragraphs, load_hotpot
    from lychee_memory.excerpts import LexicalScorer, block_sentences
    from lychee_memory.gate.key_scorer import zscore
    from lychee_memory.training.gate_data import question_split

    rows = load_hotpot(data_dir(args.data))[: args.n]
    engine = LycheeMemory.from_pretrained(args.model, show_progress=False)
    tokenizer = engine.loaded.tokenizer
    lexical = LexicalScorer()
    results: list[dict] = []
    for row in rows:
        pieces, offsets, offset = [], [], 0
        for position, (title, text) in enumerate(hotpot_paragraphs(row)):
            piece = f"Document {position + 1}:\n{title}\n{text}"
            pieces.append(piece)
            offsets.append(offset)
            offset += len(piece) + 2
        document = "\n\n".join(pieces)
        gold = gold_spans(row, offsets)
        bank = engine.ingest(document)
        scorer = engine.prefilter_for(bank)
        assert scorer is not None, "the key scorer needs the gate index (prefilter keys)"
        _, token_offsets = tokenize_with_offsets(tokenizer, document)
        skip = int(bank.gate_index["skip_tokens"])
        sentences: list[tuple[int, int]] = []
        sentence_keys: list[torch.Tensor | None] = []
        for index in range(len(bank)):
            span = bank.spans[index]
            keys = bank.gate_keys(index)
            for start, end in block_sentences(document, span.char_start, span.char_end):
                if (start, end) in sentences:
                    continue
                tokens = [
                    t - span.token_start - skip
                    for t in range(span.token_start + skip, span.token_end)
                    if start <= token_offsets[t][0] < end
                ]
                sentences.append((start, end))
                sentence_keys.append(keys[:, tokens[0] : tokens[-1] + 1] if tokens and keys is not None else None)
        texts = [document[start:end] for start, end in sentences]
        lex = torch.tensor(lexical.scores(texts, row["question"], [""] * len(texts)))
        query = scorer.query(row["question"], engine.config.prompts.initial_memory)
        scored, means, _ = scorer.raw_scores(query, sentence_keys.__getitem__, range(len(sentences)))
        key = torch.full((len(sentences),), float("nan"))
        if scored:
            key[scored] = zscore(means[:, :, 0] - means[:, :, 2]).mean(dim=1)
        key = torch.nan_to_num(key, nan=float(key.nanmean()) if scored else 0.0)
        lex_z = (lex - lex.mean()) / (lex.std() if lex.std() > 0 else 1.0)
        key_z = (key - key.mean()) / (key.std() if key.std() > 0 else 1.0)
        costs = [len(tokenizer(text, add_special_tokens=False).input_ids) for text in texts]
        record = {"question": row["question"], "split": question_split(row["question"]), "gold": len(gold)}
        for method, scores in (("lexical", lex_z), ("keys", key_z), ("hybrid", lex_z + key_z)):
            order = sorted(range(len(texts)), key=lambda i: -float(scores[i]))
            for budget in args.budgets:
                kept, used = [], 0
                for i in order:
                    if used + costs[i] <= budget:
                        kept.append(sentences[i])
                        used += costs[i]
                share = kept_share(gold, kept)
                record[f"{method}@{budget}"] = share
        results.append(record)
        print(json.dumps({k: v for k, v in record.items() if k != "question"}), flush=True)
    print("\n| split | n | method | " + " | ".join(f"recall@{b} (all gold kept)" for b in args.budgets) + " |")
    print("|---|---|---|" + "---|" * len(args.budgets))
    for split in ("train", "heldout"):
        part = [r for r in results if r["split"] == split]
        for method in ("lexical", "keys", "hybrid"):
            cells = []
            for budget in args.budgets:
                values = [r[f"{method}@{budget}"] for r in part]
                cells.append(
                    f"{statistics.mean(values):.2f} ({sum(v == 1.0 for v in values)}/{len(values)})" if values else "-"
                )
            print(f"| {split} | {len(part)} | {method} | " + " | ".join(cells) + " |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
