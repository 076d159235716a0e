"""The server's clients (LycheeClient, the LangChain and LlamaIndex LycheeServerRetriever) against a real server
process, compared with the in-process retrievers over the same documents."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx
import pytest
from langchain_tests.integration_tests import RetrieversIntegrationTests
from lychee_memory.integrations.langchain import LycheeServerRetriever as LangChainServerRetriever
from lychee_memory.integrations.llama_index import LycheeServerRetriever as LlamaIndexServerRetriever
from lychee_memory.integrations.remote import LycheeClient, ServerError

from lychee_memory import Document, MemoryStore

from .conftest import FACTS_DOCUMENT, SECOND_DOCUMENT, make_engine

ENGINE_OPTIONS = {"chunk_tokens": 64, "max_memory_tokens": 12, "max_answer_tokens": 6}
QUESTION = "What is the access code for the east pier storage shed?"
DOCUMENTS = [
    {"id": "arvel", "text": FACTS_DOCUMENT, "metadata": {"tenant": "a", "kind": "guide"}},
    {"id": "kestrel", "text": SECOND_DOCUMENT, "metadata": {"tenant": "b", "kind": "guide"}},
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> str:
    """A real `lychee serve` on a tiny model, with bank `guide` holding DOCUMENTS; yields its base URL."""
    root = tmp_path_factory.mktemp("clients")
    port = _free_port()
    command = [sys.executable, "-m", "lychee_memory.cli", "serve", "--store", str(root / "store"), "--port", str(port)]
    command += ["--model", "tiny-random-llama", "--api-key", "secret", "--log-level", "warning"]
    command += [f"--{name.replace('_', '-')}={value}" for name, value in ENGINE_OPTIONS.items()]
    environment = {**os.environ, "LYCHEE_CACHE_DIR": str(root / "cache"), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stderr.read().decode()
            try:
                if httpx.get(f"{base_url}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not become ready"
            time.sleep(0.2)
        with LycheeClient(base_url, "secret") as client:
            client.add_documents("guide", DOCUMENTS)
        yield base_url
    finally:
        process.terminate()
        process.wait(30)


@pytest.fixture(scope="module")
def local_bank(tmp_path_factory):
    """The same documents in an in-process bank of the same tiny model and settings (the reference), stored as the
    server stores them (the default codec: its quantised blocks score as the server's do, bit for bit)."""
    engine = make_engine("llama", **ENGINE_OPTIONS)
    documents = [Document.from_text(d["text"], id=d["id"], metadata=d["metadata"]) for d in DOCUMENTS]
    store = MemoryStore(tmp_path_factory.mktemp("local") / "store")
    return engine, engine.ingest(documents, store=store, bank="guide")


def _spans(blocks) -> list[tuple[str, int, int, bool]]:
    return [(b.document_id, b.char_start, b.char_end, b.selected) for b in blocks]


def test_client_round_trip_and_errors(server):
    with LycheeClient(server, "secret") as client:
        assert client.health()["status"] == "ok"
        assert [bank["name"] for bank in client.banks()] == ["guide"]
        answer = client.query("guide", QUESTION)
        assert isinstance(answer["answer"], str) and answer["blocks"]
        events = list(client.stream("guide", QUESTION))
        assert events[-1]["type"] == "done"
        assert "".join(e["text"] for e in events if e["type"] == "piece") == events[-1]["answer"]
        with pytest.raises(ServerError) as missing:
            client.query("nowhere", QUESTION)
        assert missing.value.status == 404 and missing.value.type == "not_found"
        with pytest.raises(ServerError) as empty:
            client.retrieve("guide", "   ")
        assert empty.value.status == 422
    with LycheeClient(server, "wrong") as stranger, pytest.raises(ServerError) as refused:
        stranger.banks()
    assert refused.value.status == 401


@pytest.mark.parametrize("k", [1, 3, 6])
def test_remote_retrievers_return_what_the_local_engine_selects(server, local_bank, k):
    """The server's retrieve, through both frameworks, equals the in-process select over the same documents."""
    engine, bank = local_bank
    expected = _spans(engine.select(QUESTION, bank, k=k))
    assert len(expected) == k
    documents = LangChainServerRetriever(base_url=server, bank="guide", api_key="secret", k=k).invoke(QUESTION)
    got = [(d.metadata["doc"], d.metadata["start"], d.metadata["end"], d.metadata["selected"]) for d in documents]
    assert got == expected
    nodes = LlamaIndexServerRetriever("guide", server, api_key="secret", similarity_top_k=k).retrieve(QUESTION)
    got = [
        (n.node.metadata["document_id"], n.node.start_char_idx, n.node.end_char_idx, n.node.metadata["selected"])
        for n in nodes
    ]
    assert got == expected


def test_remote_retriever_filters_keep_the_other_tenant_out(server, local_bank):
    engine, bank = local_bank
    retriever = LangChainServerRetriever(base_url=server, bank="guide", api_key="secret", k=4)
    for filters, kept in (({"tenant": "b"}, {"kestrel"}), ({"tenant": {"$ne": "b"}}, {"arvel"})):
        documents = retriever.invoke(QUESTION, filter=filters)
        assert {d.metadata["doc"] for d in documents} == kept
        assert _spans(engine.select(QUESTION, bank, k=4, filters=filters)) == [
            (d.metadata["doc"], d.metadata["start"], d.metadata["end"], d.metadata["selected"]) for d in documents
        ]
    from llama_index.core.vector_stores.types import FilterOperator, MetadataFilter, MetadataFilters

    only_b = MetadataFilters(filters=[MetadataFilter(key="tenant", value="b", operator=FilterOperator.EQ)])
    nodes = LlamaIndexServerRetriever("guide", server, api_key="secret", k=4, filters=only_b).retrieve(QUESTION)
    assert {n.node.metadata["document_id"] for n in nodes} == {"kestrel"}


async def test_remote_retrievers_async(server):
    retriever = LangChainServerRetriever(base_url=server, bank="guide", api_key="secret", k=2)
    assert [d.id for d in await retriever.ainvoke(QUESTION)] == [d.id for d in retriever.invoke(QUESTION)]
    llama = LlamaIndexServerRetriever("guide", server, api_key="secret", k=2)
    assert [n.node.node_id for n in await llama.aretrieve(QUESTION)] == [
        n.node.node_id for n in llama.retrieve(QUESTION)
    ]


class TestLycheeServerRetrieverStandard(RetrieversIntegrationTests):
    """langchain-tests' standard retriever suite against the server, on the gate's real settings for the model."""

    @pytest.fixture(autouse=True)
    def _server(self, server):
        type(self).base_url = server

    @property
    def retriever_constructor(self) -> type[LangChainServerRetriever]:
        return LangChainServerRetriever

    @property
    def retriever_constructor_params(self) -> dict:
        return {"base_url": type(self).base_url, "bank": "guide", "api_key": "secret"}

    @property
    def retriever_query_example(self) -> str:
        return QUESTION
