"""Distributed ingest on Ray: the same bank as one process builds, surviving killed actors and a killed driver.

Ray runs on this machine (2 actors with fractional CPUs); the CLI tests run `lychee ingest --ray` as a separate
driver process so it can be killed.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lychee_memory import Document, MemoryStore
from lychee_memory.store.writing import BlockWork, plan_blocks, write_batch

from .conftest import make_engine

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'lychee-memory[ray]')")

PLACES = ["Arvel", "Corrin", "Dunmere", "Elsby", "Farrow", "Gillan", "Hesket", "Isel", "Jarrow", "Kelda"]
TRADES = ["weavers", "millers", "coopers", "tanners", "glaziers", "smiths", "chandlers", "masons"]


def town_documents(count: int, paragraphs: int = 6, seed: int = 7) -> list[Document]:
    """``count`` made-up town chronicles, each with a planted registry number; different every document."""
    chooser = random.Random(seed)
    documents = []
    for number in range(count):
        place = f"{chooser.choice(PLACES)}-{number}"
        lines = []
        for paragraph in range(paragraphs):
            trade = chooser.choice(TRADES)
            lines.append(
                f"In year {1700 + chooser.randrange(300)} the {trade} of {place} built {chooser.randrange(2, 40)} "
                f"houses by the river; paragraph {paragraph} of the chronicle records their guild's quarrels."
            )
        lines.insert(paragraphs // 2, f"The registry number of {place} is {chooser.randrange(10000, 99999)}.")
        documents.append(Document(text="\n\n".join(lines), id=f"town-{number:02d}", metadata={"n": number}))
    return documents


def _one_thread_ingest(engine, documents, store, bank):
    """A single-process ingest with one torch thread, as each Ray actor runs (last bits depend on the count)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return engine.ingest(documents, store=store, bank=bank)
    finally:
        torch.set_num_threads(threads)


def _stored_items(store: MemoryStore, bank: str) -> dict[str, bytes]:
    manifest = store.bank_manifest(bank)
    items = {}
    for _, _, entry in manifest.entries():
        items["block:" + entry.key] = store.objects.block(entry.key)
        if entry.index_key is not None:
            items["index:" + entry.index_key] = store.objects.items.get("index:" + entry.index_key)
    return items


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_ingest_of_twenty_documents_is_bit_identical_to_a_single_process_ingest(tmp_path, local_ray):
    from lychee_memory.distributed import RaySettings, ingest_with_ray

    engine = make_engine("llama")
    documents = town_documents(20)
    single = MemoryStore(tmp_path / "single")
    _one_thread_ingest(engine, documents, single, "towns")
    report = ingest_with_ray(
        engine,
        documents,
        store=tmp_path / "ray",
        bank="towns",
        ray=RaySettings(workers=2, threads_per_worker=1),
        show_progress=False,
    )
    distributed = MemoryStore(tmp_path / "ray")
    expected, actual = single.bank_manifest("towns"), distributed.bank_manifest("towns")
    assert [d.id for d in actual.documents] == [d.id for d in expected.documents]
    assert [e.model_dump() for _, _, e in actual.entries()] == [e.model_dump() for _, _, e in expected.entries()]
    reference, written = _stored_items(single, "towns"), _stored_items(distributed, "towns")
    assert reference.keys() == written.keys() and len(reference) > 40
    assert all(written[key] == reference[key] for key in reference)  # byte for byte
    assert report.compressed == len({e.key for _, _, e in expected.entries()}) and report.reused == 0
    assert distributed.verify().ok

    again = ingest_with_ray(engine, documents, store=tmp_path / "ray", bank="towns", show_progress=False)
    assert again.compressed == 0 and again.documents_replaced == 20  # a rerun reuses every stored block


def test_block_bytes_do_not_depend_on_the_process_that_encodes_them(tmp_path):
    """safetensors writes metadata in hash-map order; the store canonicalises it, so workers agree byte for byte."""
    script = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})\n"
        "from tests.conftest import make_engine, FACTS_DOCUMENT\n"
        "from lychee_memory import Document\n"
        "from lychee_memory.store.codec import encode_block\n"
        "engine = make_engine('llama')\n"
        "chunk = engine.chunk([Document(text=FACTS_DOCUMENT, id='a')])[0]\n"
        "block = engine.compressor.compress(engine.loaded, [chunk])[0]\n"
        "sys.stdout.buffer.write(b''.join(encode_block(block, dtype, engine.identity) "
        "for dtype in ('bfloat16', 'int8', 'float32')))\n"
    )
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = [
        subprocess.run([sys.executable, "-c", script], capture_output=True, check=True, env=environment).stdout
        for _ in range(2)
    ]
    assert runs[0] == runs[1] and len(runs[0]) > 1000


class _CountingRecipe:
    """A recipe whose compress counts the chunks it is given."""

    def __init__(self, recipe):
        self.recipe, self.compressed = recipe, 0

    def __getattr__(self, name):
        return getattr(self.recipe, name)

    def compress(self, chunks):
        self.compressed += len(chunks)
        return self.recipe.compress(chunks)


