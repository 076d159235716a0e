"""LycheeStore: LangGraph's BaseStore semantics over a Lychee bank, on a local store, SQLite manifests and S3 +
PostgreSQL (moto), with the tiny random models; filters checked against LangGraph's own InMemoryStore."""

from __future__ import annotations

import asyncio
import datetime
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("langgraph.store.base")

from langgraph.store.base import GetOp, InvalidNamespaceError, ListNamespacesOp, PutOp, SearchOp  # noqa: E402
from langgraph.store.memory import InMemoryStore  # noqa: E402
from lychee_memory.integrations.langgraph import LycheeStore  # noqa: E402

from lychee_memory import ConfigurationError, FilterError, MemoryStore  # noqa: E402

from .conftest import make_engine, requires_embedded_model  # noqa: E402
from .test_shared_store import make_location  # noqa: E402

ITEMS = [
    (("alice", "facts"), "home", {"text": "Alice lives in Oslo by the fjord.", "score": 3, "kind": "place"}),
    (("alice", "facts"), "pet", {"text": "Alice has a grey cat named Miso.", "score": 5, "kind": "pet"}),
    (("alice", "prefs"), "tea", {"text": "Alice drinks green tea every morning.", "score": 4.5, "kind": "pref"}),
    (("bob", "facts"), "home", {"text": "Bob lives in Quito near the old market.", "score": 1, "kind": "place"}),
]


def filled(store: LycheeStore) -> LycheeStore:
    store.batch([PutOp(namespace, key, value) for namespace, key, value in ITEMS])
    return store


@pytest.fixture
def engine():
    return make_engine("llama")


@pytest.fixture(params=["local", "local+sqlite", "s3+postgres"])
def location(request, tmp_path) -> str:
    return make_location(request.param, tmp_path)


def test_put_get_search_delete_on_every_backend(engine, location, tmp_path):
    store = filled(LycheeStore(store=location, model=engine))
    item = store.get(("alice", "facts"), "pet")
    assert item is not None and item.value == ITEMS[1][2] and item.namespace == ("alice", "facts")
    assert store.get(("alice", "facts"), "nothing") is None
    found = store.search(("alice",), query="Where does Alice live?", limit=2)
    assert len(found) == 2 and all(hit.score is not None for hit in found)
    assert all(hit.namespace[0] == "alice" for hit in found)
    # a second handle (another process's view) reads what the first wrote
    again = LycheeStore(store=location, model=engine)
    assert again.get(("bob", "facts"), "home").value == ITEMS[3][2]
    assert sorted(again.list_namespaces()) == [("alice", "facts"), ("alice", "prefs"), ("bob", "facts")]
    store.delete(("bob", "facts"), "home")
    assert again.get(("bob", "facts"), "home") is None
    assert again.list_namespaces(prefix=("bob",)) == []


def test_put_is_an_upsert_that_keeps_created_at(engine, tmp_path):
    store = LycheeStore(store=tmp_path / "store", model=engine)
    store.put(("u",), "k", {"text": "first version"})
    first = store.get(("u",), "k")
    time.sleep(0.01)
    store.put(("u",), "k", {"text": "second version"})
    second = store.get(("u",), "k")
    assert second.value == {"text": "second version"}
    assert second.created_at == first.created_at and second.updated_at > first.updated_at
    assert isinstance(second.created_at, datetime.datetime)
    assert len(store.search(("u",))) == 1  # one item, not two
    bank = engine.open_bank("langgraph", store=MemoryStore(tmp_path / "store"))
    assert len(bank.documents) == 1


def test_search_without_query_lists_in_put_order_with_offset_and_limit(engine, tmp_path):
    store = filled(LycheeStore(store=tmp_path / "store", model=engine))
    reference = InMemoryStore()
    for namespace, key, value in ITEMS:
        reference.put(namespace, key, value)
    for prefix, offset, limit in [((), 0, 10), (("alice",), 1, 1), (("alice", "facts"), 0, 5), ((), 2, 2)]:
        ours = [(hit.namespace, hit.key) for hit in store.search(prefix, offset=offset, limit=limit)]
        theirs = [(hit.namespace, hit.key) for hit in reference.search(prefix, offset=offset, limit=limit)]
        assert ours == theirs


@pytest.mark.parametrize(
    "filters",
    [
        {"kind": "place"},
        {"kind": {"$eq": "pet"}},
        {"kind": {"$ne": "place"}},
        {"score": {"$gt": 3}},
        {"score": {"$gte": 3}},
        {"score": {"$lt": 4.5}},
        {"score": {"$lte": 4.5}},
        {"score": {"$gte": 3, "$lt": 5}, "kind": {"$ne": "pref"}},
        {"missing": {"$ne": 1}},
        {"missing": 1},
    ],
)
def test_filters_agree_with_langgraphs_in_memory_store(engine, tmp_path, filters):
    store = filled(LycheeStore(store=tmp_path / "store", model=engine))
    reference = InMemoryStore()
    for namespace, key, value in ITEMS:
        reference.put(namespace, key, value)
    ours = {(hit.namespace, hit.key) for hit in store.search((), filter=filters, limit=10)}
    theirs = {(hit.namespace, hit.key) for hit in reference.search((), filter=filters, limit=10)}
    assert ours == theirs
    with_query = {(hit.namespace, hit.key) for hit in store.search((), query="who lives where", filter=filters)}
    assert with_query == theirs  # the gate ranks; the filter still decides what may come back


