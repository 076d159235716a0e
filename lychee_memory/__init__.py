"""lychee-memory: reason over documents far longer than any context window.

Each chunk is compressed once into a KV-cache block; a gate picks the blocks that matter given the
question and the evolving working memory; a reasoner reads only those to update memory and answer.

    from lychee_memory import LycheeMemory
    engine = LycheeMemory.from_pretrained("smollm2-135m")
    bank = engine.ingest([Path("report.txt")])
    print(engine.ask("What is the access code?", bank).text)

Every public name but the errors and ``__version__`` is imported on first use (PEP 562), so ``import lychee_memory``
and the ``lychee`` command line start without torch or transformers until something needs a model or tensors.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    BankMismatchError,
    BankNotFoundError,
    ConfigurationError,
    ContextTooLongError,
    CorruptBlockError,
    CorruptDocumentError,
    DocumentError,
    DocumentNotFoundError,
    EmptyQuestionError,
    FilterError,
    LycheeError,
    ModelNotFoundError,
    NonFiniteScalesError,
    StoreError,
    StoreFullError,
    UnsupportedModelError,
)

if TYPE_CHECKING:
    from .answer import Answer, AnswerStream, GateScore, SelectedBlock
    from .baselines import FullContext, MemAgent
    from .blocks import BankIdentity, MemoryBank, MemoryBlock, SourceSpan
    from .config import EngineConfig
    from .documents import Document
    from .engine import LycheeMemory
    from .excerpts import Excerpt
    from .filters import DocumentFilter
    from .store import (
        BankInfo,
        BlockRecipe,
        GcReport,
        IngestReport,
        MemoryStore,
        StoredBank,
        StoreProblem,
        StoreUsage,
        VerifyReport,
    )

__version__ = "0.2.0"

# Each lazily imported public name and the module that defines it.
_LAZY_NAMES = {
    "Answer": "answer",
    "AnswerStream": "answer",
    "GateScore": "answer",
    "SelectedBlock": "answer",
    "FullContext": "baselines",
    "MemAgent": "baselines",
    "BankIdentity": "blocks",
    "MemoryBank": "blocks",
    "MemoryBlock": "blocks",
    "SourceSpan": "blocks",
    "EngineConfig": "config",
    "Document": "documents",
    "LycheeMemory": "engine",
    "Excerpt": "excerpts",
    "DocumentFilter": "filters",
    "BankInfo": "store",
    "BlockRecipe": "store",
    "GcReport": "store",
    "IngestReport": "store",
    "MemoryStore": "store",
    "StoredBank": "store",
    "StoreProblem": "store",
    "StoreUsage": "store",
    "VerifyReport": "store",
}

__all__ = [
    "Answer",
    "AnswerStream",
    "BankIdentity",
    "BankInfo",
    "BankMismatchError",
    "BankNotFoundError",
    "BlockRecipe",
    "ConfigurationError",
    "ContextTooLongError",
    "CorruptBlockError",
    "CorruptDocumentError",
    "Document",
    "DocumentError",
    "DocumentFilter",
    "DocumentNotFoundError",
    "EmptyQuestionError",
    "EngineConfig",
    "Excerpt",
    "FilterError",
    "FullContext",
    "GateScore",
    "GcReport",
    "IngestReport",
    "LycheeError",
    "LycheeMemory",
    "MemAgent",
    "MemoryBank",
    "MemoryBlock",
    "MemoryStore",
    "ModelNotFoundError",
    "NonFiniteScalesError",
    "SelectedBlock",
    "SourceSpan",
    "StoreError",
    "StoreFullError",
    "StoreProblem",
    "StoreUsage",
    "StoredBank",
    "UnsupportedModelError",
    "VerifyReport",
]


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first use and keep it here, so later lookups cost nothing."""
    module = _LAZY_NAMES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The module's own names and every public name, imported or not yet."""
    return sorted(set(globals()) | set(__all__))
