"""Every question of a shared haystack asked with every method, at each block size, with RAG at matched tokens.

A method is a name with engine-setting overrides written as dotted ``key=value`` pairs (``excerpts:reasoner.memory=
excerpts``; plain flat names such as ``gate=trained`` work too), so settings added later need no change here. The
haystack is ingested once per block size (and per bank recipe, when a method's overrides change how blocks are
built); each RAG variant indexes it once and, per question and method, retrieves as many tokens as that method's
run read. Records are one dict per (block size, question, method) with the measures of ``eval.evidence``; the
summary and plot compare shares per split with exact intervals and paired wins/losses (``eval.paired``).
"""

from __future__ import annotations

import json
import re
import statistics
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import EngineConfig
from ..engine import LycheeMemory
from ..errors import ConfigurationError
from ..progress import progress_bar
from .evidence import answer_evidence, answer_in_evidence, fact_recall, paragraphs_covered, spans_of
from .metrics import sub_em, sub_em_stated
from .paired import clopper_pearson, paired_comparison
from .plots import pyplot
from .rag import RagBaseline
from .shared_haystack import SPLIT_NAMES, SharedHaystack

RAG_CHUNK_TOKENS = 256
# RAG variants by name: each builds a retriever-answerer over an engine (``top_k`` set per question, ``build``
# and ``ask`` as RagBaseline's). A new variant is one line here.
RAG_VARIANTS: dict[str, Callable[[LycheeMemory], Any]] = {
    "rag": lambda engine: RagBaseline(engine, chunk_tokens=RAG_CHUNK_TOKENS, show_progress=False),
    "rag-hybrid": lambda engine: RagBaseline(
        engine, chunk_tokens=RAG_CHUNK_TOKENS, show_progress=False, retrieval="hybrid"
    ),
}
PROMPT_ALLOWANCE = 512  # tokens of a RAG prompt besides its chunks (template, question): room kept for them
# What a RAG row's token budget is matched on, by name: the tokens the method read (its blocks), or the tokens of
# the evidence that reached its answer (its excerpts; its blocks when it answers from them). RAG's evidence is its
# chunks either way. Rows matched on evidence are named ``rag@method/evidence``.
RAG_MATCHES = {"read": "tokens_read", "evidence": "evidence_tokens"}
SPLITS = (*SPLIT_NAMES.values(), "all")


@dataclass(frozen=True)
class NamedMethod:
    """A LycheeMemory configuration under test: a name and the engine options it overrides."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)  # EngineConfig.from_kwargs options (sections nested)


def setting_value(text: str) -> Any:
    """A setting's value from text: JSON when it parses (numbers, true/false, null, lists), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_method(text: str) -> NamedMethod:
    """``"name"`` or ``"name:section.field=value;flat_option=value"`` (``,`` also separates pairs)."""
    name, _, settings = text.partition(":")
    name = name.strip()
    if not re.fullmatch(r"[A-Za-z0-9_.+-]+", name):
        raise ConfigurationError(f"method name {name!r} in {text!r}: use letters, digits, _ . + -")
    options: dict[str, Any] = {}
    for pair in filter(None, (piece.strip() for piece in re.split(r"[;,]", settings))):
        key, equals, value = pair.partition("=")
        key = key.strip()
        if not equals or not key:
            raise ConfigurationError(f"setting {pair!r} of method {name!r} is not KEY=VALUE")
        parts = key.split(".")
        if len(parts) > 2 or not all(parts):
            raise ConfigurationError(f"setting {key!r} of method {name!r}: use section.field or a flat option name")
        if len(parts) == 2:
            section = options.setdefault(parts[0], {})
            if not isinstance(section, dict):
                raise ConfigurationError(f"method {name!r} sets {parts[0]!r} both as a name and as a section")
            section[parts[1]] = setting_value(value.strip())
        else:
            options[key] = setting_value(value.strip())
    return NamedMethod(name, options)


