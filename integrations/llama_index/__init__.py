"""LlamaIndex adapters: Lychee memory as a query engine, a retriever and an index.

    from lychee_memory.integrations.llama_index import LycheeIndex, LycheeQueryEngine, LycheeRetriever

    index = LycheeIndex.from_documents(documents)          # instead of VectorStoreIndex.from_documents
    print(index.as_query_engine().query("Who is the head gardener?"))

Needs ``llama-index-core`` (``pip install "lychee-memory[llama-index]"``). None of these read
``Settings.llm`` or ``Settings.embed_model``.
"""

try:
    import llama_index.core  # noqa: F401
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        'the LlamaIndex adapters need llama-index-core: pip install "lychee-memory[llama-index]"'
    ) from error

from .index import LycheeIndex
from .memory_block import LycheeMemoryBlock
from .nodes import block_to_node, blocks_to_nodes, to_lychee_documents
from .query_engine import LycheeQueryEngine
from .remote import LycheeServerRetriever
from .retriever import LycheeRetriever

__all__ = [
    "LycheeIndex",
    "LycheeMemoryBlock",
    "LycheeQueryEngine",
    "LycheeRetriever",
    "LycheeServerRetriever",
    "block_to_node",
    "blocks_to_nodes",
    "to_lychee_documents",
]
