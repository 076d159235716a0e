"""``lychee mcp`` in real processes, called with the official MCP SDK's own client over stdio and streamable HTTP.

The tiny random Llama answers noise, so these tests check the plumbing: the five tools, a fact remembered and then
recalled (its span in the stored text) and asked, progress notifications of an ingest, banks as resources, forget,
keys and bank prefixes as ``lychee serve`` has them, stdout holding nothing but JSON-RPC, and how soon
``initialize`` answers (the model loads at the first tool that needs it).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("mcp")
pytest.importorskip("fastapi")
httpx2 = pytest.importorskip("httpx2")
from mcp import Client, StdioServerParameters  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402

TINY = ["--model", "tiny-random-llama", "--chunk-tokens", "64", "--max-memory-tokens", "12", "--max-answer-tokens", "6"]
TOOLS = {"remember", "recall", "ask", "forget", "list_banks"}
FACT = "The access code for the east pier storage shed is 58213. Only the harbourmaster knows it."
OTHER = "Kestrel Hall has a walled garden; its head gardener is a botanist named Odile Fenwick."
LONG = " ".join(f"Line {n} of the harbour log: the boats came back with the tide." for n in range(250))  # ~65 blocks
KEYS = {"key-acme": ["acme-"], "key-all": [""]}


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """The subprocesses' cache (converted tiny models): the same directory conftest gives this process."""
    return tmp_path_factory.getbasetemp() / "lychee-cache"


def environment(cache: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "LYCHEE_CACHE_DIR": str(cache),
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        **extra,
    }


def mcp_command(store: Path, *options: str) -> list[str]:
    return [sys.executable, "-m", "lychee_memory.cli", "mcp", "--store", str(store), *TINY, *options]


def stdio(store: Path, cache: Path, *options: str, **env: str) -> StdioServerParameters:
    command = mcp_command(store, *options)
    return StdioServerParameters(command=command[0], args=command[1:], env=environment(cache, **env))


def data(result: Any) -> dict[str, Any]:
    assert not result.is_error, result.content[0].text if result.content else result
    return result.structured_content


def error_text(result: Any) -> str:
    assert result.is_error, result.structured_content
    return result.content[0].text


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# stdio ---------------------------------------------------------------------------------------------------------


async def test_stdio_tools_remember_recall_ask_forget_and_banks_as_resources(tmp_path, cache):
    store = tmp_path / "store"
    progress: list[tuple[float, float | None, str | None]] = []

    async def heard(done: float, total: float | None, message: str | None) -> None:
        progress.append((done, total, message))

    async with Client(stdio(store, cache), read_timeout_seconds=240) as client:
        assert {tool.name for tool in (await client.list_tools()).tools} == TOOLS
        assert data(await client.call_tool("list_banks", {})) == {"banks": []}  # no model needed yet
        fact = data(await client.call_tool("remember", {"text": FACT, "metadata": {"topic": "shed"}}, None, heard))
        assert fact["bank"] == "memory" and fact["document_id"].startswith("doc-")
        assert progress[0][2] and "loading the model" in progress[0][2]  # the model loaded at this call, not before
        other = data(await client.call_tool("remember", {"text": OTHER}))
        recalled = data(await client.call_tool("recall", {"query": "What is the access code?", "k": 2}))["results"]
        assert {item["document_id"] for item in recalled} <= {fact["document_id"], other["document_id"]}
        assert len(recalled) == 2
        for item in recalled:
            source = FACT if item["document_id"] == fact["document_id"] else OTHER
            assert source[item["start"] : item["end"]] == item["text"]  # the span indexes the stored text
        by_document = {item["document_id"]: item for item in recalled}
        assert by_document[fact["document_id"]]["metadata"] == {"topic": "shed"}
        asked = data(await client.call_tool("ask", {"question": "What is the access code?"}))
        assert isinstance(asked["answer"], str) and asked["sources"]
        assert {item["document_id"] for item in asked["sources"]} <= {fact["document_id"], other["document_id"]}
        resources = (await client.list_resources()).resources
        assert [str(resource.uri) for resource in resources] == ["lychee://banks/memory"]
        bank = json.loads((await client.read_resource("lychee://banks/memory")).contents[0].text)
        assert sorted(document["id"] for document in bank["documents"]) == sorted(
            [fact["document_id"], other["document_id"]]
        )
        forgot = data(await client.call_tool("forget", {"document_id": fact["document_id"]}))
        assert forgot == {"forgotten": fact["document_id"], "bank": "memory"}
        after = data(await client.call_tool("recall", {"query": "What is the access code?", "k": 5}))["results"]
        assert after and {item["document_id"] for item in after} == {other["document_id"]}
        assert "no bank named 'elsewhere'" in error_text(
            await client.call_tool("recall", {"query": "x", "bank": "elsewhere"})
        )
        assert "empty" in error_text(await client.call_tool("recall", {"query": "  "}))


async def test_a_long_remember_sends_progress_up_to_its_total(tmp_path, cache):
    progress: list[tuple[float, float | None]] = []

    async def heard(done: float, total: float | None, message: str | None) -> None:
        progress.append((done, total))

    async with Client(stdio(tmp_path / "store", cache), read_timeout_seconds=240) as client:
        result = data(await client.call_tool("remember", {"text": LONG, "bank": "log"}, None, heard))
    counted = [(done, total) for done, total in progress if total]
    assert result["compressed"] > 4
    assert len(counted) >= 3 and counted[-1][0] == counted[-1][1] == result["compressed"]
    assert [done for done, _ in counted] == sorted(done for done, _ in counted)  # never backwards


