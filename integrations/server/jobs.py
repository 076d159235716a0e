"""Ingest jobs: documents are compressed in the background, one job at a time, and each job's state survives
the server.

A job record is a JSON file under ``STORE/server-jobs/`` rewritten atomically at every change, so after a
crash (``kill -9``) the server still knows which jobs were queued or running. The store writes a bank's
manifest last and in one step, so such a job left its bank with all of its documents or none: on restart
the server checks which, and reports the job done or failed accordingly.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lychee_memory import Document, LycheeError, MemoryStore

from .problems import from_library

logger = logging.getLogger("lychee_memory.server")

JOBS_DIRECTORY = "server-jobs"
UNFINISHED = ("queued", "running")
KEPT_JOBS = 1000  # finished job records kept on disk (oldest removed first)
CANCEL_GRACE = 30.0  # seconds a cancelled job has to reach its next batch at shutdown


class JobCancelled(Exception):
    """Raised into a running ingest (at its next batch) to stop it; nothing of it reaches its bank."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def text_hash(text: str) -> str:
    """The hash the store names a document's text by (``text:<sha256>``)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class Job:
    """One ingest: which bank, which documents (ids and text hashes; the texts live only in memory)."""

    id: str
    bank: str
    documents: dict[str, str]  # document id -> sha256 of its text
    status: str = "queued"
    done: int = 0
    total: int = 0
    created: str = field(default_factory=_now)
    started: str | None = None
    finished: str | None = None
    result: dict[str, Any] | None = None
    error: dict[str, str] | None = None

    def public(self) -> dict[str, Any]:
        """What ``GET /v1/jobs/{id}`` returns."""
        data: dict[str, Any] = {
            "job": self.id,
            "bank": self.bank,
            "status": self.status,
            "progress": {"done": self.done, "total": self.total},
            "documents": len(self.documents),
            "created": self.created,
            "started": self.started,
            "finished": self.finished,
        }
        if self.result is not None:
            data["result"] = self.result
        if self.error is not None:
            data["error"] = self.error
        return data

    def record(self) -> dict[str, Any]:
        return self.__dict__.copy()


class JobBook:
    """The job records of one store, in memory and on disk."""

    def __init__(self, store: MemoryStore):
        self.store = store
        self.directory = Path(store.path) / JOBS_DIRECTORY
        self.directory.mkdir(parents=True, exist_ok=True)
        self._jobs: dict[str, Job] = {}
        self._guard = threading.Lock()
        self._load()

    def _load(self) -> None:
        for path in sorted(self.directory.glob("*.json")):
            try:
                job = Job(**json.loads(path.read_text(encoding="utf-8")))
            except (OSError, ValueError, TypeError) as error:
                logger.warning("ignoring unreadable job record %s: %s", path, error)
                continue
            self._jobs[job.id] = job

    def recover(self) -> list[Job]:
        """Settle jobs a previous server left queued or running: done when their bank holds every one of their
        documents with the same text, failed otherwise (the bank is then as it was before the job)."""
        settled = []
        for job in list(self._jobs.values()):
            if job.status not in UNFINISHED:
                continue
            if job.status == "running" and self._landed(job):
                job.status, job.result = "done", {"recovered": True, "documents": sorted(job.documents)}
            else:
                job.status = "failed"
                job.error = {
                    "type": "interrupted",
                    "message": f"the server stopped before this job finished; bank {job.bank!r} holds none of its "
                    "documents' new versions: submit them again",
                }
            job.finished = _now()
            self.save(job)
            settled.append(job)
        return settled

    def _landed(self, job: Job) -> bool:
        if not self.store.has_bank(job.bank):
            return False
        stored = {document.id: document.text_key for document in self.store.bank_manifest(job.bank).documents}
        return all(stored.get(document_id) == digest for document_id, digest in job.documents.items())

    def create(self, bank: str, documents: list[Document]) -> Job:
        job = Job(uuid.uuid4().hex, bank, {document.id: text_hash(document.text) for document in documents})
        with self._guard:
            self._jobs[job.id] = job
        self.save(job)
        return job

    def get(self, job_id: str) -> Job | None:
        with self._guard:
            return self._jobs.get(job_id)

    def jobs(self) -> list[Job]:
        with self._guard:
            return list(self._jobs.values())

    def active_on(self, bank: str) -> Job | None:
        """A queued or running job on ``bank`` (changes to the bank wait for it)."""
        with self._guard:
            return next((job for job in self._jobs.values() if job.bank == bank and job.status in UNFINISHED), None)

    def save(self, job: Job) -> None:
        """Write the record atomically (a crash leaves the old record or the new one, never half of one)."""
        path = self.directory / f"{job.id}.json"
        temporary = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        temporary.write_text(json.dumps(job.record()), encoding="utf-8")
        os.replace(temporary, path)
        if job.status not in UNFINISHED:
            self._prune()

    def _prune(self) -> None:
        with self._guard:
            finished = sorted(
                (job for job in self._jobs.values() if job.status not in UNFINISHED), key=lambda job: job.created
            )
            for job in finished[: max(0, len(finished) - KEPT_JOBS)]:
                del self._jobs[job.id]
                (self.directory / f"{job.id}.json").unlink(missing_ok=True)


IngestFunction = Callable[[Job, list[Document], Callable[[int, int], None]], dict[str, Any]]


class IngestWorker:
    """Runs ingest jobs one after another in a background thread (the engine compresses one batch at a time, so
    questions on every bank are answered between batches)."""

    def __init__(self, book: JobBook, ingest: IngestFunction, on_change: Callable[[], None] | None = None):
        self.book = book
        self.ingest = ingest
        self.on_change = on_change or (lambda: None)
        self._queue: queue.Queue[tuple[Job, list[Document]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="lychee-ingest", daemon=True)
        self._accepting = True
        self._cancel = threading.Event()
        self._thread.start()

    @property
    def accepting(self) -> bool:
        return self._accepting

    @property
    def alive(self) -> bool:
        """Whether the worker thread still runs (a job in the model) after ``stop``."""
        return self._thread.is_alive()

    def submit(self, bank: str, documents: list[Document]) -> Job:
        job = self.book.create(bank, documents)
        self._queue.put((job, documents))
        self.on_change()
        return job

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            job, documents = item
            if job.status != "queued":  # cancelled at shutdown
                continue
            job.status, job.started = "running", _now()
            self.book.save(job)
            self.on_change()
            try:
                job.result = self.ingest(job, documents, self._progress_of(job))
                job.status = "done"
            except JobCancelled:
                job.status = "failed"
                job.error = {
                    "type": "interrupted",
                    "message": f"the server shut down before this job finished; bank {job.bank!r} holds none of its "
                    "documents' new versions: submit them again",
                }
            except LycheeError as error:
                problem = from_library(error)
                job.status, job.error = "failed", {"type": problem.type, "message": problem.message}
            except Exception:
                logger.exception("ingest job %s into bank %s failed", job.id, job.bank)
                job.status = "failed"
                job.error = {"type": "internal", "message": "the ingest failed; see the server log"}
            job.finished = _now()
            self.book.save(job)
            self.on_change()

    def _progress_of(self, job: Job) -> Callable[[int, int], None]:
        """Progress into the job, saved at most once a second (and at the end)."""
        last_saved = [0.0]

        def progress(done: int, total: int) -> None:
            if self._cancel.is_set():  # between two batches: the store has not written the bank's manifest
                raise JobCancelled(job.id)
            job.done, job.total = done, total
            if time.monotonic() - last_saved[0] > 1.0 or done == total:
                last_saved[0] = time.monotonic()
                self.book.save(job)

        return progress

    def stop(self, timeout: float) -> bool:
        """Stop taking jobs, cancel queued ones (nothing of theirs was written), let the running one finish
        within ``timeout`` seconds, then stop it at its next batch (its bank stays as it was and the job is
        failed). False when it had not finished within ``timeout``."""
        self._accepting = False
        for job in self.book.jobs():
            if job.status == "queued":
                job.status, job.finished = "failed", _now()
                job.error = {
                    "type": "cancelled",
                    "message": "the server shut down before this job started; nothing was written: submit it again",
                }
                self.book.save(job)
        self._queue.put(None)
        self._thread.join(timeout)
        finished = not self._thread.is_alive()
        if not finished:
            self._cancel.set()
            self._thread.join(CANCEL_GRACE)
        self.on_change()
        return finished
