"""The engine: documents -> chunks -> blocks -> bank -> (gate, reasoner) -> answer.

``LycheeMemory.from_pretrained(spec, **options)`` loads a model and resolves every "auto" setting for it;
``ingest`` builds a bank (in memory, or in a ``MemoryStore``), ``ask``/``ask_many``/``stream``/``select``
answer over it. One re-entrant lock per engine serialises calls from several threads; a stream holds it one
decoding step at a time, never while the caller handles a piece. Baselines (``lychee_memory.baselines``) run
on an engine; the engine knows none of them. The engine wires the parts whose concepts live elsewhere: settings
resolution (``resolution.py``), the prompt budget (``budget.py``), the gate's scan (``gate``), the memory strategy
(``working_memory.py``) and answer assembly (``answer.py``).
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from .answer import Answer, AnswerStream, SelectedBlock, answer_from_scan, k_blocks, selected_blocks
from .block_cache import BlockCache
from .blocks import BankIdentity, BlockOpening, MemoryBank, MemoryBlock
from .budget import PromptBudget
from .chunking import Chunk, chunk_documents, tokenize_with_offsets
from .compressors import Compressor, build_compressor
from .config import INGEST_BATCH_SIZE, EngineConfig
from .documents import Document, DocumentInput, load_documents
from .errors import ConfigurationError
from .filters import DocumentFilter
from .gate import GateRule, GateScan, IndexSpec, ScanState, StageOne, StageOneScorer, TrainedGateRule, build_rule
from .gate.adapter import attach_gate
from .kv_prefix import encode_opening
from .model_loading import LoadedModel, load_model
from .progress import progress_bar
from .prompts import PromptBuilder
from .questions import clean_question
from .reasoner import Reasoner, UpdateObserver
from .resolution import resolve_config
from .store import BlockRecipe, MemoryStore, StoredBank, as_store
from .store.reading import blocks_once
from .working_memory import MemoryStrategy, memory_strategy

Source = MemoryBank | DocumentInput | Iterable[DocumentInput]
Filters = Mapping[str, Any] | DocumentFilter | None
Result = TypeVar("Result")


def _exclusive(method: Callable[..., Result]) -> Callable[..., Result]:
    """Run an engine method holding the engine's lock (re-entrant, so engine methods may call each other)."""

    @functools.wraps(method)
    def locked(self: LycheeMemory, *args: Any, **kwargs: Any) -> Result:
        with self.lock:
            return method(self, *args, **kwargs)

    return locked


