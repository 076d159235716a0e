"""Cut documents into token chunks: at most ``chunk_tokens`` each, never across a document boundary.

A cut prefers the end of a paragraph, then of a line, then of a sentence, found in the last part of
the chunk (``boundary_lookback``), so facts are less often split between two blocks. Every chunk keeps
its character span in the document, so answers can cite their sources.
"""

from __future__ import annotations

from dataclasses import dataclass

from .documents import Document

# Strength of a cut between two tokens, judged from the characters before the second one.
_PARAGRAPH, _LINE, _SENTENCE, _NONE = 3, 2, 1, 0


@dataclass(frozen=True)
class Chunk:
    """A run of one document's tokens, with its token and character span."""

    document_index: int
    document_id: str
    token_ids: tuple[int, ...]
    token_start: int
    token_end: int
    char_start: int
    char_end: int
    text: str

    def __len__(self) -> int:
        return len(self.token_ids)


def tokenize_with_offsets(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids and character offsets of ``text``; special-token strings in it stay plain text."""
    encoded = tokenizer(
        text,
        add_special_tokens=False,
        return_offsets_mapping=True,
        split_special_tokens=True,
        verbose=False,
    )
    return list(encoded["input_ids"]), [tuple(pair) for pair in encoded["offset_mapping"]]


def _cut_strength(text: str, offsets: list[tuple[int, int]], boundary: int) -> int:
    """How good a place it is to cut before token ``boundary``."""
    start = offsets[boundary][0]
    if start < offsets[boundary - 1][1]:
        return _NONE  # the two tokens share characters (a split multi-byte character)
    before = text[max(0, start - 4) : start].replace("\r", "").rstrip(" \t")
    if before.endswith("\n\n"):
        return _PARAGRAPH
    if before.endswith("\n"):
        return _LINE
    token_text = text[start : offsets[boundary][1]]
    if before and before[-1] in ".!?" and (text[start - 1 : start].isspace() or token_text[:1].isspace()):
        return _SENTENCE
    return _NONE


def _choose_cut(text: str, offsets: list[tuple[int, int]], start: int, limit: int, lookback: int) -> int:
    """Index of the first token of the next chunk: the strongest boundary in (limit - lookback, limit]."""
    if limit >= len(offsets):
        return len(offsets)
    best, best_strength = limit, _NONE
    for boundary in range(limit, max(start + 1, limit - lookback), -1):
        strength = _cut_strength(text, offsets, boundary)
        if strength > best_strength:
            best, best_strength = boundary, strength
            if strength == _PARAGRAPH:
                break
    return best


def chunk_document(
    document: Document, document_index: int, tokenizer, chunk_tokens: int, boundary_lookback: float = 0.125
) -> list[Chunk]:
    """Split one document into chunks of at most ``chunk_tokens`` tokens, covering every token once."""
    token_ids, offsets = tokenize_with_offsets(tokenizer, document.text)
    lookback = int(chunk_tokens * boundary_lookback)
    chunks: list[Chunk] = []
    start = 0
    while start < len(token_ids):
        end = _choose_cut(document.text, offsets, start, start + chunk_tokens, lookback)
        char_start, char_end = offsets[start][0], offsets[end - 1][1]
        chunks.append(
            Chunk(
                document_index=document_index,
                document_id=document.id,
                token_ids=tuple(token_ids[start:end]),
                token_start=start,
                token_end=end,
                char_start=char_start,
                char_end=char_end,
                text=document.text[char_start:char_end],
            )
        )
        start = end
    return chunks


def chunk_documents(
    documents: list[Document], tokenizer, chunk_tokens: int, boundary_lookback: float = 0.125
) -> list[Chunk]:
    """Chunks of all documents in order; a chunk never spans two documents."""
    chunks: list[Chunk] = []
    for index, document in enumerate(documents):
        chunks.extend(chunk_document(document, index, tokenizer, chunk_tokens, boundary_lookback))
    return chunks
