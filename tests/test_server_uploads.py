"""``POST /v1/banks/{bank}/files`` on a real ``lychee serve``: PDF, DOCX, PPTX and HTML files made by the tests
uploaded as multipart/form-data beside the JSON route; a corrupt PDF reported back by name while the others ingest."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytest.importorskip("markitdown")
pytest.importorskip("reportlab")
pytest.importorskip("python_multipart")

from lychee_memory.converters import units_of  # noqa: E402

from .document_files import FACT_PAGE, make_all, make_corrupt_pdf  # noqa: E402
from .test_server import Server, cache, ok, problem, running, wait_job  # noqa: E402, F401 (cache: a fixture)

KEYS = {"key-acme": ["acme-"]}


@pytest.fixture(scope="module")
def server(tmp_path_factory, cache) -> Iterator[Server]:  # noqa: F811 (the imported fixture)
    directory = tmp_path_factory.mktemp("uploads")
    keys = directory / "keys.json"
    keys.write_text(json.dumps(KEYS), encoding="utf-8")
    with running(Server(directory / "store", cache, "--keys-file", str(keys), probe_key="key-acme")) as started:
        yield started


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("upload-files")
    made = make_all(directory)
    made["corrupt"] = make_corrupt_pdf(directory / "broken.pdf")
    return made


def parts(*paths: Path) -> list[tuple[str, tuple[str, bytes]]]:
    return [("files", (path.name, path.read_bytes())) for path in paths]


def test_uploaded_files_ingest_and_the_corrupt_pdf_is_reported_by_name(server, files):
    with server.client("key-acme") as client:
        response = client.post(
            "/v1/banks/acme-files/files",
            files=parts(*files.values()),
            data={"metadata": json.dumps({"team": "harbour"})},
        )
        submitted = ok(response, 202)
        assert submitted["documents"] == [files[kind].name for kind in ("pdf", "docx", "pptx", "html")]
        assert [item["file"] for item in submitted["skipped"]] == ["broken.pdf"]
        assert "broken.pdf" in submitted["skipped"][0]["error"]
        assert wait_job(client, submitted["job"])["status"] == "done"
        documents = {item["id"]: item for item in ok(client.get("/v1/banks/acme-files/documents"))["documents"]}
        assert set(documents) == {"harbour.pdf", "harbour.docx", "harbour.pptx", "harbour.html"}
        assert all(item["metadata"]["team"] == "harbour" for item in documents.values())
        assert len(documents["harbour.pdf"]["metadata"]["page_starts"]) == 3
        assert len(documents["harbour.pptx"]["metadata"]["slide_starts"]) == 3
        blocks = ok(client.post("/v1/banks/acme-files/retrieve", json={"question": "What is the code?", "k": 50}))
        pdf_fact = [b for b in blocks["blocks"] if b["doc"] == "harbour.pdf" and "58213" in b["text"]]
        assert (
            pdf_fact
            and FACT_PAGE
            in units_of(documents["harbour.pdf"]["metadata"], pdf_fact[0]["start"], pdf_fact[0]["end"])["pages"]
        )


def test_upload_refusals(server, files):
    with server.client("key-acme") as client:
        assert "multipart/form-data" in problem(client.post("/v1/banks/acme-x/files", json={}), 400, "invalid_request")
        only_corrupt = client.post("/v1/banks/acme-x/files", files=parts(files["corrupt"]))
        assert "no uploaded file could be read" in problem(only_corrupt, 400, "invalid_document")
        assert "broken.pdf" in only_corrupt.json()["error"]["message"]
        problem(client.post("/v1/banks/other-x/files", files=parts(files["html"])), 403, "forbidden")
        bad_metadata = client.post("/v1/banks/acme-x/files", files=parts(files["html"]), data={"metadata": "[1]"})
        assert "metadata" in problem(bad_metadata, 400, "invalid_request")
    with httpx.Client(base_url=server.url, timeout=60) as anonymous:
        problem(anonymous.post("/v1/banks/acme-x/files", files=parts(files["html"])), 401, "unauthorized")
