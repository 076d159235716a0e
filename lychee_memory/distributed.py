"""Distributed ingest on Ray: many workers compress blocks into one shared store; one writer commits the bank.

The driver reads and chunks the documents and plans the work exactly as a single-process ingest does
(``store.writing``): every chunk is named by its content key, chunks already stored are skipped, and the rest are
cut into the engine's compression batches. Ray Data then maps those batches over an actor pool
(``map_batches`` with a callable class): each actor loads one engine and one store handle once, compresses a batch
and writes its blocks straight to the store, and returns only their keys and sizes. When every batch is back,
the driver commits the manifest, once. So:

- the bank is the one a single process would build: same keys, same batches, the same bytes (given the same
  model, dtype, device kind and threads per process);
- a crashed or killed actor is restarted by Ray and its batch retried; a retried batch whose blocks another
  attempt already wrote is not compressed again;
- a killed driver leaves written blocks and no manifest: a rerun plans again, reuses every stored block, and
  compresses only the rest (gc, which refuses to run while the driver holds the store's writer lease, may
  remove them only after the driver died).

Ray is optional (``pip install 'lychee-memory[ray]'``); without it nothing here is imported.
"""

from __future__ import annotations

import os
import pickle
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from .documents import Document, DocumentInput, load_documents
from .errors import ConfigurationError, LycheeError
from .progress import progress_bar
from .store import IngestReport, MemoryStore
from .store.writing import WrittenBlock, assemble_documents, plan_blocks, write_batch

# Environment a worker needs to see the driver's world: the model cache, object-store credentials and endpoints.
_FORWARDED_ENVIRONMENT = ("LYCHEE_", "AWS_", "HF_", "TRANSFORMERS_", "GOOGLE_APPLICATION_CREDENTIALS", "AZURE_")


@dataclass(frozen=True)
class RaySettings:
    """Where and how wide to run: a Ray address (None or "local": start Ray on this machine), the actor count, and
    each actor's share of a node. ``cpus_per_worker`` None: 1 with GPUs, else a fraction that leaves the driver a
    core (actors that claim every CPU deadlock Ray Data on a small machine). ``threads_per_worker``: torch threads
    in each actor (results can differ in their last bits with the thread count, so keep it fixed)."""

    address: str | None = None
    workers: int = 2
    cpus_per_worker: float | None = None
    gpus_per_worker: float = 0.0
    threads_per_worker: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1:
            raise ConfigurationError(f"workers must be a positive number of actors, got {self.workers!r}")
        if self.cpus_per_worker is not None and not self.cpus_per_worker > 0:
            raise ConfigurationError(f"cpus_per_worker must be positive, got {self.cpus_per_worker!r}")
        if not self.gpus_per_worker >= 0:
            raise ConfigurationError(f"gpus_per_worker must be zero or positive, got {self.gpus_per_worker!r}")
        if isinstance(self.threads_per_worker, bool) or self.threads_per_worker < 1:
            raise ConfigurationError(f"threads_per_worker must be a positive integer, got {self.threads_per_worker!r}")


class BlockWriter:
    """A Ray Data actor: one engine and one store handle, loaded once; compresses and writes batches of chunks."""

    def __init__(self, settings: dict[str, Any], location: str, block_dtype: str, fingerprint: str, threads: int):
        torch.set_num_threads(threads)
        from .config import EngineConfig
        from .engine import LycheeMemory

        self.engine = LycheeMemory.from_pretrained(config=EngineConfig.from_recorded(settings))
        self.recipe = self.engine.block_recipe()
        if self.recipe.identity.model_fingerprint != fingerprint:
            raise LycheeError(
                "a Ray worker loaded a different model than the driver (its checkpoint files differ); every node "
                "must see the same model files"
            )
        self.store = MemoryStore(location, block_dtype=block_dtype, create=False)  # type: ignore[arg-type]

    def __call__(self, rows: dict[str, Any]) -> dict[str, Any]:
        import numpy

        results = []
        for work in rows["work"]:
            written = write_batch(self.store.objects, pickle.loads(work), self.recipe, skip_stored=True)
            results.append(pickle.dumps(written))
        return {"batch": rows["batch"], "written": numpy.array(results, dtype=object)}


