"""lychee-memory: reason over documents far longer than any context window.

Each chunk is compressed once into a KV-cache block; a gate picks the blocks that matter given the
question and the evolving working memory; a reasoner reads only those to update memory and answer.

    from lychee_memory import LycheeMemory
    engine = LycheeMemory.from_pretrained("smollm2-135m")
    bank = engine.ingest([Path("report.txt")])
    print(engine.ask("What is the access code?", bank).text)
"""

from .answer import Answer, AnswerStream, GateScore, SelectedBlock
from .blocks import MemoryBank, MemoryBlock, SourceSpan
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
    LycheeError,
    ModelNotFoundError,
    StoreError,
    StoreFullError,
    UnsupportedModelError,
)
from .store import BankInfo, GcReport, IngestReport, MemoryStore, StoreProblem, StoreUsage, VerifyReport

__version__ = "0.1.0"

__all__ = [
    "Answer",
    "AnswerStream",
    "BankInfo",
    "BankMismatchError",
    "BankNotFoundError",
    "ConfigurationError",
    "ContextTooLongError",
    "CorruptBlockError",
    "CorruptDocumentError",
    "Document",
    "DocumentError",
    "DocumentNotFoundError",
    "EmptyQuestionError",
    "EngineConfig",
    "GateScore",
    "GcReport",
    "IngestReport",
    "LycheeError",
    "LycheeMemory",
    "MemoryBank",
    "MemoryBlock",
    "MemoryStore",
    "ModelNotFoundError",
    "SelectedBlock",
    "SourceSpan",
    "StoreError",
    "StoreFullError",
    "StoreProblem",
    "StoreUsage",
    "UnsupportedModelError",
    "VerifyReport",
]
