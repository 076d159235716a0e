"""The pluggable store on every backend: a local directory, SQLite manifests, file:// and S3 objects, PostgreSQL.

Each test gets a fresh store location from the ``location`` fixture (a new directory, bucket and SQLite file; the
PostgreSQL catalog keys its rows by the objects URL, so a new bucket is a new namespace). References are
independent of the backend under test: banks ingested into a plain local store, chunk counts from the chunker,
objects listed and damaged with boto3, sqlite3 or plain file writes, other writers and readers as real processes.
Services (moto's S3 server, a throwaway PostgreSQL) are started by the tests: see tests/services.py.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest

from lychee_memory import ConfigurationError, CorruptBlockError, Document, MemoryStore, StoreError
from lychee_memory.store.catalog import DatabaseCatalog, ManifestConflict

from . import services
from .conftest import make_engine
from .test_store import (
    QUESTION,
    REPOSITORY,
    assert_same_block,
    chunk_count,
    corrupt_item,
    count_compressed,
    documents,
    ingest_together,
    numbered_document,
    read_until,
)

BACKENDS = ["local", "local+sqlite", "file+sqlite", "s3+sqlite", "s3+postgres"]
DATABASE_BACKENDS = [backend for backend in BACKENDS if "+" in backend]
S3_BACKENDS = [backend for backend in BACKENDS if backend.startswith("s3")]


def make_location(kind: str, directory: Path, **options: object) -> str:
    """A fresh store location of ``kind`` under ``directory`` (and a new bucket for s3), with extra URL options."""
    objects, manifests = kind.split("+") if "+" in kind else (kind, None)
    query: dict[str, object] = {}
    if manifests == "sqlite":
        query["manifests"] = f"sqlite:///{directory / 'manifests.sqlite'}"
    elif manifests == "postgres":
        query["manifests"] = services.postgres_url()
    if objects == "local":
        base = str(directory / "store")
    elif objects == "file":
        base = f"file://{directory / 'objects'}"
    else:
        endpoint = services.moto_s3()
        base = f"s3://{services.new_bucket(endpoint)}/store"
        query["endpoint_url"] = endpoint
    if objects != "local":
        query["cache"] = str(directory / "cache")
    query.update(options)
    if not query:
        return base
    return base + "?" + "&".join(f"{key}={quote(str(value), safe=':/@')}" for key, value in query.items())


def with_options(location: str, **options: object) -> str:
    """The same store with other URL options (a second handle with its own local cache, say)."""
    added = "&".join(f"{key}={quote(str(value), safe=':/@')}" for key, value in options.items())
    return f"{location}&{added}" if "?" in location else f"{location}?{added}"


def fresh_handle(location: str, directory: Path) -> MemoryStore:
    """A new handle on the store, with its own empty local cache where the store has one."""
    if "://" not in location.partition("?")[0]:
        return MemoryStore(location)
    return MemoryStore(with_options(location, cache=directory / f"cache-{uuid.uuid4().hex[:8]}"))


@pytest.fixture(params=BACKENDS)
def location(request, tmp_path) -> str:
    return make_location(request.param, tmp_path)


@pytest.fixture(params=DATABASE_BACKENDS)
def database_location(request, tmp_path) -> str:
    return make_location(request.param, tmp_path)


@pytest.fixture(params=S3_BACKENDS)
def s3_location(request, tmp_path) -> str:
    return make_location(request.param, tmp_path)


# Reaching the objects without the store's code ---------------------------------------------------------


def _s3_object(store: MemoryStore, key: str) -> tuple[object, str, str]:
    """(boto3 client, bucket, object key) of a store key in an s3 store."""
    path = store.objects.items.remote.path(key)
    bucket, _, name = path.partition("/")
    return services.s3_client(store.where.storage_options["endpoint_url"]), bucket, name


def corrupt_block(store: MemoryStore, key: str) -> None:
    """Flip one byte of a stored block in the backend itself: boto3, a file write, or sqlite3 (``corrupt_item``)."""
    if not store.where.remote:
        corrupt_item(store, "block:" + key)
        return
    if store.location.startswith("s3://"):
        client, bucket, name = _s3_object(store, "block:" + key)
        data = bytearray(client.get_object(Bucket=bucket, Key=name)["Body"].read())
        data[len(data) // 2] ^= 0x55
        client.put_object(Bucket=bucket, Key=name, Body=bytes(data))
        return
    path = Path(store.objects.items.remote.path("block:" + key))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x55
    path.write_bytes(bytes(data))


def stored_block_keys(store: MemoryStore) -> set[str]:
    """The block keys really present in the backend, listed with boto3, os.walk or sqlite3."""
    if not store.where.remote:
        database = sqlite3.connect(store.path / "cache" / "cache.db")
        rows = database.execute("SELECT key FROM Cache WHERE key LIKE 'block:%'").fetchall()
        database.close()
        return {row[0].removeprefix("block:") for row in rows}
    root = store.objects.items.remote.root
    if store.location.startswith("s3://"):
        bucket, _, prefix = root.partition("/")
        client = services.s3_client(store.where.storage_options["endpoint_url"])
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/block/")
        return {item["Key"].rsplit("/", 1)[-1] for page in pages for item in page.get("Contents", [])}
    return {name for _, _, names in os.walk(Path(root) / "block") for name in names}


def reference_bank(engine, docs: list[Document], directory: Path, **options):
    """The same documents ingested into a plain local store (the default backend) in a directory of their own."""
    store = MemoryStore(directory / f"reference-{uuid.uuid4().hex[:8]}", **options)
    return engine.ingest(docs, store=store, bank="reference")


def assert_same_banks(bank, reference) -> None:
    assert bank.block_keys == reference.block_keys
    assert [d.id for d in bank.documents] == [d.id for d in reference.documents]
    assert [d.text for d in bank.documents] == [d.text for d in reference.documents]
    assert bank.spans == reference.spans
    for index in range(len(reference)):
        assert_same_block(bank.block(index), reference.block(index))


# Round trips -------------------------------------------------------------------------------------------


def test_a_bank_reads_back_through_a_new_handle_as_a_local_store_holds_it(location, tmp_path):
    engine = make_engine()
    docs = documents()
    engine.ingest(docs, store=MemoryStore(location), bank="harbour")
    reopened = fresh_handle(location, tmp_path)  # a new session, with nothing cached locally
    assert reopened.bank_names() == ["harbour"]
    assert reopened.bank_info("harbour").documents == ("facts", "garden")
    bank = engine.open_bank("harbour", reopened)
    reference = reference_bank(engine, docs, tmp_path)
    assert len(bank) == len(reference) == chunk_count(engine, docs)
    assert bank.resident_nbytes() == 0, "blocks are read lazily"
    assert_same_banks(bank, reference)
    answer, expected = engine.ask(QUESTION, bank), engine.ask(QUESTION, reference)
    assert answer.text == expected.text
    assert [(s.index, s.score) for s in answer.gate_scores] == [(s.index, s.score) for s in expected.gate_scores]
    assert reopened.verify().ok


def test_reingesting_unchanged_documents_compresses_nothing(location, tmp_path):
    engine = make_engine()
    facts, garden = documents()
    engine.ingest([facts, garden], store=MemoryStore(location), bank="harbour")
    again = fresh_handle(location, tmp_path)
    compressed = count_compressed(engine)
    engine.ingest([facts, garden], store=again, bank="harbour")
    assert compressed[0] == 0 == again.last_ingest.compressed
    assert again.last_ingest.reused == again.last_ingest.chunks == chunk_count(engine, [facts, garden])
    assert again.last_ingest.documents_replaced == 2 and again.last_ingest.written_bytes == 0
    tides = Document.from_text(numbered_document(6, "tide-"), id="tides")
    engine.ingest([tides], store=again, bank="harbour")
    assert compressed[0] == again.last_ingest.compressed == chunk_count(engine, [tides]), "only the new document"
    assert again.bank_info("harbour").documents == ("facts", "garden", "tides")
    assert again.bank_generation("harbour") == 3


# Damage and repair -------------------------------------------------------------------------------------


def test_a_block_damaged_in_the_backend_is_found_and_repaired(location, tmp_path):
    engine = make_engine()
    docs = documents()
    store = MemoryStore(location)
    bank = engine.ingest(docs, store=store, bank="harbour")
    first = store.verify()
    assert first.ok and not first.problems and first.blocks_checked == len(set(bank.block_keys))
    victim = 3
    corrupt_block(store, bank.block_keys[victim])

    report = store.verify()  # this handle read every block before: its local copies must not hide the damage
    assert not report.ok
    assert [(p.bank, p.kind, p.block_index, p.document_id) for p in report.problems] == [
        ("harbour", "block", victim, "facts")
    ]
    assert [p.kind for p in fresh_handle(location, tmp_path).verify().problems] == ["block"]
    reader = fresh_handle(location, tmp_path)
    with pytest.raises(CorruptBlockError, match=rf"bank 'harbour' block {victim} \(document 'facts'"):
        engine.open_bank("harbour", reader).block(victim)

    repaired = store.verify(repair=True, recipe=engine.block_recipe())
    assert repaired.ok and [p.repaired for p in repaired.problems] == [True]
    assert store.verify().ok and not store.verify().problems
    # The handle that read the damaged block reads the repaired one: it kept no copy of the damage.
    assert_same_banks(engine.open_bank("harbour", reader), reference_bank(engine, docs, tmp_path))
    assert reader.verify().ok


# Garbage collection ------------------------------------------------------------------------------------


def test_gc_frees_unreferenced_blocks_keeps_shared_and_leased_ones(location, tmp_path):
    engine = make_engine()
    store = MemoryStore(location)
    facts, garden = documents()
    engine.ingest([facts], store=store, bank="harbour")
    engine.ingest([facts, garden], store=store, bank="both")
    gc.collect()  # the banks ingest returned hold leases until they are gone
    facts_keys = set(store.bank_manifest("harbour").block_keys())
    both_keys = set(store.bank_manifest("both").block_keys())
    assert stored_block_keys(store) == both_keys and facts_keys < both_keys
    assert len(both_keys - facts_keys) == chunk_count(engine, [garden])

    store.delete_bank("both")
    report = store.gc()
    assert report.removed_blocks == chunk_count(engine, [garden]) and report.removed_texts == 1
    assert stored_block_keys(store) == facts_keys, "the blocks 'harbour' shares stay"
    assert store.verify().ok
    engine.ask(QUESTION, engine.open_bank("harbour", store))
    gc.collect()

    # A bank held open through another handle keeps its blocks after its manifest is gone, until it is dropped.
    bank = engine.open_bank("harbour", fresh_handle(location, tmp_path))
    assert store.usage().leased_blocks == 0, "the manifest still names them"
    store.delete_bank("harbour")
    assert store.usage().leased_blocks == len(facts_keys)
    report = store.gc()
    assert (report.removed_blocks, report.removed_texts) == (0, 1), "an open bank holds its texts in memory"
    assert stored_block_keys(store) == facts_keys
    reference = reference_bank(engine, [facts], tmp_path)
    for index in range(len(reference)):
        assert_same_block(bank.block(index), reference.block(index))
    del bank
    gc.collect()
    report = store.gc()
    assert report.removed_blocks == len(facts_keys) == report.removed_indexes
    assert stored_block_keys(store) == set() and store.usage().blocks == 0


def test_gc_during_a_live_lazy_query_deletes_nothing_it_reads(location, tmp_path):
    """Mid-question, after the first block is read, another handle deletes the bank and runs gc: the question still
    reads every block it reaches, and answers as the same question over a plain local store does."""
    engine = make_engine(gate="all")  # the scan reads block after block, so it keeps reading after gc ran
    facts = documents()[0]
    writer = MemoryStore(location)
    engine.ingest([facts], store=writer, bank="harbour")
    gc.collect()
    reference = engine.ask(QUESTION, reference_bank(engine, [facts], tmp_path))
    bank = engine.open_bank("harbour", fresh_handle(location, tmp_path))
    load, reads, collected = bank.loader, [], []

    def read_then_collect(index):
        reads.append(index)
        if len(reads) == 1:
            writer.delete_bank("harbour")
            collected.append(writer.gc())
        return load(index)

    bank.loader = read_then_collect
    answer = engine.ask(QUESTION, bank)
    assert len(collected) == 1 and collected[0].removed_blocks == 0 and collected[0].removed_indexes == 0
    assert len(set(reads)) > 1, "the question read blocks after gc ran"
    assert answer.text == reference.text
    assert [block.index for block in answer.blocks] == [block.index for block in reference.blocks]
    del bank, answer
    gc.collect()
    assert writer.gc().removed_blocks == chunk_count(engine, [facts]), "freed once the reader is gone"


def bytes_holding(store: MemoryStore, directory: Path, needle: bytes) -> list[str]:
    """Every place of the backend whose bytes hold ``needle``: local files (store, SQLite, caches), S3 objects
    read with boto3, and the PostgreSQL database's own table files (its write-ahead log aside)."""
    places = [str(path) for path in directory.rglob("*") if path.is_file() and needle in path.read_bytes()]
    if store.location.startswith("s3://"):
        bucket = store.objects.items.remote.root.partition("/")[0]
        client = services.s3_client(store.where.storage_options["endpoint_url"])
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                if needle in client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read():
                    places.append("s3://" + bucket + "/" + item["Key"])
    manifests = store.where.manifests or ""
    if manifests.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(manifests, autocommit=True) as connection:
            connection.execute("CHECKPOINT")  # the table files on disk, not the server's buffers
            data = Path(connection.execute("SHOW data_directory").fetchone()[0])
            (database,) = connection.execute(
                "SELECT oid FROM pg_database WHERE datname = current_database()"
            ).fetchone()
        tables = data / "base" / str(database)
        if not os.access(tables, os.R_OK):
            pytest.skip("the PostgreSQL server's files are not readable from this process")
        places += [str(path) for path in tables.iterdir() if path.is_file() and needle in path.read_bytes()]
    return places


