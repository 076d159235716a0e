"""The tools and resources of ``lychee mcp``: thin calls into the server's ``MemoryService``.

The same service as ``lychee serve`` holds the engine, the store, the keys and the ingest jobs, so a bank an agent
fills over MCP is one the HTTP API reads, and a key reaches the same banks (its prefixes) here and there. Recall
never decodes: it returns the gate's selection with its sources. The model starts loading at the first tool that
needs it (``initialize``, ``list_banks`` and the resources never wait for it).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
from mcp.server.context import ServerRequestContext
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from mcp.types import ListResourcesResult, PaginatedRequestParams, Resource

from lychee_memory import Document, LycheeError
from lychee_memory.converters import UNIT_KEYS, units_of

from ..server.auth import OPEN, Tenant
from ..server.problems import ApiError, from_library

if TYPE_CHECKING:  # the service and the answer import the engine and torch: lychee mcp's runner defers them
    from lychee_memory import SelectedBlock

    from ..server.service import MemoryService

DEFAULT_BANK = "memory"
POLL_SECONDS = 0.02  # how often a waiting tool looks at the model's load or its ingest job
Result = TypeVar("Result")
INSTRUCTIONS = (
    "Long-term memory over compressed KV blocks. remember(text) stores a fact or a document in a bank; "
    "recall(query) returns the stored passages that matter for the query, with their sources, without writing an "
    "answer; ask(question) answers from the bank; forget(document_id) removes a document; list_banks shows the "
    "banks this caller may use (also the resource lychee://banks)."
)


def tool_error(error: Exception) -> Exception:
    """An error a client may read: the HTTP API's message for the same failure (another tenant's banks unnamed)."""
    if isinstance(error, ApiError):
        return ToolError(error.message)
    if isinstance(error, LycheeError):
        return ToolError(from_library(error).message)
    return error


class MemoryTools:
    """What the tools call: the service, who the caller is, and the model's lazy start."""

    def __init__(self, service: MemoryService, stdio_tenant: Tenant | None = None):
        self.service = service
        self.stdio_tenant = stdio_tenant if stdio_tenant is not None else OPEN
        self._start_lock = threading.Lock()
        self._started = False

    def tenant(self, ctx: Context | ServerRequestContext[Any]) -> Tenant:
        """The caller: the HTTP request's key (checked again here, as ``lychee serve`` does), or the stdio tenant."""
        request = ctx.request if isinstance(ctx, ServerRequestContext) else ctx.request_context.request
        headers = getattr(request, "headers", None)  # an HTTP request's headers; stdio has none
        if headers is None:
            return self.stdio_tenant
        try:
            return self.service.keys.tenant(headers.get("authorization"))
        except ApiError as error:
            raise tool_error(error) from None

    async def call(self, function: Callable[..., Result], *args: Any) -> Result:
        """A blocking service call on a worker thread; its errors become the tool's error message."""
        try:
            return await anyio.to_thread.run_sync(function, *args)
        except (ApiError, LycheeError) as error:
            raise tool_error(error) from None

    async def ready(self, ctx: Context) -> None:
        """Start loading the model on first use and wait for it, telling the client while it loads."""
        with self._start_lock:
            if not self._started:
                self._started = True
                self.service.start()
        told = False
        while self.service.status == "loading":
            if not told:
                await ctx.report_progress(0, None, "loading the model (first call only)")
                told = True
            await anyio.sleep(POLL_SECONDS)
        if self.service.status != "ok":
            raise ToolError(f"the model failed to load: {self.service.failure}")

    def sources(self, blocks: list[SelectedBlock]) -> list[dict[str, Any]]:
        """Each block as a source: its text, document, character span in the stored text, pages or slides."""
        metadata: dict[tuple[str | None, str], dict[str, Any]] = {}
        for name in {block.bank for block in blocks if block.bank is not None}:
            for document in self.service.store.bank_manifest(name).documents:
                metadata[(name, document.id)] = dict(document.metadata)
        found = []
        for block in blocks:
            meta = metadata.get((block.bank, block.document_id), {})
            shown = {key: value for key, value in meta.items() if key not in {key for key, _ in UNIT_KEYS.values()}}
            found.append(
                {
                    "text": block.text,
                    "document_id": block.document_id,
                    "bank": block.bank,
                    "start": block.char_start,
                    "end": block.char_end,
                    "score": round(block.score, 6),
                    "selected": block.selected,
                    **units_of(meta, block.char_start, block.char_end),
                    "metadata": shown,
                }
            )
        return found

    async def batched(self, future: Any) -> Any:
        """A result of the service's batcher; a question the engine refused comes back as its error."""
        try:
            result = await anyio.to_thread.run_sync(future.result)
        except (ApiError, LycheeError) as error:
            raise tool_error(error) from None
        if isinstance(result, Exception):
            raise tool_error(result)
        return result


