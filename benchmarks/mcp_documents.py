"""How soon ``lychee mcp`` answers ``initialize``, what the first tool call costs, and what converting a document costs.

1. **initialize**: spawn ``lychee mcp`` (stdio) and time the ``initialize`` response from the spawn, next to the
   time of ``import lychee_memory.cli`` alone (the floor: the package imports torch and transformers), then the
   first ``remember`` (the model loads there, not before) and a second one. Wall and CPU seconds both: on a shared
   machine the CPU seconds are what a quiet one would take as wall time (the work is one thread).
2. **conversion**: PDF, DOCX, PPTX and HTML files made here (``tests/document_files.py``) and a 40-page PDF,
   converted warm (the converters imported once first); median of ``--repeats`` runs per file.

    python benchmarks/mcp_documents.py                       # the embedded default, 3 spawns
    python benchmarks/mcp_documents.py --model tiny-random-llama --spawns 1   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.document_files import FILLER, make_all  # noqa: E402

CLIENT = {"name": "benchmark", "version": "1"}


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a running process has used so far: unlike wall time, a busy machine leaves it be."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def import_seconds() -> dict[str, float]:
    """Wall and CPU seconds of ``import lychee_memory.cli`` in a fresh interpreter."""
    started = time.perf_counter()
    before = os.times()
    subprocess.run([sys.executable, "-c", "import lychee_memory.cli"], check=True)
    after = os.times()
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return {"wall": time.perf_counter() - started, "cpu": cpu}


def spawn_once(model: str, store: Path) -> dict[str, float]:
    """Seconds from spawn to the initialize response, then each of two remember calls."""
    command = [sys.executable, "-m", "lychee_memory.cli", "mcp", "--store", str(store), "--model", model]
    started = time.perf_counter()
    process = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )

    def call(request_id: int, method: str, params: dict[str, Any]) -> dict[str, Any]:
        process.stdin.write(json.dumps({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}) + "\n")
        process.stdin.flush()
        while True:
            message = json.loads(process.stdout.readline())
            if message.get("id") == request_id:
                return message

    try:
        call(1, "initialize", {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": CLIENT})
        result = {"initialize": time.perf_counter() - started, "initialize_cpu": cpu_seconds(process.pid)}
        process.stdin.write(json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}) + "\n")
        for number, name in ((2, "first_remember"), (3, "second_remember")):
            before, cpu_before = time.perf_counter(), cpu_seconds(process.pid)
            text = f"Fact {number}: the access code of shed {number} is {58210 + number}."
            reply = call(number, "tools/call", {"name": "remember", "arguments": {"text": text}})
            assert not reply["result"]["isError"], reply
            result[name] = time.perf_counter() - before
            result[f"{name}_cpu"] = cpu_seconds(process.pid) - cpu_before
    finally:
        process.stdin.close()
        process.wait(120)
    return result


def conversion(repeats: int, directory: Path) -> dict[str, dict[str, float]]:
    from reportlab.pdfgen import canvas

    from lychee_memory.converters import convert_file

    files = make_all(directory)
    long_pdf = directory / "long.pdf"
    pdf = canvas.Canvas(str(long_pdf))
    for page in range(40):
        for row in range(40):
            pdf.drawString(40, 780 - 18 * row, f"{page}.{row} {FILLER}"[:95])
        pdf.showPage()
    pdf.save()
    files["pdf-40-pages"] = long_pdf
    results = {}
    for name, path in files.items():
        convert_file(path)  # warm: the converter's imports
        seconds, cpu = [], []
        for _ in range(repeats):
            started, cpu_started = time.perf_counter(), time.process_time()
            converted = convert_file(path)
            seconds.append(time.perf_counter() - started)
            cpu.append(time.process_time() - cpu_started)
        results[name] = {
            "median_seconds": round(statistics.median(seconds), 4),
            "median_cpu_seconds": round(statistics.median(cpu), 4),
            "bytes": path.stat().st_size,
            "characters": len(converted.text),
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--spawns", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory() as scratch:
        imports = [import_seconds() for _ in range(args.spawns)]
        spawns = [spawn_once(args.model, Path(scratch) / f"store-{n}") for n in range(args.spawns)]
        converted = conversion(args.repeats, Path(scratch))
    report = {
        "model": args.model,
        "load_average": os.getloadavg(),
        "cpus": os.cpu_count(),
        "import_lychee_memory_cli": [{key: round(value, 2) for key, value in item.items()} for item in imports],
        "spawns": [{key: round(value, 2) for key, value in spawn.items()} for spawn in spawns],
        "conversion": converted,
    }
    print(json.dumps(report, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