def test_a_removed_document_leaves_no_trace_after_gc(location, tmp_path):
    """Forgetting is for real: after a document is removed and gc runs, no byte of its text or metadata is left
    anywhere the backend keeps data, including the old manifest versions a database keeps; the rest still opens."""
    engine = make_engine()
    store = MemoryStore(location)
    if "postgresql://" in location:  # PostgreSQL would compress the manifest rows: keep them as plain bytes to search
        import psycopg

        with psycopg.connect(store.where.manifests, autocommit=True) as connection:
            connection.execute("ALTER TABLE lychee_manifests ALTER COLUMN data SET STORAGE EXTERNAL")
    keep = Document.from_text("The east pier shed code is 58213.", id="facts")
    forget = Document.from_text(
        "The forgotten password is copper-heron-4411.", id="secret", metadata={"n": "copper-heron"}
    )
    engine.ingest([keep], store=store, bank="mixed")
    engine.ingest([forget], store=store, bank="mixed")  # the manifest is rewritten: old versions exist
    gc.collect()
    before = bytes_holding(store, tmp_path, b"copper-heron")
    assert before, "the needle is findable before it is forgotten"
    if "postgresql://" in location:
        assert any("/base/" in place for place in before), "the manifest rows themselves are searched"
    store.remove_documents("mixed", ["secret"])
    report = store.gc()
    assert report.removed_texts == 1
    assert bytes_holding(store, tmp_path, b"copper-heron") == []
    assert [document.id for document in store.bank_manifest("mixed").documents] == ["facts"]
    assert store.verify().ok
    assert len(engine.open_bank("mixed", store)) == chunk_count(engine, [keep])


