"""Every error the library raises on purpose: one class per kind of bad input, all under LycheeError.

The CLI prints the message of any LycheeError and exits non-zero without a traceback, so each message
says what was wrong and what to do about it.
"""

from __future__ import annotations


class LycheeError(Exception):
    """Base class of every error lychee-memory raises deliberately."""


class ConfigurationError(LycheeError, ValueError):
    """A configuration value is invalid or inconsistent with the loaded model."""


class ModelNotFoundError(LycheeError, FileNotFoundError):
    """A model spec could not be resolved to local weights; the message lists what was tried."""


class UnsupportedModelError(LycheeError, ValueError):
    """The model loaded, but its architecture cannot run the requested component."""


class DocumentError(LycheeError, ValueError):
    """A document is missing, unreadable, not UTF-8, or empty."""


class UnconvertibleDocumentError(DocumentError):
    """A file's converter (PDF, DOCX, PPTX, HTML) could not read it, or it held no text; names the file. In a batch
    (``load_documents(..., skipped=[])``, ``lychee ingest``, the server's uploads) the other files still ingest."""


class FilterError(LycheeError, ValueError):
    """A metadata filter is malformed (unknown operator, wrong value type)."""


class EmptyQuestionError(LycheeError, ValueError):
    """The question is empty or only whitespace."""


class ContextTooLongError(LycheeError, ValueError):
    """A prompt (question, memory, chunk or full document) does not fit the model's context window."""


class StoreError(LycheeError):
    """The persistent store could not complete an operation; the store is left usable."""


class BankNotFoundError(StoreError, KeyError):
    """No bank with that name exists in the store."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else "bank not found"


class CorruptBlockError(StoreError):
    """A stored block is missing or fails its checksum; names the bank and block."""


class BankMismatchError(StoreError):
    """A bank was built with another model or compressor than the engine asking for it."""


class StoreFullError(StoreError):
    """The disk or the store's size limit is full; nothing already stored was changed."""


class NonFiniteScalesError(StoreError):
    """A block's keys or values give non-finite quantisation scales (inf or NaN in its KV, or a range beyond
    float16): a quantised codec cannot store it. A stored block with such scales reads as a CorruptBlockError."""


class CorruptDocumentError(StoreError):
    """A document's stored text is missing or fails its checksum; names the bank and document."""


class DocumentNotFoundError(LycheeError, KeyError):
    """A bank holds no document with the given id."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else "document not found"
