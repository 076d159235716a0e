"""LangGraph adapter: ``LycheeStore``, a long-term memory ``BaseStore`` kept in a Lychee bank and searched by the gate.

    from lychee_memory.integrations.langgraph import LycheeStore

    graph = builder.compile(store=LycheeStore(store="./memory"))   # model=None: the embedded default

Needs ``langgraph`` (``pip install "lychee-memory[langgraph]"``).
"""

try:
    import langgraph.store.base  # noqa: F401
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError('the LangGraph adapter needs langgraph: pip install "lychee-memory[langgraph]"') from error

from .store import LycheeStore

__all__ = ["LycheeStore"]
