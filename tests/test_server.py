"""``lychee serve`` in real server processes on 127.0.0.1, called over HTTP (httpx, the official openai client).

Each server runs the tiny random Llama (its answers are noise), so these tests check the plumbing: routes, status
codes, error bodies, tenancy (which documents' blocks a question read), jobs that survive ``kill -9``, graceful
shutdown, the model check at startup, batching and metrics. Servers are shared per test class; the lifecycle
tests start their own on stores of their own.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")
openai = pytest.importorskip("openai")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from lychee_memory.store import BLOCK_DTYPES  # noqa: E402

TINY = ["--chunk-tokens", "64", "--max-memory-tokens", "12", "--max-answer-tokens", "6"]
BLOCK_FIELDS = {"index", "score", "doc", "start", "end", "text", "bank", "selected"}
FINISHED = ("done", "failed")


# Servers -------------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def server_env(cache: Path) -> dict[str, str]:
    return {
        **os.environ,
        "LYCHEE_CACHE_DIR": str(cache),
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONUNBUFFERED": "1",
    }


def lychee_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "lychee_memory.cli", *args]


class Server:
    """One ``lychee serve`` process; ``start`` waits for /healthz 200 (and records what it answered while loading)."""

    def __init__(self, store: Path, cache: Path, *options: str, model: str = "tiny-random-llama", probe_key=None):
        self.store = store
        self.cache = cache
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = store.parent / f"{store.name}-server-{self.port}.log"
        self.command = lychee_command(
            "serve", "--model", model, *TINY, "--store", str(store), "--port", str(self.port), *options
        )
        self.probe_key = probe_key
        self.process: subprocess.Popen | None = None
        self.first_health: httpx.Response | None = None  # the first /healthz that answered at all
        self.loading_query: httpx.Response | None = None  # a query sent right after a 503 /healthz

    def spawn(self) -> Server:
        """Start the process; return at once (the model loads after the server listens)."""
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            self.command, stdout=self._log, stderr=subprocess.STDOUT, env=server_env(self.cache)
        )
        return self

    def start(self, timeout: float = 120) -> Server:
        self.spawn()
        deadline = time.monotonic() + timeout
        headers = {"Authorization": f"Bearer {self.probe_key}"} if self.probe_key else {}
        with httpx.Client(base_url=self.url, timeout=10) as client:
            while True:
                if self.process.poll() is not None:
                    raise AssertionError(f"the server exited with {self.process.returncode}:\n{self.log()}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"the server was not ready after {timeout} s:\n{self.log()}")
                try:
                    health = client.get("/healthz")
                except httpx.TransportError:
                    time.sleep(0.02)
                    continue
                if self.first_health is None:
                    self.first_health = health
                    if health.status_code == 503:
                        self.loading_query = client.post("/v1/banks/x/query", json={"question": "hi"}, headers=headers)
                if health.status_code == 200:
                    return self
                time.sleep(0.05)

    def client(self, key: str | None = None, timeout: float = 60) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def openai(self, key: str = "unused") -> Any:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, timeout=60)

    def log(self, tail: int = 4000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-tail:]
        return ""

    def dump_stacks(self) -> None:
        """Print the running server's thread stacks (``lychee serve`` dumps them on SIGUSR1) and its log's tail."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGUSR1)
            time.sleep(1)
        print(f"--- log of {' '.join(self.command[3:5])} on port {self.port} ---\n{self.log(tail=30000)}")

    def stop(self, timeout: float = 60) -> int | None:
        """SIGTERM, then SIGKILL if it does not exit in time; the exit status."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)
        self._log.close()
        return self.process.returncode


@contextlib.contextmanager
def running(server: Server) -> Iterator[Server]:
    """A started server, stopped after; when the body fails, the server's threads' stacks and log are printed
    (pytest shows them with the failure), so a request that timed out says where the server was stuck."""
    try:
        yield server.start()
    except BaseException:
        server.dump_stacks()
        raise
    finally:
        server.stop()


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """The subprocesses' cache (converted tiny models): the same directory conftest gives this process."""
    return tmp_path_factory.getbasetemp() / "lychee-cache"


# Helpers -------------------------------------------------------------------------------------------------------


def clean(response: httpx.Response) -> httpx.Response:
    assert "Traceback" not in response.text, response.text
    return response


def ok(response: httpx.Response, status: int = 200) -> Any:
    clean(response)
    assert response.status_code == status, response.text
    return response.json()


def problem(response: httpx.Response, status: int, kind: str | None = None) -> str:
    """Assert an error response: the status, ``{"error": {"type", "message"}}``; its message."""
    clean(response)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    data = response.json()
    assert set(data) == {"error"} and set(data["error"]) == {"type", "message"}, data
    assert isinstance(data["error"]["message"], str) and data["error"]["message"]
    if kind is not None:
        assert data["error"]["type"] == kind, data
    return data["error"]["message"]


