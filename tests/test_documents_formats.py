"""PDF, DOCX, PPTX and HTML documents made by the tests: converted offline, their pages and slides in the sources,
answered from on the tiny model (the sources and spans are checked, not its words), and a corrupt PDF refused by
name while the other files of the batch still ingest."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("markitdown")
pytest.importorskip("reportlab")
pytest.importorskip("docx")
pytest.importorskip("pptx")

from lychee_memory import DocumentError  # noqa: E402
from lychee_memory.converters import units_of  # noqa: E402
from lychee_memory.documents import Document, load_documents  # noqa: E402
from lychee_memory.errors import UnconvertibleDocumentError  # noqa: E402
from lychee_memory.store import MemoryStore  # noqa: E402

from .conftest import make_engine  # noqa: E402
from .document_files import FACT, FACT_PAGE, make_all, make_corrupt_pdf  # noqa: E402

MARKER = {"pdf": ("PAGEMARK", "page_starts", "pages"), "pptx": ("SLIDEMARK", "slide_starts", "slides")}
TINY = ["--model", "tiny-random-llama", "--chunk-tokens", "64", "--max-memory-tokens", "8", "--max-answer-tokens", "6"]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    return make_all(tmp_path_factory.mktemp("formats"))


def marker_pages(text: str, marker: str) -> dict[int, int]:
    """Where each page's marker word is in the converted text: the reference the page map is checked against."""
    return {int(match.group(1)): match.start() for match in re.finditer(rf"{marker}(\d+)", text)}


@pytest.mark.parametrize("kind", ["pdf", "docx", "pptx", "html"])
def test_each_format_converts_to_text_holding_the_fact(files, kind):
    (document,) = load_documents(files[kind])
    assert FACT in " ".join(document.text.split())  # the converter may wrap lines; the words stay
    assert document.id == str(files[kind]) and document.metadata["format"] == kind
    assert document.metadata["file_name"] == files[kind].name
    if kind == "html":
        assert "SCRIPTTEXT" not in document.text  # scripts are not text
    if kind in ("docx", "html"):
        assert "page_starts" not in document.metadata and "slide_starts" not in document.metadata


@pytest.mark.parametrize("kind", ["pdf", "pptx"])
def test_page_and_slide_starts_match_the_markers_on_each_page(files, kind):
    (document,) = load_documents(files[kind])
    marker, key, unit = MARKER[kind]
    starts = document.metadata[key]
    markers = marker_pages(document.text, marker)
    assert sorted(markers) == [1, 2, 3] and len(starts) == 3
    for number, position in markers.items():
        end = starts[number] if number < len(starts) else len(document.text)
        assert starts[number - 1] <= position < end  # page n's marker lies inside page n's range
        assert units_of(document.metadata, position, position + len(marker) + 1) == {unit: [number]}
    fact = " ".join(document.text.split()).index(FACT)
    assert fact >= 0
    start = document.text.index(FACT.split()[0], markers[FACT_PAGE])
    assert units_of(document.metadata, start, start + 20) == {unit: [FACT_PAGE]}
    assert units_of(document.metadata, 0, len(document.text)) == {unit: [1, 2, 3]}


def test_units_of_a_document_without_pages_is_empty():
    assert units_of({"format": "docx"}, 0, 10) == {}
    assert units_of({}, 5, 6) == {}


def test_a_bank_of_every_format_answers_with_spans_and_pages_in_its_sources(files, tmp_path):
    engine = make_engine()
    store = MemoryStore(tmp_path / "store")
    bank = engine.ingest(list(files.values()), store=store, bank="formats")
    assert {document.id for document in bank.documents} == {str(path) for path in files.values()}
    reopened = engine.open_bank("formats", store)
    blocks = engine.select("What is the access code for the shed?", reopened, k=len(reopened))
    assert len(blocks) == len(reopened)
    holding_fact = 0
    for block in blocks:
        document = reopened.document(block.document_id)
        assert document.text[block.char_start : block.char_end] == block.text  # spans index the stored text
        units = units_of(document.metadata, block.char_start, block.char_end)
        kind = document.metadata["format"]
        if kind in MARKER:
            marker, _, unit = MARKER[kind]
            for number in map(int, re.findall(rf"{marker}(\d+)", block.text)):
                assert number in units[unit]  # a block showing page n's marker is on page n
        else:
            assert units == {}
        if "58213" in block.text:
            holding_fact += 1
            if kind in MARKER:
                assert FACT_PAGE in units[MARKER[kind][2]]
    assert holding_fact >= 4  # the fact's block of each of the four files is among the sources
    answer = engine.ask("What is the access code for the shed?", reopened)
    assert answer.blocks and all(block.document_id in {str(p) for p in files.values()} for block in answer.blocks)


