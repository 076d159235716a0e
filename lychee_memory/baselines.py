"""Comparison modes run by the same engine, model and prompts as LycheeMemory.

- MemAgent: raw-text chunks (5000 tokens by default, clipped to fit the window), every chunk updates the
  working memory through the text-mode reasoner, the answer comes from memory. No compression, no gate.
- Full context: the whole corpus in one prompt, when it fits the model's window.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .answer import Answer, SelectedBlock
from .chunking import chunk_documents
from .documents import Document
from .errors import ContextTooLongError
from .generation import DecodingSettings, generate
from .kv_prefix import PromptRow
from .reasoner import Reasoner, UpdateRequest

if TYPE_CHECKING:
    from .engine import LycheeMemory


def memagent_chunk_tokens(engine: LycheeMemory, questions: list[str]) -> int:
    """The configured MemAgent chunk size, clipped so chunk + prompt + memory in and out fit the window."""
    memory = engine.config.reasoner.max_memory_tokens
    longest_question = max(len(engine.prompts.encode_text(q)) for q in questions)
    overhead = len(engine.prompts.update_prompt("", "", "")) + longest_question
    room = engine.loaded.context_window - overhead - 2 * memory
    if room < 16:
        raise ContextTooLongError(
            f"MemAgent mode leaves only {room} tokens for a chunk in a {engine.loaded.context_window}-token window "
            f"(prompt {overhead}, memory 2 x {memory}); lower max_memory_tokens"
        )
    return min(engine.config.baselines.memagent_chunk_tokens, room)


def run_memagent(
    engine: LycheeMemory, questions: list[str], documents: list[Document], show_progress: bool | None
) -> list[Answer]:
    """Read every raw chunk, updating each question's memory, then answer from memory."""
    chunk_size = memagent_chunk_tokens(engine, questions)
    chunks = chunk_documents(documents, engine.loaded.tokenizer, chunk_size, engine.config.chunking.boundary_lookback)
    reasoner = Reasoner(engine.loaded, engine.prompts, engine.config.reasoner, "text", engine.config.gate.batch_size)
    memories = [engine.config.prompts.initial_memory] * len(questions)
    steps = [[memory] for memory in memories]
    prompt_tokens = [0] * len(questions)
    memory_tokens = [0] * len(questions)
    started = time.perf_counter()
    with engine._progress(len(chunks), "memagent", show_progress) as bar:
        for chunk in chunks:
            requests = [UpdateRequest(q, memory, section=chunk.text) for q, memory in zip(questions, memories)]
            for row, generation in enumerate(reasoner.update(requests)):
                memories[row] = generation.text
                steps[row].append(generation.text)
                prompt_tokens[row] += generation.prompt_tokens
                memory_tokens[row] += len(generation.token_ids)
            bar.update(1)
    reason_seconds = time.perf_counter() - started
    started = time.perf_counter()
    finals = reasoner.answer(questions, memories)
    answer_seconds = time.perf_counter() - started
    read = [
        SelectedBlock(index, 1.0, chunk.document_id, chunk.char_start, chunk.char_end, chunk.text)
        for index, chunk in enumerate(chunks)
    ]
    return [
        Answer(
            question=question,
            text=final.text,
            mode="memagent",
            blocks=list(read),
            memory_steps=steps[row],
            timings={
                "load_model": engine.loaded.load_seconds,
                "ingest": 0.0,
                "gate": 0.0,
                "reason": reason_seconds,
                "answer": answer_seconds,
                "query": reason_seconds + answer_seconds,
            },
            token_counts={
                "document_tokens": sum(len(chunk) for chunk in chunks),
                "chunk_tokens": chunk_size,
                "blocks": len(chunks),
                "blocks_read": len(chunks),
                "reasoner_prompt_tokens": prompt_tokens[row],
                "memory_tokens": memory_tokens[row],
                "answer_tokens": len(final.token_ids),
            },
        )
        for row, (question, final) in enumerate(zip(questions, finals))
    ]


def run_full_context(engine: LycheeMemory, questions: list[str], documents: list[Document]) -> list[Answer]:
    """Answer with every document in the prompt; refuses when that does not fit the window."""
    corpus = "\n\n".join(document.text for document in documents)
    rows = [PromptRow(engine.prompts.full_context_prompt(question, corpus)) for question in questions]
    budget = engine.config.reasoner.max_answer_tokens
    longest = max(len(row.prompt_ids) for row in rows)
    if longest + budget > engine.loaded.context_window:
        raise ContextTooLongError(
            f"full-context mode needs {longest} prompt tokens plus {budget} answer tokens, more than the model's "
            f"context window of {engine.loaded.context_window}; use the lychee or memagent mode for this corpus"
        )
    reasoner = engine.config.reasoner
    settings = DecodingSettings(
        max_new_tokens=budget,
        temperature=reasoner.temperature,
        top_p=reasoner.top_p,
        seed=reasoner.seed,
        stop_strings=tuple(reasoner.stop_strings),
        repeat_ngram=reasoner.repeat_ngram,
    )
    started = time.perf_counter()
    generations = []
    for start in range(0, len(rows), engine.config.gate.batch_size):
        generations.extend(generate(engine.loaded, rows[start : start + engine.config.gate.batch_size], settings))
    seconds = time.perf_counter() - started
    return [
        Answer(
            question=question,
            text=generation.text,
            mode="full_context",
            timings={
                "load_model": engine.loaded.load_seconds,
                "ingest": 0.0,
                "gate": 0.0,
                "reason": 0.0,
                "answer": seconds,
                "query": seconds,
            },
            token_counts={"prompt_tokens": generation.prompt_tokens, "answer_tokens": len(generation.token_ids)},
        )
        for question, generation in zip(questions, generations)
    ]
