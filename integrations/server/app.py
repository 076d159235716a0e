"""The HTTP routes of ``lychee serve`` (FastAPI): banks, documents, jobs, questions, OpenAI-compatible chat, metrics.

Every ``/v1`` route authenticates the caller (``auth.py``) and checks the banks it names; the work is done by
``MemoryService``. JSON in, JSON out; errors are ``{"error": {"type", "message"}}`` (``problems.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any, Literal

from fastapi import Depends, FastAPI, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from lychee_memory import Answer, Document, DocumentFilter, LycheeError

from .auth import Tenant
from .metrics import PROMETHEUS_CONTENT_TYPE, RequestMetrics
from .problems import ApiError, body, from_library, install_handlers, logger
from .service import MemoryService, ServerSettings, answer_json, block_json
from .uploads import Upload, require_multipart, upload_metadata, uploaded_documents


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DocumentIn(_Request):
    id: StrictStr | None = Field(default=None, min_length=1)
    text: StrictStr
    metadata: dict[str, Any] = Field(default_factory=dict)


class IngestRequest(_Request):
    documents: list[DocumentIn] = Field(min_length=1)


class QueryRequest(_Request):
    question: StrictStr
    filters: dict[str, Any] | None = None
    banks: list[StrictStr] | None = Field(default=None, min_length=1)
    stream: StrictBool = False


class RetrieveRequest(_Request):
    question: StrictStr
    k: StrictInt | None = Field(default=None, ge=1, le=1000)
    filters: dict[str, Any] | None = None
    banks: list[StrictStr] | None = Field(default=None, min_length=1)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: StrictStr
    content: StrictStr | list[dict[str, Any]] | None = None


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # OpenAI clients send temperature, max_tokens, ...: accepted, unused
    model: StrictStr
    messages: list[ChatMessage] = Field(min_length=1)
    stream: StrictBool = False
    filters: dict[str, Any] | None = None


def _sse(data: Any, event: str | None = None) -> str:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data)}\n\n"


def _chat_question(request: ChatRequest) -> str:
    """The last user message's text (string content, or the text parts of a content list)."""
    for message in reversed(request.messages):
        if message.role != "user":
            continue
        if isinstance(message.content, str):
            return message.content
        if isinstance(message.content, list):
            return "".join(str(part.get("text", "")) for part in message.content if part.get("type") == "text")
        return ""
    raise ApiError(400, "invalid_request", "messages hold no user message: the last user message is the question")


