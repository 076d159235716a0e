"""Conversions between LlamaIndex and lychee: LlamaIndex documents and metadata filters in, gated blocks out as
scored nodes.

A block becomes a ``TextNode`` with the block's text, its character span in the source document, the
source document's metadata, and a SOURCE relationship to that document, so ``ref_doc_id``, source
formatting and node postprocessors work as they do on a vector retriever's nodes. Its metadata adds
``document_id``, ``block_index``, ``fallback`` and ``selected`` (False for a block added only to reach the k
asked for), kept out of what an LLM or an embedding model reads.

``MetadataFilters`` become lychee's filter language (``lychee_memory.filters``): EQ, NE, IN and NIN joined by AND.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
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
from llama_index.core.vector_stores.types import FilterCondition, FilterOperator, MetadataFilters

from lychee_memory import Document, DocumentError, DocumentFilter, FilterError, MemoryBank, SelectedBlock

LlamaIndexDocumentInput = BaseNode | Document | str | os.PathLike[str]
"""A LlamaIndex document or node, a lychee Document, a text, or a path to a text file."""

# Metadata lychee adds to each node; kept out of what an LLM or an embedding model sees.
DOCUMENT_ID_KEY = "document_id"
BLOCK_INDEX_KEY = "block_index"
FALLBACK_KEY = "fallback"
SELECTED_KEY = "selected"
LYCHEE_METADATA_KEYS = [DOCUMENT_ID_KEY, BLOCK_INDEX_KEY, FALLBACK_KEY, SELECTED_KEY]

FiltersInput = MetadataFilters | Mapping[str, Any] | DocumentFilter | None
"""LlamaIndex ``MetadataFilters``, a lychee filter dict such as ``{"lang": "en"}``, or None (every document)."""

_OPERATORS = {
    FilterOperator.EQ: "$eq",
    FilterOperator.NE: "$ne",
    FilterOperator.IN: "$in",
    FilterOperator.NIN: "$nin",
}


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


def to_lychee_filters(filters: FiltersInput) -> dict[str, Any] | None:
    """LlamaIndex ``MetadataFilters`` as a lychee filter dict; a dict (or DocumentFilter) is checked and kept.

    EQ becomes ``{"key": value}``, NE ``{"key": {"$ne": value}}``, IN ``$in`` and NIN ``$nin``; filters are joined
    by AND, and NE/NIN filters on one key merge into one ``$nin``. Any other operator (GT, CONTAINS,
    TEXT_MATCH...), an OR or NOT condition and nested MetadataFilters raise FilterError naming what is refused.
    """
    if filters is None:
        return None
    if isinstance(filters, DocumentFilter):
        return filters.to_json()
    if isinstance(filters, Mapping):
        DocumentFilter.parse(filters)
        return dict(filters)
    if not isinstance(filters, MetadataFilters):
        raise FilterError(
            "filters must be LlamaIndex MetadataFilters or a dict such as {'lang': 'en'}, "
            f"got {type(filters).__name__}"
        )
    condition = filters.condition or FilterCondition.AND
    if condition != FilterCondition.AND:
        raise FilterError(
            f"MetadataFilters with condition {condition.name} are not supported: lychee joins filters with AND only"
        )
    converted: dict[str, Any] = {}
    for item in filters.filters:
        if isinstance(item, MetadataFilters):
            raise FilterError("nested MetadataFilters are not supported: give one flat list of filters (joined by AND)")
        operator = _OPERATORS.get(item.operator)
        if operator is None:
            raise FilterError(
                f"filter on {item.key!r}: operator {item.operator.name} ({item.operator.value!r}) is not supported; "
                "lychee filters take EQ, NE, IN and NIN"
            )
        test = item.value if operator == "$eq" else {operator: item.value}
        converted[item.key] = _both(item.key, converted[item.key], test) if item.key in converted else test
    DocumentFilter.parse(converted)  # values: lists for IN/NIN, single values for EQ/NE
    return converted


def _excluded(test: Any) -> list[Any] | None:
    """The values a NE/NIN test excludes (None for any other test)."""
    if isinstance(test, Mapping) and "$ne" in test:
        return [test["$ne"]]
    if isinstance(test, Mapping) and isinstance(test.get("$nin"), list):
        return list(test["$nin"])
    return None


def _both(key: str, first: Any, second: Any) -> Any:
    """Two filters on one key, both required: NE/NIN merge into one $nin; anything else is refused."""
    excluded, more = _excluded(first), _excluded(second)
    if excluded is None or more is None:
        raise FilterError(
            f"several filters on {key!r}: lychee takes one filter per key (NE and NIN filters on one key combine); "
            "use IN for one of several values"
        )
    return {"$nin": excluded + more}


def block_node_id(document_id: str, char_start: int, char_end: int) -> str:
    """A stable node id for a block: its document and character span."""
    return f"{document_id}#{char_start}-{char_end}"


def block_to_node(block: SelectedBlock, bank: MemoryBank) -> NodeWithScore:
    """A gated block as a scored text node pointing back at its source document."""
    try:
        source_metadata: dict[str, Any] = dict(bank.document_of(block).metadata)
    except KeyError:
        source_metadata = {}
    metadata = {
        **source_metadata,
        DOCUMENT_ID_KEY: block.document_id,
        BLOCK_INDEX_KEY: block.index,
        FALLBACK_KEY: block.fallback,
        SELECTED_KEY: block.selected,
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