def ingest_with_ray(
    engine: Any,
    documents: DocumentInput | Iterable[DocumentInput],
    *,
    store: MemoryStore | str | os.PathLike[str],
    bank: str,
    ray: RaySettings | None = None,
    show_progress: bool = True,
) -> IngestReport:
    """Add ``documents`` to ``bank`` of ``store``, compressing on a pool of Ray actors; returns the ingest report.

    ``engine`` (a LycheeMemory) chunks and plans on the driver; each actor loads the same engine from its recorded
    settings. ``store`` must be reachable by every worker under the same location (a local directory for a Ray
    on this machine, an object store with a manifest database for a cluster).
    """
    settings = ray or RaySettings()
    try:
        import ray as ray_module
        import ray.data
    except ImportError:
        raise ConfigurationError("distributed ingest needs Ray: pip install 'lychee-memory[ray]'") from None
    target = store if isinstance(store, MemoryStore) else MemoryStore(store)
    recipe = engine.block_recipe()
    started = time.perf_counter()
    docs: list[Document] = load_documents(documents)
    with target.writing_blocks():  # from before the first block until the manifest names them: gc stays out
        target.check_ingest_target(bank, recipe)
        plan = plan_blocks(target.objects, docs, recipe)
        written: list[WrittenBlock] = []
        if plan.batches:
            _start_ray(ray_module, settings)
            written = _run_batches(ray_module, ray.data, plan.batches, engine, target, recipe, settings, show_progress)
        stored = assemble_documents(plan, written, target.block_dtype)
        counts = (
            len(plan.chunks),
            sum(block.compressed for block in written),
            len(plan.known) + sum(not block.compressed for block in written),
            sum(block.written_bytes for block in written),
        )
        target.commit_documents(bank, stored, recipe, counts, started)
    assert target.last_ingest is not None
    return target.last_ingest


def _worker_location(store: MemoryStore) -> str:
    """The store's location as every worker must open it: a local directory made absolute (a worker's working
    directory is not the driver's), an object-store URL as given."""
    if store.where.remote or "?" in store.where.text:
        return store.where.text
    return str(store.path.expanduser().resolve())


def _start_ray(ray_module: Any, settings: RaySettings) -> None:
    if ray_module.is_initialized():
        return
    environment = {
        name: value for name, value in os.environ.items() if name.startswith(_FORWARDED_ENVIRONMENT) and value
    }
    options: dict[str, Any] = {
        "runtime_env": {"env_vars": environment},
        "include_dashboard": False,
        "log_to_driver": False,
    }
    if settings.address not in (None, "local"):
        options["address"] = settings.address
    else:
        options["num_cpus"] = os.cpu_count() or 1
    ray_module.init(**options)


def _run_batches(
    ray_module: Any,
    ray_data: Any,
    batches: list[list[Any]],
    engine: Any,
    store: MemoryStore,
    recipe: Any,
    settings: RaySettings,
    show_progress: bool,
) -> list[WrittenBlock]:
    """Map the planned batches over the actor pool; every block the actors wrote, in batch order."""
    context = ray_data.DataContext.get_current()
    context.enable_progress_bars = False  # one bar, the driver's, counts chunks
    context.execution_options.preserve_order = True
    cpus = settings.cpus_per_worker
    if cpus is None:
        available = float(ray_module.cluster_resources().get("CPU", 1.0))
        cpus = 1.0 if settings.gpus_per_worker > 0 else max(0.1, min(1.0, (available - 0.5) / settings.workers))
    rows = [{"batch": position, "work": pickle.dumps(batch)} for position, batch in enumerate(batches)]
    dataset = ray_data.from_items(rows, override_num_blocks=len(rows)).map_batches(
        BlockWriter,
        fn_constructor_kwargs={
            "settings": recipe.settings,
            "location": _worker_location(store),
            "block_dtype": store.block_dtype,
            "fingerprint": recipe.identity.model_fingerprint,
            "threads": settings.threads_per_worker,
        },
        batch_size=1,
        compute=ray_data.ActorPoolStrategy(size=settings.workers),
        num_cpus=cpus,
        num_gpus=settings.gpus_per_worker or None,
    )
    by_batch: dict[int, list[WrittenBlock]] = {}
    total = sum(len(batch) for batch in batches)
    with progress_bar(total, f"compressing on {settings.workers} Ray worker(s)", show_progress) as bar:
        for row in dataset.iter_rows():
            blocks = pickle.loads(row["written"])
            by_batch[int(row["batch"])] = blocks
            bar.update(len(blocks))
    missing = [position for position in range(len(batches)) if position not in by_batch]
    if missing:
        raise LycheeError(f"{len(missing)} batch(es) never came back from the Ray workers; run the ingest again")
    return [block for position in range(len(batches)) for block in by_batch[position]]
