"""LangChain adapters: Lychee memory as a reader Runnable, a retriever and an agent tool.

    from lychee_memory.integrations.langchain import LycheeReader, LycheeRetriever

    chain = {"question": RunnablePassthrough(), "documents": retriever} | LycheeReader()
    for piece in chain.stream("Who is the head gardener?"):
        print(piece, end="")

    tool = LycheeReader.from_documents(documents).as_tool()     # for agents: takes {"question": ...}

Needs ``langchain-core`` (``pip install "lychee-memory[langchain]"``).
"""

try:
    import langchain_core  # noqa: F401
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError('the LangChain adapters need langchain-core: pip install "lychee-memory[langchain]"') from error

from .documents import block_to_document, to_lychee_documents
from .reader import LycheeReader, QuestionArguments, ReaderInput
from .remote import LycheeServerRetriever
from .retriever import LycheeRetriever

__all__ = [
    "LycheeReader",
    "LycheeRetriever",
    "LycheeServerRetriever",
    "QuestionArguments",
    "ReaderInput",
    "block_to_document",
    "to_lychee_documents",
]