def wait_job(client: httpx.Client, job: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        data = ok(client.get(f"/v1/jobs/{job}"))
        if data["status"] in FINISHED:
            return data
        assert time.monotonic() < deadline, f"job {job} is still {data['status']} after {timeout} s"
        time.sleep(0.05)


def wait_running(client: httpx.Client, job: str, timeout: float = 90) -> dict[str, Any]:
    """Wait until the job is running and has compressed at least one chunk (it must not finish first)."""
    deadline = time.monotonic() + timeout
    while True:
        data = ok(client.get(f"/v1/jobs/{job}"))
        assert data["status"] not in FINISHED, f"the job finished before the test could catch it running: {data}"
        if data["status"] == "running" and data["progress"]["done"] >= 1:
            return data
        assert time.monotonic() < deadline, f"job {job} did not start in {timeout} s: {data}"
        time.sleep(0.02)


def ingest(client: httpx.Client, bank: str, documents: list[dict[str, Any]]) -> dict[str, Any]:
    submitted = ok(client.post(f"/v1/banks/{bank}/documents", json={"documents": documents}), 202)
    job = wait_job(client, submitted["job"])
    assert job["status"] == "done", job
    return job


def random_documents(prefix: str, count: int, words: int, seed: int) -> list[dict[str, Any]]:
    """Distinct texts of random tokens: nothing dedupes, so each chunk is compressed."""
    rng = random.Random(seed)
    return [
        {"id": f"{prefix}-{i}", "text": f"Record {i}. " + " ".join(f"w{rng.randint(0, 99999)}" for _ in range(words))}
        for i in range(count)
    ]


def sse_events(text: str) -> list[Any]:
    events = []
    for frame in text.split("\n\n"):
        lines = [line for line in frame.splitlines() if line.startswith("data: ")]
        if lines:
            payload = "\n".join(line[len("data: ") :] for line in lines)
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def metric_samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def store_verify(store: Path, cache: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        lychee_command("store", "verify", "--store", str(store)),
        capture_output=True,
        text=True,
        env=server_env(cache),
        timeout=120,
    )


def document_ids(client: httpx.Client, bank: str) -> set[str]:
    return {document["id"] for document in ok(client.get(f"/v1/banks/{bank}/documents"))["documents"]}


# An open server (no keys): every endpoint and every error ------------------------------------------------------

HARBOUR = (
    "The harbour of Arvel lies at the mouth of a cold river. Fishing boats leave before dawn. "
    "The access code for the east pier storage shed is 58213. Only the harbourmaster knows it. "
) * 6
GARDEN = (
    "Kestrel Hall has a walled garden. The new head gardener is a botanist named Odile Fenwick. "
    "She planted apple trees along the south wall and a row of lavender by the gate. "
) * 6
MARKET = ("The market opens on Saturdays; bread, fish and wool are sold in the square by the church. ") * 8
COMET = ("The observatory on Mount Vell recorded a green comet in the winter of the flood year. ") * 8

ALPHA = "qx-alpha"
BETA = "qx-beta"
ALPHA_DOCS = [
    {"id": "doc-harbour", "text": HARBOUR, "metadata": {"topic": "harbour", "year": 2021}},
    {"id": "doc-garden", "text": GARDEN, "metadata": {"topic": "garden", "year": 2022}},
    {"id": "doc-market", "text": MARKET, "metadata": {"topic": "market", "year": 2023}},
]
BETA_DOCS = [{"id": "doc-comet", "text": COMET, "metadata": {"topic": "sky"}}]
MAX_DOCUMENT_BYTES = 2000
MAX_REQUEST_BYTES = 200_000


@pytest.fixture(scope="class")
def open_server(tmp_path_factory, cache) -> Iterator[Server]:
    store = tmp_path_factory.mktemp("open") / "store"
    server = Server(
        store,
        cache,
        "--max-document-bytes",
        str(MAX_DOCUMENT_BYTES),
        "--max-request-bytes",
        str(MAX_REQUEST_BYTES),
    )
    with running(server):
        yield server


@pytest.fixture(scope="class")
def open_client(open_server) -> Iterator[httpx.Client]:
    with open_server.client() as client:
        yield client


@pytest.fixture(scope="class")
def banks(open_client) -> dict[str, dict[str, Any]]:
    """qx-alpha (three documents) and qx-beta (one), ingested through jobs; their finished job records."""
    assert all(len(document["text"].encode()) <= MAX_DOCUMENT_BYTES for document in ALPHA_DOCS + BETA_DOCS)
    return {ALPHA: ingest(open_client, ALPHA, ALPHA_DOCS), BETA: ingest(open_client, BETA, BETA_DOCS)}


class TestOpenServer:
    def test_healthz_is_ok_with_the_model(self, open_client):
        assert ok(open_client.get("/healthz")) == {"status": "ok", "model": "tiny-random-llama"}

    @pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="no SIGUSR1 on this platform")
    def test_sigusr1_prints_every_threads_stack_and_the_server_keeps_serving(self, open_server, open_client):
        """An operator (or a test whose request timed out) sees where a stuck server is, without stopping it."""
        before = len(open_server.log(tail=10**9))
        open_server.process.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        # The dump is written thread by thread: wait for the main thread's (the server loop), not only the first one.
        while "uvicorn" not in open_server.log(tail=10**9)[before:] and time.monotonic() < deadline:
            time.sleep(0.05)
        dumped = open_server.log(tail=10**9)[before:]
        assert "most recent call first" in dumped and "Thread 0x" in dumped, dumped[-2000:]
        assert "uvicorn" in dumped  # the main thread's stack, inside the server loop
        assert ok(open_client.get("/healthz"))["status"] == "ok"

    def test_routes_answer_503_while_the_model_loads(self, open_server, tmp_path, cache):
        """/healthz and every /v1 route answer 503 JSON until the model is loaded (a window of about a second)."""
        server = open_server
        for attempt in range(3):
            if server.first_health is not None and server.first_health.status_code == 503:
                break
            # the first /healthz was already 200: try a fresh server (its loading window is as short)
            server = Server(tmp_path / f"store-{attempt}", cache)
            with running(server):
                pass
        else:
            pytest.skip("no server was caught while its model loaded (the loading window was missed 4 times)")
        assert server.first_health.json() == {"status": "loading", "model": "tiny-random-llama"}
        assert "Traceback" not in server.first_health.text
        problem(server.loading_query, 503, "loading")
        assert server.loading_query.headers.get("retry-after") == "2"

    def test_ingest_job_reports_progress_and_result(self, open_client, banks):
        job = banks[ALPHA]
        assert job["status"] == "done" and job["bank"] == ALPHA and job["documents"] == 3
        assert job["progress"]["total"] > 0 and job["progress"]["done"] == job["progress"]["total"]
        result = job["result"]
        assert result["documents_added"] == 3 and result["documents_replaced"] == 0
        assert result["chunks"] >= 3 and result["bank"]["documents"] == 3 and result["bank"]["blocks"] >= 3
        assert "error" not in job and job["started"] and job["finished"]
        assert ok(open_client.get(f"/v1/jobs/{job['job']}")) == job  # the record stays readable

    def test_banks_list_and_info(self, open_client, banks):
        listed = {entry["name"]: entry for entry in ok(open_client.get("/v1/banks"))["banks"]}
        assert set(listed) >= {ALPHA, BETA}
        alpha = listed[ALPHA]
        assert set(alpha) == {
            "name",
            "documents",
            "tokens",
            "blocks",
            "stored_bytes",
            "index_bytes",
            "block_dtypes",
            "updated",
        }
        assert alpha["block_dtypes"] and set(alpha["block_dtypes"]) <= set(BLOCK_DTYPES)  # the codec(s) named
        assert alpha["documents"] == 3 and alpha["blocks"] == banks[ALPHA]["result"]["bank"]["blocks"]
        assert alpha["tokens"] > 0 and alpha["stored_bytes"] > 0 and alpha["updated"]
        assert ok(open_client.get(f"/v1/banks/{ALPHA}")) == alpha

    def test_documents_list_has_ids_and_metadata(self, open_client, banks):
        documents = {entry["id"]: entry for entry in ok(open_client.get(f"/v1/banks/{ALPHA}/documents"))["documents"]}
        assert set(documents) == {"doc-harbour", "doc-garden", "doc-market"}
        assert documents["doc-harbour"]["metadata"] == {"topic": "harbour", "year": 2021}
        assert documents["doc-harbour"]["characters"] == len(HARBOUR) and documents["doc-harbour"]["blocks"] >= 1

    def test_query_answers_with_blocks_and_timings(self, open_client, banks):
        data = ok(open_client.post(f"/v1/banks/{ALPHA}/query", json={"question": "What is the access code?"}))
        assert isinstance(data["answer"], str)
        assert data["blocks"]
        for block in data["blocks"]:
            assert BLOCK_FIELDS <= set(block)
            assert block["bank"] == ALPHA and block["doc"] in {"doc-harbour", "doc-garden", "doc-market"}
            assert 0 <= block["start"] < block["end"] and isinstance(block["text"], str) and block["text"]
        assert {"query", "queue"} <= set(data["timings"])

    def test_query_filters_restrict_the_blocks(self, open_client, banks):
        for filters in ({"topic": "garden"}, {"topic": {"$in": ["garden"]}}, {"year": {"$ne": 2021}}):
            data = ok(open_client.post(f"/v1/banks/{ALPHA}/retrieve", json={"question": "Who?", "filters": filters}))
            expected = {"doc-garden"} if "topic" in filters else {"doc-garden", "doc-market"}
            assert data["blocks"] and {block["doc"] for block in data["blocks"]} <= expected, filters

    def test_query_stream_sends_pieces_then_one_done_event(self, open_client, banks):
        with open_client.stream(
            "POST", f"/v1/banks/{ALPHA}/query", json={"question": "Who is the gardener?", "stream": True}
        ) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            text = response.read().decode()
        assert "Traceback" not in text
        events = sse_events(text)
        assert events and events[-1]["type"] == "done"
        assert all(event["type"] == "piece" for event in events[:-1])
        done = events[-1]
        assert done["answer"] == "".join(event["text"] for event in events[:-1])
        assert done["blocks"] and all(BLOCK_FIELDS <= set(block) for block in done["blocks"])
        assert "query" in done["timings"]

    def test_retrieve_returns_exactly_k_blocks_selected_first(self, open_client, banks):
        total = banks[ALPHA]["result"]["bank"]["blocks"]
        for k in (1, 3, total):
            data = ok(open_client.post(f"/v1/banks/{ALPHA}/retrieve", json={"question": "The access code?", "k": k}))
            blocks = data["blocks"]
            assert len(blocks) == k
            assert all(BLOCK_FIELDS <= set(block) and block["bank"] == ALPHA for block in blocks)
            flags = [block["selected"] for block in blocks]
            assert flags == sorted(flags, reverse=True), flags  # selected ones first, then the rest
        assert len({(block["doc"], block["index"]) for block in blocks}) == total  # every block, once
        assert any(block["selected"] for block in blocks) and not all(block["selected"] for block in blocks)

    def test_union_of_banks_names_each_blocks_bank(self, open_client, banks):
        question = {"question": "What did they record?", "banks": [ALPHA, BETA]}
        data = ok(open_client.post(f"/v1/banks/{ALPHA}/retrieve", json={**question, "k": 50}))
        assert {block["bank"] for block in data["blocks"]} == {ALPHA, BETA}
        by_bank = {(block["bank"], block["doc"]) for block in data["blocks"]}
        assert (BETA, "doc-comet") in by_bank and (ALPHA, "doc-harbour") in by_bank
        assert (ALPHA, "doc-comet") not in by_bank and (BETA, "doc-harbour") not in by_bank
        answered = ok(open_client.post(f"/v1/banks/{BETA}/query", json=question))  # the path's bank is not added
        assert answered["blocks"] and {block["bank"] for block in answered["blocks"]} <= {ALPHA, BETA}

    def test_models_list_the_banks(self, open_server, open_client, banks):
        data = ok(open_client.get("/v1/models"))
        assert data["object"] == "list"
        assert {model["id"] for model in data["data"]} >= {ALPHA, BETA}
        assert {model.id for model in open_server.openai().models.list()} >= {ALPHA, BETA}

    def test_chat_completion_with_the_openai_client(self, open_server, banks):
        client = open_server.openai()
        response = client.chat.completions.create(
            model=ALPHA,
            messages=[
                {"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": "Who is the gardener?"},
            ],
            temperature=0,
            extra_body={"filters": {"topic": "garden"}},
        )
        assert response.object == "chat.completion" and response.model == ALPHA
        assert isinstance(response.choices[0].message.content, str)
        assert response.choices[0].message.role == "assistant" and response.choices[0].finish_reason == "stop"
        sources = response.model_extra["sources"]
        assert sources and {source["doc"] for source in sources} == {"doc-garden"}
        assert all(BLOCK_FIELDS <= set(source) for source in sources)
        assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens
        parts = [{"type": "text", "text": "Who is the "}, {"type": "text", "text": "gardener?"}]
        raw = ok(
            httpx.post(
                f"{open_server.url}/v1/chat/completions",
                json={"model": ALPHA, "messages": [{"role": "user", "content": parts}], "max_tokens": 5},
                timeout=60,
            )
        )
        assert raw["choices"][0]["message"]["role"] == "assistant" and raw["sources"]

    def test_chat_completion_stream_with_the_openai_client(self, open_server, banks):
        client = open_server.openai()
        stream = client.chat.completions.create(
            model=ALPHA, messages=[{"role": "user", "content": "What is sold at the market?"}], stream=True
        )
        chunks = list(stream)
        assert chunks and all(chunk.object == "chat.completion.chunk" for chunk in chunks)
        assert len({chunk.id for chunk in chunks}) == 1
        text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
        assert isinstance(text, str)
        last = chunks[-1]
        assert last.choices[0].finish_reason == "stop"
        sources = last.model_extra["sources"]
        assert sources and all(source["bank"] == ALPHA and BLOCK_FIELDS <= set(source) for source in sources)

    def test_delete_a_document(self, open_client, banks):
        odd = ["notes/2024 plan.txt", "what?#now"]  # ids with a slash, a space, '?' and '#'
        documents = [{"id": "keep", "text": HARBOUR}, {"id": "drop", "text": GARDEN}]
        documents += [{"id": name, "text": f"{name}: {MARKET}"} for name in odd]
        ingest(open_client, "qx-scratch", documents)
        for name in odd:
            deleted = ok(open_client.delete(f"/v1/banks/qx-scratch/documents/{quote(name, safe='/')}"))
            assert deleted["deleted"] == name
        assert ok(open_client.delete("/v1/banks/qx-scratch/documents/drop")) == {
            "deleted": "drop",
            "bank": "qx-scratch",
        }
        assert document_ids(open_client, "qx-scratch") == {"keep"}
        assert ok(open_client.get("/v1/banks/qx-scratch"))["documents"] == 1
        problem(open_client.delete("/v1/banks/qx-scratch/documents/drop"), 404, "not_found")
        retrieved = ok(open_client.post("/v1/banks/qx-scratch/retrieve", json={"question": "garden?", "k": 50}))
        assert {block["doc"] for block in retrieved["blocks"]} == {"keep"}

    def test_delete_a_bank(self, open_client, banks):
        ingest(open_client, "qx-doomed", [{"id": "only", "text": MARKET}])
        assert ok(open_client.delete("/v1/banks/qx-doomed")) == {"deleted": "qx-doomed"}
        problem(open_client.get("/v1/banks/qx-doomed"), 404, "not_found")
        problem(open_client.delete("/v1/banks/qx-doomed"), 404, "not_found")
        problem(open_client.post("/v1/banks/qx-doomed/query", json={"question": "what?"}), 404, "not_found")
        assert "qx-doomed" not in {entry["name"] for entry in ok(open_client.get("/v1/banks"))["banks"]}

    def test_queries_answer_while_another_bank_ingests(self, open_client, banks):
        """A big job on qx-bulk: qx-alpha still answers, the job is still running afterwards, and qx-bulk refuses
        deletes (409) until it is done."""
        ingest(open_client, "qx-bulk", [{"id": "seed", "text": COMET}])
        documents = random_documents("bulk", 40, 260, seed=7)
        assert all(len(document["text"].encode()) <= MAX_DOCUMENT_BYTES for document in documents)
        job = ok(open_client.post("/v1/banks/qx-bulk/documents", json={"documents": documents}), 202)["job"]
        problem(open_client.delete("/v1/banks/qx-bulk"), 409, "conflict")  # queued or running: either refuses
        problem(open_client.delete("/v1/banks/qx-bulk/documents/seed"), 409, "conflict")
        wait_running(open_client, job)
        started = time.monotonic()
        answered = ok(open_client.post(f"/v1/banks/{ALPHA}/query", json={"question": "Who is the gardener?"}))
        retrieved = ok(open_client.post(f"/v1/banks/{ALPHA}/retrieve", json={"question": "The code?", "k": 2}))
        took = time.monotonic() - started
        assert answered["blocks"] and len(retrieved["blocks"]) == 2
        status = ok(open_client.get(f"/v1/jobs/{job}"))
        assert status["status"] == "running", f"the job ended while the queries ran ({took:.1f} s): {status}"
        assert status["progress"]["done"] < status["progress"]["total"]
        problem(open_client.delete("/v1/banks/qx-bulk"), 409, "conflict")
        finished = wait_job(open_client, job)
        assert finished["status"] == "done" and finished["progress"]["done"] == finished["progress"]["total"]
        assert document_ids(open_client, "qx-bulk") == {"seed"} | {document["id"] for document in documents}

    # Errors ----------------------------------------------------------------------------------------------------

    def test_malformed_json_is_400(self, open_client, banks):
        headers = {"content-type": "application/json"}
        for route in (f"/v1/banks/{ALPHA}/query", f"/v1/banks/{ALPHA}/documents", "/v1/chat/completions"):
            message = problem(open_client.post(route, content=b'{"question": "x",', headers=headers), 400)
            assert "JSON" in message
        problem(open_client.post(f"/v1/banks/{ALPHA}/query", content=b'{"question": "x"}'), 400, "invalid_request")

    @pytest.mark.parametrize(
        ("route", "payload", "field"),
        [
            ("query", {"question": 5}, "question"),
            ("query", {"question": "x", "stream": "yes"}, "stream"),
            ("query", {"question": "x", "filters": ["topic"]}, "filters"),
            ("query", {"question": "x", "banks": "qx-beta"}, "banks"),
            ("query", {"question": "x", "colour": "red"}, "colour"),
            ("query", {"filters": {}}, "question"),
            ("query", ["What?"], "body"),
            ("retrieve", {"question": "x", "k": "3"}, "k"),
            ("retrieve", {"question": "x", "k": 0}, "k"),
            ("retrieve", {"question": "x", "stream": True}, "stream"),
            ("documents", {"documents": [{"id": "x"}]}, "text"),
            ("documents", {"documents": [{"text": 42}]}, "text"),
            ("documents", {"documents": [{"text": "x", "metadata": "tag"}]}, "metadata"),
            ("documents", {"documents": [{"text": "x", "author": "me"}]}, "author"),
            ("documents", {"documents": []}, "documents"),
            ("documents", {}, "documents"),
        ],
    )
    def test_wrong_unknown_or_missing_fields_are_400(self, open_client, banks, route, payload, field):
        message = problem(open_client.post(f"/v1/banks/{ALPHA}/{route}", json=payload), 400, "invalid_request")
        assert field in message

    def test_chat_request_errors_are_400(self, open_client, banks):
        problem(open_client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]}), 400)
        problem(open_client.post("/v1/chat/completions", json={"model": ALPHA, "messages": []}), 400)
        no_user = {"model": ALPHA, "messages": [{"role": "system", "content": "be brief"}]}
        problem(open_client.post("/v1/chat/completions", json=no_user), 400, "invalid_request")

    def test_bad_filter_operator_is_400(self, open_server, open_client, banks):
        for route in ("query", "retrieve"):
            payload = {"question": "x", "filters": {"topic": {"$regex": "gar.*"}}}
            message = problem(open_client.post(f"/v1/banks/{ALPHA}/{route}", json=payload), 400, "invalid_filter")
            assert "$regex" in message
        chat = {"model": ALPHA, "messages": [{"role": "user", "content": "x"}], "filters": {"topic": {"$gt": 1}}}
        problem(open_client.post("/v1/chat/completions", json=chat), 400, "invalid_filter")
        with pytest.raises(openai.BadRequestError) as raised:
            open_server.openai().chat.completions.create(
                model=ALPHA, messages=[{"role": "user", "content": "x"}], extra_body={"filters": {"a": {"$bad": 1}}}
            )
        assert raised.value.status_code == 400

    def test_invalid_documents_and_bank_names_are_400(self, open_client, banks):
        empty = {"documents": [{"id": "blank", "text": "  \n "}]}
        problem(open_client.post(f"/v1/banks/{ALPHA}/documents", json=empty), 400, "invalid_document")
        twins = {"documents": [{"id": "same", "text": "one"}, {"id": "same", "text": "two"}]}
        problem(open_client.post(f"/v1/banks/{ALPHA}/documents", json=twins), 400, "invalid_document")
        named = {"documents": [{"text": "hello"}]}
        problem(open_client.post("/v1/banks/-bad.name!/documents", json=named), 400, "invalid_bank_name")

    def test_unknown_bank_document_job_and_route_are_404(self, open_server, open_client, banks):
        for request in (
            open_client.get("/v1/banks/qx-missing"),
            open_client.get("/v1/banks/qx-missing/documents"),
            open_client.delete("/v1/banks/qx-missing"),
            open_client.delete("/v1/banks/qx-missing/documents/doc-harbour"),
            open_client.post("/v1/banks/qx-missing/query", json={"question": "x"}),
            open_client.post("/v1/banks/qx-missing/query", json={"question": "x", "stream": True}),
            open_client.post("/v1/banks/qx-missing/retrieve", json={"question": "x"}),
            open_client.post(f"/v1/banks/{ALPHA}/query", json={"question": "x", "banks": [ALPHA, "qx-missing"]}),
        ):
            message = problem(request, 404, "not_found")
            assert ALPHA not in message or "qx-missing" in message
        chat = {"model": "qx-missing", "messages": [{"role": "user", "content": "x"}]}
        problem(open_client.post("/v1/chat/completions", json=chat), 404, "not_found")
        with pytest.raises(openai.NotFoundError):
            open_server.openai().chat.completions.create(
                model="qx-missing", messages=[{"role": "user", "content": "x"}]
            )
        problem(open_client.delete(f"/v1/banks/{ALPHA}/documents/no-such-doc"), 404, "not_found")
        problem(open_client.get("/v1/jobs/0123456789abcdef0123456789abcdef"), 404, "not_found")
        problem(open_client.get("/v1/nothing-here"), 404, "not_found")
        problem(open_client.get("/nothing"), 404, "not_found")
        problem(open_client.put("/v1/banks"), 405, "method_not_allowed")

    def test_document_over_the_size_limit_is_413(self, open_client, banks):
        big = {"documents": [{"id": "fine", "text": "ok"}, {"id": "huge", "text": "x" * (MAX_DOCUMENT_BYTES + 1)}]}
        message = problem(open_client.post(f"/v1/banks/{ALPHA}/documents", json=big), 413, "too_large")
        assert "huge" in message and str(MAX_DOCUMENT_BYTES) in message
        multibyte = {"documents": [{"text": "é" * (MAX_DOCUMENT_BYTES // 2 + 1)}]}  # bytes count, not characters
        problem(open_client.post(f"/v1/banks/{ALPHA}/documents", json=multibyte), 413, "too_large")
        assert document_ids(open_client, ALPHA) == {"doc-harbour", "doc-garden", "doc-market"}

    def test_body_over_the_request_limit_is_413(self, open_client, banks):
        many = {"documents": [{"id": f"d{i}", "text": "y" * 1500} for i in range(MAX_REQUEST_BYTES // 1500 + 5)]}
        message = problem(open_client.post(f"/v1/banks/{ALPHA}/documents", json=many), 413, "too_large")
        assert str(MAX_REQUEST_BYTES) in message
        question = {"question": "x" * (MAX_REQUEST_BYTES + 10)}
        problem(open_client.post(f"/v1/banks/{ALPHA}/query", json=question), 413, "too_large")

        def chunked() -> Iterator[bytes]:  # no Content-Length: the limit still holds
            yield b'{"documents": ['
            for i in range(MAX_REQUEST_BYTES // 1500 + 5):
                yield json.dumps({"id": f"c{i}", "text": "z" * 1500}).encode() + b","
            yield b'{"text": "end"}]}'

        headers = {"content-type": "application/json"}
        response = open_client.post(f"/v1/banks/{ALPHA}/documents", content=chunked(), headers=headers)
        problem(response, 413, "too_large")
        small = b'{"question": "Who is the gardener?"}'
        answered = open_client.post(f"/v1/banks/{ALPHA}/query", content=iter([small[:10], small[10:]]), headers=headers)
        assert ok(answered)["blocks"]  # a chunked body under the limit is read whole
        assert document_ids(open_client, ALPHA) == {"doc-harbour", "doc-garden", "doc-market"}

    def test_empty_question_is_422(self, open_client, banks):
        for question in ("", "   \n\t"):
            for route in ("query", "retrieve"):
                payload = {"question": question}
                problem(open_client.post(f"/v1/banks/{ALPHA}/{route}", json=payload), 422, "empty_question")
            streamed = {"question": question, "stream": True}
            problem(open_client.post(f"/v1/banks/{ALPHA}/query", json=streamed), 422, "empty_question")
            chat = {"model": ALPHA, "messages": [{"role": "user", "content": question}]}
            problem(open_client.post("/v1/chat/completions", json=chat), 422, "empty_question")
            chat["stream"] = True
            problem(open_client.post("/v1/chat/completions", json=chat), 422, "empty_question")

    def test_metrics_count_routes_phases_jobs_and_banks_without_names(self, open_server, open_client, banks):
        ok(open_client.post(f"/v1/banks/{ALPHA}/query", json={"question": "Who gardens?"}))
        ok(open_client.post(f"/v1/banks/{ALPHA}/retrieve", json={"question": "Who gardens?", "k": 1}))
        open_server.openai().chat.completions.create(model=ALPHA, messages=[{"role": "user", "content": "Who?"}])
        problem(open_client.post(f"/v1/banks/{ALPHA}/query", json={"question": 1}), 400)
        problem(open_client.get("/v1/banks/qx-nowhere"), 404)
        problem(open_client.post(f"/v1/banks/{ALPHA}/documents", json={"documents": [{"text": "x" * 2001}]}), 413)
        problem(open_client.post(f"/v1/banks/{ALPHA}/query", json={"question": " "}), 422)
        response = clean(open_client.get("/metrics"))
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
        text = response.text
        samples = metric_samples(text)
        routes = {labels["route"] for labels, _ in samples["lychee_requests_total"]}
        assert {"/v1/banks/{bank}/query", "/v1/banks/{bank}/documents", "/v1/jobs/{job_id}", "/healthz"} <= routes
        assert "/v1/banks/{bank}/retrieve" in routes and "/v1/chat/completions" in routes
        statuses = {labels["status"] for labels, _ in samples["lychee_requests_total"]}
        assert {"200", "202", "400", "404", "413", "422"} <= statuses
        phases = {labels["phase"]: value for labels, value in samples["lychee_query_seconds_count"]}
        assert {"queue", "gate", "reason", "answer", "query"} <= set(phases) and phases["query"] >= 1
        jobs = {labels["status"]: value for labels, value in samples["lychee_ingest_jobs"]}
        assert jobs["done"] >= 2 and jobs["running"] == 0 and jobs["queued"] == 0
        (banks_total,) = [value for _, value in samples["lychee_banks"]]
        assert banks_total == len(ok(open_client.get("/v1/banks"))["banks"])
        assert samples["lychee_model_ready"][0][1] == 1
        for name in ("qx-", "doc-", "bulk-", "seed", "keep", "drop", "Arvel", "gardener", "nowhere"):
            assert name not in text, f"{name!r} appears in /metrics"


# Keys, tenants, filters, batching ------------------------------------------------------------------------------

KEY_A, KEY_B, ADMIN = "key-a-5f1c9e", "key-b-77d0aa", "admin-3b2e41"
CODE_A = "The access code is 11111. It opens the north door of the depot. "
CODE_B = "The access code is 99999. It opens the vault under the bank. "


@pytest.fixture(scope="class")
def auth_server(tmp_path_factory, cache) -> Iterator[Server]:
    directory = tmp_path_factory.mktemp("auth")
    keys = directory / "keys.json"
    # both forms of a keys file entry: a list of prefixes, or a tenant name with its prefixes
    keys.write_text(json.dumps({KEY_A: ["a-"], KEY_B: {"tenant": "bravo", "prefixes": ["b-"]}}), encoding="utf-8")
    server = Server(
        directory / "store",
        cache,
        "--keys-file",
        str(keys),
        "--api-key",
        ADMIN,
        "--batch-window-ms",
        "200",
        probe_key=ADMIN,
    )
    with running(server):
        yield server


@pytest.fixture(scope="class")
def tenants(auth_server) -> Iterator[dict[str, Any]]:
    """a-notes and a-shared (KEY_A), b-notes (KEY_B); a-shared holds both tenants' access codes."""
    with auth_server.client(KEY_A) as a, auth_server.client(KEY_B) as b, auth_server.client(ADMIN) as admin:
        notes_a = ingest(a, "a-notes", [{"id": "alpha-minutes", "text": HARBOUR}])
        notes_b = ingest(b, "b-notes", [{"id": "bravo-secret-plan", "text": GARDEN}])
        shared = ingest(
            a,
            "a-shared",
            [
                {"id": "code-a", "text": CODE_A * 6, "metadata": {"tenant": "a"}},
                {"id": "code-b", "text": CODE_B * 6, "metadata": {"tenant": "b"}},
            ],
        )
        yield {"a": a, "b": b, "admin": admin, "jobs": {"a": notes_a, "b": notes_b, "shared": shared}}


B_NAMES = ("b-notes", "bravo-secret-plan", "Kestrel", "Fenwick")


def names_nothing_of_b(response: httpx.Response) -> None:
    for name in B_NAMES:
        assert name not in response.text, f"{name!r} leaks into {response.text}"


class TestKeysAndTenants:
    def test_healthz_and_metrics_need_no_key(self, auth_server):
        with auth_server.client() as anonymous:
            assert ok(anonymous.get("/healthz"))["status"] == "ok"
            assert anonymous.get("/metrics").status_code == 200

    def test_missing_wrong_or_malformed_keys_are_401(self, auth_server, tenants):
        attempts = [
            {},
            {"Authorization": "Bearer not-a-key"},
            {"Authorization": f"Bearer {KEY_A}x"},
            {"Authorization": f"Basic {KEY_A}"},
            {"Authorization": KEY_A},
            {"Authorization": "Bearer"},
        ]
        with auth_server.client() as anonymous:
            for headers in attempts:
                for response in (
                    anonymous.get("/v1/banks", headers=headers),
                    anonymous.get("/v1/models", headers=headers),
                    anonymous.get("/v1/banks/a-notes", headers=headers),
                    anonymous.post("/v1/banks/a-notes/query", json={"question": "x"}, headers=headers),
                    anonymous.get(f"/v1/jobs/{tenants['jobs']['a']['job']}", headers=headers),
                    anonymous.delete("/v1/banks/a-notes", headers=headers),
                ):
                    problem(response, 401, "unauthorized")
        with pytest.raises(openai.AuthenticationError):
            auth_server.openai("wrong").chat.completions.create(
                model="a-notes", messages=[{"role": "user", "content": "x"}]
            )
        assert ok(tenants["admin"].get("/v1/banks/a-notes"))["documents"] == 1  # nothing was deleted

    def test_each_key_lists_only_its_banks(self, auth_server, tenants):
        listed = {entry["name"] for entry in ok(tenants["a"].get("/v1/banks"))["banks"]}
        assert listed == {"a-notes", "a-shared"}
        assert {entry["name"] for entry in ok(tenants["b"].get("/v1/banks"))["banks"]} == {"b-notes"}
        assert {entry["name"] for entry in ok(tenants["admin"].get("/v1/banks"))["banks"]} == {
            "a-notes",
            "a-shared",
            "b-notes",
        }
        assert {model["id"] for model in ok(tenants["a"].get("/v1/models"))["data"]} == {"a-notes", "a-shared"}
        assert {model.id for model in auth_server.openai(KEY_B).models.list()} == {"b-notes"}
        names_nothing_of_b(tenants["a"].get("/v1/banks"))

    def test_banks_outside_the_prefixes_are_403(self, auth_server, tenants):
        a = tenants["a"]
        for bank in ("b-notes", "b-does-not-exist", "c-anything"):
            for response in (
                a.get(f"/v1/banks/{bank}"),
                a.get(f"/v1/banks/{bank}/documents"),
                a.post(f"/v1/banks/{bank}/documents", json={"documents": [{"text": "intrusion"}]}),
                a.post(f"/v1/banks/{bank}/query", json={"question": "What is planned?"}),
                a.post(f"/v1/banks/{bank}/query", json={"question": "What is planned?", "stream": True}),
                a.post(f"/v1/banks/{bank}/retrieve", json={"question": "What is planned?"}),
                a.post("/v1/banks/a-notes/query", json={"question": "What is planned?", "banks": ["a-notes", bank]}),
                a.post("/v1/chat/completions", json={"model": bank, "messages": [{"role": "user", "content": "x"}]}),
                a.delete(f"/v1/banks/{bank}"),
                a.delete(f"/v1/banks/{bank}/documents/bravo-secret-plan"),
            ):
                message = problem(response, 403, "forbidden")
                assert bank in message and "bravo-secret-plan" not in message
                assert "Kestrel" not in response.text
        # a path naming another tenant's bank is refused even when "banks" names only the caller's
        for route in ("query", "retrieve"):
            payload = {"question": "What is planned?", "banks": ["a-notes"]}
            problem(a.post(f"/v1/banks/b-notes/{route}", json=payload), 403, "forbidden")
        # the same answer whether or not the bank exists: existence is not revealed
        assert problem(a.get("/v1/banks/b-notes"), 403).replace("b-notes", "B") == problem(
            a.get("/v1/banks/b-nothing"), 403
        ).replace("b-nothing", "B")
        with pytest.raises(openai.PermissionDeniedError):
            auth_server.openai(KEY_A).chat.completions.create(
                model="b-notes", messages=[{"role": "user", "content": "x"}]
            )
        assert document_ids(tenants["admin"], "b-notes") == {"bravo-secret-plan"}  # untouched

    def test_another_tenants_job_is_404(self, auth_server, tenants):
        job_b = tenants["jobs"]["b"]["job"]
        message = problem(tenants["a"].get(f"/v1/jobs/{job_b}"), 404, "not_found")
        assert "b-notes" not in message
        assert ok(tenants["b"].get(f"/v1/jobs/{job_b}"))["bank"] == "b-notes"
        assert ok(tenants["admin"].get(f"/v1/jobs/{job_b}"))["status"] == "done"
        problem(tenants["b"].get(f"/v1/jobs/{tenants['jobs']['a']['job']}"), 404, "not_found")

    def test_errors_name_nothing_of_another_tenant(self, auth_server, tenants):
        a = tenants["a"]
        for response in (
            a.get("/v1/banks/a-missing"),
            a.post("/v1/banks/a-missing/query", json={"question": "x"}),
            a.post("/v1/banks/a-notes/query", json={"question": "x", "banks": ["a-notes", "a-missing"]}),
            a.delete("/v1/banks/a-notes/documents/unknown-doc"),
            a.post("/v1/banks/a-notes/query", json={"question": "x", "filters": {"tenant": {"$regex": "b"}}}),
            a.post("/v1/banks/a-notes/query", json={"question": " "}),
        ):
            assert response.status_code in (400, 404, 422)
            problem(response, response.status_code)
            names_nothing_of_b(response)

    @pytest.mark.parametrize("filters", [{"tenant": "a"}, {"tenant": {"$ne": "b"}}, {"tenant": {"$in": ["a"]}}])
    def test_filters_keep_the_other_tenants_fact_out(self, auth_server, tenants, filters):
        a = tenants["a"]
        question = "What is the access code?"
        unfiltered = ok(a.post("/v1/banks/a-shared/retrieve", json={"question": question, "k": 50}))
        assert {block["doc"] for block in unfiltered["blocks"]} == {"code-a", "code-b"}  # both are in the bank

        def only_a(response_text: str, blocks: list[dict[str, Any]]) -> None:
            assert blocks and {block["doc"] for block in blocks} == {"code-a"}
            assert "99999" not in response_text and "code-b" not in response_text and "vault" not in response_text

        retrieved = a.post("/v1/banks/a-shared/retrieve", json={"question": question, "k": 50, "filters": filters})
        only_a(retrieved.text, ok(retrieved)["blocks"])
        answered = a.post("/v1/banks/a-shared/query", json={"question": question, "filters": filters})
        only_a(answered.text, ok(answered)["blocks"])
        streamed = a.post("/v1/banks/a-shared/query", json={"question": question, "filters": filters, "stream": True})
        assert streamed.status_code == 200
        only_a(streamed.text, sse_events(streamed.text)[-1]["blocks"])
        client = auth_server.openai(KEY_A)
        chat = client.chat.completions.create(
            model="a-shared", messages=[{"role": "user", "content": question}], extra_body={"filters": filters}
        )
        only_a(chat.model_dump_json(), chat.model_extra["sources"])
        chunks = list(
            client.chat.completions.create(
                model="a-shared",
                messages=[{"role": "user", "content": question}],
                stream=True,
                extra_body={"filters": filters},
            )
        )
        only_a("".join(chunk.model_dump_json() for chunk in chunks), chunks[-1].model_extra["sources"])

    def test_concurrent_queries_are_batched(self, auth_server, tenants):
        """9 questions at once (a 200 ms batching window): one too long (422), the others answered, and at least
        one batch held several."""
        before = metric_samples(tenants["admin"].get("/metrics").text)
        count = 8
        barrier = threading.Barrier(count + 1)
        results: list[Any] = [None] * (count + 1)

        def ask(position: int) -> None:
            with auth_server.client(ADMIN) as client:
                barrier.wait()
                payload = {"question": f"Question {position}: what is the access code?"}
                if position % 4 == 3:
                    payload["filters"] = {"tenant": "a"}  # another group: batched apart
                if position == count:  # too long for the model's window: fails alone, not its batch
                    payload["question"] = "code " * 6000
                try:
                    results[position] = client.post("/v1/banks/a-shared/query", json=payload)
                except Exception as error:  # reported below
                    results[position] = error

        threads = [threading.Thread(target=ask, args=(position,)) for position in range(count + 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert isinstance(results[count], httpx.Response), results[count]
        problem(results.pop(), 422, "too_long")
        for position, response in enumerate(results):
            assert isinstance(response, httpx.Response), response
            data = ok(response)
            assert isinstance(data["answer"], str) and data["blocks"]
            if position % 4 == 3:
                assert {block["doc"] for block in data["blocks"]} == {"code-a"}
        after = metric_samples(tenants["admin"].get("/metrics").text)

        def batches(samples, le: str | None) -> float:
            if le is None:
                return samples["lychee_query_batch_size_count"][0][1]
            return next(v for labels, v in samples["lychee_query_batch_size_bucket"] if labels["le"] == le)

        new_batches = batches(after, None) - batches(before, None)
        new_single = batches(after, "1.0") - batches(before, "1.0")
        assert 2 <= new_batches < count and new_single < new_batches, (new_batches, new_single)

    def test_metrics_name_no_bank_document_or_key(self, auth_server, tenants):
        tenants["a"].post("/v1/banks/a-notes/query", json={"question": "Where is the harbour?"})
        tenants["b"].post("/v1/banks/b-notes/retrieve", json={"question": "Who gardens?", "k": 1})
        tenants["a"].get("/v1/banks/b-notes")  # a 403
        text = tenants["admin"].get("/metrics").text
        assert 'route="/v1/banks/{bank}/query"' in text and 'status="403"' in text
        for name in ("a-notes", "a-shared", "b-notes", "alpha-minutes", "bravo-secret-plan", "code-a", "code-b"):
            assert name not in text, f"{name!r} appears in /metrics"
        for key in (KEY_A, KEY_B, ADMIN):
            assert key not in text


def test_startup_refuses_bad_keys(tmp_path, cache):
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"some-key": []}), encoding="utf-8")
    port = str(free_port())
    for options in (["--keys-file", str(keys)], ["--api-key", " "]):
        result = subprocess.run(
            lychee_command("serve", "--model", "tiny-random-llama", "--store", str(tmp_path / "store"), "--port", port)
            + options,
            capture_output=True,
            text=True,
            env=server_env(cache),
            timeout=120,
        )
        assert result.returncode == 2, result.stderr
        assert "lychee: error:" in result.stderr and "Traceback" not in result.stderr
        assert "some-key" not in result.stderr  # a key is never printed whole


# Lifecycle: kill -9, SIGTERM, a store built with another model -------------------------------------------------


def test_kill_9_mid_ingest_loses_nothing_and_the_job_is_failed_after_restart(tmp_path, cache):
    store = tmp_path / "store"
    before = [{"id": "pre-harbour", "text": HARBOUR}, {"id": "pre-garden", "text": GARDEN}]
    big = random_documents("big", 100, 450, seed=1)
    assert all(len(document["text"]) > 2500 for document in big)
    first = Server(store, cache)
    with running(first):
        with first.client() as client:
            ingest(client, "life", before)
            job = ok(client.post("/v1/banks/life/documents", json={"documents": big}), 202)["job"]
            queued = ok(client.post("/v1/banks/life-other/documents", json={"documents": [{"text": COMET}]}), 202)
            progress = wait_running(client, job)["progress"]
            assert 1 <= progress["done"] < progress["total"]
            assert ok(client.get(f"/v1/jobs/{queued['job']}"))["status"] == "queued"  # behind the big one
            os.kill(first.process.pid, signal.SIGKILL)
            first.process.wait(30)
            assert first.process.returncode == -signal.SIGKILL
    second = Server(store, cache)
    with running(second), second.client() as client:
        status = ok(client.get(f"/v1/jobs/{job}"))
        assert status["status"] == "failed" and status["error"]["type"] == "interrupted", status
        assert status["finished"] and "result" not in status
        other = ok(client.get(f"/v1/jobs/{queued['job']}"))
        assert other["status"] == "failed" and other["error"]["type"] == "interrupted"
        stored = document_ids(client, "life")
        assert {"pre-harbour", "pre-garden"} <= stored  # what was stored before the job is still there
        job_ids = {document["id"] for document in big}
        assert stored - {"pre-harbour", "pre-garden"} in (set(), job_ids)  # the job's documents: all or none
        assert ok(client.get("/v1/banks/life"))["documents"] == len(stored)
        assert ok(client.post("/v1/banks/life/query", json={"question": "Who is the gardener?"}))["blocks"]
        jobs = {labels["status"]: v for labels, v in metric_samples(client.get("/metrics").text)["lychee_ingest_jobs"]}
        assert jobs["failed"] == 2 and jobs["running"] == 0
        verified = store_verify(store, cache)
        assert verified.returncode == 0, verified.stdout + verified.stderr


@pytest.fixture(scope="module")
def graceful(tmp_path_factory, cache) -> dict[str, Any]:
    """Two SIGTERMs while a job runs, each followed by a restart on the same store; what each step saw.

    1. Default --shutdown-timeout (60 s): the small running job may finish before the process exits.
    2. --shutdown-timeout 1 with a big job: the process exits without it; its bank must stay as it was.
    The store is then left with one small bank built by tiny-random-llama (for the model-change test).
    """
    store = tmp_path_factory.mktemp("graceful") / "store"
    seen: dict[str, Any] = {"store": store}
    small_job = random_documents("term", 10, 450, seed=2)
    big_job = random_documents("abandoned", 100, 450, seed=3)
    seen["small_ids"] = {document["id"] for document in small_job}

    def sigterm(server: Server, step: str) -> None:
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        try:
            seen[f"{step}_exit"] = server.process.wait(90)
        except subprocess.TimeoutExpired:
            seen[f"{step}_exit"] = "did not exit in 90 s"
        seen[f"{step}_seconds"] = time.monotonic() - started
        seen[f"{step}_log"] = server.log()

    first = Server(store, cache)
    with running(first):
        with first.client() as client:
            ingest(client, "life", [{"id": "pre-harbour", "text": HARBOUR}])
            ingest(client, "life-b", [{"id": "pre-seed", "text": COMET}])
            seen["small_job"] = ok(client.post("/v1/banks/life-b/documents", json={"documents": small_job}), 202)["job"]
            seen["small_running"] = wait_running(client, seen["small_job"])
        sigterm(first, "small")
    second = Server(store, cache, "--shutdown-timeout", "1")
    with running(second):
        with second.client() as client:
            seen["small_after"] = ok(client.get(f"/v1/jobs/{seen['small_job']}"))
            seen["small_documents"] = document_ids(client, "life-b")
            ok(client.delete("/v1/banks/life-b"))
            seen["big_job"] = ok(client.post("/v1/banks/life/documents", json={"documents": big_job}), 202)["job"]
            seen["big_running"] = wait_running(client, seen["big_job"])
        sigterm(second, "big")
    third = Server(store, cache)
    with running(third), third.client() as client:
        seen["big_after"] = ok(client.get(f"/v1/jobs/{seen['big_job']}"))
        seen["big_documents"] = document_ids(client, "life")
        seen["banks"] = {entry["name"] for entry in ok(client.get("/v1/banks"))["banks"]}
        seen["verify"] = store_verify(store, cache)
    return seen


def test_sigterm_lets_the_running_job_finish_and_exits_0(graceful):
    assert graceful["small_running"]["status"] == "running"
    assert graceful["small_exit"] == 0, graceful["small_log"]
    assert "Traceback" not in graceful["small_log"]
    after = graceful["small_after"]
    assert after["status"] in FINISHED, after
    if after["status"] == "done":  # it finished during the shutdown (the usual case: it is small)
        assert graceful["small_documents"] == {"pre-seed"} | graceful["small_ids"]
        assert after["progress"]["done"] == after["progress"]["total"]
    else:
        assert graceful["small_documents"] == {"pre-seed"}, graceful["small_documents"]
    verified = graceful["verify"]
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_sigterm_past_the_shutdown_timeout_leaves_the_bank_as_it_was(graceful):
    """The big job cannot finish in the 1 s --shutdown-timeout: the process exits 0 anyway, soon, and after a
    restart the job is failed and its bank holds exactly what it held before."""
    assert graceful["big_running"]["progress"]["done"] < graceful["big_running"]["progress"]["total"]
    assert graceful["big_exit"] == 0, graceful["big_log"]
    assert graceful["big_seconds"] < 30
    assert "still running after 1 s" in graceful["big_log"]
    after = graceful["big_after"]
    assert after["status"] == "failed" and after["error"]["type"] == "interrupted", after
    assert graceful["big_documents"] == {"pre-harbour"}
    assert graceful["banks"] == {"life"}
    verified = graceful["verify"]
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_sigterm_while_the_model_loads_exits_0(tmp_path, cache):
    server = Server(tmp_path / "store", cache).spawn()
    try:
        with server.client(timeout=10) as client:
            deadline = time.monotonic() + 60
            while True:
                assert server.process.poll() is None, server.log()
                assert time.monotonic() < deadline, server.log()
                with contextlib.suppress(httpx.TransportError):
                    health = client.get("/healthz")
                    break
                time.sleep(0.02)
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(60) == 0, server.log()
    finally:
        server.stop()
    if health.status_code == 503:  # the usual case: it was still loading
        assert health.json()["status"] == "loading"
    assert "Traceback" not in server.log()


def test_startup_refuses_a_store_built_with_another_model_unless_recompressing(graceful, cache):
    store = graceful["store"]
    port = str(free_port())
    refused = subprocess.run(
        lychee_command("serve", "--model", "tiny-random-qwen2", *TINY, "--store", str(store), "--port", port),
        capture_output=True,
        text=True,
        env=server_env(cache),
        timeout=120,
    )
    assert refused.returncode != 0
    output = refused.stdout + refused.stderr
    assert "life" in output and "--recompress" in output, output
    assert "Traceback" not in refused.stderr
    server = Server(store, cache, "--recompress", model="tiny-random-qwen2")
    with running(server), server.client() as client:
        assert ok(client.get("/healthz")) == {"status": "ok", "model": "tiny-random-qwen2"}
        assert document_ids(client, "life") == {"pre-harbour"}
        data = ok(client.post("/v1/banks/life/query", json={"question": "What is the access code?"}))
        assert data["blocks"] and {block["doc"] for block in data["blocks"]} == {"pre-harbour"}
    again = Server(store, cache, model="tiny-random-qwen2")  # rebuilt: no --recompress needed any more
    with running(again), again.client() as client:
        assert ok(client.post("/v1/banks/life/retrieve", json={"question": "The code?", "k": 1}))["blocks"]
