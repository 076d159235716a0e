"""Which engine an adapter runs, and running it: compound calls under the engine's lock, async calls off the loop.

An adapter takes ``model`` as a ``LycheeMemory`` (used as given), a model spec (loaded once per process
and shared, so two adapters on the default model do not load it twice) or None (the embedded default).
The engine serialises its own calls (``engine.lock``); an adapter holds that lock around a sequence of calls
that belong together, and the async adapters run the engine in a worker thread, leaving the event loop free.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import TypeVar

from lychee_memory import LycheeMemory
from lychee_memory.config import ModelSettings

ModelChoice = LycheeMemory | str | None
"""An engine, a model spec (``"smollm2-135m"``, a local dir, a .gguf file, ``"tiny-random-llama"``) or None."""

DEFAULT_MODEL = ModelSettings().spec

Result = TypeVar("Result")

_engines_by_spec: dict[str, LycheeMemory] = {}
_loading = threading.Lock()


def resolve_engine(model: ModelChoice = None) -> LycheeMemory:
    """The engine for ``model``: an engine as given, a spec loaded once per process, None = embedded default."""
    if isinstance(model, LycheeMemory):
        return model
    if model is None:
        model = DEFAULT_MODEL
    if not isinstance(model, str):
        raise TypeError(
            f"model must be a LycheeMemory engine or a model spec string such as {DEFAULT_MODEL!r}, "
            f"got {type(model).__name__}"
        )
    if not model.strip():
        raise ValueError(f"model spec is empty: pass a spec such as {DEFAULT_MODEL!r} or a LycheeMemory engine")
    with _loading:
        engine = _engines_by_spec.get(model)
        if engine is None:
            engine = _engines_by_spec[model] = LycheeMemory.from_pretrained(model, show_progress=False)
    return engine


def call_engine(engine: LycheeMemory, function: Callable[[], Result]) -> Result:
    """Run ``function`` (calls into ``engine`` that belong together) while holding the engine's lock."""
    with engine.lock:
        return function()


async def call_engine_async(engine: LycheeMemory, function: Callable[[], Result]) -> Result:
    """Run ``function`` in a worker thread so the event loop stays free; context variables follow it."""
    return await asyncio.to_thread(call_engine, engine, function)