def test_a_corrupt_pdf_is_refused_by_name(tmp_path):
    corrupt = make_corrupt_pdf(tmp_path / "broken.pdf")
    with pytest.raises(UnconvertibleDocumentError, match=r"broken\.pdf.*could not be converted from PDF"):
        load_documents(corrupt)
    with pytest.raises(UnconvertibleDocumentError, match="broken.pdf"):
        Document.from_file_bytes(corrupt.read_bytes(), "broken.pdf")


def test_a_batch_skips_the_corrupt_pdf_and_loads_the_rest(files, tmp_path):
    corrupt = make_corrupt_pdf(tmp_path / "broken.pdf")
    skipped: list[UnconvertibleDocumentError] = []
    documents = load_documents([*files.values(), corrupt], skipped=skipped)
    assert [document.id for document in documents] == [str(path) for path in files.values()]
    assert len(skipped) == 1 and "broken.pdf" in str(skipped[0])
    with pytest.raises(DocumentError, match="no document could be read.*broken.pdf"):
        load_documents([corrupt], skipped=[])


def test_a_directory_expands_to_its_documents(files):
    directory = files["pdf"].parent
    assert sorted(document.metadata["format"] for document in load_documents(directory)) == [
        "docx",
        "html",
        "pdf",
        "pptx",
    ]


def test_a_missing_extra_names_it(files, monkeypatch):
    monkeypatch.setitem(sys.modules, "markitdown", None)  # import markitdown now fails as if not installed
    with pytest.raises(DocumentError, match=r"pip install 'lychee-memory\[documents\]'"):
        load_documents(files["pdf"])
    assert load_documents("plain text needs no extra")[0].text == "plain text needs no extra"


def test_uploaded_bytes_convert_like_files(files):
    document = Document.from_file_bytes(files["pptx"].read_bytes(), "deck.pptx", metadata={"team": "harbour"})
    assert document.id == "deck.pptx" and document.metadata["team"] == "harbour"
    assert document.metadata["slide_starts"] == load_documents(files["pptx"])[0].metadata["slide_starts"]
    with pytest.raises(DocumentError, match="not UTF-8"):
        Document.from_file_bytes(b"caf\xe9", "notes.txt")


def test_lychee_ingest_skips_the_corrupt_pdf_reports_it_and_ingests_the_rest(files, tmp_path):
    directory = tmp_path / "mixed"
    directory.mkdir()
    for path in files.values():
        (directory / path.name).write_bytes(path.read_bytes())
    make_corrupt_pdf(directory / "broken.pdf")
    store = tmp_path / "store"
    command = [sys.executable, "-m", "lychee_memory.cli", "ingest", str(directory), "--store", str(store)]
    result = subprocess.run(
        [*command, "--bank", "mixed", "--json", "--no-progress", *TINY], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 3, result.stderr  # EXIT_SKIPPED: the rest ingested, a file was not
    assert "skipped" in result.stderr and "broken.pdf" in result.stderr
    data = json.loads(result.stdout)
    assert data["documents"] == 4 and len(data["skipped"]) == 1 and "broken.pdf" in data["skipped"][0]
    stored = MemoryStore(store).bank_manifest("mixed")
    assert sorted(Path(document.id).name for document in stored.documents) == sorted(p.name for p in files.values())


def test_conversion_needs_no_network(files, monkeypatch):
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError("a converter tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    for kind in ("pdf", "docx", "pptx", "html"):
        assert FACT in " ".join(load_documents(files[kind])[0].text.split())
