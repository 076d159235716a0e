"""Conversions between LlamaIndex and lychee: LlamaIndex documents in, gated blocks out as scored nodes.

A block becomes a ``TextNode`` with the block's text, its character span in the source document, the
source document's metadata, and a SOURCE relationship to that document, so ``ref_doc_id``, source
formatting and node postprocessors work as they do on a vector retriever's nodes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from llama_index.core.schema import (
    BaseNode,
    MetadataMode,
    NodeRelationship,
    NodeWithScore,
    ObjectType,
    RelatedNodeInfo,
    TextNode,
)

from lychee_memory import Document, DocumentError, MemoryBank, SelectedBlock

LlamaIndexDocumentInput = BaseNode | Document | str | os.PathLike[str]
"""A LlamaIndex document or node, a lychee Document, a text, or a path to a text file."""

# Metadata lychee adds to each node; kept out of what an LLM or an embedding model sees.
DOCUMENT_ID_KEY = "document_id"
BLOCK_INDEX_KEY = "block_index"
FALLBACK_KEY = "fallback"
LYCHEE_METADATA_KEYS = [DOCUMENT_ID_KEY, BLOCK_INDEX_KEY, FALLBACK_KEY]


def to_lychee_documents(documents: Iterable[LlamaIndexDocumentInput] | LlamaIndexDocumentInput) -> list[Document]:
    """LlamaIndex documents (id, text and metadata kept) and lychee inputs as lychee Documents."""
    if isinstance(documents, (BaseNode, Document, str, os.PathLike)):
        documents = [documents]
    if not isinstance(documents, Iterable):
        raise TypeError(
            f"documents must be a list of LlamaIndex Documents, texts or paths, got {type(documents).__name__}"
        )
    from lychee_memory.documents import load_documents

    converted: list[Document] = []
    for item in documents:
        if isinstance(item, BaseNode):
            text = item.get_content(metadata_mode=MetadataMode.NONE)
            converted.append(Document.from_text(text, id=item.node_id, metadata=dict(item.metadata)))
        elif isinstance(item, (Document, str, os.PathLike)):
            converted.extend(load_documents([item]))
        else:
            raise TypeError(
                f"cannot read a document from {type(item).__name__}: pass LlamaIndex Documents, "
                "lychee Documents, texts (str) or paths"
            )
    if not converted:
        raise DocumentError("no documents given: pass at least one document, or an existing bank")
    return converted


def block_node_id(document_id: str, char_start: int, char_end: int) -> str:
    """A stable node id for a block: its document and character span."""
    return f"{document_id}#{char_start}-{char_end}"


def block_to_node(block: SelectedBlock, bank: MemoryBank) -> NodeWithScore:
    """A gated block as a scored text node pointing back at its source document."""
    try:
        source_metadata: dict[str, Any] = dict(bank.document(block.document_id).metadata)
    except KeyError:
        source_metadata = {}
    metadata = {
        **source_metadata,
        DOCUMENT_ID_KEY: block.document_id,
        BLOCK_INDEX_KEY: block.index,
        FALLBACK_KEY: block.fallback,
    }
    node = TextNode(
        id_=block_node_id(block.document_id, block.char_start, block.char_end),
        text=block.text,
        start_char_idx=block.char_start,
        end_char_idx=block.char_end,
        metadata=metadata,
        excluded_llm_metadata_keys=list(LYCHEE_METADATA_KEYS),
        excluded_embed_metadata_keys=list(LYCHEE_METADATA_KEYS),
        relationships={
            NodeRelationship.SOURCE: RelatedNodeInfo(
                node_id=block.document_id, node_type=ObjectType.DOCUMENT, metadata=source_metadata
            )
        },
    )
    return NodeWithScore(node=node, score=block.score)


def blocks_to_nodes(blocks: Iterable[SelectedBlock], bank: MemoryBank) -> list[NodeWithScore]:
    """Gated blocks as scored nodes, in the order given (reading order)."""
    return [block_to_node(block, bank) for block in blocks]