def test_stdout_holds_only_json_rpc_and_initialize_answers_before_the_model_loads(tmp_path, cache):
    """A raw client: every stdout line parses as JSON-RPC, also across a model load that warns on stderr."""
    started = time.perf_counter()
    process = subprocess.Popen(
        mcp_command(tmp_path / "store"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=environment(cache),
        text=True,
    )
    try:

        def send(message: dict[str, Any]) -> None:
            process.stdin.write(json.dumps(message) + "\n")
            process.stdin.flush()

        def answer(request_id: int) -> dict[str, Any]:
            while True:
                line = process.stdout.readline()
                assert line, process.stderr.read()
                message = json.loads(line)  # a line that is not JSON fails here
                assert message.get("jsonrpc") == "2.0"
                if message.get("id") == request_id:
                    return message

        client = {"name": "raw", "version": "1"}
        send(
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": client},
            }
        )
        initialized = answer(1)
        initialize_seconds = time.perf_counter() - started
        assert initialized["result"]["serverInfo"]["name"] == "lychee-memory"
        send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        send(
            {
                "jsonrpc": "2.0",
                "id": 2,
                "method": "tools/call",
                "params": {"name": "remember", "arguments": {"text": FACT}},
            }
        )
        remembered = answer(2)
        tool_seconds = time.perf_counter() - started - initialize_seconds
        assert remembered["result"]["isError"] is False
        print(
            f"\ninitialize answered {initialize_seconds:.2f} s after spawn; the first remember (model load) took {tool_seconds:.2f} s"
        )
        process.stdin.close()
        rest = process.stdout.read()
        assert all(json.loads(line)["jsonrpc"] == "2.0" for line in rest.splitlines() if line.strip())
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)


async def test_stdio_with_keys_takes_the_key_from_the_environment(tmp_path, cache):
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps(KEYS), encoding="utf-8")
    store = tmp_path / "store"
    async with Client(stdio(store, cache, "--keys-file", str(keys), LYCHEE_API_KEY="key-acme")) as client:
        assert "may not use bank 'memory'" in error_text(await client.call_tool("remember", {"text": FACT}))
        assert data(await client.call_tool("remember", {"text": FACT, "bank": "acme-notes"}))["bank"] == "acme-notes"
    wrong = subprocess.run(
        mcp_command(store, "--keys-file", str(keys)),
        input="",
        capture_output=True,
        text=True,
        env=environment(cache, LYCHEE_API_KEY="key-wrong"),
        timeout=120,
    )
    assert wrong.returncode == 2 and "LYCHEE_API_KEY: unknown API key" in wrong.stderr and wrong.stdout == ""


# streamable HTTP -----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def http_server(store: Path, cache: Path, *options: str) -> Iterator[str]:
    port = free_port()
    log = store.parent / f"mcp-{port}.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            mcp_command(store, "--transport", "http", "--port", str(port), *options),
            stdout=output,
            stderr=subprocess.STDOUT,
            env=environment(cache),
        )
        try:
            deadline = time.monotonic() + 120
            while True:
                assert process.poll() is None, log.read_text(errors="replace")
                assert time.monotonic() < deadline, log.read_text(errors="replace")
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
                time.sleep(0.05)
            yield f"http://127.0.0.1:{port}/mcp"
        finally:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(30)


@contextlib.asynccontextmanager
async def http_client(url: str, key: str | None) -> AsyncIterator[Client]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=240)) as http:
        async with Client(streamable_http_client(url, http_client=http), read_timeout_seconds=240) as client:
            yield client


async def test_http_tools_with_keys_and_bank_prefixes(tmp_path, cache):
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps(KEYS), encoding="utf-8")
    with http_server(tmp_path / "store", cache, "--keys-file", str(keys)) as url:
        async with http_client(url, "key-acme") as client:
            assert {tool.name for tool in (await client.list_tools()).tools} == TOOLS
            fact = data(await client.call_tool("remember", {"text": FACT, "bank": "acme-notes"}))
            recalled = data(await client.call_tool("recall", {"query": "What is the code?", "bank": "acme-notes"}))
            assert recalled["results"] and recalled["results"][0]["document_id"] == fact["document_id"]
            item = recalled["results"][0]
            assert FACT[item["start"] : item["end"]] == item["text"]
            asked = data(await client.call_tool("ask", {"question": "What is the code?", "bank": "acme-notes"}))
            assert asked["sources"][0]["document_id"] == fact["document_id"]
            assert "may not use bank 'beta-notes'" in error_text(
                await client.call_tool("remember", {"text": OTHER, "bank": "beta-notes"})
            )
        async with http_client(url, "key-all") as client:
            data(await client.call_tool("remember", {"text": OTHER, "bank": "beta-notes"}))
            names = {bank["name"] for bank in data(await client.call_tool("list_banks", {}))["banks"]}
            assert names == {"acme-notes", "beta-notes"}
        async with http_client(url, "key-acme") as client:  # the other tenant's bank is neither listed nor readable
            assert [bank["name"] for bank in data(await client.call_tool("list_banks", {}))["banks"]] == ["acme-notes"]
            assert [str(r.uri) for r in (await client.list_resources()).resources] == ["lychee://banks/acme-notes"]
            assert "may not use bank 'beta-notes'" in error_text(
                await client.call_tool("recall", {"query": "gardener", "bank": "beta-notes"})
            )
        for key in ("key-wrong", None):  # the SDK's client cannot connect without a known key
            with pytest.raises(Exception):  # noqa: B017 (the SDK reports the 401 as an MCPError or an exception group)
                async with http_client(url, key) as client:
                    await client.list_tools()
        async with httpx2.AsyncClient() as raw:  # the refusal itself: 401 with the server's error body
            response = await raw.post(url, json={}, headers={"Authorization": "Bearer key-wrong"})
            assert response.status_code == 401
            assert response.json() == {"error": {"type": "unauthorized", "message": "unknown API key"}}