def test_gc_refuses_while_another_handle_writes_blocks(location):
    engine = make_engine()
    store = MemoryStore(location)
    engine.ingest(documents()[1:], store=store, bank="garden")
    store.delete_bank("garden")
    writer = MemoryStore(location)
    with writer.writing_blocks():
        with pytest.raises(StoreError, match="busy"):
            store.gc()
        assert stored_block_keys(store), "nothing was collected"
    assert store.gc().removed_blocks == chunk_count(engine, documents()[1:])


def test_gc_collects_blocks_written_after_its_last_listing(s3_location):
    """Another process's leftover block, written in a directory this handle listed before, is still collected."""
    engine = make_engine()
    store = MemoryStore(s3_location)
    engine.ingest(documents()[1:], store=store, bank="garden")
    gc.collect()
    assert store.gc().removed_blocks == 0  # lists every block directory
    kept = sorted(stored_block_keys(store))
    orphan = kept[0][:2] + uuid.uuid4().hex * 2  # a block a killed writer left, beside one listed already
    client, bucket, name = _s3_object(store, "block:" + orphan)
    client.put_object(Bucket=bucket, Key=name, Body=b"x" * 1000)
    usage = store.usage()
    assert (usage.unreferenced_blocks, usage.unreferenced_bytes) == (1, 1000)
    assert store.gc().removed_blocks == 1
    assert sorted(stored_block_keys(store)) == kept