def create_app(settings: ServerSettings, service: MemoryService | None = None) -> FastAPI:
    """The ASGI app; the service (engine, store, jobs) starts with the app's lifespan."""
    service = service or MemoryService(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.start()
        try:
            yield
        finally:
            await run_in_threadpool(service.stop)

    app = FastAPI(title="lychee-memory", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.service = service
    install_handlers(app)

    async def caller(authorization: str | None = Header(default=None)) -> Tenant:
        return service.keys.tenant(authorization)

    async def ready(tenant: Tenant = Depends(caller)) -> Tenant:
        service.ready_engine()
        return tenant

    def check_documents(request: IngestRequest) -> list[Document]:
        limit = settings.max_document_bytes
        documents = []
        for position, item in enumerate(request.documents):
            size = len(item.text.encode("utf-8"))
            label = repr(item.id) if item.id else f"#{position}"
            if size > limit:
                raise ApiError(
                    413, "too_large", f"document {label} is {size} bytes; this server accepts documents up to {limit}"
                )
            if not item.text.strip():
                raise ApiError(400, "invalid_document", f"document {label} is empty: there is nothing to read")
            documents.append(Document.from_text(item.text, id=item.id, metadata=item.metadata))
        ids = [document.id for document in documents]
        duplicate = next((i for i in ids if ids.count(i) > 1), None)
        if duplicate is not None:
            raise ApiError(400, "invalid_document", f"two documents share the id {duplicate!r}")
        return documents

    async def question_of(question: str, filters: dict[str, Any] | None) -> tuple[str, DocumentFilter]:
        if not question.strip():
            raise ApiError(422, "empty_question", "the question is empty")
        return await run_in_threadpool(service.check, question, filters)

    async def batched(future) -> Any:
        """A batched result; a question the engine refused inside its batch comes back as its error, raised here."""
        result = await asyncio.wrap_future(future)
        if isinstance(result, Exception):
            raise result
        return result

    async def answer(
        names: list[str], question: str, document_filter: DocumentFilter, kind: str
    ) -> tuple[Answer, float]:
        started = time.perf_counter()
        result = await batched(service.ask(names, question, document_filter))
        waited = max(0.0, time.perf_counter() - started - result.timings.get("query", 0.0))
        service.metrics.observe_answer(result, kind, waited)
        return result, waited

    # Health and metrics ------------------------------------------------------------------------------

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        status, data = service.health()
        return JSONResponse(data, status_code=status)

    @app.get("/metrics")
    async def metrics() -> Response:
        def refresh() -> None:
            with contextlib.suppress(LycheeError, OSError):
                service.metrics.banks.set(len(service.store.bank_names()))

        return Response(service.metrics.render(refresh), media_type=PROMETHEUS_CONTENT_TYPE)

    # Banks and documents -----------------------------------------------------------------------------

    @app.get("/v1/banks")
    def list_banks(tenant: Tenant = Depends(caller)) -> dict[str, Any]:
        return {"banks": service.list_banks(tenant)}

    @app.get("/v1/banks/{bank}")
    def bank_info(bank: str, tenant: Tenant = Depends(caller)) -> dict[str, Any]:
        service.require_bank(tenant, bank)
        found = [entry for entry in service.list_banks(tenant) if entry["name"] == bank]
        if not found:
            raise ApiError(404, "not_found", f"no bank named {bank!r}")
        return found[0]

    @app.get("/v1/banks/{bank}/documents")
    def list_documents(bank: str, tenant: Tenant = Depends(caller)) -> dict[str, Any]:
        return {"documents": service.documents_of(tenant, bank)}

    @app.post("/v1/banks/{bank}/documents", status_code=202)
    def add_documents(bank: str, request: IngestRequest, tenant: Tenant = Depends(ready)) -> dict[str, Any]:
        tenant.require(bank)
        job = service.submit_documents(tenant, bank, check_documents(request))
        return {"job": job.id, "status": job.status}

    @app.post("/v1/banks/{bank}/files", status_code=202)
    async def add_files(bank: str, request: Request, tenant: Tenant = Depends(ready)) -> dict[str, Any]:
        """multipart/form-data: parts named ``files`` (text, PDF, DOCX, PPTX, HTML), optionally ``metadata``."""
        tenant.require(bank)
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise ApiError(400, "invalid_request", "send the files as multipart/form-data (parts named 'files')")
        require_multipart()
        form = await request.form()
        uploads = [
            Upload(part.filename or "", await part.read())
            for part in form.getlist("files")
            if not isinstance(part, str)
        ]
        metadata = form.get("metadata")
        metadata = upload_metadata(metadata if isinstance(metadata, str) else None)
        documents, skipped = await run_in_threadpool(uploaded_documents, uploads, metadata, settings.max_document_bytes)
        job = await run_in_threadpool(service.submit_documents, tenant, bank, documents)
        return {"job": job.id, "status": job.status, "documents": [d.id for d in documents], "skipped": skipped}

    @app.delete("/v1/banks/{bank}/documents/{document_id:path}")
    def delete_document(bank: str, document_id: str, tenant: Tenant = Depends(ready)) -> dict[str, Any]:
        service.delete_document(tenant, bank, document_id)
        return {"deleted": document_id, "bank": bank}

    @app.delete("/v1/banks/{bank}")
    def delete_bank(bank: str, tenant: Tenant = Depends(caller)) -> dict[str, Any]:
        service.delete_bank(tenant, bank)
        return {"deleted": bank}

    @app.get("/v1/jobs/{job_id}")
    def job_status(job_id: str, tenant: Tenant = Depends(caller)) -> dict[str, Any]:
        return service.job(tenant, job_id).public()

    # Questions ---------------------------------------------------------------------------------------

    @app.post("/v1/banks/{bank}/query", response_model=None)
    async def query(bank: str, request: QueryRequest, tenant: Tenant = Depends(ready)) -> dict[str, Any] | Response:
        names = await run_in_threadpool(service.scope, tenant, bank, request.banks)
        question, document_filter = await question_of(request.question, request.filters)
        if request.stream:
            stream = await run_in_threadpool(service.stream, names, question, document_filter)
            return StreamingResponse(_query_events(stream), media_type="text/event-stream")
        result, waited = await answer(names, question, document_filter, "query")
        return answer_json(result, waited)

    def _query_events(stream) -> Iterator[str]:
        try:
            for piece in stream:
                yield _sse({"type": "piece", "text": piece})
            result = stream.answer
            service.metrics.observe_answer(result, "stream")
            yield _sse({"type": "done", **answer_json(result)})
        except LycheeError as error:
            yield _sse({"type": "error", **body(from_library(error))})
        except Exception:
            logger.exception("a streamed answer failed")
            yield _sse({"type": "error", "error": {"type": "internal", "message": "the answer failed; see the log"}})
        finally:
            stream.close()

    @app.post("/v1/banks/{bank}/retrieve")
    async def retrieve(bank: str, request: RetrieveRequest, tenant: Tenant = Depends(ready)) -> dict[str, Any]:
        names = await run_in_threadpool(service.scope, tenant, bank, request.banks)
        question, document_filter = await question_of(request.question, request.filters)
        blocks = await batched(service.retrieve(names, question, document_filter, request.k))
        service.metrics.queries.labels("retrieve").inc()
        return {"blocks": [block_json(block) for block in blocks]}

    # OpenAI-compatible -------------------------------------------------------------------------------

    @app.get("/v1/models")
    def models(tenant: Tenant = Depends(caller)) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {"id": name, "object": "model", "created": 0, "owned_by": "lychee-memory"}
                for name in service.bank_names(tenant)
            ],
        }

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(request: ChatRequest, tenant: Tenant = Depends(ready)) -> dict[str, Any] | Response:
        names = await run_in_threadpool(service.scope, tenant, request.model, None)
        question, document_filter = await question_of(_chat_question(request), request.filters)
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        if request.stream:
            stream = await run_in_threadpool(service.stream, names, question, document_filter)
            return StreamingResponse(
                _chat_events(stream, completion_id, created, request.model), media_type="text/event-stream"
            )
        result, _ = await answer(names, question, document_filter, "chat")
        return {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": request.model,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": result.text}, "finish_reason": "stop"}
            ],
            "usage": _usage(result),
            "sources": [block_json(block) for block in result.blocks],
        }

    def _chat_events(stream, completion_id: str, created: int, model: str) -> Iterator[str]:
        def chunk(delta: dict[str, Any], finish: Literal["stop"] | None = None, **extra: Any) -> str:
            return _sse(
                {
                    "id": completion_id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                    **extra,
                }
            )

        try:
            yield chunk({"role": "assistant", "content": ""})
            for piece in stream:
                yield chunk({"content": piece})
            result = stream.answer
            service.metrics.observe_answer(result, "chat_stream")
            yield chunk({}, "stop", usage=_usage(result), sources=[block_json(block) for block in result.blocks])
        except LycheeError as error:
            yield _sse(body(from_library(error)))
        except Exception:
            logger.exception("a streamed chat completion failed")
            yield _sse({"error": {"type": "internal", "message": "the answer failed; see the server log"}})
        finally:
            stream.close()
        yield "data: [DONE]\n\n"

    app.add_middleware(RequestMetrics, metrics=service.metrics)
    app.add_middleware(BodyLimit, limit=settings.max_request_bytes)
    return app


def _usage(answer: Answer) -> dict[str, int]:
    prompt = answer.token_counts.get("reasoner_prompt_tokens", 0)
    completion = answer.token_counts.get("answer_tokens", 0) + answer.token_counts.get("memory_tokens", 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class BodyLimit:
    """ASGI middleware: 413 for a request whose body is over ``limit`` bytes.

    A declared body (``Content-Length``) is refused before it is read; a chunked one (no length) is read up to the
    limit, refused as soon as it goes over, and otherwise handed on whole.
    """

    def __init__(self, app: Any, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            if length.isdigit() and int(length) > self.limit:
                await self._refuse(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away before sending its body
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await self._refuse(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, scope: dict, receive: Any, send: Any) -> None:
        error = ApiError(413, "too_large", f"the request body is over this server's limit of {self.limit} bytes")
        await JSONResponse(body(error), status_code=413)(scope, receive, send)
