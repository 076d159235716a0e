"""lychee-memory: reason over documents far longer than any context window.

Each chunk is compressed once into a KV-cache block; a gate picks the blocks that matter given the
question and the evolving working memory; a reasoner reads only those to update memory and answer.

    from lychee_memory import LycheeMemory
    engine = LycheeMemory.from_pretrained("smollm2-135m")
    bank = engine.ingest([Path("report.txt")])
    print(engine.ask("What is the access code?", bank).text)
"""

from .answer import Answer, AnswerStream, GateScore, SelectedBlock
from .baselines import FullContext, MemAgent
from .blocks import BankIdentity, MemoryBank, MemoryBlock, SourceSpan
from .config import EngineConfig
from .documents import Document
from .engine import LycheeMemory
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