# Several writers ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["local+sqlite", "s3+postgres"])  # SQLite, PostgreSQL, and S3 objects
def test_two_processes_ingesting_into_one_bank_lose_nothing(kind, tmp_path):
    where = make_location(kind, tmp_path)
    engine = make_engine()
    shared = numbered_document(4, "shared-")
    first = Document.from_text(shared + "\n\n" + numbered_document(10, "first-"), id="first")
    second = Document.from_text(shared + "\n\n" + numbered_document(10, "second-"), id="second")
    ingest_together(where, [first, second], tmp_path, timeout=120)

    store = fresh_handle(where, tmp_path)
    bank = engine.open_bank("together", store)
    assert sorted(d.id for d in bank.documents) == ["first", "second"], "both additions survive"
    assert store.bank_generation("together") == 2
    order = [d.id for d in bank.documents]
    ordered = sorted([first, second], key=lambda document: order.index(document.id))
    assert_same_banks(bank, reference_bank(engine, ordered, tmp_path))
    report = store.verify()
    assert report.ok and report.blocks_checked == len(set(bank.block_keys)) < len(bank)
    assert store.usage().unreferenced_blocks == 0


def test_a_manifest_conflict_is_retried_and_both_documents_survive(database_location, monkeypatch):
    engine = make_engine()
    facts, garden = documents()
    tides = Document.from_text(numbered_document(4, "tide-"), id="tides")
    mine, theirs = MemoryStore(database_location), MemoryStore(database_location)
    put, writes = mine.manifests.catalog.put, []

    def racing_put(name, data, generation, expected):
        if not writes:  # between this handle's read and its write, the other handle commits
            writes.append("theirs")
            engine.ingest([garden] if expected == 0 else [tides], store=theirs, bank=name)
        try:
            put(name, data, generation, expected)
        except ManifestConflict:
            writes.append(("conflict", expected))
            raise
        writes.append(("written", expected))

    monkeypatch.setattr(mine.manifests.catalog, "put", racing_put)
    engine.ingest([facts], store=mine, bank="together")  # a new bank: both create it (a primary-key clash)
    assert writes == ["theirs", ("conflict", 0), ("written", 1)]
    assert mine.bank_info("together").documents == ("garden", "facts")

    writes.clear()
    engine.ingest([Document.from_text(numbered_document(3, "pier-"), id="pier")], store=mine, bank="together")
    assert writes == ["theirs", ("conflict", 2), ("written", 3)], "an existing bank: a stale generation"
    assert sorted(MemoryStore(database_location).bank_info("together").documents) == [
        "facts",
        "garden",
        "pier",
        "tides",
    ]
    assert mine.bank_generation("together") == 4
    assert mine.verify().ok