def test_bad_filters_and_namespaces_are_refused_by_name(engine, tmp_path):
    store = LycheeStore(store=tmp_path / "store", model=engine)
    with pytest.raises(FilterError, match=r"unknown operator '\$regex'"):
        store.search(("a",), filter={"text": {"$regex": "x"}})
    with pytest.raises(FilterError, match=r"'\$or' is not supported at the top level"):
        store.search(("a",), filter={"$or": [{"a": 1}]})
    with pytest.raises(FilterError, match=r"\$gt compares numbers or strings"):
        store.search(("a",), filter={"score": {"$gt": [1]}})
    with pytest.raises(InvalidNamespaceError, match="periods"):
        store.put(("a.b",), "k", {"text": "x"})
    with pytest.raises(InvalidNamespaceError, match="(?i)cannot be empty"):
        store.put((), "k", {"text": "x"})
    with pytest.raises(InvalidNamespaceError, match="langgraph"):
        store.get(("langgraph",), "k")
    with pytest.raises(TypeError, match="must be a dict"):
        store.put(("a",), "k", ["not", "a", "dict"])  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="list of JSON paths"):
        store.put(("a",), "k", {"text": "x"}, index="text")  # type: ignore[arg-type]
    assert not MemoryStore(tmp_path / "store").has_bank("langgraph")  # nothing was written


def test_index_fields_choose_the_text_and_index_false_is_never_scanned(engine, tmp_path):
    store = LycheeStore(store=tmp_path / "store", model=engine, index={"fields": ["text"]})
    store.put(("n",), "a", {"text": "The lighthouse keeper is Ada.", "secret": "zq-unindexed-field"})
    store.put(("n",), "b", {"text": "Raw value kept but not indexed."}, index=False)
    store.put(("n",), "c", {"title": "no text field"})  # nothing to index under the configured fields
    bank = engine.open_bank("langgraph", store=MemoryStore(tmp_path / "store"))
    texts = {document.metadata["lg_key"]: document.text for document in bank.documents}
    assert texts["a"] == "The lighthouse keeper is Ada."  # only the configured field is read by the gate
    found = store.search(("n",), query="Who keeps the lighthouse?", limit=3)
    assert [hit.key for hit in found][0] == "a" and found[0].score is not None
    assert {hit.key: hit.score for hit in found[1:]} == {"b": None, "c": None}  # unscored, after the scored ones
    assert store.get(("n",), "b").value == {"text": "Raw value kept but not indexed."}
    with pytest.raises(Exception, match="takes no embedding model"):
        LycheeStore(store=tmp_path / "store", model=engine, index={"dims": 3, "embed": lambda texts: [[0.0] * 3]})


def test_ttl_expires_items_and_reads_refresh_it(engine, tmp_path):
    store = LycheeStore(store=tmp_path / "store", model=engine, ttl={"refresh_on_read": True})
    store.put(("t",), "short", {"text": "expires soon"}, ttl=0.5 / 60)  # half a second
    store.put(("t",), "kept", {"text": "stays"})
    store.put(("t",), "refreshed", {"text": "read often"}, ttl=1.0 / 60)
    time.sleep(0.7)
    assert store.get(("t",), "refreshed") is not None  # pushes its expiry a second on
    time.sleep(0.6)
    assert store.get(("t",), "short") is None
    assert store.get(("t",), "refreshed") is not None  # 1.3 s after its put, alive thanks to the read
    assert {hit.key for hit in store.search(("t",))} == {"kept", "refreshed"}
    assert store.sweep_ttl() == 1
    bank = engine.open_bank("langgraph", store=MemoryStore(tmp_path / "store"))
    assert sorted(document.metadata["lg_key"] for document in bank.documents) == ["kept", "refreshed"]


def test_batch_reads_see_the_store_before_its_writes_and_writes_commit_once(engine, tmp_path):
    store = filled(LycheeStore(store=tmp_path / "store", model=engine))
    memory = MemoryStore(tmp_path / "store")
    generation = memory.bank_generation("langgraph")
    results = store.batch(
        [
            GetOp(("alice", "facts"), "home"),
            PutOp(("alice", "facts"), "home", {"text": "Alice moved to Lyon."}),
            PutOp(("carol",), "x", {"text": "Carol plays the oboe."}),
            PutOp(("carol",), "x", {"text": "Carol plays the bassoon."}),  # the last put of an item wins
            PutOp(("bob", "facts"), "home", None),  # a delete
            SearchOp(("carol",)),
            ListNamespacesOp(max_depth=1),
        ]
    )
    assert results[0].value == ITEMS[0][2] and results[5] == [] and results[6] == [("alice",), ("bob",)]
    assert results[1:5] == [None, None, None, None]
    assert store.get(("carol",), "x").value == {"text": "Carol plays the bassoon."}
    assert store.get(("bob", "facts"), "home") is None
    assert memory.bank_generation("langgraph") - generation == 2  # one ingest and one removal, not four writes


