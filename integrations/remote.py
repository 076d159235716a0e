"""``LycheeClient``: a small Python client of ``lychee serve`` (httpx; no server dependencies).

The LangChain and LlamaIndex ``LycheeServerRetriever`` classes use it, so an app reaches a shared memory
service exactly as it would a local bank. Errors from the server raise ``ServerError`` with its status,
type and message.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import httpx


class ServerError(Exception):
    """An error reply from the server: ``status`` (HTTP), ``type`` and ``message`` from its JSON body."""

    def __init__(self, status: int, type: str, message: str):
        super().__init__(f"{status} {type}: {message}")
        self.status = status
        self.type = type
        self.message = message


def _raise_for(reply: httpx.Response) -> None:
    if reply.status_code < 400:
        return
    try:
        error = reply.json()["error"]
        raise ServerError(reply.status_code, str(error["type"]), str(error["message"]))
    except (ValueError, KeyError, TypeError):
        raise ServerError(reply.status_code, "http_error", reply.text[:500]) from None


class LycheeClient:
    """Talks to one server. ``api_key`` is sent as ``Authorization: Bearer KEY``."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", api_key: str | None = None, timeout: float = 600.0):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)
        self._async_args = {"base_url": self.base_url, "headers": headers, "timeout": timeout}

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> LycheeClient:
        return self

    def __exit__(self, *exception: object) -> None:
        self.close()

    def _call(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        reply = self._http.request(method, path, json=body)
        _raise_for(reply)
        return reply.json()

    def health(self) -> dict[str, Any]:
        reply = self._http.get("/healthz")
        return {"http_status": reply.status_code, **reply.json()}

    def banks(self) -> list[dict[str, Any]]:
        return self._call("GET", "/v1/banks")["banks"]

    def add_documents(
        self, bank: str, documents: Sequence[Mapping[str, Any]], *, wait: bool = True, poll: float = 0.5
    ) -> dict[str, Any]:
        """Submit documents ({"id", "text", "metadata"}); with ``wait``, poll the job until it is done or failed."""
        job = self._call("POST", f"/v1/banks/{bank}/documents", {"documents": list(documents)})["job"]
        while True:
            status = self.job(job)
            if not wait or status["status"] in ("done", "failed"):
                if status["status"] == "failed":
                    error = status.get("error", {})
                    raise ServerError(200, error.get("type", "failed"), error.get("message", "the ingest job failed"))
                return status
            time.sleep(poll)

    def job(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/jobs/{job_id}")

    def delete_document(self, bank: str, document_id: str) -> None:
        self._call("DELETE", f"/v1/banks/{bank}/documents/{document_id}")

    def delete_bank(self, bank: str) -> None:
        self._call("DELETE", f"/v1/banks/{bank}")

    @staticmethod
    def _question(question: str, filters: Mapping[str, Any] | None, banks: Sequence[str] | None, **extra: Any):
        body: dict[str, Any] = {"question": question, **{k: v for k, v in extra.items() if v is not None}}
        if filters:
            body["filters"] = dict(filters)
        if banks:
            body["banks"] = list(banks)
        return body

    def query(
        self, bank: str, question: str, *, filters: Mapping[str, Any] | None = None, banks: Sequence[str] | None = None
    ) -> dict[str, Any]:
        """{"answer", "blocks", "timings", "tokens"}."""
        return self._call("POST", f"/v1/banks/{bank}/query", self._question(question, filters, banks))

    def stream(
        self, bank: str, question: str, *, filters: Mapping[str, Any] | None = None, banks: Sequence[str] | None = None
    ) -> Iterator[dict[str, Any]]:
        """The server's events: {"type": "piece", "text"} as the answer is written, then {"type": "done", ...}."""
        body = self._question(question, filters, banks, stream=True)
        with self._http.stream("POST", f"/v1/banks/{bank}/query", json=body) as reply:
            if reply.status_code >= 400:
                reply.read()
                _raise_for(reply)
            for line in reply.iter_lines():
                if line.startswith("data: "):
                    event = json.loads(line[len("data: ") :])
                    if event.get("type") == "error":
                        raise ServerError(500, event["error"]["type"], event["error"]["message"])
                    yield event

    def retrieve(
        self,
        bank: str,
        question: str,
        *,
        k: int | None = None,
        filters: Mapping[str, Any] | None = None,
        banks: Sequence[str] | None = None,
    ) -> list[dict[str, Any]]:
        """The gate's blocks ({"index", "score", "doc", "start", "end", "text", "bank", "selected", ...})."""
        return self._call("POST", f"/v1/banks/{bank}/retrieve", self._question(question, filters, banks, k=k))["blocks"]

    async def aretrieve(
        self,
        bank: str,
        question: str,
        *,
        k: int | None = None,
        filters: Mapping[str, Any] | None = None,
        banks: Sequence[str] | None = None,
    ) -> list[dict[str, Any]]:
        async with httpx.AsyncClient(**self._async_args) as client:
            reply = await client.post(f"/v1/banks/{bank}/retrieve", json=self._question(question, filters, banks, k=k))
        _raise_for(reply)
        return reply.json()["blocks"]
