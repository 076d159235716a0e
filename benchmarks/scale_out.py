"""Scale-out, measured side by side in one run: Ray ingest throughput, and query latency from an object store.

1. **ingest ladder** (``--documents`` generated documents, the embedded default unless ``--model``): one process
   with 1 torch thread, one process with the default threads (what a user runs without Ray), then
   ``lychee_memory.distributed`` with 1 and 2 local Ray actors (1 thread each). Prints tokens/s, the ratio to one
   process, and whether the 2-actor bank is byte-identical to the 1-thread single-process bank (keys and bytes of
   every block and gate index item). Ray's start-up and each actor's model load are inside the wall time.
2. **shared-store latency**: the example guide in a local store and in an S3 bucket (a moto server on
   127.0.0.1 started here) with SQLite manifests (``--manifests URL`` for PostgreSQL instead). For each: a cold
   query (a new store handle, an empty local cache, the bank opened and asked), then warm queries on the same handle
   (blocks served by the bounded local cache); and the time to read every block alone, cold and warm.

    python benchmarks/scale_out.py                                  # the issue's run (about 10 minutes on 2 cores)
    python benchmarks/scale_out.py --model tiny-random-llama --documents 20 --repeats 2   # a smoke run

Results go to ``--json`` (default benchmarks/plots/scale_out.json) and a plot to ``--plot``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import logging  # noqa: E402

from lychee_memory import Document, LycheeMemory, MemoryStore  # noqa: E402
from lychee_memory.eval.haystack import generated_paragraphs  # noqa: E402

GUIDE = ROOT / "examples" / "documents" / "arvel_harbour.txt"
QUESTION, EXPECTED = "What is the access code for the east pier storage shed?", "58213"


def corpus(count: int, paragraphs: int) -> list[Document]:
    """``count`` documents of ``paragraphs`` generated paragraphs each (no dataset needed)."""
    pool = generated_paragraphs(count * paragraphs, seed=3)
    return [
        Document(
            text="\n\n".join(text for _, text in pool[index * paragraphs : (index + 1) * paragraphs]),
            id=f"document-{index:03d}",
            metadata={"topic": pool[index * paragraphs][0]},
        )
        for index in range(count)
    ]


def stored_items(store: MemoryStore, bank: str) -> dict[str, bytes | None]:
    items: dict[str, bytes | None] = {}
    for _, _, entry in store.bank_manifest(bank).entries():
        items["block:" + entry.key] = store.objects.block(entry.key)
        if entry.index_key:
            items["index:" + entry.index_key] = store.objects.items.get("index:" + entry.index_key)
    return items


def ingest_ladder(engine: LycheeMemory, documents: list[Document], workspace: Path, actor_counts: list[int]) -> dict:
    from lychee_memory.distributed import RaySettings, ingest_with_ray

    tokens = sum(len(chunk.token_ids) for chunk in engine.chunk(documents))
    runs, threads = [], torch.get_num_threads()
    for position, (label, thread_count) in enumerate(
        (("one process, 1 thread", 1), (f"one process, {threads} thread(s)", threads))
    ):
        torch.set_num_threads(thread_count)
        started = time.perf_counter()
        with MemoryStore(workspace / f"single-{position}") as store:  # single-0: the byte-for-byte reference
            engine.ingest(documents, store=store, bank="corpus")
        seconds = time.perf_counter() - started
        runs.append({"run": label, "seconds": seconds, "tokens_per_second": tokens / seconds})
        print(f"{label}: {seconds:.1f}s, {tokens / seconds:.0f} tokens/s", flush=True)
    torch.set_num_threads(threads)
    identical = None
    for actors in actor_counts:
        import ray

        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        started = time.perf_counter()
        report = ingest_with_ray(
            engine,
            documents,
            store=workspace / f"ray-{actors}",
            bank="corpus",
            ray=RaySettings(workers=actors, threads_per_worker=1),
            show_progress=False,
        )
        seconds = time.perf_counter() - started
        ray.shutdown()
        label = f"Ray, {actors} actor(s) x 1 thread"
        runs.append(
            {"run": label, "seconds": seconds, "tokens_per_second": tokens / seconds, "compressed": report.compressed}
        )
        print(f"{label}: {seconds:.1f}s, {tokens / seconds:.0f} tokens/s", flush=True)
        if actors == max(actor_counts):
            with MemoryStore(workspace / "single-0") as single, MemoryStore(workspace / f"ray-{actors}") as spread:
                reference, written = stored_items(single, "corpus"), stored_items(spread, "corpus")
                identical = reference.keys() == written.keys() and all(
                    written[key] == reference[key] for key in reference
                )
    base = runs[0]["seconds"]
    for run in runs:
        run["speedup_vs_one_thread"] = base / run["seconds"]
    return {"documents": len(documents), "tokens": tokens, "runs": runs, "byte_identical": identical}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_moto() -> tuple[object, str]:
    from moto.server import ThreadedMotoServer

    for name, value in {
        "AWS_ACCESS_KEY_ID": "benchmark",
        "AWS_SECRET_ACCESS_KEY": "benchmark",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        os.environ.setdefault(name, value)
    port = free_port()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per S3 request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    import boto3

    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="lychee-benchmark")
    return server, endpoint


def timed_query(engine: LycheeMemory, location: str, repeats: int) -> dict:
    """Cold: a new handle and an empty cache; warm: the same handle again. Times of a whole ask and of reading all
    blocks, medians over ``repeats`` cold handles."""
    cold_asks, warm_asks, cold_reads, warm_reads, correct = [], [], [], [], 0
    for repeat in range(repeats):
        cache = tempfile.mkdtemp(prefix="lychee-cache-")
        where = location + (f"&cache={cache}" if "?" in location else "")
        started = time.perf_counter()
        store = MemoryStore(where, create=False)
        bank = engine.open_bank("guide", store)
        for index in range(len(bank)):
            bank.block(index)
        cold_reads.append(time.perf_counter() - started)
        started = time.perf_counter()
        for index in range(len(bank)):
            bank.block(index)
        warm_reads.append(time.perf_counter() - started)
        store.close()
        store = MemoryStore(where, create=False)  # a fresh handle and cache for the cold ask
        if "?" in location:
            import shutil

            shutil.rmtree(cache, ignore_errors=True)
        started = time.perf_counter()
        answer = engine.ask(QUESTION, engine.open_bank("guide", store))
        cold_asks.append(time.perf_counter() - started)
        correct += EXPECTED in answer.text
        started = time.perf_counter()
        answer = engine.ask(QUESTION, engine.open_bank("guide", store))
        warm_asks.append(time.perf_counter() - started)
        correct += EXPECTED in answer.text
        store.close()
        print(f"  {location[:40]}: repeat {repeat + 1}/{repeats} done", flush=True)
    return {
        "cold_ask_seconds": statistics.median(cold_asks),
        "warm_ask_seconds": statistics.median(warm_asks),
        "cold_read_all_blocks_seconds": statistics.median(cold_reads),
        "warm_read_all_blocks_seconds": statistics.median(warm_reads),
        "answers_right": f"{correct}/{2 * repeats}",
    }


def store_latency(engine: LycheeMemory, workspace: Path, manifests: str | None, repeats: int) -> dict:
    server, endpoint = start_moto()
    try:
        document = Document(text=GUIDE.read_text(encoding="utf-8"), id="guide")
        local = str(workspace / "local-store")
        manifest_url = manifests or f"sqlite:///{workspace / 'manifests.sqlite'}"
        remote = f"s3://lychee-benchmark/guide-store?manifests={manifest_url}&endpoint_url={endpoint}"
        for location in (local, remote):
            with MemoryStore(location) as store:
                engine.ingest([document], store=store, bank="guide")
        blocks = len(engine.open_bank("guide", MemoryStore(local)))
        results = {"blocks": blocks, "manifests": "postgresql" if manifests else "sqlite"}
        results["local"] = timed_query(engine, local, repeats)
        results["s3"] = timed_query(engine, remote, repeats)
        for name in ("local", "s3"):
            row = results[name]
            print(
                f"{name}: ask cold {row['cold_ask_seconds']:.2f}s warm {row['warm_ask_seconds']:.2f}s | read "
                f"{blocks} blocks cold {row['cold_read_all_blocks_seconds'] * 1000:.0f} ms warm "
                f"{row['warm_read_all_blocks_seconds'] * 1000:.0f} ms | right {row['answers_right']}",
                flush=True,
            )
        return results
    finally:
        server.stop()


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    runs = results["ingest"]["runs"]
    left.barh([run["run"] for run in runs], [run["tokens_per_second"] for run in runs], color="#c0392b")
    left.set_xlabel("tokens per second (higher is better)")
    left.set_title(f"ingest of {results['ingest']['documents']} documents, {results['ingest']['tokens']} tokens")
    left.invert_yaxis()
    latency = results["latency"]
    labels = ["read all blocks", "ask"]
    for offset, (name, colour) in enumerate((("local", "#7f8c8d"), ("s3", "#2980b9"))):
        row = latency[name]
        cold = [row["cold_read_all_blocks_seconds"], row["cold_ask_seconds"]]
        warm = [row["warm_read_all_blocks_seconds"], row["warm_ask_seconds"]]
        positions = [index * 3 + offset for index in range(2)]
        right.bar([p - 0.2 for p in positions], cold, width=0.4, color=colour, alpha=0.55, label=f"{name} cold")
        right.bar([p + 0.2 for p in positions], warm, width=0.4, color=colour, label=f"{name} warm")
    right.set_xticks([0.5, 3.5], labels)
    right.set_yscale("log")
    right.set_ylabel("seconds (log)")
    right.set_title("local store vs S3 (moto) + database manifests")
    right.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model spec (default: the embedded default)")
    parser.add_argument("--documents", type=int, default=20)
    parser.add_argument("--paragraphs", type=int, default=12, help="generated paragraphs per document")
    parser.add_argument("--actors", default="1,2", help="Ray actor counts to measure")
    parser.add_argument("--repeats", type=int, default=3, help="cold handles per backend in the latency part")
    parser.add_argument("--manifests", default=None, help="a postgresql:// URL instead of a SQLite file")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "plots" / "scale_out.json")
    parser.add_argument("--plot", type=Path, default=ROOT / "benchmarks" / "plots" / "scale_out.png")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    engine = LycheeMemory.from_pretrained(args.model, show_progress=False)
    with tempfile.TemporaryDirectory(prefix="lychee-scale-out-") as directory:
        workspace = Path(directory)
        results = {
            "model": engine.loaded.resolved.spec,
            "cpus": os.cpu_count(),
            "ingest": ingest_ladder(
                engine,
                corpus(args.documents, args.paragraphs),
                workspace,
                [int(count) for count in args.actors.split(",")],
            ),
            "latency": store_latency(engine, workspace, args.manifests, args.repeats),
        }
    print(f"byte-identical bank from Ray: {results['ingest']['byte_identical']}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    plot(results, args.plot)
    print(f"wrote {args.json} and {args.plot}")


if __name__ == "__main__":
    main()