# Leases of dead processes ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["local", "local+sqlite", "s3+postgres"])  # flock, SQLite and PostgreSQL leases
def test_a_killed_readers_lease_stops_counting(kind, tmp_path):
    engine = make_engine()
    location = make_location(kind, tmp_path)
    database = "manifests=" in location
    where = with_options(location, lease_seconds=2) if database else location
    store = MemoryStore(where)
    engine.ingest(documents(), store=store, bank="harbour")
    gc.collect()
    blocks = len(set(store.bank_manifest("harbour").block_keys()))
    holder = subprocess.Popen(
        [sys.executable, "-m", "tests.shared_store_worker", where, "harbour"],
        cwd=REPOSITORY,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPOSITORY)},
    )
    try:
        read_until(holder, f"opened {chunk_count(engine, documents())}")
        store.delete_bank("harbour")
        assert store.gc().removed_blocks == 0, "the live reader's lease keeps its blocks"
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    finally:
        holder.kill()
    killed = time.monotonic()
    if database:  # its rows count until they expire, lease_seconds after their last renewal
        while store.usage().leased_blocks and time.monotonic() - killed < 10:
            time.sleep(0.2)
        assert time.monotonic() - killed < 5, "the dead process's lease expired within lease_seconds (2 s)"
    assert store.usage().leased_blocks == 0
    assert store.gc().removed_blocks == blocks
    assert stored_block_keys(store) == set()
    if database:
        assert store.manifests.catalog.leased_keys(remove_stale=False) == set()


