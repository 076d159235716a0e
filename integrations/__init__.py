"""Thin adapters that put lychee-memory inside other frameworks; the engine never imports them.

- ``lychee_memory.integrations.llama_index``: ``LycheeQueryEngine``, ``LycheeRetriever``, ``LycheeIndex``,
  ``LycheeMemoryBlock`` (install ``lychee-memory[llama-index]``).
- ``lychee_memory.integrations.langgraph``: ``LycheeStore``, a LangGraph long-term memory store (install
  ``lychee-memory[langgraph]``).
- ``lychee_memory.integrations.langchain``: ``LycheeReader``, ``LycheeRetriever``
  (install ``lychee-memory[langchain]``).

- ``lychee_memory.integrations.server``: ``lychee serve``, the HTTP memory service (install
  ``lychee-memory[server]``); ``lychee_memory.integrations.remote.LycheeClient`` is its Python client, and
  each framework has a ``LycheeServerRetriever`` over it.

Each subpackage imports its framework; importing this package imports neither.
"""
