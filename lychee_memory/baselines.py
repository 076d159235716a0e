"""Comparison methods that run on an engine's model, tokenizer, prompts and decoding, for honest comparisons.

- ``MemAgent(engine)``: raw-text chunks (``baselines.memagent_chunk_tokens``, clipped to fit the window), every chunk
  updates the working memory through the text-mode reasoner, the answer comes from memory. No compression,
  no gate.
- ``FullContext(engine)``: the whole corpus in one prompt, when it fits the model's window.

The RAG baseline (a vector index over a local MiniLM) lives with the research harness, in
``lychee_memory.eval.rag``, because it needs LlamaIndex.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from .answer import Answer, SelectedBlock, phase_timings
from .blocks import MemoryBank
from .chunking import chunk_documents
from .documents import Document, load_documents
from .engine import LycheeMemory, Source
from .errors import ContextTooLongError
from .generation import DecodingSettings, generate
from .kv_prefix import PromptRow
from .progress import progress_bar
from .reasoner import Reasoner, UpdateRequest


def documents_of(source: Source) -> list[Document]:
    """The documents of a bank, or documents loaded from text, paths or Documents."""
    if isinstance(source, MemoryBank):
        return list(source.documents)
    return load_documents(source)


def _questions(engine: LycheeMemory, questions: Sequence[str]) -> list[str]:
    if isinstance(questions, str):
        raise TypeError("ask_many takes a list of questions; use ask() for one")
    return [engine.check_question(question) for question in questions]


class Baseline:
    """A comparison method over an engine: ``ask`` one question, ``ask_many`` several over one source."""

    def __init__(self, engine: LycheeMemory):
        self.engine = engine

    def ask(self, question: str, source: Source, *, show_progress: bool | None = None) -> Answer:
        return self.ask_many([question], source, show_progress=show_progress)[0]

    def ask_many(self, questions: Sequence[str], source: Source, *, show_progress: bool | None = None) -> list[Answer]:
        raise NotImplementedError


class MemAgent(Baseline):
    """MemAgent's loop on the engine's model: every raw chunk rewrites the memory, then the answer."""

    def __init__(self, engine: LycheeMemory, chunk_tokens: int | None = None):
        super().__init__(engine)
        self.chunk_tokens = chunk_tokens or engine.config.baselines.memagent_chunk_tokens

    def chunk_size(self, questions: Sequence[str]) -> int:
        """The configured chunk size, clipped so chunk + prompt + memory in and out fit the window."""
        engine = self.engine
        memory = engine.config.reasoner.max_memory_tokens
        longest_question = max(len(engine.prompts.encode_text(q)) for q in questions)
        overhead = len(engine.prompts.update_prompt("", "", [])) + longest_question
        room = engine.loaded.context_window - overhead - 2 * memory
        if room < 16:
            raise ContextTooLongError(
                f"MemAgent mode leaves only {room} tokens for a chunk in a {engine.loaded.context_window}-token "
                f"window (prompt {overhead}, memory 2 x {memory}); lower max_memory_tokens"
            )
        return min(self.chunk_tokens, room)

    def ask_many(self, questions: Sequence[str], source: Source, *, show_progress: bool | None = None) -> list[Answer]:
        """Read every raw chunk, updating each question's memory, then answer from memory."""
        engine = self.engine
        with engine.lock:
            questions = _questions(engine, questions)
            documents = documents_of(source)
            chunk_size = self.chunk_size(questions)
            chunks = chunk_documents(
                documents, engine.loaded.tokenizer, chunk_size, engine.config.chunking.boundary_lookback
            )
            reasoner = Reasoner(
                engine.loaded, engine.prompts, engine.config.reasoner, "text", engine.config.gate.batch_size
            )
            memories = [engine.config.prompts.initial_memory] * len(questions)
            steps = [[memory] for memory in memories]
            prompt_tokens = [0] * len(questions)
            memory_tokens = [0] * len(questions)
            started = time.perf_counter()
            with progress_bar(len(chunks), "memagent", engine.show_progress(show_progress)) as bar:
                for chunk in chunks:
                    requests = [
                        UpdateRequest(q, memory, chunk_ids=list(chunk.token_ids))
                        for q, memory in zip(questions, memories)
                    ]
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
                timings=phase_timings(
                    engine.loaded.load_seconds, 0.0, gate=0.0, reason=reason_seconds, answer=answer_seconds
                ),
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


class FullContext(Baseline):
    """Every document in one prompt on the engine's model; refuses what does not fit the window."""

    def ask_many(self, questions: Sequence[str], source: Source, *, show_progress: bool | None = None) -> list[Answer]:
        """Answer each question with the whole corpus in its prompt (generations batched)."""
        engine = self.engine
        with engine.lock:
            questions = _questions(engine, questions)
            corpus = "\n\n".join(document.text for document in documents_of(source))
            rows = [PromptRow(engine.prompts.full_context_prompt(question, corpus)) for question in questions]
            settings = DecodingSettings.for_reasoner(engine.config.reasoner, engine.config.reasoner.max_answer_tokens)
            longest = max(len(row.prompt_ids) for row in rows)
            if longest + settings.max_new_tokens > engine.loaded.context_window:
                raise ContextTooLongError(
                    f"full-context mode needs {longest} prompt tokens plus {settings.max_new_tokens} answer tokens, "
                    f"more than the model's context window of {engine.loaded.context_window}; use LycheeMemory or "
                    "MemAgent for this corpus"
                )
            started = time.perf_counter()
            generations = []
            step = engine.config.gate.batch_size
            for start in range(0, len(rows), step):
                generations.extend(generate(engine.loaded, rows[start : start + step], settings))
            seconds = time.perf_counter() - started
        return [
            Answer(
                question=question,
                text=generation.text,
                mode="full_context",
                timings=phase_timings(engine.loaded.load_seconds, 0.0, gate=0.0, reason=0.0, answer=seconds),
                token_counts={"prompt_tokens": generation.prompt_tokens, "answer_tokens": len(generation.token_ids)},
            )
            for question, generation in zip(questions, generations)
        ]


BASELINES: dict[str, type[Baseline]] = {"memagent": MemAgent, "full_context": FullContext}
"""The comparison methods by the name the CLI's ``--mode`` uses (dashes read as underscores)."""