# The local cache of an object store --------------------------------------------------------------------


def count_reads(monkeypatch, store: MemoryStore) -> dict[str, int]:
    """From now on, how many items ``store`` read, and how many of them it fetched from the object store."""
    counts = {"reads": 0, "fetches": 0}
    items = store.objects.items
    read, fetch = items.get, items.remote.get

    def counted(kind: str, call):
        def counting(key: str) -> bytes | None:
            counts[kind] += 1
            return call(key)

        return counting

    monkeypatch.setattr(items, "get", counted("reads", read))
    monkeypatch.setattr(items.remote, "get", counted("fetches", fetch))
    return counts


def test_blocks_read_twice_come_from_the_local_cache(s3_location, tmp_path, monkeypatch):
    engine = make_engine()
    engine.ingest(documents(), store=MemoryStore(s3_location), bank="harbour")
    reader = fresh_handle(s3_location, tmp_path)
    bank = reader.load_bank("harbour")
    keys = bank.block_keys
    counts = count_reads(monkeypatch, reader)
    first = [bank.block(index) for index in range(len(bank))]
    assert counts["fetches"] == len(set(keys)), "each distinct block is fetched once"
    assert counts["reads"] - counts["fetches"] == len(keys) - len(set(keys))
    # The object store loses them all: a second pass is served from the local copy alone.
    client, bucket, _ = _s3_object(reader, "block:" + keys[0])
    for key in set(keys):
        client.delete_object(Bucket=bucket, Key=_s3_object(reader, "block:" + key)[2])
    counts.update(reads=0, fetches=0)
    for index in range(len(bank)):
        assert_same_block(bank.block(index), first[index])
    assert (counts["reads"] - counts["fetches"], counts["fetches"]) == (len(keys), 0)