class LycheeMemory:
    """Compressed-memory question answering over long documents; safe to share between threads."""

    def __init__(self, loaded: LoadedModel, config: EngineConfig | None = None):
        self.loaded = loaded
        self.config = resolve_config(config or EngineConfig(), loaded)
        self.compressor: Compressor = build_compressor(self.config.compressor, loaded)
        self.prompts = PromptBuilder(loaded.tokenizer, self.config.prompts, framed_blocks=self.compressor.framed)
        # Framed blocks are encoded after this opening; its KV is computed here once instead of stored per block.
        self.opening: BlockOpening | None = None
        if self.compressor.framed:
            self.opening = encode_opening(loaded, self.prompts.block_opening_ids())
            self.compressor.opening = self.opening
        opening_slots = self.opening.num_slots if self.opening else 0
        self.stage_one = StageOne(
            loaded,
            self.config,
            self.prompts,
            self.opening,
            self.compressor.prompt_position(self.chunk_tokens, opening_slots),
            self.compressor.builds_gate_index,
        )
        self.index_spec: IndexSpec | None = self.stage_one.index_spec
        if self.compressor.builds_gate_index:
            self.compressor.index_spec = self.index_spec
        adapter = attach_gate(loaded, self.config.gate.weights) if self.config.gate.rule == "trained" else None
        self.rule: GateRule = build_rule(self.config.gate, self.config.prompts, loaded.tokenizer, self.opening, adapter)
        assert self.config.gate.threshold is not None
        self.threshold = self.config.gate.threshold
        reading, batch = self.config.reasoner, self.config.gate.batch_size
        self.reasoner = Reasoner(loaded, self.prompts, reading, reading.read_mode, batch, self.opening)
        # How the working memory changes on a read (reasoner.memory: notes, or excerpts kept verbatim).
        self.memory_strategy: MemoryStrategy = memory_strategy(reading.memory, reading)
        self.lock = threading.RLock()
        self.block_cache = BlockCache(int(self.config.compressor.block_cache_mb * 2**20))  # index-only banks' blocks
        start = self.opening.num_slots if self.opening is not None else len(self.prompts.block_opening_ids())
        after_block = self.compressor.prompt_position(self.chunk_tokens, start)
        self.budget = PromptBudget(
            self.prompts, loaded.context_window, reading, self.chunk_tokens, after_block, self.rule
        )
        self.budget.check("")  # the settings alone must leave room for every prompt

    @classmethod
    def from_pretrained(
        cls, spec: str | None = None, *, config: EngineConfig | None = None, **options: Any
    ) -> LycheeMemory:
        """Load ``spec`` (alias, local dir, GGUF file, cached hub id) with options such as ``ratio=8``.

        Options are flat names (see ``EngineConfig.from_kwargs``) or section dicts; ``config`` is a base.
        """
        if spec is not None:
            options["spec"] = spec
        engine_config = EngineConfig.from_kwargs(config, **options)
        return cls(load_model(engine_config.model), engine_config)

    # What this engine is -----------------------------------------------------------------------------

    @property
    def chunk_tokens(self) -> int:
        assert self.config.chunking.chunk_tokens is not None
        return self.config.chunking.chunk_tokens

    @property
    def identity(self) -> BankIdentity:
        """What a bank must have been built with for this engine to read it (model, compressor, chunk size, opening)."""
        opening = self.opening.token_ids if self.opening is not None else ()
        return BankIdentity(self.loaded.fingerprint(), self.compressor.describe(), self.chunk_tokens, opening)

    def prefilter_for(self, bank: MemoryBank) -> StageOneScorer | None:
        """Stage 1 for a bank (None: stage 1 off, or the bank lacks what the scorer reads, such as its gate index)."""
        return self.stage_one.for_bank(bank)

    @property
    def ingest_batch_size(self) -> int:
        """Chunks compressed per forward: the configured value, else the device type's default (config.py)."""
        default = INGEST_BATCH_SIZE.get(self.loaded.device.type, INGEST_BATCH_SIZE["cpu"])
        return self.config.compressor.ingest_batch_size or default

    def show_progress(self, show: bool | None) -> bool:
        """Whether to draw progress bars: the call's choice, else the engine's ``show_progress`` setting."""
        return self.config.show_progress if show is None else show

    def chunk(self, documents: Sequence[Document]) -> list[Chunk]:
        """The engine's chunks of ``documents``, in order (never across a document boundary)."""
        return chunk_documents(
            list(documents), self.loaded.tokenizer, self.chunk_tokens, self.config.chunking.boundary_lookback
        )

    def block_recipe(self, progress: Callable[[int, int], None] | None = None) -> BlockRecipe:
        """How this engine makes blocks, for a store: identity, chunker, compressor, and what to record.

        Each call into the model takes the engine's lock for one batch only, so an ingest into a store lets
        questions from other threads in between batches. ``progress`` hears (compressed, to compress).
        """

        def chunk(documents: Sequence[Document]) -> list[Chunk]:
            with self.lock:
                return self.chunk(documents)

        def tokenize(text: str) -> list[int]:
            with self.lock:
                return tokenize_with_offsets(self.loaded.tokenizer, text)[0]

        def compress(chunks: list[Chunk]) -> list[MemoryBlock]:
            with self.lock:
                return self.compressor.compress(self.loaded, chunks)

        return BlockRecipe(
            identity=self.identity,
            chunk=chunk,
            tokenize=tokenize,
            compress=compress,
            progress=progress,
            gate_index=self.gate_index_description,
            batch_size=self.ingest_batch_size,
            dtype=self.loaded.dtype,
            device=self.loaded.device,
            model_spec=self.loaded.resolved.spec,
            settings=self.config.model_dump(mode="json"),
            block_cache=self.block_cache,
        )

    @property
    def gate_index_description(self) -> dict[str, Any] | None:
        """The gate index this engine's blocks carry (None: the prefilter is off, or the compressor builds none)."""
        if self.index_spec is None or not self.compressor.builds_gate_index:
            return None
        return self.index_spec.describe()

    # Building memory ---------------------------------------------------------------------------------

    def compress_documents(
        self,
        documents: Sequence[Document],
        show_progress: bool | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[MemoryBlock]:
        """Chunk and compress documents, one block per chunk, in document order (the lock is held per batch)."""
        with self.lock:
            chunks = self.chunk(documents)
        batch_size = self.ingest_batch_size
        blocks: list[MemoryBlock] = []
        if progress is not None:
            progress(0, len(chunks))
        with progress_bar(len(chunks), "compressing", self.show_progress(show_progress)) as bar:
            for start in range(0, len(chunks), batch_size):
                group = chunks[start : start + batch_size]
                with self.lock:
                    blocks.extend(self.compressor.compress(self.loaded, group))
                bar.update(len(group))
                if progress is not None:
                    progress(start + len(group), len(chunks))
        return blocks

    def ingest(
        self,
        documents: DocumentInput | Iterable[DocumentInput],
        *,
        name: str | None = None,
        store: MemoryStore | str | os.PathLike[str] | None = None,
        bank: str | None = None,
        show_progress: bool | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> MemoryBank:
        """Compress documents into a bank (text = str, file = pathlib.Path).

        Without ``store``/``bank`` the bank lives in memory. With them, the documents are added to bank
        ``bank`` of ``store`` (default store when only ``bank`` is given): only chunks not stored yet are
        compressed, a document whose id is already in the bank replaces it, the manifest is written last and
        atomically, and the returned bank is lazy (blocks read from disk when used). The engine's lock is held
        one compression batch at a time, so other threads' questions are answered during a long ingest;
        ``progress`` hears (chunks compressed, chunks to compress) after each batch.
        """
        docs = load_documents(documents)
        if store is None and bank is None:
            return MemoryBank.from_blocks(
                docs,
                self.compress_documents(docs, show_progress, progress),
                self.identity,
                name=name,
                gate_index=self.gate_index_description,
            )
        if bank is not None and name is not None and bank != name:
            raise ConfigurationError(f"name={name!r} and bank={bank!r} disagree; give the bank name once, as bank=")
        bank_name = bank if bank is not None else name
        if bank_name is None:
            raise ConfigurationError(
                "ingesting into a store needs a bank name: ingest(documents, store=..., bank='name')"
            )
        recipe = self.block_recipe(progress)
        return as_store(store).add_documents(bank_name, docs, recipe, show_progress=self.show_progress(show_progress))

    @_exclusive
    def open_bank(
        self, name: str, store: MemoryStore | str | os.PathLike[str] | None = None, *, recompress: bool = False
    ) -> StoredBank:
        """A stored bank, lazily loaded, for this engine (default store when ``store`` is None).

        Raises StoreError when there is no store there, BankNotFoundError when it holds no such bank, and
        BankMismatchError when the bank was built with another model, compressor or chunk size, unless
        ``recompress`` rebuilds it from its stored text with this engine (under the same name). Blocks
        computed in another dtype are converted to this engine's when read.
        """
        target = as_store(store, create=False)
        manifest = target.bank_manifest(name)
        if manifest.identity != self.identity:  # a legacy fingerprint never equals a current one
            if recompress:
                return target.rebuild_bank(name, self.block_recipe(), show_progress=self.show_progress(None))
            target.check_bank_identity(manifest, self.identity)
        return target.load_bank(name, dtype=self.loaded.dtype, device=self.loaded.device, recipe=self.block_recipe())

    @_exclusive
    def remove_documents(self, bank: MemoryBank, document_ids: Iterable[str]) -> MemoryBank:
        """The bank without these documents; a stored bank's manifest is rewritten (blocks stay until gc).

        Raises DocumentNotFoundError for an id the bank does not hold.
        """
        if isinstance(bank, StoredBank) and bank.store is not None and bank.name is not None:
            return bank.store.remove_documents(
                bank.name, document_ids, dtype=self.loaded.dtype, device=self.loaded.device, recipe=self.block_recipe()
            )
        return bank.without_documents(document_ids)

    def check_bank(self, bank: MemoryBank) -> None:
        """Refuse a bank built by another model, compressor or chunk size: its KV would be silently wrong."""
        bank.identity.require_same(
            self.identity,
            f"bank {bank.name or '(unnamed)'}",
            "rebuild it with this engine, or load the engine with the bank's model and settings",
        )

    # Asking ------------------------------------------------------------------------------------------

    def ask(
        self, question: str, source: Source, *, filters: Filters = None, show_progress: bool | None = None
    ) -> Answer:
        """Answer one question over a bank, or over documents (ingested first, timed as "ingest").

        ``filters`` (``{"key": value}``, ``$in``, ``$ne``...; see ``filters.py``) reads only matching documents.
        """
        return self.ask_many([question], source, filters=filters, show_progress=show_progress)[0]

    @_exclusive
    def ask_many(
        self,
        questions: Sequence[str],
        source: Source,
        *,
        filters: Filters = None,
        show_progress: bool | None = None,
    ) -> list[Answer]:
        """Answer several questions over one source; scans and generations are batched across questions."""
        if isinstance(questions, str):
            raise TypeError("ask_many takes a list of questions; use ask() for one")
        questions = [self.check_question(q) for q in questions]
        bank, ingest_seconds = self._bank_of(source, show_progress, filters)
        states, scan = self.scan(questions, bank, show_progress)
        started = time.perf_counter()
        generations = self.reasoner.answer(questions, [self.memory_strategy.answer_memory(s) for s in states])
        answer_seconds = time.perf_counter() - started
        return [
            answer_from_scan(
                state,
                bank,
                scan.timings,
                generation.text,
                load_seconds=self.loaded.load_seconds,
                ingest_seconds=ingest_seconds,
                answer_seconds=answer_seconds,
                answer_tokens=len(generation.token_ids),
                evidence=self.memory_strategy.answer_excerpts(state),
            )
            for state, generation in zip(states, generations)
        ]

    def select(
        self,
        question: str,
        source: Source,
        *,
        k: int | None = None,
        filters: Filters = None,
        show_progress: bool | None = None,
        memory: MemoryStrategy | None = None,
    ) -> list[SelectedBlock]:
        """The blocks the gate selects for a question, without writing the final answer (for retrievers).

        Runs the state-aware scan with its memory updates (hop 2 is judged against the notes of hop 1).
        ``k`` asks for exactly k blocks when the bank has that many: when the gate read more, the k best by
        gate score among them (in reading order); when it read fewer, its selections (``selected=True``), then
        the best-scoring blocks it did not read under the final memory (``selected=False``), best first.
        ``filters`` (``filters.py``) restricts the scan to matching documents. ``memory`` replaces the engine's memory
        strategy for this call only (an agent's recall passes one that decodes nothing).
        """
        return self.select_many([question], source, k=k, filters=filters, show_progress=show_progress, memory=memory)[0]

    @_exclusive
    def select_many(
        self,
        questions: Sequence[str],
        source: Source,
        *,
        k: int | None = None,
        filters: Filters = None,
        show_progress: bool | None = None,
        memory: MemoryStrategy | None = None,
    ) -> list[list[SelectedBlock]]:
        """``select`` for several questions over one source, their scans batched together (a server's retrieve)."""
        if isinstance(questions, str):
            raise TypeError("select_many takes a list of questions; use select() for one")
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ConfigurationError(f"k must be a positive number of blocks, got {k!r}")
        questions = [self.check_question(question) for question in questions]
        bank, _ = self._bank_of(source, show_progress, filters)
        states, scan = self.scan(questions, bank, show_progress, memory=memory)
        return [k_blocks(state, bank, scan, k) for state in states]

    def stream(
        self, question: str, source: Source, *, filters: Filters = None, show_progress: bool | None = None
    ) -> AnswerStream:
        """Gate and reason, then stream the final answer text; ``.answer`` holds the Answer afterwards.

        ``.blocks`` runs the scan alone when iteration has not started, so sources can be shown first. The
        engine's lock is held for the scan and for each decoding step, not while the caller handles a piece.
        """
        question = self.check_question(question)
        DocumentFilter.parse(filters)  # a bad filter is refused now, not at the first piece
        scanned: dict[str, Any] = {}

        def scan_once() -> list[SelectedBlock]:
            with self.lock:
                if not scanned:
                    bank, ingest_seconds = self._bank_of(source, show_progress, filters)
                    (state,), scan = self.scan([question], bank, show_progress)
                    blocks = selected_blocks(state, bank)
                    scanned.update(bank=bank, ingest_seconds=ingest_seconds, state=state, scan=scan, blocks=blocks)
            return scanned["blocks"]

        def pieces() -> Iterator[str]:
            scan_once()
            started = time.perf_counter()
            decode = self.reasoner.answer_stream(question, self.memory_strategy.answer_memory(scanned["state"]))
            steps = iter(decode)
            while True:
                with self.lock:
                    step = next(steps, None)
                if step is None:
                    break
                yield step[1]
            assert decode.results is not None
            generation = decode.results[0]
            scanned["answer"] = answer_from_scan(
                scanned["state"],
                scanned["bank"],
                scanned["scan"].timings,
                generation.text,
                load_seconds=self.loaded.load_seconds,
                ingest_seconds=scanned["ingest_seconds"],
                answer_seconds=time.perf_counter() - started,
                answer_tokens=len(generation.token_ids),
                evidence=self.memory_strategy.answer_excerpts(scanned["state"]),
            )

        return AnswerStream(pieces(), lambda: scanned["answer"], scan_once)

    @_exclusive
    def scan(
        self,
        questions: list[str],
        bank: MemoryBank,
        show_progress: bool | None = None,
        observe: UpdateObserver | None = None,
        memory: MemoryStrategy | None = None,
    ) -> tuple[list[ScanState], GateScan]:
        """The gate's state-aware scan of a checked bank with memory updates, without the final answers.

        ``observe(state, index, request, generation)`` hears each update (the RL trainer records its turns so);
        ``memory`` is the memory strategy of this scan (default: the engine's).
        """
        strategy = memory if memory is not None else self.memory_strategy
        self.reasoner.forget_answers()  # answers prepared by an earlier scan read that scan's blocks
        states = [ScanState(question, self.config.prompts.initial_memory) for question in questions]
        gate = self.config.gate
        assert gate.boundary_tolerance is not None
        with progress_bar(len(bank) * len(questions), "scanning", self.show_progress(show_progress)) as bar:
            scan = GateScan(
                self.loaded,
                self.prompts,
                self.rule,
                gate,
                self.threshold,
                gate.boundary_tolerance,
                bar.update,
                self.prefilter_for(bank),
            )
            # One scan step's blocks stay decoded: a block scored by the gate and read by the reasoner, or scored for
            # several questions, is fetched and decoded once.
            with blocks_once(bank, gate.batch_size * len(questions)) as scanned:
                scan.run(scanned, states, lambda reads: strategy.update(self.reasoner, scanned, reads, observe))
        return states, scan

    def check_question(self, question: object) -> str:
        """The stripped question, refused when empty or when its prompts cannot fit the model's window."""
        question = clean_question(question)
        self.budget.check(question)
        return question

    # Internals ---------------------------------------------------------------------------------------

    def _bank_of(self, source: Source, show_progress: bool | None, filters: Filters = None) -> tuple[MemoryBank, float]:
        """The bank to scan (a new one for documents, timed as ingest), restricted to ``filters``' documents."""
        document_filter = DocumentFilter.parse(filters)
        if isinstance(source, MemoryBank):
            self.check_bank(source)
            return document_filter.apply(source), 0.0
        started = time.perf_counter()
        documents = load_documents(source)
        kept = [document for document in documents if document_filter.matches(document.metadata)]
        if not kept:  # nothing matches: an empty bank, and nothing compressed
            return MemoryBank.from_blocks([], [], self.identity, gate_index=self.gate_index_description), 0.0
        bank = self.ingest(kept, show_progress=show_progress)  # documents the filter drops are never compressed
        return bank, time.perf_counter() - started

    def info(self) -> dict[str, Any]:
        """What is loaded and how it is configured (the CLI's ``lychee info``)."""
        config = self.loaded.model.config
        return {
            "model": {
                "spec": self.loaded.resolved.spec,
                "source": str(self.loaded.resolved.path / self.loaded.resolved.gguf_file)
                if self.loaded.resolved.gguf_file
                else str(self.loaded.resolved.path or self.loaded.resolved.spec),
                "family": self.loaded.family,
                "layers": config.num_hidden_layers,
                "hidden_size": config.hidden_size,
                "kv_heads": config.num_key_value_heads,
                "context_window": self.loaded.context_window,
                "device": str(self.loaded.device),
                "dtype": str(self.loaded.dtype).removeprefix("torch."),
                "attention": self.loaded.attention,
                "trained_memory_weights": self.loaded.has_trained_memory,
                "fingerprint": self.loaded.fingerprint(),
                "load_seconds": round(self.loaded.load_seconds, 3),
            },
            "compressor": self.compressor.describe(),
            "chunk_tokens": self.chunk_tokens,
            "gate": {
                "rule": self.rule.name,
                "threshold": self.threshold,
                **self.config.gate.model_dump(
                    exclude={"rule", "threshold", "prefilter_heads", "prefilter_skip_tokens"}
                ),
                "prefilter_index": self.gate_index_description,
                "weights_sha256": self.rule.adapter.digest if isinstance(self.rule, TrainedGateRule) else None,
            },
            "opening_tokens": len(self.opening.token_ids) if self.opening is not None else 0,
            "reasoner": {
                **self.config.reasoner.model_dump(),
                "weights_sha256": self.reasoner.adapter.digest if self.reasoner.adapter is not None else None,
            },
        }
