"""Conversions between LangChain and lychee: LangChain documents in, gated blocks out as documents.

A block comes back as a LangChain ``Document`` whose metadata carries the source document's metadata and
``score`` (gate score), ``block`` (block index in its bank), ``doc`` (source document id), ``start`` and
``end`` (character span in the source document), ``fallback`` (read although nothing passed the gate),
``selected`` (False for a block added only to reach the ``k`` asked for: the best-scoring block the gate did
not read) and ``bank`` (the name of the block's bank, None for an unnamed one).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from langchain_core.documents import Document as LangChainDocument

from lychee_memory import Document, DocumentError, LycheeMemory, MemoryBank, MemoryStore, SelectedBlock
from lychee_memory.documents import load_documents

from ..banks import prepare_bank
from ..engines import call_engine, resolve_engine

LangChainDocumentInput = LangChainDocument | Document | str | os.PathLike[str]
"""A LangChain Document, a lychee Document, a text, or a path to a text file."""


def to_lychee_documents(
    documents: Iterable[LangChainDocumentInput] | LangChainDocumentInput,
) -> list[Document]:
    """LangChain documents (id, text and metadata kept) and lychee inputs as lychee Documents.

    A LangChain document without an id gets one from its text; exact repeats (a chunk two retrievers
    both returned) are read once.
    """
    if isinstance(documents, (LangChainDocument, Document, str, os.PathLike)):
        documents = [documents]
    if not isinstance(documents, Iterable) or isinstance(documents, (bytes, dict)):
        raise TypeError(
            f"documents must be a list of LangChain Documents, texts or paths, got {type(documents).__name__}"
        )
    converted: list[Document] = []
    seen: set[tuple[str, str]] = set()
    for item in documents:
        if isinstance(item, LangChainDocument):
            found = [Document.from_text(item.page_content, id=item.id or None, metadata=dict(item.metadata))]
        elif isinstance(item, (Document, str, os.PathLike)):
            found = load_documents([item])
        else:
            raise TypeError(
                f"cannot read a document from {type(item).__name__}: pass LangChain Documents, "
                "lychee Documents, texts (str) or paths"
            )
        for document in found:
            if (document.id, document.text) not in seen:
                seen.add((document.id, document.text))
                converted.append(document)
    if not converted:
        raise DocumentError("the documents list is empty: pass at least one document, or an existing bank")
    return converted


def block_to_document(block: SelectedBlock, bank: MemoryBank) -> LangChainDocument:
    """A gated block as a LangChain document with its score and where it comes from."""
    try:
        source_metadata: dict[str, Any] = dict(bank.document_of(block).metadata)
    except KeyError:
        source_metadata = {}
    metadata = {
        **source_metadata,
        "score": block.score,
        "block": block.index,
        "doc": block.document_id,
        "start": block.char_start,
        "end": block.char_end,
        "fallback": block.fallback,
        "selected": block.selected,
        "bank": block.bank,
    }
    return LangChainDocument(
        page_content=block.text, metadata=metadata, id=f"{block.document_id}#{block.char_start}-{block.char_end}"
    )


def bank_from_documents(
    documents: Iterable[LangChainDocumentInput],
    model: LycheeMemory | str | None,
    store: MemoryStore | str | os.PathLike[str] | None,
    bank: str | None,
    show_progress: bool | None,
) -> tuple[LycheeMemory, MemoryBank]:
    """The engine for ``model`` and a bank of ``documents`` compressed now (added to bank ``bank`` of
    ``store`` when named), for the adapters' ``from_documents``."""
    engine = resolve_engine(model)
    memory = call_engine(
        engine,
        lambda: prepare_bank(
            engine, to_lychee_documents(documents), store=store, bank=bank, show_progress=show_progress
        ),
    )
    return engine, memory