def test_a_small_local_cache_stays_within_its_bound(s3_location, tmp_path, monkeypatch):
    engine = make_engine()
    store = MemoryStore(s3_location, block_dtype="bfloat16")  # blocks large enough that the bank overflows the bound
    bank = engine.ingest(documents(), store=store, bank="harbour")
    bound = 64_000  # the copy's own SQLite index takes about 32 KB of it
    assert sum(store.objects.items.size("block:" + key) for key in bank.block_keys) > bound, "the bank does not fit"
    reader = fresh_handle(with_options(s3_location, cache_bytes=bound), tmp_path)
    assert reader.objects.items.cache_limit_bytes == bound
    small = reader.load_bank("harbour")
    reference = reference_bank(engine, documents(), tmp_path, block_dtype="bfloat16")
    counts = count_reads(monkeypatch, reader)
    for _ in range(2):
        for index in range(len(small)):
            for _ in range(2):  # the second read of a block just read is served from the copy
                assert_same_block(small.block(index), reference.block(index))
                assert reader.objects.items.copy.volume() <= bound
    assert counts["reads"] > counts["fetches"], "a block read again at once is served from the copy"
    assert counts["fetches"] > len(set(bank.block_keys)), "evicted blocks are fetched again"
    assert len(reader.objects.items.copy) < len(set(bank.block_keys))


# Bad input ---------------------------------------------------------------------------------------------


def test_bad_locations_are_refused_clearly(tmp_path):
    endpoint = services.moto_s3()
    bucket = services.new_bucket(endpoint)
    sqlite = f"sqlite:///{tmp_path / 'm.sqlite'}"
    with pytest.raises(ConfigurationError, match="unknown store option 'colour'.*known: cache, cache_bytes"):
        MemoryStore(f"s3://{bucket}/s?manifests={sqlite}&colour=red&endpoint_url={endpoint}")
    with pytest.raises(ConfigurationError, match=r"is an object store, which has no transactions.*\?manifests="):
        MemoryStore(f"s3://{bucket}/s?endpoint_url={endpoint}")
    with pytest.raises(ConfigurationError, match=r"manifests='mysql://db/x': use sqlite:///PATH"):
        MemoryStore(f"{tmp_path / 'local'}?manifests=mysql://db/x")
    with pytest.raises(ConfigurationError, match="must be positive"):
        MemoryStore(f"s3://{bucket}/s?manifests={sqlite}&cache_bytes=0&endpoint_url={endpoint}")
    with pytest.raises(ConfigurationError, match="must be numbers"):
        MemoryStore(f"s3://{bucket}/s?manifests={sqlite}&lease_seconds=soon&endpoint_url={endpoint}")
    unreachable = f"postgresql://nobody:hunter2@127.0.0.1:{services.free_port()}/lychee"
    with pytest.raises(StoreError, match="cannot open the manifest database 'postgresql://nobody:\\*\\*\\*@") as error:
        MemoryStore(f"s3://{bucket}/s?manifests={unreachable}&endpoint_url={endpoint}")
    assert "hunter2" not in str(error.value), "no password in messages"
    with pytest.raises(StoreError, match=f"no store at 's3://{bucket}/empty'"):
        MemoryStore(f"s3://{bucket}/empty?manifests={sqlite}&endpoint_url={endpoint}", create=False)
    listing = services.s3_client(endpoint).list_objects_v2(Bucket=bucket, Prefix="empty")
    assert listing.get("KeyCount", 0) == 0, "refusing wrote nothing"


def test_a_database_catalog_is_shared_by_stores_without_mixing_them(tmp_path):
    """One manifest database serves several object stores: each sees only its own banks and leases."""
    engine = make_engine()
    sqlite = f"sqlite:///{tmp_path / 'shared.sqlite'}"
    one = MemoryStore(f"file://{tmp_path / 'one'}?manifests={sqlite}")
    two = MemoryStore(f"file://{tmp_path / 'two'}?manifests={sqlite}")
    engine.ingest(documents()[:1], store=one, bank="harbour")
    engine.ingest(documents()[1:], store=two, bank="garden")
    assert (one.bank_names(), two.bank_names()) == (["harbour"], ["garden"])
    assert isinstance(one.manifests.catalog, DatabaseCatalog) and one.manifests.catalog.url == two.manifests.catalog.url
    gc.collect()
    assert one.gc().removed_blocks == 0 == two.gc().removed_blocks
    assert one.verify().ok and two.verify().ok


# Serving machines sharing one store --------------------------------------------------------------------


