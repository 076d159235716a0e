"""Load test of ``lychee serve`` on loopback: concurrent clients on one bank, and queries while another bank ingests.

Starts a real server process (the embedded default unless ``--model``), ingests the example guide into bank
``guide`` through the API, then:

1. **clients ladder**: for 1, 4 and 16 concurrent clients, each sends ``--queries`` questions (the two facts of
   the guide, alternating) and checks every answer; prints p50/p95 latency, throughput, and throughput relative
   to one client (sequential).
2. **ingest isolation**: bank ``other`` ingests a larger job while one client keeps querying ``guide``; prints
   the query latency during the ingest against the idle p50, and checks the job was still running.
3. **retrieve ladder**: the same client counts calling ``/retrieve`` with k=3 (``--retrieve-queries`` each), right
   when the fact's block is among the three.
4. **the alternative**: MiniLM top-4 RAG (``lychee_memory.eval.rag``) in one process on the same document and
   questions, one at a time and 16 at a time, for scale (``--rag-questions 0`` skips it).

Everything runs on 127.0.0.1 and is bounded; results go to ``--json`` (default benchmarks/plots/server_load.json)
and a plot to ``--plot`` (default benchmarks/plots/server_load.png).

    python benchmarks/server_load.py                      # the issue's ladder: 1/4/16 clients x 20 queries
    python benchmarks/server_load.py --clients 1,4 --queries 4 --model tiny-random-llama   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "examples" / "documents" / "arvel_harbour.txt"
QUESTIONS = [
    ("What is the access code for the east pier storage shed?", "58213"),
    ("Who is the new head gardener at Kestrel Hall?", "Fenwick"),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(store: Path, port: int, model: str | None, extra: list[str]) -> subprocess.Popen:
    command = [sys.executable, "-m", "lychee_memory.cli", "serve", "--store", str(store), "--port", str(port)]
    command += ["--log-level", "warning", "--no-progress", *extra]
    if model:
        command += ["--model", model]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=sys.stderr)


def wait_ready(client: httpx.Client, process: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with status {process.returncode}")
        try:
            if client.get("/healthz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit("the server did not become ready")


def ingest(client: httpx.Client, bank: str, documents: list[dict], wait: bool = True) -> str:
    reply = client.post(f"/v1/banks/{bank}/documents", json={"documents": documents})
    reply.raise_for_status()
    job = reply.json()["job"]
    while wait:
        status = client.get(f"/v1/jobs/{job}").json()
        if status["status"] == "done":
            break
        if status["status"] == "failed":
            raise SystemExit(f"ingest into {bank} failed: {status['error']}")
        time.sleep(0.5)
    return job


def ask(client: httpx.Client, number: int) -> tuple[float, bool, str]:
    question, expected = QUESTIONS[number % len(QUESTIONS)]
    started = time.perf_counter()
    reply = client.post("/v1/banks/guide/query", json={"question": question}, timeout=600)
    seconds = time.perf_counter() - started
    if reply.status_code != 200:
        return seconds, False, f"HTTP {reply.status_code}: {reply.text[:200]}"
    answer = reply.json()["answer"]
    return seconds, expected in answer, answer


def retrieve(client: httpx.Client, number: int) -> tuple[float, bool, str]:
    """A retrieve with k=3: right when the fact's block is among the blocks returned."""
    question, expected = QUESTIONS[number % len(QUESTIONS)]
    started = time.perf_counter()
    reply = client.post("/v1/banks/guide/retrieve", json={"question": question, "k": 3}, timeout=600)
    seconds = time.perf_counter() - started
    if reply.status_code != 200:
        return seconds, False, f"HTTP {reply.status_code}: {reply.text[:200]}"
    blocks = reply.json()["blocks"]
    return seconds, len(blocks) == 3 and any(expected in block["text"] for block in blocks), str(len(blocks))


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def run_clients(base_url: str, clients: int, queries: int, call=ask) -> dict:
    latencies: list[float] = []
    wrong: list[str] = []
    guard = threading.Lock()

    def one_client(client_number: int) -> None:
        with httpx.Client(base_url=base_url, timeout=600) as client:
            for query in range(queries):
                seconds, right, answer = call(client, client_number + query)
                with guard:
                    latencies.append(seconds)
                    if not right:
                        wrong.append(answer)

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one_client, range(clients)))
    wall = time.perf_counter() - started
    return {
        "clients": clients,
        "queries": clients * queries,
        "errors_or_wrong": len(wrong),
        "wrong_examples": wrong[:3],
        "p50_s": round(statistics.median(latencies), 3),
        "p95_s": round(percentile(latencies, 0.95), 3),
        "wall_s": round(wall, 2),
        "throughput_qps": round(clients * queries / wall, 3),
    }