def parse_methods(texts: Sequence[str]) -> list[NamedMethod]:
    """Methods from their texts; names must differ and must not be a RAG variant's."""
    methods = [parse_method(text) for text in texts]
    names = [method.name for method in methods]
    if not methods:
        raise ConfigurationError("no methods given")
    if len(set(names)) != len(names):
        raise ConfigurationError(f"a method name is given twice: {', '.join(names)}")
    taken = set(names) & set(RAG_VARIANTS)
    if taken:
        raise ConfigurationError(f"method names {sorted(taken)} are RAG variants' names; choose others")
    return methods


def rag_variants(names: Sequence[str]) -> list[str]:
    """The named RAG variants, checked against the registry."""
    unknown = [name for name in names if name not in RAG_VARIANTS]
    if unknown:
        raise ConfigurationError(f"unknown RAG variant(s) {unknown}; known: {', '.join(RAG_VARIANTS)}")
    return list(dict.fromkeys(names))


def method_engine(base: LycheeMemory, method: NamedMethod, block_tokens: int | None) -> LycheeMemory:
    """An engine over ``base``'s loaded model with the method's overrides and the block size (None: the base's)."""
    options = {**method.options, **({"chunk_tokens": block_tokens} if block_tokens else {})}
    return LycheeMemory(base.loaded, EngineConfig.from_kwargs(base.config, **options))


def bank_recipe(engine: LycheeMemory) -> str:
    """What a method's bank is built from: the engine's identity and the gate index its blocks carry. Methods with
    the same recipe share one ingest; a lexical method (no key index) and a key or hybrid one never do, or the
    second would silently rank by text alone."""
    return repr((repr(engine.identity), json.dumps(engine.gate_index_description, sort_keys=True)))


def rag_matches(names: Sequence[str]) -> list[str]:
    """The named token matches for RAG rows, checked against ``RAG_MATCHES``."""
    unknown = [name for name in names if name not in RAG_MATCHES]
    if unknown or not names:
        raise ConfigurationError(f"unknown RAG match(es) {unknown or names}; known: {', '.join(RAG_MATCHES)}")
    return list(dict.fromkeys(names))


def rag_row_name(rag: str, method: str, match: str) -> str:
    """A RAG row's method name: ``rag@method`` matched on tokens read, ``rag@method/evidence`` on evidence."""
    return f"{rag}@{method}" + ("" if match == "read" else f"/{match}")


def evidence_tokens(context: str, spans: Sequence[Sequence[int]], count: Callable[[str], int]) -> int:
    """Tokens of the evidence that reached an answer: each of its spans of ``context`` counted on its own."""
    return sum(count(context[start:end]) for start, end in spans)


def record_key(record: dict[str, Any]) -> tuple[int, int, str, str]:
    """What a record answers: (length, block size, question, method); a rerun never asks it twice."""
    return record["length"], record["block_tokens"], record["sample_id"], record["method"]


def _record(haystack: SharedHaystack, block_tokens: int, question: Any, method: str, answer: Any) -> dict[str, Any]:
    what, spans = answer_evidence(answer)
    covered = paragraphs_covered(spans, question.gold_facts)
    return {
        "length": haystack.target_tokens,
        "block_tokens": block_tokens,
        "sample_id": question.sample_id,
        "type": question.kind,
        "split": question.split,
        "method": method,
        "answer": answer.text,
        "answers": list(question.answers),
        "sub_em": sub_em(answer.text, list(question.answers)),
        "evidence": "chunks" if answer.mode == "rag" else what,
        "gold": len(question.gold),
        "gold_covered": covered,
        "both_gold": covered == len(question.gold),
        "fact_recall": fact_recall(spans, question.facts),
        "answer_in_evidence": answer_in_evidence(haystack.context, spans, question.answers),
        "blocks_read": len(answer.blocks),
        "spans": [list(span) for span in spans],  # the evidence's character spans in the haystack
    }


