"""Files uploaded as ``multipart/form-data`` (``POST /v1/banks/{bank}/files``): each part named ``files`` is a
document, PDF, DOCX, PPTX and HTML converted like ``lychee ingest`` converts them (``lychee_memory.converters``).

A file its converter cannot read is reported back and skipped, and the others are ingested; a request whose files
all fail is refused. An optional ``metadata`` part (a JSON object) is given to every file of the request.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lychee_memory import Document, DocumentError
from lychee_memory.errors import UnconvertibleDocumentError

from .problems import ApiError


@dataclass(frozen=True)
class Upload:
    """One uploaded file: its name and bytes."""

    name: str
    data: bytes


def require_multipart() -> None:
    """501 naming the extra when the server cannot parse multipart bodies (python-multipart is missing)."""
    try:
        import python_multipart  # noqa: F401 (python-multipart, which Starlette's form parsing needs)
    except ImportError:
        raise ApiError(
            501, "not_implemented", "file uploads need the documents extra: pip install 'lychee-memory[documents]'"
        ) from None


def upload_metadata(raw: str | None) -> dict[str, Any]:
    """The request's ``metadata`` part: a JSON object, or nothing."""
    if raw is None or not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        raise ApiError(400, "invalid_request", "the 'metadata' part must be a JSON object") from None
    if not isinstance(value, dict):
        raise ApiError(400, "invalid_request", "the 'metadata' part must be a JSON object")
    return value


def uploaded_documents(
    uploads: Sequence[Upload], metadata: dict[str, Any], limit: int
) -> tuple[list[Document], list[dict[str, str]]]:
    """The documents of the uploaded files and the files skipped (``{"file", "error"}``), in upload order.

    413 for a file whose text is over ``limit`` bytes; 400 for no files, two files of one name, a file that is not
    a document (not UTF-8 text, empty, the documents extra missing), or when no file could be converted.
    """
    if not uploads:
        raise ApiError(400, "invalid_request", "send the documents as multipart/form-data parts named 'files'")
    if any(not upload.name for upload in uploads):
        raise ApiError(400, "invalid_request", "each part named 'files' needs a filename")
    names = [upload.name for upload in uploads]
    duplicate = next((name for name in names if names.count(name) > 1), None)
    if duplicate is not None:
        raise ApiError(400, "invalid_document", f"two files share the name {duplicate!r}")
    documents, skipped = [], []
    for upload in uploads:
        try:
            document = Document.from_file_bytes(upload.data, upload.name, metadata=metadata)
        except UnconvertibleDocumentError as error:
            skipped.append({"file": upload.name, "error": str(error)})
            continue
        except DocumentError as error:
            raise ApiError(400, "invalid_document", str(error)) from None
        size = len(document.text.encode("utf-8"))
        if size > limit:
            raise ApiError(
                413, "too_large", f"file {upload.name!r} is {size} bytes of text; this server accepts up to {limit}"
            )
        documents.append(document)
    if not documents:
        problems = "; ".join(item["error"] for item in skipped)
        raise ApiError(400, "invalid_document", f"no uploaded file could be read: {problems}")
    return documents, skipped
