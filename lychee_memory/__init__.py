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
    DocumentError,
    EmptyQuestionError,
    LycheeError,
    ModelNotFoundError,
    StoreError,
    StoreFullError,
    UnsupportedModelError,
)

__version__ = "0.1.0"

__all__ = [
    "Answer",
    "AnswerStream",
    "BankMismatchError",
    "BankNotFoundError",
    "ConfigurationError",
    "ContextTooLongError",
    "CorruptBlockError",
    "Document",
    "DocumentError",
    "EmptyQuestionError",
    "EngineConfig",
    "GateScore",
    "LycheeError",
    "LycheeMemory",
    "MemoryBank",
    "MemoryBlock",
    "ModelNotFoundError",
    "SelectedBlock",
    "SourceSpan",
    "StoreError",
    "StoreFullError",
    "UnsupportedModelError",
]
