"""Long-term memory for a LangGraph agent: facts stored in one thread are recalled in another, through LycheeStore.

    python examples/langgraph_memory.py                          # tiny random model: runs in seconds, recall is noise
    python examples/langgraph_memory.py --model smollm2-135m     # the embedded default model (CPU is fine)

The graph has no chat model (so it runs offline): a node stores what the user asks it to remember under the user's
namespace, and recalls the stored memories the gate ranks first for anything else. Threads are separate
conversations (each its own checkpoint); the store is shared by all of them, and kept on disk.
"""

from __future__ import annotations

import argparse
import tempfile
import uuid
from typing import TypedDict

from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from lychee_memory.integrations.langgraph import LycheeStore


class State(TypedDict):
    message: str
    reply: str


class Context(TypedDict):
    user_id: str


def respond(state: State, runtime: Runtime[Context]) -> dict[str, str]:
    """Remember ("remember: ...") or recall (anything else) in the user's own namespace."""
    assert runtime.store is not None
    namespace = ("memories", runtime.context["user_id"])
    message = state["message"]
    if message.lower().startswith("remember:"):
        fact = message.split(":", 1)[1].strip()
        runtime.store.put(namespace, uuid.uuid4().hex, {"text": fact})
        return {"reply": f"stored: {fact}"}
    hits = runtime.store.search(namespace, query=message, limit=1)
    return {"reply": f"recalled: {hits[0].value['text']}" if hits else "recalled nothing"}


def build(store: LycheeStore):
    graph = StateGraph(State, context_schema=Context)
    graph.add_node("respond", respond)
    graph.add_edge(START, "respond")
    graph.add_edge("respond", END)
    return graph.compile(checkpointer=InMemorySaver(), store=store)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-random-llama", help="model spec (default: %(default)s)")
    parser.add_argument("--store", help="store directory or URL (default: a temporary directory)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        app = build(LycheeStore(store=args.store or scratch, model=args.model, index={"fields": ["text"]}))
        alice = {"user_id": "alice"}
        conversations = [
            ("thread-1", alice, "remember: My sister Ingrid lives in Bergen."),
            ("thread-1", alice, "remember: I drink green tea every morning."),
            ("thread-1", {"user_id": "bob"}, "remember: Bob's locker code is 5521."),
            ("thread-2", alice, "Where does my sister live?"),  # another thread: only the store carries it over
            ("thread-3", alice, "What do I drink in the morning?"),
        ]
        for thread, context, message in conversations:
            result = app.invoke(
                {"message": message, "reply": ""}, {"configurable": {"thread_id": thread}}, context=context
            )
            print(f"[{thread} {context['user_id']}] {message}\n   -> {result['reply']}")


if __name__ == "__main__":
    main()