class MemoryServer(MCPServer):
    """An MCPServer whose resource list is the caller's banks (``lychee://banks/{name}``, one per bank its key
    reaches): the SDK lists only resources fixed at startup, and a static resource never learns who is asking."""

    def __init__(self, tools: MemoryTools):
        super().__init__("lychee-memory", instructions=INSTRUCTIONS)
        self.tools = tools

    async def _handle_list_resources(
        self, ctx: ServerRequestContext[Any], params: PaginatedRequestParams | None
    ) -> ListResourcesResult:
        try:
            banks = await self.tools.call(self.tools.service.list_banks, self.tools.tenant(ctx))
        except ToolError as error:
            raise ResourceError(str(error)) from None
        return ListResourcesResult(
            resources=[
                Resource(
                    uri=f"lychee://banks/{bank['name']}",
                    name=bank["name"],
                    description=f"bank {bank['name']}: {bank['documents']} document(s), {bank['tokens']} tokens",
                    mime_type="application/json",
                )
                for bank in banks
            ]
        )


def build_server(tools: MemoryTools) -> MCPServer:
    """The MCP server: five tools and the banks as resources, each call checked against the caller's prefixes."""
    service = tools.service
    server = MemoryServer(tools)

    @server.tool()
    async def remember(
        text: str, ctx: Context, bank: str = DEFAULT_BANK, metadata: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Store text (a fact, a note, a document) in a bank; returns its document id (forget takes it)."""
        tenant = tools.tenant(ctx)
        await tools.call(tenant.require, bank)
        if not text.strip():
            raise ToolError("the text is empty: there is nothing to remember")
        limit = service.settings.max_document_bytes
        if len(text.encode("utf-8")) > limit:
            raise ToolError(f"the text is over this server's limit of {limit} bytes")
        await tools.ready(ctx)
        from ..server.jobs import UNFINISHED  # imports the store: loaded with the model by now, never before it

        document = await tools.call(Document.from_text, text, None, metadata)
        job = await tools.call(service.submit_documents, tenant, bank, [document])
        seen = (-1, -1)
        while job.status in UNFINISHED:  # the job's progress, forwarded as the client's progress notifications
            if job.total and (job.done, job.total) != seen:
                seen = (job.done, job.total)
                await ctx.report_progress(job.done, job.total, f"compressing into bank {bank!r}")
            await anyio.sleep(POLL_SECONDS)
            job = await tools.call(service.job, tenant, job.id)
        if job.status != "done":
            raise ToolError((job.error or {}).get("message", f"the ingest {job.status}"))
        if job.total and seen != (job.total, job.total):
            await ctx.report_progress(job.total, job.total, f"compressed into bank {bank!r}")
        result = job.result or {}
        return {
            "document_id": document.id,
            "bank": bank,
            "chunks": result.get("chunks"),
            "compressed": result.get("compressed"),
            "seconds": result.get("seconds"),
        }

    @server.tool()
    async def recall(
        query: str, ctx: Context, bank: str = DEFAULT_BANK, k: int = 5, filters: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The stored passages that matter for the query (the gate's selection, best first), with their sources;
        no answer is written. ``filters`` match document metadata ({"key": value}, $in, $ne, $gt...)."""
        tenant = tools.tenant(ctx)
        if k < 1 or k > 1000:
            raise ToolError(f"k must be between 1 and 1000, got {k}")
        names = await tools.call(service.scope, tenant, bank, None)
        await tools.ready(ctx)
        question, document_filter = await tools.call(service.check, query, filters)
        blocks = await tools.batched(service.retrieve(names, question, document_filter, k))
        return {"results": await tools.call(tools.sources, blocks)}

    @server.tool()
    async def ask(
        question: str, ctx: Context, bank: str = DEFAULT_BANK, filters: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Answer a question from a bank: the answer and the passages it was read from."""
        tenant = tools.tenant(ctx)
        names = await tools.call(service.scope, tenant, bank, None)
        await tools.ready(ctx)
        checked, document_filter = await tools.call(service.check, question, filters)
        answer = await tools.batched(service.ask(names, checked, document_filter))
        return {"answer": answer.text, "sources": await tools.call(tools.sources, answer.blocks)}

    @server.tool()
    async def forget(document_id: str, ctx: Context, bank: str = DEFAULT_BANK) -> dict[str, Any]:
        """Remove a document from a bank (its blocks go at the next ``lychee store gc``)."""
        tenant = tools.tenant(ctx)
        await tools.call(service.require_bank, tenant, bank)
        await tools.ready(ctx)
        await tools.call(service.delete_document, tenant, bank, document_id)
        return {"forgotten": document_id, "bank": bank}

    @server.tool()
    async def list_banks(ctx: Context) -> dict[str, Any]:
        """The banks this caller may use, with their documents, tokens and bytes."""
        return {"banks": await tools.call(service.list_banks, tools.tenant(ctx))}

    @server.resource("lychee://banks/{name}", name="bank", mime_type="application/json")
    async def bank(name: str, ctx: Context) -> str:
        """One bank: its documents (ids, metadata, characters, blocks)."""
        try:
            return json.dumps(
                {"name": name, "documents": await tools.call(service.documents_of, tools.tenant(ctx), name)}
            )
        except ToolError as error:
            raise ResourceError(str(error)) from None

    return server
