"""Lychee memory as an agent's tool, in LangChain and in LlamaIndex, in place of a RAG retriever tool.

    python examples/agent_tool.py                          # tiny random model: runs in seconds, answers are noise
    python examples/agent_tool.py --model smollm2-135m     # the embedded default model (CPU is fine)

An agent's LLM sees each tool's name, description and argument schema and emits tool calls; this
script prints what the LLM would see and executes one tool call the way an agent loop does, so it runs
without a chat model (or network).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from langchain_core.tools import create_retriever_tool
from llama_index.core.tools import QueryEngineTool
from lychee_memory.integrations.langchain import LycheeReader, LycheeRetriever
from lychee_memory.integrations.llama_index import LycheeQueryEngine

from lychee_memory import LycheeMemory

DOCUMENTS = Path(__file__).resolve().parent / "documents"
QUESTION = "What is the access code for the east pier storage shed?"
DESCRIPTION = "Answers questions about the town of Arvel and its harbour from the visitor's guide."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-random-llama", help="model spec (default: %(default)s)")
    parser.add_argument("--documents", type=Path, default=DOCUMENTS, help="folder of .txt files to read")
    parser.add_argument("--max-answer-tokens", type=int, help="cap on answer length (default: the engine's)")
    args = parser.parse_args()

    options = {} if args.max_answer_tokens is None else {"max_answer_tokens": args.max_answer_tokens}
    engine = LycheeMemory.from_pretrained(args.model, show_progress=False, **options)
    bank = engine.ingest([args.documents])  # compressed once, shared by every tool below

    # LangChain: the reader as a tool (answers), and the retriever as a retriever tool (passages).
    answer_tool = LycheeReader(model=engine, bank=bank).as_tool(name="arvel_guide", description=DESCRIPTION)
    passages_tool = create_retriever_tool(
        LycheeRetriever(model=engine, bank=bank, k=2), "arvel_guide_passages", "Passages of the Arvel guide."
    )
    for tool in (answer_tool, passages_tool):
        print(f"LangChain tool {tool.name}: {tool.description}\n   arguments: {json.dumps(tool.args)}")
    call = {"name": "arvel_guide", "args": {"question": QUESTION}, "id": "call-1", "type": "tool_call"}
    message = answer_tool.invoke(call)  # what an agent executor does with the LLM's tool call
    print(f"tool call {json.dumps(call['args'])} -> ToolMessage: {message.content!r}")

    # LlamaIndex: the query engine as a QueryEngineTool for a FunctionAgent or ReActAgent.
    query_tool = QueryEngineTool.from_defaults(
        query_engine=LycheeQueryEngine(bank, engine), name="arvel_guide", description=DESCRIPTION
    )
    print(f"LlamaIndex tool {query_tool.metadata.name}: {query_tool.metadata.description}")
    output = query_tool.call(QUESTION)
    print(f"tool call {QUESTION!r} -> {output.content!r} ({len(output.raw_output.source_nodes)} source blocks)")


if __name__ == "__main__":
    main()