def test_two_servers_on_one_shared_store_see_each_others_banks(tmp_path):
    """Two `lychee serve` processes (each its own local cache, as on two machines) on one s3+postgres store: a bank
    ingested through one is listed, retrieved and answered by the other, and a deletion through it is seen by both."""
    from .test_server import Server, ingest, ok, running

    location = make_location("s3+postgres", tmp_path)
    cache = tmp_path / "model-cache"
    servers = []
    for name in ("first", "second"):
        server = Server(tmp_path / name, cache)
        where = with_options(location, cache=tmp_path / f"{name}-blocks")
        server.command[server.command.index("--store") + 1] = where
        servers.append(server)
    facts, garden = documents()
    with running(servers[0]) as first, running(servers[1]) as second:
        with first.client() as one, second.client() as two:
            ingest(one, "harbour", [{"id": facts.id, "text": facts.text}, {"id": garden.id, "text": garden.text}])
            assert [bank["name"] for bank in ok(two.get("/v1/banks"))["banks"]] == ["harbour"]
            there = ok(two.post("/v1/banks/harbour/query", json={"question": QUESTION}))
            here = ok(one.post("/v1/banks/harbour/query", json={"question": QUESTION}))
            assert there["answer"] == here["answer"]
            assert [block["index"] for block in there["blocks"]] == [block["index"] for block in here["blocks"]]
            retrieved = ok(two.post("/v1/banks/harbour/retrieve", json={"question": QUESTION, "k": 2}))
            assert len(retrieved["blocks"]) == 2
            ok(two.delete("/v1/banks/harbour/documents/garden"))
            assert {d["id"] for d in ok(one.get("/v1/banks/harbour/documents"))["documents"]} == {"facts"}
    assert MemoryStore(location).verify().ok


def test_a_local_copy_never_stands_in_for_an_object_the_store_lacks(tmp_path):
    """A cache that already holds a document's text (from another bucket that shared the cache directory) must not
    stop ingest from writing that text to this store: a reader elsewhere, with no such copy, needs it."""
    engine = make_engine()
    facts = documents()[0]
    shared_cache = tmp_path / "shared-cache"
    first = MemoryStore(with_options(make_location("s3+sqlite", tmp_path / "first"), cache=shared_cache))
    engine.ingest([facts], store=first, bank="harbour")
    second_location = make_location("s3+sqlite", tmp_path / "second")
    engine.ingest([facts], store=MemoryStore(with_options(second_location, cache=shared_cache)), bank="harbour")
    elsewhere = fresh_handle(second_location, tmp_path)
    bank = engine.open_bank("harbour", elsewhere)
    assert bank.documents[0].text == facts.text
    assert elsewhere.verify().ok


def test_the_cli_ingests_lists_and_verifies_a_store_by_url(tmp_path):
    """`lychee ingest/ask/store ls/verify --store URL` on an S3 store with SQLite manifests, as a user types it."""
    location = make_location("s3+sqlite", tmp_path)
    facts = tmp_path / "facts.txt"
    facts.write_text(documents()[0].text, encoding="utf-8")
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    tiny = ["--model", "tiny-random-llama", "--chunk-tokens", "64"]

    def lychee(*arguments: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "lychee_memory.cli", *arguments]
        result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        return result

    lychee("ingest", str(facts), "--store", location, "--bank", "harbour", *tiny, "--json")
    listed = json.loads(lychee("store", "ls", "--store", location, "--json").stdout)
    assert listed["store"] == location.partition("?")[0] and [bank["name"] for bank in listed["banks"]] == ["harbour"]
    assert json.loads(lychee("store", "verify", "--store", location, "--json").stdout)["ok"] is True
    again = json.loads(lychee("ingest", str(facts), "--store", location, "--bank", "harbour", *tiny, "--json").stdout)
    assert again["stored"]["compressed"] == 0
    lychee("ask", "--store", location, "--bank", "harbour", "-q", QUESTION, *tiny)