def test_list_namespaces_matches_langgraph(engine, tmp_path):
    store = filled(LycheeStore(store=tmp_path / "store", model=engine))
    store.put(("alice", "facts", "old"), "x", {"text": "deep"})
    reference = InMemoryStore()
    for namespace, key, value in [*ITEMS, (("alice", "facts", "old"), "x", {"text": "deep"})]:
        reference.put(namespace, key, value)
    for options in [
        {},
        {"prefix": ("alice",)},
        {"suffix": ("facts",)},
        {"prefix": ("*", "facts")},
        {"max_depth": 2},
        {"limit": 2, "offset": 1},
    ]:
        assert store.list_namespaces(**options) == reference.list_namespaces(**options), options


def test_async_variants_leave_the_loop_free(engine, tmp_path):
    store = LycheeStore(store=tmp_path / "store", model=engine)

    async def run():
        await store.aput(("a",), "k", {"text": "The tide turns at noon."})
        item = await store.aget(("a",), "k")
        hits = await store.asearch(("a",), query="When does the tide turn?")
        namespaces = await store.alist_namespaces()
        await store.adelete(("a",), "k")
        return item, hits, namespaces, await store.aget(("a",), "k")

    item, hits, namespaces, gone = asyncio.run(run())
    assert item.value == {"text": "The tide turns at noon."} and hits[0].key == "k" and namespaces == [("a",)]
    assert gone is None


def test_search_ranks_the_newer_of_two_near_tied_items_first(engine, tmp_path):
    """Two items with the same text score the same under the gate: the later put is recalled first, and with
    recency off (margin 0) the tie is still broken newest first."""
    for margin in (0.0, 0.25):
        store = LycheeStore(store=tmp_path / f"store-{margin}", model=engine, recency_margin=margin)
        store.put(("m",), "old", {"text": "The meeting room is on floor three."})
        time.sleep(0.01)
        store.put(("m",), "new", {"text": "The meeting room is on floor three."})
        found = store.search(("m",), query="Which floor is the meeting room on?", limit=2)
        assert [hit.key for hit in found] == ["new", "old"]


def test_forgotten_text_leaves_no_trace_after_gc(engine, tmp_path):
    root = tmp_path / "store"
    store = LycheeStore(store=root, model=engine)
    sentence = "The forgotten password is copper-heron-4411."
    store.put(("f",), "keep", {"text": "Nothing to hide here."})
    store.put(("f",), "secret", {"text": sentence})
    assert any(sentence.encode() in path.read_bytes() for path in root.rglob("*") if path.is_file())
    asyncio.run(store.adelete(("f",), "secret"))
    report = MemoryStore(root).gc()
    assert report.removed_texts == 1 and report.removed_blocks == 1
    assert [path for path in root.rglob("*") if path.is_file() and b"copper-heron" in path.read_bytes()] == []
    assert store.get(("f",), "keep") is not None


def test_many_puts_in_one_batch_commit_once(engine, tmp_path):
    """Many small puts: batched, the manifest is written once per batch, not once per put."""
    store = LycheeStore(store=tmp_path / "store", model=engine)
    memory = MemoryStore(tmp_path / "store")
    store.batch([PutOp(("bulk",), f"k{i}", {"text": f"Fact {i}: the code is {i * 7}."}) for i in range(200)])
    assert memory.bank_generation("langgraph") == 1
    assert len(store.search(("bulk",), limit=1000)) == 200


EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "langgraph_memory.py"


def run_example(*arguments: str) -> str:
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), *arguments], capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_langgraph_example_stores_in_one_thread_and_recalls_in_others(tmp_path):
    output = run_example("--store", str(tmp_path / "store"))
    assert output.count("-> stored: ") == 3 and output.count("-> recalled: ") == 2
    recalled = [line.split("-> recalled: ")[1] for line in output.splitlines() if "-> recalled: " in line]
    assert all("Bob" not in text for text in recalled)  # alice's namespace only, never bob's
    assert set(recalled) <= {"My sister Ingrid lives in Bergen.", "I drink green tea every morning."}
    assert "python examples/langgraph_memory.py --model smollm2-135m" in EXAMPLE.read_text()


@requires_embedded_model
@pytest.mark.slow
def test_langgraph_example_on_the_embedded_default(tmp_path):
    output = run_example("--model", "smollm2-135m", "--store", str(tmp_path / "store"))
    assert "Where does my sister live?\n   -> recalled: My sister Ingrid lives in Bergen." in output