def other_documents(copies: int) -> list[dict]:
    """Distinct documents for the ingest job: the guide's paragraphs, renumbered per copy (nothing is reused)."""
    paragraphs = [p for p in GUIDE.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    return [
        {"id": f"copy-{n}", "text": "\n\n".join(f"[{n}.{i}] {p}" for i, p in enumerate(paragraphs))}
        for n in range(copies)
    ]


def ingest_isolation(base_url: str, copies: int, idle_p50: float) -> dict:
    with httpx.Client(base_url=base_url, timeout=600) as client:
        job = ingest(client, "other", other_documents(copies), wait=False)
        while client.get(f"/v1/jobs/{job}").json()["status"] == "queued":
            time.sleep(0.1)
        latencies, right, running_after = [], 0, 0
        number = 0
        while True:
            status = client.get(f"/v1/jobs/{job}").json()
            if status["status"] != "running":
                break
            seconds, ok, _ = ask(client, number)
            number += 1
            latencies.append(seconds)
            right += ok
            after = client.get(f"/v1/jobs/{job}").json()
            running_after += after["status"] == "running"
        final = client.get(f"/v1/jobs/{job}").json()
    return {
        "job_status": final["status"],
        "job_seconds": final.get("result", {}).get("seconds"),
        "job_chunks": final.get("result", {}).get("compressed"),
        "queries_during_ingest": len(latencies),
        "answered_while_still_running": running_after,
        "right": right,
        "p50_during_ingest_s": round(statistics.median(latencies), 3) if latencies else None,
        "idle_p50_s": idle_p50,
    }


def rag_reference(model: str | None, device: str, count: int, batch: int) -> dict:
    """What a user would run instead: MiniLM top-4 RAG in one process, on the same document and questions,
    one question at a time and ``batch`` at a time (no HTTP, so this is its best case)."""
    from lychee_memory import LycheeMemory
    from lychee_memory.eval.rag import RagBaseline

    engine = LycheeMemory.from_pretrained(model, show_progress=False, device=device)
    rag = RagBaseline(engine, show_progress=False)
    index = rag.build([GUIDE])
    rag.ask(QUESTIONS[0][0], index)  # warm-up
    questions = [QUESTIONS[number % len(QUESTIONS)] for number in range(count)]
    started = time.perf_counter()
    right = sum(expected in rag.ask(question, index).text for question, expected in questions)
    sequential = time.perf_counter() - started
    started = time.perf_counter()
    answers = []
    for start in range(0, count, batch):
        answers += rag.ask_many([question for question, _ in questions[start : start + batch]], index)
    batched = time.perf_counter() - started
    right_batched = sum(expected in answer.text for (_, expected), answer in zip(questions, answers))
    started = time.perf_counter()
    found = sum(
        any(expected in block.text for block in rag.retrieve(question, index)) for question, expected in questions
    )
    retrieve_seconds = (time.perf_counter() - started) / count
    return {
        "questions": count,
        "right_sequential": right,
        "right_batched": right_batched,
        "sequential_qps": round(count / sequential, 3),
        f"batched_{batch}_qps": round(count / batched, 3),
        "retrieve_seconds": round(retrieve_seconds, 4),
        "retrieve_found": found,
    }


def plot(results: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot", file=sys.stderr)
        return
    ladder = results["ladder"]
    clients = [row["clients"] for row in ladder]
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    left.plot(clients, [row["throughput_qps"] for row in ladder], marker="o", label="lychee serve")
    rag = results.get("rag_in_process")
    if rag:
        left.axhline(rag["sequential_qps"], color="grey", linestyle="--", label="RAG in-process, 1 at a time")
        left.axhline(rag["batched_16_qps"], color="grey", linestyle=":", label="RAG in-process, 16 at a time")
        left.legend(fontsize=8)
    left.set(xlabel="concurrent clients", ylabel="answers per second", title="Throughput on one bank", xscale="log")
    left.set_xticks(clients, [str(c) for c in clients])
    right.plot(clients, [row["p50_s"] for row in ladder], marker="o", label="p50")
    right.plot(clients, [row["p95_s"] for row in ladder], marker="s", label="p95")
    right.set(xlabel="concurrent clients", ylabel="seconds", title="Latency per question", xscale="log")
    right.set_xticks(clients, [str(c) for c in clients])
    right.legend()
    figure.suptitle(f"lychee serve on {results['model']} ({results['device']})", fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="model spec (default: the embedded default)")
    parser.add_argument("--clients", default="1,4,16", help="comma-separated concurrent client counts")
    parser.add_argument("--queries", type=int, default=20, help="questions per client")
    parser.add_argument("--retrieve-queries", type=int, default=10, help="retrieves (k=3) per client (0: skip)")
    parser.add_argument("--ingest-copies", type=int, default=6, help="documents in the isolation test's job")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--rag-questions", type=int, default=32, help="questions for the in-process RAG reference (0: skip)"
    )
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "plots" / "server_load.json")
    parser.add_argument("--plot", type=Path, default=ROOT / "benchmarks" / "plots" / "server_load.png")
    parser.add_argument("--replot", type=Path, default=None, help="only draw the plot of a results JSON")
    args = parser.parse_args()
    if args.replot is not None:
        plot(json.loads(args.replot.read_text(encoding="utf-8")), args.plot)
        return
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as directory:
        process = start_server(Path(directory) / "store", port, args.model, ["--device", args.device])
        try:
            with httpx.Client(base_url=base_url, timeout=600) as client:
                wait_ready(client, process)
                ingest(client, "guide", [{"id": "guide", "text": GUIDE.read_text(encoding="utf-8")}])
                bank = client.get("/v1/banks/guide").json()
                for number in range(2):  # warm-up
                    ask(client, number)
            ladder = []
            for clients in [int(c) for c in args.clients.split(",")]:
                row = run_clients(base_url, clients, args.queries)
                ladder.append(row)
                print(json.dumps(row), flush=True)
            for row in ladder:
                row["vs_one_client"] = round(row["throughput_qps"] / ladder[0]["throughput_qps"], 2)
            retrieve_ladder = []
            for clients in [int(c) for c in args.clients.split(",")] if args.retrieve_queries else []:
                row = run_clients(base_url, clients, args.retrieve_queries, retrieve)
                retrieve_ladder.append(row)
                print(json.dumps({"retrieve": row}), flush=True)
            for row in retrieve_ladder:
                row["vs_one_client"] = round(row["throughput_qps"] / retrieve_ladder[0]["throughput_qps"], 2)
            isolation = ingest_isolation(base_url, args.ingest_copies, ladder[0]["p50_s"])
            print(json.dumps(isolation), flush=True)
            with httpx.Client(base_url=base_url) as client:
                metrics = client.get("/metrics").text
            batches = [line for line in metrics.splitlines() if line.startswith("lychee_query_batch_size_")]
        finally:
            process.terminate()
            process.wait(60)
    rag = rag_reference(args.model, args.device, args.rag_questions, 16) if args.rag_questions else None
    if rag is not None:
        print(json.dumps({"rag_in_process": rag}), flush=True)
    results = {
        "model": args.model or "smollm2-135m (embedded default)",
        "device": args.device,
        "cpu_threads": os.cpu_count(),
        "bank": bank,
        "ladder": ladder,
        "retrieve_ladder": retrieve_ladder,
        "ingest_isolation": isolation,
        "batch_size_metric": batches,
        "rag_in_process": rag,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    plot(results, args.plot)
    print(f"\n{'clients':>8} {'queries':>8} {'wrong':>6} {'p50 s':>8} {'p95 s':>8} {'q/s':>8} {'x 1 client':>10}")
    for row in ladder:
        print(
            f"{row['clients']:>8} {row['queries']:>8} {row['errors_or_wrong']:>6} {row['p50_s']:>8} {row['p95_s']:>8} "
            f"{row['throughput_qps']:>8} {row['vs_one_client']:>10}"
        )
    for row in retrieve_ladder:
        print(
            f"retrieve k=3, {row['clients']:>2} clients: {row['queries']} calls, {row['errors_or_wrong']} without the "
            f"fact's block, p50 {row['p50_s']} s, {row['throughput_qps']} calls/s ({row['vs_one_client']}x)"
        )
    if rag is not None:
        print(
            f"in-process MiniLM RAG, same questions: {rag['sequential_qps']} q/s one at a time "
            f"({rag['right_sequential']}/{rag['questions']} right), {rag['batched_16_qps']} q/s 16 at a time"
        )
    print(
        f"during an ingest of bank 'other' ({isolation['job_chunks']} chunks): {isolation['queries_during_ingest']} "
        f"queries on 'guide', p50 {isolation['p50_during_ingest_s']} s vs idle {isolation['idle_p50_s']} s, "
        f"{isolation['right']} right"
    )


if __name__ == "__main__":
    main()