def test_a_retried_batch_whose_blocks_are_stored_is_not_compressed_again(tmp_path):
    engine = make_engine("llama", ingest_batch_size=2)
    store = MemoryStore(tmp_path / "store")
    recipe = _CountingRecipe(engine.block_recipe())
    with store.writing_blocks():
        plan = plan_blocks(store.objects, town_documents(2), recipe)
        first, second = plan.batches[0], plan.batches[1]
        written = write_batch(store.objects, first, recipe, skip_stored=True)
        assert recipe.compressed == 2 and all(block.compressed for block in written)
        retried = write_batch(store.objects, first, recipe, skip_stored=True)  # the attempt that died after writing
        assert recipe.compressed == 2 and not any(block.compressed for block in retried)
        assert [(b.key, b.shape, b.index) for b in retried] == [(b.key, b.shape, b.index) for b in written]
        store.objects.items.delete("block:" + second[1].key)  # a batch half written when its actor died
        partial = [BlockWork(second[0].key, second[0].chunk)] + [second[1]]
        write_batch(store.objects, [partial[0]], recipe)  # only its first block was written
        redone = write_batch(store.objects, second, recipe, skip_stored=True)
        assert recipe.compressed == 5  # compressed whole (same batch, same bytes), only the missing block written
        assert store.objects.block(second[1].key) is not None and redone[1].compressed


# The CLI as a separate driver: a killed driver or actor ---------------------------------------------------


def _write_corpus(directory: Path, count: int, paragraphs: int) -> list[Document]:
    directory.mkdir(parents=True)
    documents = town_documents(count, paragraphs=paragraphs, seed=11)
    for document in documents:
        (directory / f"{document.id}.txt").write_text(document.text, encoding="utf-8")
    return documents


def _ingest_command(corpus: Path, store: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "lychee_memory.cli",
        "ingest",
        str(corpus),
        "--store",
        str(store),
        "--bank",
        "towns",
        "--model",
        "tiny-random-llama",
        "--chunk-tokens",
        "64",
        "--ray",
        "--workers",
        "2",
        "--json",
    ]


def _environment() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "RAY_DEDUP_LOGS": "0"}


def _wait_for_blocks(store_path: Path, at_least: int, process: subprocess.Popen, timeout: float = 180) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (store_path / "lychee-store.json").is_file():
            with MemoryStore(store_path, create=False) as store:
                count = len(store.objects.items.keys("block:"))
            if count >= at_least:
                return count
        if process.poll() is not None:
            raise AssertionError(f"the driver ended early: {process.communicate()}")
        time.sleep(0.05)
    raise AssertionError(f"fewer than {at_least} blocks after {timeout}s")


def _complete_blocks(store: MemoryStore, recipe) -> set[str]:
    """Stored blocks that have everything the recipe needs (their index item too)."""
    keys = [key.removeprefix("block:") for key in store.objects.items.keys("block:")]
    return {key for key in keys if recipe.gate_index is None or store.objects.index_item(key, recipe.gate_index)}


def _distinct_chunks(engine, documents: list[Document]) -> int:
    with MemoryStore(Path(os.environ["LYCHEE_CACHE_DIR"]) / f"count-{time.monotonic_ns()}") as scratch:
        return plan_blocks(scratch.objects, documents, engine.block_recipe()).to_compress


def test_a_killed_driver_leaves_no_bank_and_a_rerun_compresses_only_what_is_missing(tmp_path):
    corpus, store_path = tmp_path / "corpus", tmp_path / "store"
    documents = _write_corpus(corpus, 20, paragraphs=30)
    engine = make_engine("llama", chunk_tokens=64)
    distinct = _distinct_chunks(engine, documents)
    driver = subprocess.Popen(
        _ingest_command(corpus, store_path),
        env=_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # the driver and the Ray processes it started, killed together
    )
    _wait_for_blocks(store_path, 20, driver)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.communicate()
    time.sleep(1.0)
    store = MemoryStore(store_path)
    assert not store.has_bank("towns")  # the manifest is written once, at the end
    complete = _complete_blocks(store, engine.block_recipe())
    assert 20 <= len(complete) < distinct
    rerun = subprocess.run(_ingest_command(corpus, store_path), env=_environment(), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    import json

    report = json.loads(rerun.stdout)["stored"]
    print(f"chunks {distinct}, complete before the rerun {len(complete)}, rerun compressed {report['compressed']}")
    assert report["compressed"] == distinct - len(complete)  # nothing stored is compressed again
    assert report["documents_added"] == 20
    assert store.verify().ok
    assert len(store.bank_manifest("towns").documents) == 20


def _block_writer_pids() -> list[int]:
    listing = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [int(line.split()[0]) for line in listing.splitlines() if "BlockWriter" in line and "ps -eo" not in line]


def test_a_killed_actor_is_restarted_by_ray_and_the_ingest_completes(tmp_path):
    corpus, store_path = tmp_path / "corpus", tmp_path / "store"
    _write_corpus(corpus, 20, paragraphs=30)
    driver = subprocess.Popen(
        _ingest_command(corpus, store_path),
        env=_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _wait_for_blocks(store_path, 20, driver)
        victims = _block_writer_pids()
        assert victims, "no Ray actor process found"
        os.kill(victims[0], signal.SIGKILL)
        output, errors = driver.communicate(timeout=300)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode == 0, errors[-3000:]
    store = MemoryStore(store_path)
    assert len(store.bank_manifest("towns").documents) == 20
    assert store.verify().ok
    bank = make_engine("llama", chunk_tokens=64).open_bank("towns", store)
    for index in range(len(bank)):
        bank.block(index)  # every block the manifest names is there and checks out


def test_ray_ingest_needs_a_bank(tmp_path):
    (tmp_path / "a.txt").write_text("A short note.", encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "lychee_memory.cli", "ingest", str(tmp_path / "a.txt"), "--ray"],
        env=_environment(),
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0 and "--ray needs --bank" in result.stderr
