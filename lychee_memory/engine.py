"""The engine: documents -> chunks -> blocks -> bank -> (gate, reasoner) -> answer.

``LycheeMemory.from_pretrained(spec, **options)`` loads a model and resolves every "auto" setting for it;
``ingest`` builds a bank, ``ask``/``ask_many``/``stream`` answer over it. The MemAgent and full-context
baselines run in the same engine, on the same model and prompts, for honest comparisons.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Literal

from tqdm.auto import tqdm

from .answer import Answer, AnswerStream, GateScore, SelectedBlock
from .blocks import MemoryBank, MemoryBlock
from .chunking import chunk_documents
from .compressors import Compressor, build_compressor
from .compressors.beacon import BeaconSettings
from .config import EngineConfig, PromptSettings
from .documents import Document, DocumentInput, load_documents
from .errors import BankMismatchError, ConfigurationError, ContextTooLongError, EmptyQuestionError
from .gate import RULES, GateRule, GateScan, QueryLikelihoodRule, ScanState, ScoreRequest, build_rule
from .model_loading import LoadedModel, load_model
from .presets import preset_for
from .prompts import PromptBuilder
from .reasoner import Reasoner, UpdateRequest, focus_windows
from .store import MemoryStore, as_store

Mode = Literal["lychee", "memagent", "full_context"]
Source = MemoryBank | DocumentInput | Iterable[DocumentInput]

DEFAULT_RATIO = 4
SMALL_MODEL_WINDOW = 16384  # models with a shorter context window default to 1024-token chunks
SMALL_MODEL_CHUNK_TOKENS = 1024
DEFAULT_CHUNK_TOKENS = 4096


def resolve_config(config: EngineConfig, loaded: LoadedModel) -> EngineConfig:
    """Replace every "auto"/None setting by the value that works best for this model, and validate.

    Order: a trained checkpoint decides the compressor; a measured preset (``presets.py``) fills what the
    user left open; generic defaults fill the rest.
    """
    resolved = config.model_copy(deep=True)
    preset = preset_for(loaded.config) if config.use_presets else None
    compressor = resolved.compressor
    if compressor.kind == "auto":
        if loaded.has_trained_memory:
            compressor.kind = "beacon"
        elif preset is not None and preset.compressor is not None and compressor.ratio is None:
            compressor.kind = preset.compressor
        else:
            compressor.kind = "attention"
    if compressor.kind == "none":
        compressor.ratio = 1
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
    if compressor.kind == "beacon":
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
    if resolved.gate.rule == "auto":
        resolved.gate.rule = "query_likelihood"
    if resolved.gate.threshold is None:
        measured = preset.thresholds.get((compressor.kind, resolved.gate.rule)) if preset else None
        resolved.gate.threshold = measured if measured is not None else RULES[resolved.gate.rule].default_threshold
    if preset is not None:
        defaults = PromptSettings()
        for field_name, template in preset.prompts.items():
            if getattr(resolved.prompts, field_name) == getattr(defaults, field_name):
                setattr(resolved.prompts, field_name, template)
        if not resolved.reasoner.stop_strings and preset.stop_strings:
            resolved.reasoner.stop_strings = list(preset.stop_strings)
        if resolved.reasoner.focus_tokens is None and preset.focus_tokens is not None:
            resolved.reasoner.focus_tokens = preset.focus_tokens
    if resolved.reasoner.focus_tokens is None:
        resolved.reasoner.focus_tokens = 0
    if resolved.reasoner.read_mode == "auto":
        trained = compressor.kind == "beacon" and loaded.has_trained_memory
        if preset is not None and preset.read_mode is not None and compressor.kind == preset.compressor:
            resolved.reasoner.read_mode = preset.read_mode
        else:
            # A trained compressor's KV is what its reasoner learned to read. Anything else is re-read as
            # text inside the chat turn: compression loses exact names and numbers, and even raw KV sits
            # outside the chat turn of an instruct model (measured on SmolLM2, see presets.py).
            resolved.reasoner.read_mode = "kv" if trained else "text"
    return resolved


class LycheeMemory:
    """Compressed-memory question answering over long documents."""

    def __init__(self, loaded: LoadedModel, config: EngineConfig | None = None):
        self.loaded = loaded
        self.config = resolve_config(config or EngineConfig(), loaded)
        self.prompts = PromptBuilder(loaded.tokenizer, self.config.prompts)
        self.compressor: Compressor = build_compressor(self.config.compressor, loaded)
        self.rule: GateRule = build_rule(self.config.gate, self.config.prompts, loaded.tokenizer)
        assert self.config.gate.threshold is not None
        self.threshold = self.config.gate.threshold
        self.reasoner = Reasoner(
            loaded, self.prompts, self.config.reasoner, self.config.reasoner.read_mode, self.config.gate.batch_size
        )
        self._check_prompt_budget()

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

    # Building memory ---------------------------------------------------------------------------------

    @property
    def chunk_tokens(self) -> int:
        assert self.config.chunking.chunk_tokens is not None
        return self.config.chunking.chunk_tokens

    def _progress(self, total: int, description: str, show: bool | None) -> tqdm:
        enabled = self.config.show_progress if show is None else show
        return tqdm(total=total, desc=description, unit="block", disable=not enabled, leave=False, dynamic_ncols=True)

    @property
    def ingest_batch_size(self) -> int:
        """Chunks compressed per forward: the configured value, else 4 on CUDA and 1 elsewhere."""
        return self.config.compressor.ingest_batch_size or (4 if self.loaded.device.type == "cuda" else 1)

    def compress_documents(self, documents: Sequence[Document], show_progress: bool | None = None) -> list[MemoryBlock]:
        """Chunk and compress documents, one block per chunk, in document order."""
        chunks = chunk_documents(
            list(documents), self.loaded.tokenizer, self.chunk_tokens, self.config.chunking.boundary_lookback
        )
        batch_size = self.ingest_batch_size
        blocks: list[MemoryBlock] = []
        with self._progress(len(chunks), "compressing", show_progress) as bar:
            for start in range(0, len(chunks), batch_size):
                group = chunks[start : start + batch_size]
                blocks.extend(self.compressor.compress(self.loaded, group))
                bar.update(len(group))
        return blocks

    def ingest(
        self,
        documents: DocumentInput | Iterable[DocumentInput],
        *,
        name: str | None = None,
        store: MemoryStore | str | os.PathLike[str] | None = None,
        bank: str | None = None,
        show_progress: bool | None = None,
    ) -> MemoryBank:
        """Compress documents into a bank (text = str, file = pathlib.Path).

        Without ``store``/``bank`` the bank lives in memory. With them, the documents are added to bank
        ``bank`` of ``store`` (default store when only ``bank`` is given): only chunks not stored yet are
        compressed, a document whose id is already in the bank replaces it, the manifest is written last and
        atomically, and the returned bank is lazy (blocks read from disk when used).
        """
        docs = load_documents(documents)
        if store is None and bank is None:
            blocks = self.compress_documents(docs, show_progress)
            return MemoryBank.from_blocks(
                docs, blocks, self.loaded.fingerprint(), self.compressor.describe(), self.chunk_tokens, name=name
            )
        if bank is not None and name is not None and bank != name:
            raise ConfigurationError(f"name={name!r} and bank={bank!r} disagree; give the bank name once, as bank=")
        bank_name = bank if bank is not None else name
        if bank_name is None:
            raise ConfigurationError(
                "ingesting into a store needs a bank name: ingest(documents, store=..., bank='name')"
            )
        return as_store(store).add_documents(self, docs, bank_name, show_progress=show_progress)

    def open_bank(
        self, name: str, store: MemoryStore | str | os.PathLike[str] | None = None, *, recompress: bool = False
    ) -> MemoryBank:
        """A stored bank, lazily loaded, for this engine (default store when ``store`` is None).

        Raises BankNotFoundError when there is no such bank, and BankMismatchError when it was built with
        another model, dtype or compressor, unless ``recompress`` rebuilds it from its stored text with
        this engine (under the same name).
        """
        target = as_store(store)
        info = target.bank_info(name)
        if info.model_fingerprint != self.loaded.fingerprint() or info.compressor != self.compressor.describe():
            if recompress:
                return target.recompress_bank(self, name)
            with_model = info.model_spec or "an unrecorded model"
            raise BankMismatchError(
                f"bank {name!r} in store {str(target.path)!r} was built with {with_model} "
                f"(fingerprint {info.model_fingerprint}, compressor {info.compressor}); this engine has fingerprint "
                f"{self.loaded.fingerprint()} and compressor {self.compressor.describe()}. Load the engine with the "
                "bank's model and settings, or pass recompress=True (CLI: --recompress) to rebuild the bank"
            )
        return target.load_bank(name, dtype=self.loaded.dtype, device=self.loaded.device)

    def remove_documents(self, bank: MemoryBank, document_ids: Iterable[str]) -> MemoryBank:
        """The bank without these documents; a store-backed bank's manifest is rewritten (blocks stay until gc).

        Raises DocumentNotFoundError for an id the bank does not hold.
        """
        if bank.store is not None and bank.name is not None:
            return bank.store.remove_documents(
                bank.name, document_ids, dtype=self.loaded.dtype, device=self.loaded.device
            )
        return bank.without_documents(document_ids)

    def check_bank(self, bank: MemoryBank) -> None:
        """Refuse a bank built by another model or compressor: its KV would be silently wrong."""
        if bank.model_fingerprint != self.loaded.fingerprint():
            raise BankMismatchError(
                f"bank {bank.name or '(unnamed)'} was built with another model or dtype "
                f"(fingerprint {bank.model_fingerprint}, this engine {self.loaded.fingerprint()}); rebuild it with this model"
            )
        if bank.compressor != self.compressor.describe():
            raise BankMismatchError(
                f"bank {bank.name or '(unnamed)'} was built with compressor {bank.compressor}, "
                f"this engine uses {self.compressor.describe()}; rebuild it or load the engine with the bank's settings"
            )

    # Asking ------------------------------------------------------------------------------------------

    def ask(self, question: str, source: Source, *, mode: Mode = "lychee", show_progress: bool | None = None) -> Answer:
        """Answer one question over a bank, or over documents (ingested first, timed as "ingest")."""
        return self.ask_many([question], source, mode=mode, show_progress=show_progress)[0]

    def ask_many(
        self, questions: Sequence[str], source: Source, *, mode: Mode = "lychee", show_progress: bool | None = None
    ) -> list[Answer]:
        """Answer several questions over one source; scans and generations are batched across questions."""
        if isinstance(questions, str):
            raise TypeError("ask_many takes a list of questions; use ask() for one")
        questions = [self._check_question(q) for q in questions]
        if mode == "memagent":
            from .baselines import run_memagent

            return run_memagent(self, questions, self._documents_of(source), show_progress)
        if mode == "full_context":
            from .baselines import run_full_context

            return run_full_context(self, questions, self._documents_of(source))
        if mode != "lychee":
            raise ConfigurationError(f"unknown mode {mode!r}: use 'lychee', 'memagent' or 'full_context'")
        bank, ingest_seconds = self._bank_of(source, show_progress)
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
        self, question: str, source: Source, *, k: int | None = None, show_progress: bool | None = None
    ) -> list[SelectedBlock]:
        """The blocks the gate selects for a question, without writing the final answer (for retrievers).

        Runs the state-aware scan with its memory updates (hop 2 is judged against the notes of hop 1).
        ``k`` keeps at most k blocks: the k best by gate score among those read, still in reading order.
        """
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ConfigurationError(f"k must be a positive number of blocks, got {k!r}")
        question = self._check_question(question)
        bank, _ = self._bank_of(source, show_progress)
        (state,), _ = self._scan([question], bank, show_progress)
        blocks = self._selected_blocks(state, bank)
        if k is not None and len(blocks) > k:
            best = set(sorted(range(len(blocks)), key=lambda position: -blocks[position].score)[:k])
            blocks = [block for position, block in enumerate(blocks) if position in best]
        return blocks

    def stream(self, question: str, source: Source, *, show_progress: bool | None = None) -> AnswerStream:
        """Gate and reason, then stream the final answer text; ``.answer`` holds the Answer afterwards.

        ``.blocks`` runs the scan alone when iteration has not started, so sources can be shown first.
        """
        question = self._check_question(question)
        scanned: dict[str, Any] = {}
        state_box: dict[str, Any] = {}

        def scan_once() -> list[SelectedBlock]:
            if not scanned:
                bank, ingest_seconds = self._bank_of(source, show_progress)
                (state,), scan = self._scan([question], bank, show_progress)
                blocks = self._selected_blocks(state, bank)
                scanned.update(bank=bank, ingest_seconds=ingest_seconds, state=state, scan=scan, blocks=blocks)
            return scanned["blocks"]

        def pieces() -> Iterator[str]:
            scan_once()
            bank, ingest_seconds = scanned["bank"], scanned["ingest_seconds"]
            state, scan = scanned["state"], scanned["scan"]
            started = time.perf_counter()
            decode = self.reasoner.answer_stream(question, state.memory)
            for _, piece in decode:
                yield piece
            assert decode.results is not None
            generation = decode.results[0]
            state_box["answer"] = self._build_answer(
                state,
                bank,
                scan,
                generation.text,
                ingest_seconds,
                time.perf_counter() - started,
                len(generation.token_ids),
            )

        return AnswerStream(pieces(), lambda: state_box["answer"], scan_once)

    # Internals ---------------------------------------------------------------------------------------

    def _check_question(self, question: str) -> str:
        if not isinstance(question, str):
            raise EmptyQuestionError(f"the question must be a string, got {type(question).__name__}")
        if not question.strip():
            raise EmptyQuestionError("the question is empty: ask something about the documents")
        question = question.strip()
        needed = (
            len(self.prompts.final_prompt(question, ""))
            + self.config.reasoner.max_memory_tokens
            + self.config.reasoner.max_answer_tokens
        )
        if needed > self.loaded.context_window:
            tokens = len(self.prompts.encode_text(question))
            raise ContextTooLongError(
                f"the question is {tokens} tokens; with the answer prompt, the memory budget "
                f"({self.config.reasoner.max_memory_tokens}) and the answer budget ({self.config.reasoner.max_answer_tokens}) "
                f"it needs {needed} tokens, more than the model's context window of {self.loaded.context_window}"
            )
        return question

    def _check_prompt_budget(self) -> None:
        """The longest update prompt plus its generated memory must fit the model's window."""
        memory = self.config.reasoner.max_memory_tokens
        overhead = len(self.prompts.update_prompt("", "", "" if self.config.reasoner.read_mode == "text" else None))
        slots = (
            self.chunk_tokens
            if self.config.reasoner.read_mode == "text"
            else self.chunk_tokens // self.compressor.ratio
        )
        needed = slots + overhead + 2 * memory
        if needed > self.loaded.context_window:
            raise ContextTooLongError(
                f"a {self.config.reasoner.read_mode}-mode memory update needs about {needed} tokens "
                f"({slots} for the chunk, {overhead} of prompt, {memory} of previous and {memory} of new memory), "
                f"more than the model's context window of {self.loaded.context_window}; lower chunk_tokens or max_memory_tokens"
            )

    def _documents_of(self, source: Source) -> list[Document]:
        if isinstance(source, MemoryBank):
            return list(source.documents)
        return load_documents(source)

    def _bank_of(self, source: Source, show_progress: bool | None) -> tuple[MemoryBank, float]:
        if isinstance(source, MemoryBank):
            self.check_bank(source)
            return source, 0.0
        started = time.perf_counter()
        bank = self.ingest(source, show_progress=show_progress)
        return bank, time.perf_counter() - started

    def _scan(
        self, questions: list[str], bank: MemoryBank, show_progress: bool | None
    ) -> tuple[list[ScanState], GateScan]:
        states = [ScanState(question, self.config.prompts.initial_memory) for question in questions]
        with self._progress(len(bank) * len(questions), "scanning", show_progress) as bar:
            scan = GateScan(self.loaded, self.prompts, self.rule, self.config.gate, self.threshold, progress=bar.update)
            scan.run(bank, states, self._updater(bank))
        return states, scan

    def _updater(self, bank: MemoryBank) -> Callable[[list[tuple[ScanState, int]]], list[str]]:
        kv_mode = self.reasoner.read_mode == "kv"

        def update(hits: list[tuple[ScanState, int]]) -> list[str]:
            sections = [None] * len(hits) if kv_mode else self._focused_sections(hits, bank)
            requests = [
                UpdateRequest(
                    state.question,
                    state.memory,
                    block=bank.block(index) if kv_mode else None,
                    section=section,
                )
                for (state, index), section in zip(hits, sections)
            ]
            generations = self.reasoner.update(requests)
            for (state, _), generation in zip(hits, generations):
                state.reasoner_prompt_tokens += generation.prompt_tokens
                state.memory_tokens += len(generation.token_ids)
            return [generation.text for generation in generations]

        return update

    def _focused_sections(self, hits: list[tuple[ScanState, int]], bank: MemoryBank) -> list[str]:
        """The text the reasoner re-reads for each hit: the whole block, or with ``focus_tokens`` the window
        (plus a margin of an eighth of it each side) under which the question and notes are most likely."""
        focus = self.config.reasoner.focus_tokens or 0
        texts = [bank.spans[index].text for _, index in hits]
        if focus <= 0:
            return texts
        windows = [focus_windows(self.loaded.tokenizer, text, focus) for text in texts]
        requests, owners = [], []
        for row, ((state, _), choices) in enumerate(zip(hits, windows)):
            if len(choices) > 1:
                for choice in choices:
                    requests.append(ScoreRequest(state.question, state.memory, None, prefix_ids=choice.token_ids))
                    owners.append(row)
        if not requests:
            return texts
        rule = self.rule if isinstance(self.rule, QueryLikelihoodRule) else self._focus_rule
        step = self.config.gate.batch_size
        scores = [
            s
            for start in range(0, len(requests), step)
            for s in rule.score(self.loaded, self.prompts, requests[start : start + step])
        ]
        sections = list(texts)
        for row, choices in enumerate(windows):
            if len(choices) > 1:
                row_scores = [score for owner, score in zip(owners, scores) if owner == row]
                best = choices[max(range(len(choices)), key=row_scores.__getitem__)]
                sections[row] = texts[row][best.char_start : best.char_end]
        return sections

    @functools.cached_property
    def _focus_rule(self) -> QueryLikelihoodRule:
        settings = self.config.gate.model_copy(update={"rule": "query_likelihood"})
        rule = build_rule(settings, self.config.prompts, self.loaded.tokenizer)
        assert isinstance(rule, QueryLikelihoodRule)
        return rule

    def _selected_blocks(self, state: ScanState, bank: MemoryBank) -> list[SelectedBlock]:
        """The blocks a scan read, in reading order, with the gate score that selected each."""
        blocks = []
        for index in state.selected:
            decision = next(d for d in reversed(state.decisions) if d.index == index)
            span = bank.spans[index]
            blocks.append(
                SelectedBlock(
                    index,
                    decision.score,
                    span.document_id,
                    span.char_start,
                    span.char_end,
                    span.text,
                    decision.fallback,
                )
            )
        return blocks

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
        blocks = self._selected_blocks(state, bank)
        query_seconds = scan.timings.gate_seconds + scan.timings.reason_seconds + answer_seconds
        counts = {
            "reasoner_prompt_tokens": state.reasoner_prompt_tokens,
            "memory_tokens": state.memory_tokens,
            "document_tokens": bank.num_tokens,
            "memory_slots": bank.num_slots,
            "blocks": len(bank),
            "blocks_read": len(state.selected),
            "gate_rows": scan.timings.gate_rows,
            "answer_tokens": answer_tokens,
        }
        return Answer(
            question=state.question,
            text=text,
            mode="lychee",
            blocks=blocks,
            memory_steps=list(state.memories),
            gate_scores=[GateScore(d.index, d.score, d.relevant, d.memory_step) for d in state.decisions],
            timings={
                "load_model": self.loaded.load_seconds,
                "ingest": ingest_seconds,
                "gate": scan.timings.gate_seconds,
                "reason": scan.timings.reason_seconds,
                "answer": answer_seconds,
                "query": query_seconds,
            },
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
                **self.config.gate.model_dump(exclude={"rule", "threshold"}),
            },
            "reasoner": self.config.reasoner.model_dump(),
        }
