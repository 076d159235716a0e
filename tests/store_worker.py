"""A separate process for tests/test_store.py: ingest one document into a store with the tiny model.

    python -m tests.store_worker STORE BANK FILE --id ID [--delay S] [--start-when PATH]

Prints ``compressed N`` (flushed) after each compressed batch, before its block is written, and ``done``
when the manifest is written. ``--delay`` sleeps after each batch so a test can kill the process
mid-ingest; ``--start-when`` waits for a file so two workers start ingesting at the same moment.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("store")
    parser.add_argument("bank")
    parser.add_argument("file", type=Path)
    parser.add_argument("--id", required=True)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--start-when", type=Path, default=None)
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import torch

    from lychee_memory import Document, LycheeMemory, MemoryStore

    torch.set_num_threads(1)
    engine = LycheeMemory.from_pretrained(
        "tiny-random-llama", chunk_tokens=64, max_memory_tokens=12, max_answer_tokens=6, show_progress=False
    )
    compress = engine.compressor.compress
    done = 0

    def compress_slowly(loaded, chunks):
        nonlocal done
        blocks = compress(loaded, chunks)
        done += len(chunks)
        print(f"compressed {done}", flush=True)
        time.sleep(args.delay)
        return blocks

    engine.compressor.compress = compress_slowly
    document = Document.from_text(args.file.read_text(encoding="utf-8"), id=args.id)
    store = MemoryStore(args.store)
    print("ready", flush=True)
    while args.start_when is not None and not args.start_when.exists():
        time.sleep(0.02)
    engine.ingest([document], store=store, bank=args.bank)
    print("done", flush=True)


if __name__ == "__main__":
    main()
