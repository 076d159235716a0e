"""Prometheus metrics of one server: requests, query latency by phase, tokens, batches, banks and ingest jobs.

Labels never carry a bank, document or key name (``/metrics`` is readable by whoever can reach the server):
routes are their templates (``/v1/banks/{bank}/query``), so one tenant learns nothing about another.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST as PROMETHEUS_CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120)
PHASES = ("queue", "prefilter", "gate", "reason", "answer", "query")
TOKEN_KINDS = ("document_tokens", "reasoner_prompt_tokens", "memory_tokens", "answer_tokens", "gate_rows")

__all__ = ["PROMETHEUS_CONTENT_TYPE", "ServerMetrics"]


class ServerMetrics:
    """The server's metrics in a registry of their own (several servers in one process do not collide)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "lychee_requests",
            "HTTP requests by route template, method and status",
            ("route", "method", "status"),
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "lychee_request_seconds",
            "HTTP request latency by route template",
            ("route",),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.query_seconds = Histogram(
            "lychee_query_seconds",
            "Query latency by phase (queue: waiting for a batch; query: the engine's warm latency)",
            ("phase",),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.tokens = Counter("lychee_tokens", "Tokens handled by queries, by kind", ("kind",), registry=self.registry)
        self.batch_size = Histogram(
            "lychee_query_batch_size",
            "Questions answered by one batched scan",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=self.registry,
        )
        self.queries = Counter("lychee_queries", "Questions answered, by kind", ("kind",), registry=self.registry)
        self.banks = Gauge("lychee_banks", "Banks in the store", registry=self.registry)
        self.jobs = Gauge("lychee_ingest_jobs", "Ingest jobs by status", ("status",), registry=self.registry)
        self.ingested_chunks = Counter(
            "lychee_ingested_chunks", "Chunks compressed by ingest jobs", registry=self.registry
        )
        self.ready = Gauge(
            "lychee_model_ready", "1 once the model is loaded and the store checked", registry=self.registry
        )
        for phase in PHASES:
            self.query_seconds.labels(phase)
        for kind in TOKEN_KINDS:
            self.tokens.labels(kind)
        for status in ("queued", "running", "done", "failed"):
            self.jobs.labels(status).set(0)

    def observe_answer(self, answer: Any, kind: str, queued: float = 0.0) -> None:
        """Record one answered question (an ``Answer``)."""
        self.queries.labels(kind).inc()
        self.query_seconds.labels("queue").observe(queued)
        for phase in PHASES[1:]:
            if phase in answer.timings:
                self.query_seconds.labels(phase).observe(answer.timings[phase])
        for name in TOKEN_KINDS:
            self.tokens.labels(name).inc(answer.token_counts.get(name, 0))

    def count_jobs(self, statuses: list[str]) -> None:
        for status in ("queued", "running", "done", "failed"):
            self.jobs.labels(status).set(statuses.count(status))

    def render(self, refresh: Callable[[], None] | None = None) -> bytes:
        if refresh is not None:
            refresh()
        return generate_latest(self.registry)


class RequestMetrics:
    """Pure ASGI middleware counting every request by route template and status (streams included)."""

    def __init__(self, app: Any, metrics: ServerMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def sending(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(template, scope.get("method", ""), str(status[0])).inc()
            self.metrics.request_seconds.labels(template).observe(time.perf_counter() - started)
