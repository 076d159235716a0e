"""Documents: the text the engine reads, with a stable id and metadata, loaded from strings or files.

A ``str`` is document text, a ``pathlib.Path`` (or any os.PathLike) is a file to read, a directory
expands to the text files and documents below it. PDF, DOCX, PPTX and HTML files are converted to text first
(``converters.py``, the ``[documents]`` extra). Every failure is a DocumentError naming the document.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from .converters import CONVERTED_FORMATS, convert_bytes, convert_file, is_converted
from .errors import DocumentError, UnconvertibleDocumentError

TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".rst", ".text")
DOCUMENT_SUFFIXES = TEXT_SUFFIXES + tuple(CONVERTED_FORMATS)  # what a directory expands to


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
        """A file: UTF-8 text as it is, a PDF, DOCX, PPTX or HTML file converted (its pages or slides recorded)."""
        path = Path(path)
        if not path.exists():
            raise DocumentError(f"document {str(path)!r} does not exist")
        if not path.is_file():
            raise DocumentError(f"document {str(path)!r} is not a regular file")
        meta: dict[str, Any] = {"source": str(path), "file_name": path.name}
        if is_converted(path.name):
            converted = convert_file(path)
            text = converted.text
            meta.update(converted.metadata)
        else:
            try:
                raw = path.read_bytes()
            except OSError as error:
                raise DocumentError(f"document {str(path)!r} cannot be read: {error.strerror or error}") from None
            text = _utf8_text(raw, str(path))
        meta.update(metadata or {})
        return cls(text=text, id=str(path), metadata=meta)

    @classmethod
    def from_file_bytes(
        cls, data: bytes, file_name: str, id: str | None = None, metadata: Mapping[str, Any] | None = None
    ) -> Document:
        """An uploaded file's bytes: converted when its name says PDF, DOCX, PPTX or HTML, else read as UTF-8 text.

        The id defaults to the file name, so uploading a file again replaces it in its bank."""
        meta: dict[str, Any] = {"file_name": file_name}
        if is_converted(file_name):
            converted = convert_bytes(data, file_name)
            text = converted.text
            meta.update(converted.metadata)
        else:
            text = _utf8_text(data, file_name)
        meta.update(metadata or {})
        return cls(text=text, id=id or file_name, metadata=meta)


def _utf8_text(raw: bytes, label: str) -> str:
    """A text file's content, refused when it is not UTF-8 or holds nothing."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise DocumentError(
            f"document {label!r} is not UTF-8 text (invalid byte 0x{raw[error.start]:02x} at offset "
            f"{error.start}); convert it to UTF-8 first"
        ) from None
    if not text.strip():
        raise DocumentError(f"document {label!r} is empty: there is nothing to read")
    return text


DocumentInput = Union[str, "os.PathLike[str]", Document, Mapping[str, Any]]


def _expand(item: os.PathLike[str]) -> list[Path]:
    path = Path(item)
    if path.is_dir():
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and p.suffix.lower() in DOCUMENT_SUFFIXES and not p.name.startswith(".")
        )
        if not files:
            raise DocumentError(
                f"directory {str(path)!r} holds no text files or documents ({', '.join(DOCUMENT_SUFFIXES)})"
            )
        return files
    return [path]


def load_documents(
    items: DocumentInput | Iterable[DocumentInput], *, skipped: list[UnconvertibleDocumentError] | None = None
) -> list[Document]:
    """Normalise strings, paths, mappings and Documents into a list of Documents (order kept).

    Raises DocumentError when there are no documents, one is empty or unreadable, or two share an id. With
    ``skipped`` (a list), a file its converter cannot read (a corrupt PDF) is appended there instead, and the
    other files load; the batch fails only when nothing is left.
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
            for path in _expand(item):
                try:
                    documents.append(Document.from_path(path))
                except UnconvertibleDocumentError as error:
                    if skipped is None:
                        raise
                    skipped.append(error)
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
        if skipped:
            raise DocumentError(f"no document could be read: {'; '.join(map(str, skipped))}")
        raise DocumentError("no documents given: pass at least one text or file")
    seen: set[str] = set()
    for document in documents:
        if document.id in seen:
            raise DocumentError(f"two documents share the id {document.id!r}; give each document its own id")
        seen.add(document.id)
    return documents
