"""Documents: the text the engine reads, with a stable id and metadata, loaded from strings or files.

A ``str`` is document text, a ``pathlib.Path`` (or any os.PathLike) is a file to read, a directory
expands to the text files below it. Every failure is a DocumentError naming the document.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from .errors import DocumentError

TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".rst", ".text")


@dataclass(frozen=True)
class Document:
    """One document: its full text, a stable id and free-form metadata."""

    text: str
    id: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def content_id(text: str) -> str:
        """Stable id derived from the text, so the same text gets the same id in every session."""
        return "doc-" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]

    @classmethod
    def from_text(cls, text: str, id: str | None = None, metadata: Mapping[str, Any] | None = None) -> Document:
        if not isinstance(text, str):
            raise DocumentError(f"document text must be a string, got {type(text).__name__}")
        label = id or "text document"
        if not text.strip():
            raise DocumentError(f"{label} is empty: there is nothing to read")
        return cls(text=text, id=id or cls.content_id(text), metadata=dict(metadata or {}))

    @classmethod
    def from_path(cls, path: str | os.PathLike[str], metadata: Mapping[str, Any] | None = None) -> Document:
        path = Path(path)
        if not path.exists():
            raise DocumentError(f"document {str(path)!r} does not exist")
        if not path.is_file():
            raise DocumentError(f"document {str(path)!r} is not a regular file")
        try:
            raw = path.read_bytes()
        except OSError as error:
            raise DocumentError(f"document {str(path)!r} cannot be read: {error.strerror or error}") from None
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as error:
            raise DocumentError(
                f"document {str(path)!r} is not UTF-8 text (invalid byte 0x{raw[error.start]:02x} at offset "
                f"{error.start}); convert it to UTF-8 first"
            ) from None
        if not text.strip():
            raise DocumentError(f"document {str(path)!r} is empty: there is nothing to read")
        meta = {"source": str(path), "file_name": path.name}
        meta.update(metadata or {})
        return cls(text=text, id=str(path), metadata=meta)


DocumentInput = Union[str, "os.PathLike[str]", Document, Mapping[str, Any]]


def _expand(item: os.PathLike[str]) -> list[Path]:
    path = Path(item)
    if path.is_dir():
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES and not p.name.startswith(".")
        )
        if not files:
            raise DocumentError(f"directory {str(path)!r} holds no text files ({', '.join(TEXT_SUFFIXES)})")
        return files
    return [path]


def load_documents(items: DocumentInput | Iterable[DocumentInput]) -> list[Document]:
    """Normalise strings, paths, mappings and Documents into a list of Documents (order kept).

    Raises DocumentError when there are no documents, one is empty or unreadable, or two share an id.
    """
    if isinstance(items, (str, os.PathLike, Document, Mapping)):
        items = [items]
    documents: list[Document] = []
    for item in items:
        if isinstance(item, Document):
            if not item.text.strip():
                raise DocumentError(f"document {item.id!r} is empty: there is nothing to read")
            documents.append(item)
        elif isinstance(item, os.PathLike):
            documents.extend(Document.from_path(path) for path in _expand(item))
        elif isinstance(item, str):
            documents.append(Document.from_text(item))
        elif isinstance(item, Mapping):
            if "text" not in item:
                raise DocumentError("a document mapping needs a 'text' key")
            documents.append(Document.from_text(item["text"], id=item.get("id"), metadata=item.get("metadata")))
        else:
            raise DocumentError(
                f"cannot read a document from {type(item).__name__}: pass text (str), a path (pathlib.Path), "
                "a mapping with 'text', or a Document"
            )
    if not documents:
        raise DocumentError("no documents given: pass at least one text or file")
    seen: set[str] = set()
    for document in documents:
        if document.id in seen:
            raise DocumentError(f"two documents share the id {document.id!r}; give each document its own id")
        seen.add(document.id)
    return documents
