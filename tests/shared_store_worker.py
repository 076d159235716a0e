"""A separate process for tests/test_shared_store.py that holds a bank open until it is killed (no model needed).

    python -m tests.shared_store_worker LOCATION BANK

Opens the store at LOCATION (any store path or URL), loads bank BANK lazily (which takes a reader lease on its
blocks), prints ``opened N`` (N: its blocks) and sleeps until killed.
"""

from __future__ import annotations

import sys
import time


def main() -> None:
    location, name = sys.argv[1], sys.argv[2]
    from lychee_memory import MemoryStore

    store = MemoryStore(location, create=False)
    bank = store.load_bank(name)
    print(f"opened {len(bank)}", flush=True)
    while True:
        time.sleep(60)


if __name__ == "__main__":
    main()