def run_shared(
    base: LycheeMemory,
    haystack: SharedHaystack,
    methods: Sequence[NamedMethod],
    block_sizes: Sequence[int | None],
    rags: Sequence[str],
    questions: Sequence[Any] | None = None,
    show_progress: bool = True,
    banks: list[dict[str, Any]] | None = None,
    earlier: Sequence[dict[str, Any]] = (),
    rag_for: Collection[str] | None = None,
    rag_match: Sequence[str] = ("read",),
) -> Iterator[dict[str, Any]]:
    """Records of every (block size, question, method), then of each RAG variant matched to that method.

    ``banks``, when given, gains one dict per ingest (block size, recipe, blocks, bytes, seconds). ``earlier``
    holds records of a stopped run over the same haystack: what they already answer is not asked again (nor
    yielded: the caller keeps them), and a bank no remaining question needs is not ingested; an earlier RAG
    answer at the same question and chunk count serves any method that reads as many tokens. ``rag_for`` names
    the methods RAG is matched to (None: all); ``rag_match`` what their tokens are matched on (``RAG_MATCHES``:
    the tokens the method read, the tokens of the evidence that reached its answer, or both).
    """
    asked = list(haystack.questions if questions is None else questions)
    done = {record_key(record): record for record in earlier}
    earlier_rag = {(r["rag"], r["sample_id"], r["top_k"]): r for r in earlier if r.get("kind") == "rag"}
    rag_engines = {name: RAG_VARIANTS[name](base) for name in rags}
    rag_indexes: dict[str, Any] = {}
    rag_answers: dict[tuple[str, str, int], tuple[Any, float]] = {}
    window = base.loaded.context_window - base.config.reasoner.max_answer_tokens - PROMPT_ALLOWANCE
    matches = rag_matches(rag_match)

    def count(text: str) -> int:  # as the excerpt memory counts its budgets
        return len(base.prompts.encode_text(text))

    def missing(question: Any, name: str, block: int) -> list[str]:
        """The rows of (question, method) still to make at a block size: the method's own and its RAG variants'."""
        rows = [rag_row_name(rag, name, match) for rag in rags for match in matches]
        wanted = [name, *(rows if rag_for is None or name in rag_for else [])]
        return [row for row in wanted if (haystack.target_tokens, block, question.sample_id, row) not in done]

    def rag_row(
        name: str, rag: Any, question: Any, engine: LycheeMemory, method: str, row: dict[str, Any], match: str
    ) -> dict[str, Any]:
        """RAG variant ``name``'s record for a question, given as many tokens as the method's ``row`` had in the
        measure ``match`` names (an earlier run's answer at the same chunk count is reused)."""
        wanted = max(1, round(row[RAG_MATCHES[match]] / RAG_CHUNK_TOKENS))
        top_k = min(wanted, max(1, window // RAG_CHUNK_TOKENS))
        matched = {
            "method": rag_row_name(name, method, match),
            "matched_to": method,
            "matched_on": RAG_MATCHES[match],
            "capped": top_k < wanted,
        }
        key = (name, question.sample_id, top_k)
        if key in earlier_rag and key not in rag_answers:  # the same retrieval, answered before
            return {**earlier_rag[key], **matched}
        if name not in rag_indexes:
            rag_indexes[name] = rag.build(haystack.context)
        top_k = min(top_k, len(rag_indexes[name]))
        key = (name, question.sample_id, top_k)
        if key not in rag_answers:
            rag.top_k = top_k
            began = time.perf_counter()
            rag_answers[key] = (rag.ask(question.question, rag_indexes[name]), time.perf_counter() - began)
        rag_answer, rag_seconds = rag_answers[key]
        record = _record(haystack, engine.chunk_tokens, question, matched["method"], rag_answer)
        record.update(
            kind="rag",
            rag=name,
            top_k=top_k,
            tokens_read=int(rag_answer.token_counts.get("retrieved_tokens", 0)),
            seconds=round(rag_seconds, 3),
            evidence_chars=sum(end - start for start, end in spans_of(rag_answer.blocks)),
            **matched,
        )
        return record

    for block_tokens in block_sizes:
        engines = {method.name: method_engine(base, method, block_tokens) for method in methods}
        built: dict[str, Any] = {}
        for method in methods:
            engine = engines[method.name]
            recipe = bank_recipe(engine)
            if not any(method.name in missing(q, method.name, engine.chunk_tokens) for q in asked):
                continue  # every question of this method is in the earlier records: no bank needed
            if recipe not in built:
                started = time.perf_counter()
                bank = engine.ingest(haystack.context, show_progress=show_progress)
                built[recipe] = bank
                if banks is not None:
                    banks.append(
                        {
                            "length": haystack.target_tokens,
                            "block_tokens": engine.chunk_tokens,
                            "methods": [m.name for m in methods if bank_recipe(engines[m.name]) == recipe],
                            "blocks": len(bank),
                            "resident_bytes": bank.resident_nbytes(),
                            "ingest_seconds": round(time.perf_counter() - started, 2),
                        }
                    )
        bar = progress_bar(len(asked) * len(methods), f"questions at {block_tokens or 'preset'}", show_progress, "ask")
        with bar:
            for question in asked:
                for method in methods:
                    engine = engines[method.name]
                    to_make = missing(question, method.name, engine.chunk_tokens)
                    if method.name in to_make:
                        bank = built[bank_recipe(engine)]
                        started = time.perf_counter()
                        answer = engine.ask(question.question, bank, show_progress=False)
                        seconds = time.perf_counter() - started
                        spans = bank.spans
                        tokens = sum(spans[b.index].token_end - spans[b.index].token_start for b in answer.blocks)
                        row = _record(haystack, engine.chunk_tokens, question, method.name, answer)
                        row.update(kind="lychee", tokens_read=tokens, seconds=round(seconds, 3))
                        row["evidence_chars"] = sum(end - start for start, end in answer_evidence(answer)[1])
                        row["evidence_tokens"] = evidence_tokens(haystack.context, row["spans"], count)
                        # what was read, beside what reached the answer: a miss is then a read or a keep
                        row["gold_read"] = paragraphs_covered(spans_of(answer.blocks), question.gold_facts)
                        row["read"] = [[b.index, round(b.score, 3), b.fallback] for b in answer.blocks]
                        yield row
                    else:  # answered by the earlier run: its tokens still set the RAG rows' budgets
                        row = done[(haystack.target_tokens, engine.chunk_tokens, question.sample_id, method.name)]
                        if "evidence_tokens" not in row:  # records from before evidence matching: counted now
                            row = {**row, "evidence_tokens": evidence_tokens(haystack.context, row["spans"], count)}
                    for name, rag in rag_engines.items():
                        for match in matches:
                            if rag_row_name(name, method.name, match) in to_make:
                                yield rag_row(name, rag, question, engine, method.name, row, match)
                    bar.update(1)


# Summary ---------------------------------------------------------------------------------------------------


def _in_split(rows: Sequence[dict[str, Any]], split: str) -> list[dict[str, Any]]:
    return [row for row in rows if split == "all" or row["split"] == split]


def _groups(records: Sequence[dict[str, Any]]) -> dict[tuple[int, int, str], list[dict[str, Any]]]:
    """Records by (length, block size, method), in first-seen order, each with ``sub_em_stated`` scored from its
    answer (so records from before that measure gain it)."""
    groups: dict[tuple[int, int, str], list[dict[str, Any]]] = {}
    for row in records:
        scored = {**row, "sub_em_stated": sub_em_stated(row["answer"], row["answers"])}
        groups.setdefault((row["length"], row["block_tokens"], row["method"]), []).append(scored)
    return groups


def _share(rows: Sequence[dict[str, Any]], key: str) -> str:
    """hits/n with a 95 % interval over the rows where ``key`` is known (a record without it, or None, is left out)."""
    rows = [row for row in rows if row.get(key) is not None]
    hits = sum(bool(row[key]) for row in rows)
    low, high = clopper_pearson(hits, len(rows))
    return f"{hits}/{len(rows)} = {hits / len(rows):.0%} [{low:.0%}, {high:.0%}]" if rows else "-"


def _mean(values: Sequence[float | None]) -> str:
    kept = [value for value in values if value is not None]
    return f"{statistics.fmean(kept):.2f}" if kept else "-"


def share_table(records: Sequence[dict[str, Any]]) -> str:
    """Markdown: per split and (length, block size, method), both-gold and sub_em shares (and sub_em judging yes/no
    answers by the word stated) with 95 % Clopper-Pearson intervals, the share whose evidence holds the gold answer
    (questions not answered yes or no), mean supporting-fact recall, blocks and tokens read, median seconds per
    question."""
    lines = [
        "| split | length | block | method | n | both gold [95% CI] | sub_em [95% CI] | "
        "sub_em, yes/no as stated [95% CI] | answer in evidence [95% CI] | "
        "fact recall | blocks read | tokens read | s/question (median) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for split in SPLITS:
        for (length, block, method), rows in _groups(records).items():
            chosen = _in_split(rows, split)
            if not chosen:
                continue
            seconds = statistics.median(row["seconds"] for row in chosen)
            lines.append(
                f"| {split} | {length} | {block} | {method} | {len(chosen)} | {_share(chosen, 'both_gold')} | "
                f"{_share(chosen, 'sub_em')} | {_share(chosen, 'sub_em_stated')} | "
                f"{_share(chosen, 'answer_in_evidence')} | "
                f"{_mean([row['fact_recall'] for row in chosen])} | "
                f"{_mean([row['blocks_read'] for row in chosen])} | {_mean([row['tokens_read'] for row in chosen])} | "
                f"{seconds:.1f} |"
            )
    return "\n".join(lines)


# The paired tables' header: a method, what it is paired with, then one cell per measure of ``_paired_cells``.
PAIRED_HEADER = (
    "| split | length | block | method | vs | both gold: +wins/-losses (=ties), diff [95% CI], p | sub_em: same | "
    "sub_em, yes/no as stated: same |",
    "|---|---|---|---|---|---|---|---|",
)


def paired_table(records: Sequence[dict[str, Any]]) -> str:
    """Markdown: each LycheeMemory method against each RAG variant at its matched tokens, per split, paired by
    question: wins/losses/ties, the difference of shares with its exact 95 % interval, and the sign-test p."""
    lines = list(PAIRED_HEADER)
    groups = _groups(records)
    for split in SPLITS:
        for (length, block, method), rows in groups.items():
            if rows[0]["kind"] != "lychee":
                continue
            mine = {row["sample_id"]: row for row in _in_split(rows, split)}
            for (other_length, other_block, other), others in groups.items():
                if (other_length, other_block) != (length, block) or others[0].get("matched_to") != method:
                    continue
                cells = _paired_cells(mine, {row["sample_id"]: row for row in _in_split(others, split)})
                if cells:
                    lines.append(f"| {split} | {length} | {block} | {method} | {other} | {' | '.join(cells)} |")
    return "\n".join(lines)


def _paired_cells(mine: dict[str, dict[str, Any]], theirs: dict[str, dict[str, Any]]) -> list[str]:
    """Both-gold, sub_em and sub_em with yes/no as stated, of ``mine`` against ``theirs`` on the questions both
    answered (none: empty)."""
    shared = [sample for sample in mine if sample in theirs]
    return [
        paired_comparison([bool(mine[s][key]) for s in shared], [bool(theirs[s][key]) for s in shared]).describe()
        for key in ("both_gold", "sub_em", "sub_em_stated")
        if shared
    ]


def against_first_table(records: Sequence[dict[str, Any]]) -> str:
    """Markdown: each LycheeMemory method against the first one run at its length and block size (the setting
    the others would replace), per split, paired by question as ``paired_table`` is; empty with one method."""
    lines = []
    groups = _groups(records)
    for split in SPLITS:
        first: dict[tuple[int, int], str] = {}
        for (length, block, method), rows in groups.items():
            if rows[0]["kind"] != "lychee":
                continue
            reference = first.setdefault((length, block), method)
            if reference == method:
                continue
            mine = {row["sample_id"]: row for row in _in_split(rows, split)}
            theirs = {row["sample_id"]: row for row in _in_split(groups[(length, block, reference)], split)}
            cells = _paired_cells(mine, theirs)
            if cells:
                lines.append(f"| {split} | {length} | {block} | {method} | {reference} | {' | '.join(cells)} |")
    if not lines:
        return ""
    return "\n".join([*PAIRED_HEADER, *lines])


def bank_table(banks: Sequence[dict[str, Any]]) -> str:
    """Markdown: one row per ingest (block size, blocks, resident MB, seconds)."""
    lines = ["| length | block | methods | blocks | bank MB | ingest s |", "|---|---|---|---|---|---|"]
    for bank in banks:
        lines.append(
            f"| {bank['length']} | {bank['block_tokens']} | {', '.join(bank['methods'])} | {bank['blocks']} | "
            f"{bank['resident_bytes'] / 2**20:.1f} | {bank['ingest_seconds']:.1f} |"
        )
    return "\n".join(lines)


def summary_markdown(records: Sequence[dict[str, Any]], banks: Sequence[dict[str, Any]] = ()) -> str:
    """The share table, the paired tables (against RAG; against the first method, when there are several) and
    (when given) the ingests, as one markdown text."""
    parts = ["## Shares per split", share_table(records), "", "## Paired against RAG at matched tokens"]
    parts += [paired_table(records), ""]
    if against := against_first_table(records):
        parts += ["## Paired against the first method", against, ""]
    if banks:
        parts += ["## Banks", bank_table(banks), ""]
    return "\n".join(parts)


def plot_shares(records: Sequence[dict[str, Any]], path: Path) -> None:
    """PNG: both-gold share and sub_em per (length, block size, method), tuning and confirming bars, 95 % CP bars."""
    plt = pyplot()
    groups = _groups(records)
    lengths = {length for length, _, _ in groups}
    labels = [
        f"{method}\n{block}" + (f" @{length // 1000}K" if len(lengths) > 1 else "") for length, block, method in groups
    ]
    figure, axes = plt.subplots(1, 2, figsize=(max(8, 1.1 * len(labels) + 3), 4.6), sharey=True)
    width = 0.38
    for axis, key, title in zip(axes, ("both_gold", "sub_em"), ("both gold paragraphs in the evidence", "sub_em")):
        for offset, split in ((-width / 2, "tuning"), (width / 2, "confirming")):
            heights, errors = [], [[], []]
            for rows in groups.values():
                chosen = _in_split(rows, split)
                hits = sum(bool(row[key]) for row in chosen)
                share = hits / len(chosen) if chosen else 0.0
                low, high = clopper_pearson(hits, len(chosen)) if chosen else (0.0, 0.0)  # no bar for an empty split
                heights.append(100 * share)
                errors[0].append(100 * (share - low))
                errors[1].append(100 * (high - share))
            positions = [index + offset for index in range(len(labels))]
            axis.bar(positions, heights, width, yerr=errors, capsize=3, label=split)
        axis.set_xticks(range(len(labels)))
        axis.set_xticklabels(labels, fontsize=7)
        axis.set_title(title)
        axis.set_ylim(0, 100)
        axis.grid(True, axis="y", alpha=0.3)
    axes[0].set_ylabel("% of questions (95% Clopper-Pearson)")
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
