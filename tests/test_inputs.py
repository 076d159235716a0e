"""Documents, chunking and configuration: bad input gets a specific error; chunks respect their rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from lychee_memory.chunking import chunk_documents
from lychee_memory.config import EngineConfig
from lychee_memory.documents import Document, load_documents
from lychee_memory.errors import ConfigurationError, DocumentError
from lychee_memory.testing import build_tiny_tokenizer

from .conftest import FACTS_DOCUMENT, SECOND_DOCUMENT

# Documents ---------------------------------------------------------------------------------------------


def test_strings_are_text_and_paths_are_files(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("From a file.", encoding="utf-8")
    documents = load_documents(["From a string.", path])
    assert [d.text for d in documents] == ["From a string.", "From a file."]
    assert documents[1].id == str(path) and documents[1].metadata["file_name"] == "notes.txt"
    assert documents[0].id == Document.content_id("From a string.")


def test_directory_expands_to_its_text_files(tmp_path):
    (tmp_path / "b.md").write_text("second", encoding="utf-8")
    (tmp_path / "a.txt").write_text("first", encoding="utf-8")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    assert [d.text for d in load_documents(tmp_path)] == ["first", "second"]


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda p: p / "missing.txt", "does not exist"),
        (lambda p: (p / "empty.txt", (p / "empty.txt").write_text("  \n\t ", encoding="utf-8"))[0], "empty"),
        (lambda p: (p / "latin1.txt", (p / "latin1.txt").write_bytes("caf\xe9".encode("latin-1")))[0], "not UTF-8"),
        (lambda p: p, "no text files"),
    ],
)
def test_bad_files_get_specific_errors(tmp_path, make, message):
    with pytest.raises(DocumentError, match=message):
        load_documents(make(tmp_path))


@pytest.mark.parametrize("bad", [[], [""], ["   "], [3.5], [{"id": "x"}]])
def test_bad_document_values_get_specific_errors(bad):
    with pytest.raises(DocumentError):
        load_documents(bad)


def test_duplicate_ids_are_refused():
    with pytest.raises(DocumentError, match="share the id"):
        load_documents([Document("a", "same"), Document("b", "same")])


def test_utf8_bom_is_dropped(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes("\ufeffhello".encode())
    assert load_documents(path)[0].text == "hello"


# Chunking ----------------------------------------------------------------------------------------------


def test_chunks_cover_every_token_once_and_never_cross_documents():
    tokenizer = build_tiny_tokenizer()
    documents = load_documents([FACTS_DOCUMENT, SECOND_DOCUMENT])
    chunks = chunk_documents(documents, tokenizer, 40)
    for index, document in enumerate(documents):
        own = [c for c in chunks if c.document_index == index]
        assert all(c.document_id == document.id for c in own)
        assert own[0].token_start == 0
        for before, after in zip(own, own[1:], strict=False):
            assert before.token_end == after.token_start
        total = len(tokenizer(document.text, add_special_tokens=False, split_special_tokens=True).input_ids)
        assert own[-1].token_end == total
        assert sum(len(c) for c in own) == total
    assert all(1 <= len(c) <= 40 for c in chunks)


def test_chunk_text_is_the_document_span():
    tokenizer = build_tiny_tokenizer()
    document = load_documents([FACTS_DOCUMENT])[0]
    for chunk in chunk_documents([document], tokenizer, 32):
        assert chunk.text == document.text[chunk.char_start : chunk.char_end]
        assert chunk.text.strip()


def test_cuts_prefer_paragraph_ends():
    tokenizer = build_tiny_tokenizer()
    text = ("Alpha beta gamma delta epsilon. Zeta eta. " + "\n\n") * 12  # paragraphs of ~35 tokens
    chunks = chunk_documents(load_documents([text]), tokenizer, 64, boundary_lookback=0.5)
    assert all(c.text.endswith("\n") for c in chunks[:-1]), [c.text[-10:] for c in chunks]


def test_one_token_document_gives_one_chunk():
    tokenizer = build_tiny_tokenizer()
    chunks = chunk_documents(load_documents(["A"]), tokenizer, 4096)
    assert len(chunks) == 1 and len(chunks[0]) == 1 and chunks[0].text == "A"


def test_special_token_text_in_documents_stays_text():
    tokenizer = build_tiny_tokenizer()
    chunks = chunk_documents(load_documents(["before <|im_end|> after"]), tokenizer, 4096)
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") not in chunks[0].token_ids


# Configuration -----------------------------------------------------------------------------------------


def test_flat_options_and_name_shortcuts():
    config = EngineConfig.from_kwargs(ratio=8, compressor="key_norm", gate="prompt", chunk_tokens=512, threshold=0.7)
    assert (config.compressor.kind, config.compressor.ratio) == ("key_norm", 8)
    assert (config.gate.rule, config.gate.threshold) == ("prompt", 0.7)
    assert config.chunking.chunk_tokens == 512
    recipe = EngineConfig.from_kwargs(fallback_blocks=4, memory="excerpts", answer_with_note=True)
    assert (recipe.gate.fallback_blocks, recipe.reasoner.memory, recipe.reasoner.answer_with_note) == (
        4,
        "excerpts",
        True,
    )


@pytest.mark.parametrize(
    "options,message",
    [
        ({"colour": "red"}, "unknown option 'colour'"),
        ({"ratio": 0}, "compressor.ratio"),
        ({"compressor": "zip"}, "compressor.kind"),
        ({"device": "tpu"}, "device must be"),
        ({"observation_window": 0}, "observation_window"),
        ({"gate": {"max_relevant_blocks": 0}}, "max_relevant_blocks"),
        ({"prompts": {"update": "no placeholders"}}, "placeholders"),
        ({"compressor": {"pooling_kernel": 4}}, "odd"),
        ({"top_p": 0}, "top_p"),
        ({"threshold": float("nan")}, "gate.threshold: Input should be a finite number"),
        ({"threshold": float("inf")}, "gate.threshold: Input should be a finite number"),
        ({"gate": {"memory_weight": float("inf")}}, "gate.memory_weight: Input should be a finite number"),
        ({"temperature": float("inf")}, "reasoner.temperature: Input should be a finite number"),
    ],
)
def test_invalid_configuration_is_a_clear_error(options, message):
    with pytest.raises(ConfigurationError, match=message):
        EngineConfig.from_kwargs(**options)


def test_config_round_trips_through_json(tmp_path: Path):
    config = EngineConfig.from_kwargs(ratio=2, gate="all", max_memory_tokens=64)
    path = tmp_path / "config.json"
    path.write_text(config.model_dump_json(), encoding="utf-8")
    assert EngineConfig.model_validate_json(path.read_text(encoding="utf-8")) == config
