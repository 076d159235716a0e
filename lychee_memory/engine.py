"""The engine: documents -> chunks -> blocks -> bank -> (gate, reasoner) -> answer.

``LycheeMemory.from_pretrained(spec, **options)`` loads a model and resolves every "auto" setting for it;
``ingest`` builds a bank (in memory, or in a ``MemoryStore``), ``ask``/``ask_many``/``stream``/``select``
answer over it. One re-entrant lock per engine serialises calls from several threads; a stream holds it one
decoding step at a time, never while the caller handles a piece. Baselines (``lychee_memory.baselines``) run
on an engine; the engine knows none of them.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import torch

from .answer import Answer, AnswerStream, GateScore, SelectedBlock, phase_timings
from .blocks import BankIdentity, BlockOpening, MemoryBank, MemoryBlock
from .chunking import Chunk, chunk_documents, tokenize_with_offsets
from .compressors import Compressor, build_compressor
from .compressors.beacon import BeaconSettings
from .compressors.memory_weights import LearnedSettings, is_learned_layout
from .config import EngineConfig, PromptSettings
from .documents import Document, DocumentInput, load_documents
from .errors import ConfigurationError, ContextTooLongError
from .filters import DocumentFilter
from .gate import RULES, GateRule, GateScan, IndexSpec, ScanState, StageOne, StageOneScorer, TrainedGateRule, build_rule
from .gate.adapter import attach_gate, read_gate_file
from .kv_prefix import encode_opening
from .model_loading import LoadedModel, load_model
from .presets import preset_for, trained_file
from .progress import progress_bar
from .prompts import PromptBuilder
from .questions import clean_question
from .reasoner import Reasoner, UpdateObserver, UpdateRequest
from .store import BlockRecipe, MemoryStore, StoredBank, as_store

logger = logging.getLogger(__name__)

Source = MemoryBank | DocumentInput | Iterable[DocumentInput]
Filters = Mapping[str, Any] | DocumentFilter | None
Result = TypeVar("Result")

DEFAULT_RATIO = 4
SMALL_MODEL_WINDOW = 16384  # models with a shorter context window default to 1024-token chunks
SMALL_MODEL_CHUNK_TOKENS = 1024
DEFAULT_CHUNK_TOKENS = 4096
# Scores this close to the gate threshold are scored again alone (see gate/scan.py). Measured batch-vs-alone
# differences of gate gains on SmolLM2-135M (12K-token needle bank, batches of 8 vs 1, CPU): at most 4.3e-6 nats
# in float32 and 0.035 nats in bfloat16; the tolerances sit two orders (float32) and seven times (16-bit) above.
BOUNDARY_TOLERANCE = {torch.float32: 1e-3, torch.bfloat16: 0.25, torch.float16: 0.25}


def resolve_config(config: EngineConfig, loaded: LoadedModel) -> EngineConfig:
    """Replace every "auto"/None setting by the value that works best for this model, and validate.

    Order: a trained checkpoint decides the compressor; a measured preset (``presets.py``) fills what the
    user left open; generic defaults fill the rest.
    """
    resolved = config.model_copy(deep=True)
    preset = preset_for(loaded.config, loaded.fingerprint()) if config.use_presets else None
    compressor = resolved.compressor
    learned_weights = loaded.has_trained_memory and is_learned_layout(loaded.memory_config)
    if compressor.kind == "auto":
        if loaded.has_trained_memory:
            compressor.kind = "learned" if learned_weights else "beacon"
        elif preset is not None and preset.compressor is not None and compressor.ratio is None:
            compressor.kind = preset.compressor
        else:
            compressor.kind = "attention"
    if compressor.kind == "none":
        compressor.ratio = 1
    elif compressor.kind == "learned":
        if not learned_weights:
            raise ConfigurationError(
                "compressor 'learned' needs trained memory weights in the learned layout: pass compressor_weights=PATH "
                "(--compressor-weights), or train them with `lychee train compressor`"
            )
        learned = LearnedSettings.from_checkpoint_config(loaded.memory_config)
        learned.check_base(loaded.config)
        compressor.ratio = learned.ratios[0] if compressor.ratio is None else compressor.ratio
        learned.check_ratio(compressor.ratio)
    elif compressor.kind == "beacon" and loaded.has_trained_memory and learned_weights:
        raise ConfigurationError(
            f"the memory weights of {loaded.memory_source} are in the learned layout, not the beacon one; "
            "use compressor 'learned'"
        )
    elif compressor.kind == "beacon" and loaded.has_trained_memory:
        checkpoint = BeaconSettings.from_checkpoint_config(loaded.memory_config)
        compressor.ratio, compressor.beacon_window = checkpoint.ratio, checkpoint.window
    elif compressor.ratio is None:
        compressor.ratio = DEFAULT_RATIO
    if resolved.chunking.chunk_tokens is None:
        if preset is not None and preset.chunk_tokens is not None:
            resolved.chunking.chunk_tokens = min(preset.chunk_tokens, loaded.context_window)
        elif loaded.context_window < SMALL_MODEL_WINDOW:
            resolved.chunking.chunk_tokens = SMALL_MODEL_CHUNK_TOKENS
        else:
            resolved.chunking.chunk_tokens = DEFAULT_CHUNK_TOKENS
    chunk_tokens = resolved.chunking.chunk_tokens
    if chunk_tokens > loaded.context_window:
        raise ContextTooLongError(
            f"chunk size {chunk_tokens} tokens exceeds the model's context window of {loaded.context_window} tokens; "
            "choose a smaller chunk_tokens"
        )
    if compressor.kind == "learned":
        window = learned.window
        if chunk_tokens > window:
            raise ConfigurationError(
                f"chunk size {chunk_tokens} tokens is longer than the {window} tokens the compressor weights "
                f"({loaded.memory_source}) were trained for; choose chunk_tokens <= {window}"
            )
    elif compressor.kind == "beacon":
        if compressor.beacon_window % compressor.ratio:
            raise ConfigurationError(
                f"compression ratio {compressor.ratio} does not divide the beacon window {compressor.beacon_window}; "
                "choose a ratio that divides it (e.g. 2, 4, 8)"
            )
    elif chunk_tokens % compressor.ratio:
        raise ConfigurationError(
            f"compression ratio {compressor.ratio} does not divide the chunk window of {chunk_tokens} tokens; "
            "choose a ratio that divides it (e.g. 2, 4, 8)"
        )
    gate_file = trained_file(preset.gate_weights) if preset is not None and preset.gate_weights else None
    if resolved.gate.rule == "auto":
        trained = resolved.gate.weights is not None or gate_file is not None
        resolved.gate.rule = "trained" if trained else "query_likelihood"
    elif resolved.gate.weights is not None and resolved.gate.rule != "trained":
        raise ConfigurationError(
            f"gate_weights is the trained gate's file, but the gate rule is {resolved.gate.rule!r}: "
            "choose gate='trained' (or leave it on auto), or drop gate_weights"
        )
    if resolved.gate.rule == "trained":
        if resolved.gate.weights is None:
            if gate_file is None:
                raise ConfigurationError(
                    "gate='trained' needs a trained gate file: set gate_weights=PATH (CLI --gate-weights, config "
                    "gate.weights) to a file written by `lychee train gate`; this model ships none"
                )
            resolved.gate.weights = str(gate_file)
        if resolved.gate.threshold is None:  # the threshold calibrated when the gate was trained
            resolved.gate.threshold = read_gate_file(resolved.gate.weights)[1].threshold
    if resolved.gate.threshold is None:
        measured = preset.thresholds.get((compressor.kind, resolved.gate.rule)) if preset else None
        resolved.gate.threshold = measured if measured is not None else RULES[resolved.gate.rule].default_threshold
    if resolved.gate.boundary_tolerance is None:
        resolved.gate.boundary_tolerance = BOUNDARY_TOLERANCE.get(loaded.dtype, BOUNDARY_TOLERANCE[torch.bfloat16])
    if preset is not None:
        defaults = PromptSettings()
        for field_name, template in preset.prompts.items():
            if getattr(resolved.prompts, field_name) == getattr(defaults, field_name):
                setattr(resolved.prompts, field_name, template)
        if not resolved.reasoner.stop_strings and preset.stop_strings:
            resolved.reasoner.stop_strings = list(preset.stop_strings)
    if resolved.reasoner.weights is None and preset is not None and preset.reasoner_weights:
        resolved.reasoner.weights = str(trained_file(preset.reasoner_weights))
    if resolved.reasoner.read_mode == "auto":
        trained = compressor.kind == "learned" or (compressor.kind == "beacon" and loaded.has_trained_memory)
        if preset is not None and preset.read_mode is not None and compressor.kind == preset.compressor:
            resolved.reasoner.read_mode = preset.read_mode
        else:
            # A trained compressor's KV is what its reasoner learned to read. Anything else is re-read as
            # text inside the chat turn: compression loses exact names and numbers, and even raw KV sits
            # outside the chat turn of an instruct model (measured on SmolLM2, see presets.py).
            resolved.reasoner.read_mode = "kv" if trained else "text"
    return resolved


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
        self.reasoner = Reasoner(
            loaded,
            self.prompts,
            self.config.reasoner,
            self.config.reasoner.read_mode,
            self.config.gate.batch_size,
            self.opening,
        )
        self.lock = threading.RLock()
        self._check_budget("")

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
        """Chunks compressed per forward: the configured value, else 4 on CUDA and 1 elsewhere."""
        return self.config.compressor.ingest_batch_size or (4 if self.loaded.device.type == "cuda" else 1)

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
        return target.load_bank(name, dtype=self.loaded.dtype, device=self.loaded.device)

    @_exclusive
    def remove_documents(self, bank: MemoryBank, document_ids: Iterable[str]) -> MemoryBank:
        """The bank without these documents; a stored bank's manifest is rewritten (blocks stay until gc).

        Raises DocumentNotFoundError for an id the bank does not hold.
        """
        if isinstance(bank, StoredBank) and bank.store is not None and bank.name is not None:
            return bank.store.remove_documents(
                bank.name, document_ids, dtype=self.loaded.dtype, device=self.loaded.device
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
        states, scan = self._scan(questions, bank, show_progress)
        started = time.perf_counter()
        generations = self.reasoner.answer(questions, [s.memory for s in states])
        answer_seconds = time.perf_counter() - started
        return [
            self._build_answer(
                state, bank, scan, generation.text, ingest_seconds, answer_seconds, len(generation.token_ids)
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
    ) -> list[SelectedBlock]:
        """The blocks the gate selects for a question, without writing the final answer (for retrievers).

        Runs the state-aware scan with its memory updates (hop 2 is judged against the notes of hop 1).
        ``k`` asks for exactly k blocks when the bank has that many: when the gate read more, the k best by
        gate score among them (in reading order); when it read fewer, its selections (``selected=True``), then
        the best-scoring blocks it did not read under the final memory (``selected=False``), best first.
        ``filters`` (``filters.py``) restricts the scan to matching documents.
        """
        return self.select_many([question], source, k=k, filters=filters, show_progress=show_progress)[0]

    @_exclusive
    def select_many(
        self,
        questions: Sequence[str],
        source: Source,
        *,
        k: int | None = None,
        filters: Filters = None,
        show_progress: bool | None = None,
    ) -> list[list[SelectedBlock]]:
        """``select`` for several questions over one source, their scans batched together (a server's retrieve)."""
        if isinstance(questions, str):
            raise TypeError("select_many takes a list of questions; use select() for one")
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ConfigurationError(f"k must be a positive number of blocks, got {k!r}")
        questions = [self.check_question(question) for question in questions]
        bank, _ = self._bank_of(source, show_progress, filters)
        states, scan = self._scan(questions, bank, show_progress)
        selections = []
        for state in states:
            blocks = self._selected_blocks(state, bank)
            if k is not None and len(blocks) > k:
                best = set(sorted(range(len(blocks)), key=lambda position: -blocks[position].score)[:k])
                blocks = [block for position, block in enumerate(blocks) if position in best]
            elif k is not None and len(blocks) < k:
                blocks += [
                    self._block_of(bank, index, gain, fallback=False, selected=False)
                    for index, gain in scan.best_unread(bank, state, k - len(blocks))
                ]
            selections.append(blocks)
        return selections

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
                    (state,), scan = self._scan([question], bank, show_progress)
                    blocks = self._selected_blocks(state, bank)
                    scanned.update(bank=bank, ingest_seconds=ingest_seconds, state=state, scan=scan, blocks=blocks)
            return scanned["blocks"]

        def pieces() -> Iterator[str]:
            scan_once()
            started = time.perf_counter()
            decode = self.reasoner.answer_stream(question, scanned["state"].memory)
            steps = iter(decode)
            while True:
                with self.lock:
                    step = next(steps, None)
                if step is None:
                    break
                yield step[1]
            assert decode.results is not None
            generation = decode.results[0]
            scanned["answer"] = self._build_answer(
                scanned["state"],
                scanned["bank"],
                scanned["scan"],
                generation.text,
                scanned["ingest_seconds"],
                time.perf_counter() - started,
                len(generation.token_ids),
            )

        return AnswerStream(pieces(), lambda: scanned["answer"], scan_once)

    def check_question(self, question: object) -> str:
        """The stripped question, refused when empty or when its prompts cannot fit the model's window."""
        question = clean_question(question)
        self._check_budget(question)
        return question

    # Internals ---------------------------------------------------------------------------------------

    def _check_budget(self, question: str) -> None:
        """Every prompt of a question (gate, memory update, answer) plus what it generates must fit the window.

        With an empty question (at construction) this checks the settings alone.
        """
        window = self.loaded.context_window
        memory, answer = self.config.reasoner.max_memory_tokens, self.config.reasoner.max_answer_tokens
        start = self.opening.num_slots if self.opening is not None else len(self.prompts.block_opening_ids())
        after_block = self.compressor.prompt_position(self.chunk_tokens, start)
        text_mode = self.config.reasoner.read_mode == "text"
        update_prompt = len(self.prompts.update_prompt(question, "", [] if text_mode else None))
        read = self.chunk_tokens if text_mode else after_block
        final_prompt = len(self.prompts.final_prompt(question, ""))
        needs = {  # prompt -> (tokens needed, how they add up)
            "memory update": (
                read + update_prompt + 2 * memory,
                f"{read} for the chunk, {update_prompt} of prompt, {memory} of previous and {memory} of new memory",
            ),
            "answer": (
                final_prompt + memory + answer,
                f"{final_prompt} of prompt, {memory} of memory, {answer} to answer",
            ),
        }
        if self.rule.needs_model:
            gate_prompt = self.rule.prompt_tokens(self.prompts, question)
            needs["gate"] = (
                after_block + gate_prompt + memory,
                f"{after_block} for the block, {gate_prompt} of prompt and {memory} of memory",
            )
        what, (needed, parts) = max(needs.items(), key=lambda item: item[1][0])
        if needed <= window:
            return
        if question:
            raise ContextTooLongError(
                f"the question is {len(self.prompts.encode_text(question))} tokens; its {what} prompt needs {needed} "
                f"tokens ({parts}), more than the model's context window of {window}; ask a shorter question or "
                "lower max_memory_tokens"
            )
        raise ContextTooLongError(
            f"a {self.config.reasoner.read_mode}-mode {what} needs about {needed} tokens ({parts}), more than the "
            f"model's context window of {window}; lower chunk_tokens or max_memory_tokens"
        )

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

    def _scan(
        self,
        questions: list[str],
        bank: MemoryBank,
        show_progress: bool | None,
        observe: UpdateObserver | None = None,
    ) -> tuple[list[ScanState], GateScan]:
        """The gate's state-aware scan with memory updates; ``observe(state, index, request, generation)`` hears
        each update (the RL trainer records its turns this way)."""
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
            scan.run(bank, states, self._updater(bank, observe))
        return states, scan

    def _updater(
        self, bank: MemoryBank, observe: UpdateObserver | None = None
    ) -> Callable[[list[tuple[ScanState, int]]], list[str]]:
        kv_mode = self.reasoner.read_mode == "kv"

        def update(hits: list[tuple[ScanState, int]]) -> list[str]:
            requests = [
                UpdateRequest(
                    state.question,
                    state.memory,
                    block=bank.block(index) if kv_mode else None,
                    chunk_ids=None if kv_mode else bank.block(index).token_ids.tolist(),
                )
                for state, index in hits
            ]
            generations = self.reasoner.update(requests)
            for (state, index), request, generation in zip(hits, requests, generations):
                state.reasoner_prompt_tokens += generation.prompt_tokens
                state.memory_tokens += len(generation.token_ids)
                if observe is not None:
                    observe(state, index, request, generation)
            return [generation.text for generation in generations]

        return update

    def _selected_blocks(self, state: ScanState, bank: MemoryBank) -> list[SelectedBlock]:
        """The blocks a scan read, in reading order, with the gate score that selected each."""
        blocks = []
        for index in state.selected:
            decision = next(d for d in reversed(state.decisions) if d.index == index)
            blocks.append(self._block_of(bank, index, decision.score, decision.fallback))
        return blocks

    @staticmethod
    def _block_of(bank: MemoryBank, index: int, score: float, fallback: bool, selected: bool = True) -> SelectedBlock:
        span = bank.spans[index]
        origin, at = bank.origin(index)  # a filtered view or a union reports each block as its own bank numbers it
        return SelectedBlock(
            at, score, span.document_id, span.char_start, span.char_end, span.text, fallback, selected, origin.name
        )

    def _build_answer(
        self,
        state: ScanState,
        bank: MemoryBank,
        scan: GateScan,
        text: str,
        ingest_seconds: float,
        answer_seconds: float,
        answer_tokens: int,
    ) -> Answer:
        counts = {
            "reasoner_prompt_tokens": state.reasoner_prompt_tokens,
            "memory_tokens": state.memory_tokens,
            "document_tokens": bank.num_tokens,
            "memory_slots": bank.num_slots,
            "blocks": len(bank),
            "blocks_read": len(state.selected),
            "gate_rows": scan.timings.gate_rows,
            "rejudged_blocks": state.rejudged,
            "prefiltered_blocks": scan.timings.prefiltered_blocks,
            "candidates": len(set().union(*state.candidate_history)) if state.candidate_history else len(bank),
            "answer_tokens": answer_tokens,
        }
        return Answer(
            question=state.question,
            text=text,
            mode="lychee",
            blocks=self._selected_blocks(state, bank),
            memory_steps=list(state.memories),
            gate_scores=[
                GateScore(bank.origin(d.index)[1], d.score, d.relevant, d.memory_step, d.rejudged)
                for d in state.decisions
            ],
            candidates=[[bank.origin(index)[1] for index in picks] for picks in state.candidate_history],
            timings=phase_timings(
                self.loaded.load_seconds,
                ingest_seconds,
                prefilter=scan.timings.prefilter_seconds,
                gate=scan.timings.gate_seconds,
                reason=scan.timings.reason_seconds,
                answer=answer_seconds,
            ),
            token_counts=counts,
        )

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
