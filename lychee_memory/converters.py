"""Files people have (PDF, DOCX, PPTX, HTML) as the text the engine reads, through markitdown (``[documents]`` extra).

markitdown turns each file into Markdown offline (pdfminer, mammoth, python-pptx, BeautifulSoup: no model is
downloaded). The converted text is the document's text, so block spans index into it and the store keeps it. Where
the format has pages or slides, the document's metadata records where each starts in that text
(``page_starts`` / ``slide_starts``: character offsets, page n starting at ``page_starts[n - 1]``), and
``units_of`` names the pages or slides a span covers. DOCX and HTML have no stable pages and record none.
"""

from __future__ import annotations

import io
import re
from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import DocumentError, UnconvertibleDocumentError

EXTRA_HINT = "pip install 'lychee-memory[documents]'"
# suffix -> format name; only these go through markitdown (text files are read as they are)
CONVERTED_FORMATS = {".pdf": "pdf", ".docx": "docx", ".pptx": "pptx", ".html": "html", ".htm": "html"}
# the metadata key holding where each page (or slide) starts, per format, and the unit's name in sources
UNIT_KEYS = {"pdf": ("page_starts", "pages"), "pptx": ("slide_starts", "slides")}
PAGE_BREAK = "\x0c"  # pdfminer ends each page with a form feed
SLIDE_MARK = re.compile(r"<!-- Slide number: (\d+) -->")


@dataclass(frozen=True)
class Converted:
    """A file's converted text and what to record about it (format, and page or slide starts)."""

    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


def is_converted(name: str) -> bool:
    """Whether a file of this name is read through a converter (by suffix, case-insensitive)."""
    return Path(name).suffix.lower() in CONVERTED_FORMATS


def convert_file(path: Path) -> Converted:
    """Convert one file; DocumentError naming the extra when markitdown is missing, UnconvertibleDocumentError
    naming the file when the converter cannot read it or it holds no text."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise DocumentError(f"document {str(path)!r} cannot be read: {error.strerror or error}") from None
    return convert_bytes(data, str(path))


def convert_bytes(data: bytes, name: str) -> Converted:
    """Convert a file's bytes; ``name`` (a path or file name) gives the format by its suffix and names errors."""
    suffix = Path(name).suffix.lower()
    kind = CONVERTED_FORMATS.get(suffix)
    if kind is None:
        known = ", ".join(sorted(CONVERTED_FORMATS))
        raise DocumentError(f"document {name!r}: no converter for {suffix or 'a file without suffix'} ({known})")
    try:
        from markitdown import MissingDependencyException, StreamInfo
        from markitdown.converters import DocxConverter, HtmlConverter, PdfConverter, PptxConverter
    except ImportError as error:
        raise DocumentError(
            f"document {name!r} is {kind.upper()}: reading it needs the documents extra "
            f"({error.name or error} is missing): {EXTRA_HINT}"
        ) from None
    # The format's own converter, never markitdown's guessing: a corrupt PDF must fail, not pass as plain text.
    converter = {"pdf": PdfConverter, "docx": DocxConverter, "pptx": PptxConverter, "html": HtmlConverter}[kind]()
    try:
        result = converter.convert(io.BytesIO(data), StreamInfo(extension=suffix, filename=Path(name).name))
    except MissingDependencyException:
        raise DocumentError(
            f"document {name!r} is {kind.upper()}: its converter's packages are missing: {EXTRA_HINT}"
        ) from None
    except Exception as error:  # markitdown wraps each converter's own failure; the file is what the user can fix
        raise UnconvertibleDocumentError(
            f"document {name!r} could not be converted from {kind.upper()}: {_first_line(error)}"
        ) from None
    text, metadata = _with_units(kind, result.text_content or "")
    if not text.strip():
        scanned = " (a scanned PDF holds images, not text: run OCR on it first)" if kind == "pdf" else ""
        raise UnconvertibleDocumentError(f"document {name!r} holds no text after conversion{scanned}")
    return Converted(text, {"format": kind, **metadata})


def _first_line(error: Exception) -> str:
    lines = [line.strip(" -") for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def _with_units(kind: str, text: str) -> tuple[str, dict[str, Any]]:
    """The text to keep and where its pages or slides start (offsets into that text)."""
    if kind == "pdf":
        starts = [0] + [match.end() for match in re.finditer(PAGE_BREAK, text)]
        if starts[-1] == len(text):  # the break after the last page opens no page
            starts.pop()
        return text.replace(PAGE_BREAK, "\n"), {"page_starts": starts}  # same length: offsets hold
    if kind == "pptx":
        marks = [(match.start(), int(match.group(1))) for match in SLIDE_MARK.finditer(text)]
        if marks and [number for _, number in marks] == list(range(1, len(marks) + 1)):
            return text, {"slide_starts": [0] + [start for start, _ in marks[1:]]}
    return text, {}


def units_of(metadata: Mapping[str, Any], start: int, end: int) -> dict[str, list[int]]:
    """The pages or slides (numbered from 1) the characters ``[start, end)`` of a document span:
    ``{"pages": [2, 3]}``, ``{"slides": [4]}``, or ``{}`` for a document without them."""
    for key, name in UNIT_KEYS.values():
        starts = metadata.get(key)
        if isinstance(starts, list) and starts:
            first = max(1, bisect_right(starts, start))
            last = max(first, bisect_right(starts, max(start, end - 1)))
            return {name: list(range(first, last + 1))}
    return {}
