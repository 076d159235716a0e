"""A separate process for tests/test_store.py: ingest into, rebuild, or hold open a bank, with the tiny model.

    python -m tests.store_worker STORE BANK FILE --id ID [--delay S] [--start-when PATH] [--block-dtype DTYPE]
    python -m tests.store_worker STORE BANK - --rebuild-with COMPRESSOR [--delay S]
    python -m tests.store_worker STORE BANK - --hold-until PATH

Ingest prints ``compressed N`` (flushed) after each compressed batch, before its block is written, and
``done`` when the manifest is written. ``--delay`` sleeps after each batch so a test can act mid-ingest;
``--start-when`` waits for a file so two workers start ingesting at the same moment. ``--rebuild-with``
opens the bank with an engine using another compressor and ``recompress=True`` (same progress lines).
``--hold-until`` opens the bank, prints ``opened``, waits for the file, then reads every block and prints
``read N`` or ``failed: MESSAGE``.
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
    parser.add_argument("file")
    parser.add_argument("--id", default=None)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--start-when", type=Path, default=None)
    parser.add_argument("--rebuild-with", default=None)
    parser.add_argument("--hold-until", type=Path, default=None)
    parser.add_argument("--block-dtype", default=None, help="how new blocks are stored; default: the store's")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import torch

    from lychee_memory import Document, LycheeError, LycheeMemory, MemoryStore

    # As many threads as tests/conftest.py gives the test process: float results differ in their last bits with
    # the thread count, and the tests compare this process's blocks with theirs bit for bit.
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    options = {"compressor": args.rebuild_with} if args.rebuild_with else {}
    engine = LycheeMemory.from_pretrained(
        "tiny-random-llama", chunk_tokens=64, max_memory_tokens=12, max_answer_tokens=6, show_progress=False, **options
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
    store = MemoryStore(args.store, block_dtype=args.block_dtype) if args.block_dtype else MemoryStore(args.store)
    if args.hold_until is not None:
        bank = engine.open_bank(args.bank, store)
        print("opened", flush=True)
        while not args.hold_until.exists():
            time.sleep(0.02)
        try:
            read = sum(1 for _ in bank)
        except LycheeError as error:
            print(f"failed: {error}", flush=True)
        else:
            print(f"read {read}", flush=True)
        return
    if args.rebuild_with is not None:
        print("ready", flush=True)
        engine.open_bank(args.bank, store, recompress=True)
        print("done", flush=True)
        return
    document = Document.from_text(Path(args.file).read_text(encoding="utf-8"), id=args.id)
    print("ready", flush=True)
    while args.start_when is not None and not args.start_when.exists():
        time.sleep(0.02)
    engine.ingest([document], store=store, bank=args.bank)
    print("done", flush=True)


if __name__ == "__main__":
    main()
