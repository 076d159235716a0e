"""The memory service behind the HTTP routes: one engine, one store, ingest jobs, batched questions, metrics.

The model loads in a background thread after the server starts listening (routes answer 503 until then);
the store's banks are then checked against the engine: a bank built with another model or settings stops
the server unless ``recompress`` rebuilds it from its stored text.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from typing import Any

from lychee_memory import (
    Answer,
    AnswerStream,
    ConfigurationError,
    Document,
    DocumentFilter,
    LycheeError,
    LycheeMemory,
    MemoryBank,
    MemoryStore,
    SelectedBlock,
)
from lychee_memory.questions import clean_question
from lychee_memory.store import as_store, check_new_bank_name
from lychee_memory.store.store import default_store_path

from ..banks import OpenBanks
from .auth import KeyRing, Tenant
from .batching import QueryBatcher
from .jobs import IngestWorker, Job, JobBook
from .metrics import ServerMetrics
from .problems import ApiError
from .settings import ServerSettings

logger = logging.getLogger("lychee_memory.server")


class MemoryService:
    """Everything the routes call. ``status`` is "loading", "ok" or "failed"."""

    def __init__(
        self,
        settings: ServerSettings,
        load_engine: Callable[[], LycheeMemory] | None = None,
        on_fatal: Callable[[str], None] | None = None,
    ):
        self.settings = settings
        self.keys = KeyRing.build(settings.api_keys, settings.keys_file)
        self.store: MemoryStore = as_store(settings.store if settings.store else default_store_path())
        self.jobs = JobBook(self.store)
        for job in self.jobs.recover():
            logger.warning("job %s into bank %s was interrupted by a restart: now %s", job.id, job.bank, job.status)
        self.metrics = ServerMetrics()
        self.status = "loading"
        self.failure: str | None = None
        self.engine: LycheeMemory | None = None
        self.batcher: QueryBatcher | None = None
        self.worker: IngestWorker | None = None
        self._banks = OpenBanks()
        self._load_engine = load_engine or self._default_engine
        self._on_fatal = on_fatal or (lambda message: None)
        self._loader = threading.Thread(target=self._start, name="lychee-load", daemon=True)
        self._count_jobs()

    # Lifecycle ---------------------------------------------------------------------------------------

    def start(self) -> None:
        self._loader.start()

    def _default_engine(self) -> LycheeMemory:
        options = {"show_progress": False, **self.settings.engine}
        return LycheeMemory.from_pretrained(config=self.settings.engine_config, **options)

    def _start(self) -> None:
        try:
            engine = self._load_engine()
            self._check_store(engine)
        except Exception as error:  # a failed start is reported on /healthz and stops the server
            message = str(error) if isinstance(error, LycheeError) else f"{type(error).__name__}: {error}"
            if not isinstance(error, LycheeError):
                logger.exception("the server could not start")
            self.failure, self.status = message, "failed"
            self._on_fatal(message)
            return
        self.engine = engine
        self.batcher = QueryBatcher(self._answer_batch, self.settings.batch_window_ms / 1000, self.settings.max_batch)
        self.worker = IngestWorker(self.jobs, self._ingest, self._count_jobs)
        self.status = "ok"
        self.metrics.ready.set(1)
        logger.info("ready: model %s, store %s", engine.loaded.resolved.spec, self.store.location)

    def _check_store(self, engine: LycheeMemory) -> None:
        """Refuse banks another model or other settings built (their KV would be wrong), or rebuild them."""
        foreign = []
        for name in self.store.bank_names():
            manifest = self.store.bank_manifest(name)
            if manifest.identity != engine.identity:
                foreign.append((name, manifest))
        if not foreign:
            return
        if not self.settings.recompress:
            try:
                self.store.check_bank_identity(foreign[0][1], engine.identity)
                detail = ""
            except LycheeError as error:
                detail = f" ({error})"
            names = ", ".join(name for name, _ in foreign)
            raise ConfigurationError(
                f"store {self.store.location!r} holds {len(foreign)} bank(s) built with another model or settings: "
                f"{names}{detail}; start the server with the model and settings they were built with, or pass "
                "--recompress to rebuild them from their stored text with this one"
            )
        for name, _ in foreign:
            logger.warning("recompressing bank %s with %s", name, engine.loaded.resolved.spec)
            engine.open_bank(name, self.store, recompress=True)

    def stop(self) -> None:
        """Finish the running ingest (up to ``shutdown_timeout``), cancel queued ones, answer queued questions."""
        if self.worker is not None:
            finished = self.worker.stop(self.settings.shutdown_timeout)
            if not finished:
                logger.warning(
                    "an ingest job was still running after %.0f s: %s",
                    self.settings.shutdown_timeout,
                    "it was stopped and reported failed; its bank stays as it was"
                    if not self.worker.alive
                    else "it did not stop; its bank stays as it was, and the job is reported failed after a restart",
                )
        if self.batcher is not None:
            self.batcher.stop()

    def still_working(self) -> bool:
        """Whether a thread of this service is still in the model (loading it, or an ingest that did not stop)."""
        return self._loader.is_alive() or (self.worker is not None and self.worker.alive)

    def ready_engine(self) -> LycheeMemory:
        """The engine, or 503 while it loads (or when loading failed)."""
        if self.status == "ok" and self.engine is not None:
            return self.engine
        if self.status == "failed":
            raise ApiError(503, "unavailable", "the server failed to start; see /healthz and its log")
        raise ApiError(503, "loading", "the model is still loading; retry shortly", {"Retry-After": "2"})

    def health(self) -> tuple[int, dict[str, Any]]:
        spec = self.settings.engine.get("spec")
        if self.engine is not None:
            spec = self.engine.loaded.resolved.spec
        data: dict[str, Any] = {"status": self.status, "model": spec}
        if self.status == "failed":
            data["error"] = self.failure
        return (200 if self.status == "ok" else 503), data

    # Banks -------------------------------------------------------------------------------------------

    def bank_names(self, tenant: Tenant) -> list[str]:
        return [name for name in self.store.bank_names() if tenant.may_use(name)]

    def list_banks(self, tenant: Tenant) -> list[dict[str, Any]]:
        banks = []
        for name in self.bank_names(tenant):
            try:
                info = self.store.bank_info(name)
            except LycheeError:  # deleted meanwhile
                continue
            banks.append(
                {
                    "name": info.name,
                    "documents": len(info.documents),
                    "tokens": info.tokens,
                    "blocks": info.blocks,
                    "stored_bytes": info.stored_bytes,
                    "index_bytes": info.index_bytes,
                    "block_dtypes": list(info.block_dtypes),  # the codec(s) its blocks are stored with
                    "updated": info.updated.isoformat(),
                }
            )
        return banks

    def require_bank(self, tenant: Tenant, name: str) -> None:
        """403 outside the caller's prefixes, 404 when the store has no such bank."""
        tenant.require(name)
        if not self.store.has_bank(name):
            raise ApiError(404, "not_found", f"no bank named {name!r}")

    def open_bank(self, name: str) -> MemoryBank:
        if not self.store.has_bank(name):
            raise ApiError(404, "not_found", f"no bank named {name!r}")
        return self._banks.open(self.ready_engine(), self.store, name)

    def scan_bank(self, names: Sequence[str]) -> MemoryBank:
        """The bank a question reads: one stored bank, or the union of several (one tenant's)."""
        banks = [self.open_bank(name) for name in names]
        return banks[0] if len(banks) == 1 else MemoryBank.union(banks)

    def documents_of(self, tenant: Tenant, name: str) -> list[dict[str, Any]]:
        self.require_bank(tenant, name)
        manifest = self.store.bank_manifest(name)
        return [
            {
                "id": document.id,
                "metadata": document.metadata,
                "characters": document.characters,
                "blocks": len(document.blocks),
            }
            for document in manifest.documents
        ]

    def delete_document(self, tenant: Tenant, name: str, document_id: str) -> None:
        self.require_bank(tenant, name)
        self._no_job_on(name)
        engine = self.ready_engine()
        engine.remove_documents(self.open_bank(name), [document_id])

    def delete_bank(self, tenant: Tenant, name: str) -> None:
        self.require_bank(tenant, name)
        self._no_job_on(name)
        self.store.delete_bank(name)

    def _no_job_on(self, name: str) -> None:
        job = self.jobs.active_on(name)
        if job is not None:
            raise ApiError(
                409, "conflict", f"bank {name!r} has an ingest job ({job.id}) {job.status}; retry when it is done"
            )

    # Ingest ------------------------------------------------------------------------------------------

    def submit_documents(self, tenant: Tenant, name: str, documents: list[Document]) -> Job:
        tenant.require(name)
        try:
            check_new_bank_name(name) if not self.store.has_bank(name) else None
        except ConfigurationError as error:
            raise ApiError(400, "invalid_bank_name", str(error)) from None
        self.ready_engine()
        assert self.worker is not None
        if not self.worker.accepting:
            raise ApiError(503, "shutting_down", "the server is shutting down and takes no new jobs")
        return self.worker.submit(name, documents)

    def job(self, tenant: Tenant, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None or not tenant.may_use(job.bank):  # another tenant's job does not exist for this caller
            raise ApiError(404, "not_found", f"no job {job_id!r}")
        return job

    def _ingest(self, job: Job, documents: list[Document], progress: Callable[[int, int], None]) -> dict[str, Any]:
        engine = self.ready_engine()
        before = [0]

        def counted(done: int, total: int) -> None:
            self.metrics.ingested_chunks.inc(max(0, done - before[0]))
            before[0] = done
            progress(done, total)

        bank = engine.ingest(documents, store=self.store, bank=job.bank, show_progress=False, progress=counted)
        report = self.store.last_ingest
        return {
            "documents_added": report.documents_added,
            "documents_replaced": report.documents_replaced,
            "chunks": report.chunks,
            "compressed": report.compressed,
            "reused": report.reused,
            "seconds": round(report.seconds, 3),
            "bank": {"documents": len(bank.documents), "blocks": len(bank), "tokens": bank.num_tokens},
        }

    def _count_jobs(self) -> None:
        self.metrics.count_jobs([job.status for job in self.jobs.jobs()])

    # Questions ---------------------------------------------------------------------------------------

    def scope(self, tenant: Tenant, bank: str, banks: Sequence[str] | None) -> list[str]:
        """The banks a question reads: ``banks`` when given (the path's bank among them or not), else the path's.

        The path's bank must be the caller's even when ``banks`` leaves it out (403 otherwise, like every route)."""
        tenant.require(bank)
        names = list(dict.fromkeys(banks)) if banks else [bank]
        for name in names:
            self.require_bank(tenant, name)
        return names

    def check(self, question: str, filters: dict[str, Any] | None) -> tuple[str, DocumentFilter]:
        """The stripped question and the parsed filter (400/422 now, before the question waits for a batch).

        Whether the question fits the model's window is checked by the engine inside the batch (a question
        that does not fit gets its 422 alone, see ``_answer_batch``): tokenizing here, outside the engine's
        lock, would share the tokenizer between threads.
        """
        self.ready_engine()
        return clean_question(question), DocumentFilter.parse(filters)

    def ask(self, names: list[str], question: str, document_filter: DocumentFilter):
        """A future for the Answer; questions on the same banks and filter are answered in one batch."""
        return self._submit(("answer", tuple(names), document_filter.key, None), question)

    def retrieve(self, names: list[str], question: str, document_filter: DocumentFilter, k: int | None):
        """A future for the selected blocks; retrievals with the same banks, filter and k share one scan."""
        return self._submit(("select", tuple(names), document_filter.key, k), question)

    def _submit(self, key: Hashable, question: str):
        self.ready_engine()
        assert self.batcher is not None
        try:
            return self.batcher.submit(key, question)
        except RuntimeError:
            raise ApiError(503, "shutting_down", "the server is shutting down") from None

    def _answer_batch(self, key: Hashable, questions: list[str]) -> list[Any]:
        """One batched scan for a group: ``ask_many`` (answers) or ``select_many`` (blocks); a question the
        engine refuses (too long for the window) gets its error alone, the others are answered one by one."""
        kind, names, filter_key, k = key  # type: ignore[misc]
        engine = self.ready_engine()
        options: dict[str, Any] = {"filters": json.loads(filter_key), "show_progress": False}
        if kind == "select":
            options["k"] = k
        many, one = (engine.select_many, engine.select) if kind == "select" else (engine.ask_many, engine.ask)
        started = time.perf_counter()
        bank = self.scan_bank(names)
        self.metrics.batch_size.observe(len(questions))
        try:
            results: list[Any] = many(questions, bank, **options)
        except LycheeError:
            if len(questions) == 1:
                raise
            results = []
            for question in questions:
                try:
                    results.append(one(question, bank, **options))
                except LycheeError as error:
                    results.append(error)
        logger.debug("%s: %d question(s) on %s in %.3f s", kind, len(questions), names, time.perf_counter() - started)
        return results

    def stream(self, names: list[str], question: str, document_filter: DocumentFilter) -> AnswerStream:
        engine = self.ready_engine()
        return engine.stream(question, self.scan_bank(names), filters=document_filter, show_progress=False)


def block_json(block: SelectedBlock) -> dict[str, Any]:
    return block.to_dict()


def answer_json(answer: Answer, queued: float = 0.0) -> dict[str, Any]:
    timings = {name: round(value, 4) for name, value in answer.timings.items() if name not in ("load_model",)}
    timings["queue"] = round(queued, 4)
    return {
        "answer": answer.text,
        "blocks": [block_json(block) for block in answer.blocks],
        "timings": timings,
        "tokens": answer.token_counts,
        "evidence": [excerpt.to_dict() for excerpt in answer.evidence],
    }
