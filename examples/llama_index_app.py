"""A LlamaIndex question-answering app switched from a vector index to Lychee memory in one line.

    python examples/llama_index_app.py                          # tiny random model: runs in seconds, answers are noise
    python examples/llama_index_app.py --model smollm2-135m     # the embedded default model (CPU is fine)

No embedding model and no LLM are configured: Lychee's gate replaces the vector search and its reasoner
writes the answer, so ``Settings.llm`` is never read and nothing calls OpenAI.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from llama_index.core import SimpleDirectoryReader
from lychee_memory.integrations.llama_index import LycheeIndex

from lychee_memory import LycheeMemory

DOCUMENTS = Path(__file__).resolve().parent / "documents"
QUESTIONS = [
    "What is the access code for the east pier storage shed?",
    "Who is the new head gardener at Kestrel Hall?",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-random-llama", help="model spec (default: %(default)s)")
    parser.add_argument("--documents", type=Path, default=DOCUMENTS, help="folder of .txt files to read")
    parser.add_argument("--max-answer-tokens", type=int, help="cap on answer length (default: the engine's)")
    args = parser.parse_args()

    documents = SimpleDirectoryReader(str(args.documents), required_exts=[".txt"]).load_data()
    options = {} if args.max_answer_tokens is None else {"max_answer_tokens": args.max_answer_tokens}
    engine = LycheeMemory.from_pretrained(args.model, show_progress=False, **options)

    # index = VectorStoreIndex.from_documents(documents)       # before: embeddings + an LLM (OpenAI by default)
    index = LycheeIndex.from_documents(documents, model=engine)  # after: compressed memory, no LLM to configure

    query_engine = index.as_query_engine()
    response = query_engine.query(QUESTIONS[0])
    print(f"Q: {QUESTIONS[0]}\nA: {response}")
    for source in response.source_nodes:
        node = source.node
        print(
            f"   source {node.metadata['file_name']} chars {node.start_char_idx}-{node.end_char_idx} "
            f"gate score {source.score:+.2f}: {node.get_content()[:70]!r}..."
        )

    streaming_engine = index.as_query_engine(streaming=True)
    streamed = streaming_engine.query(QUESTIONS[1])
    print(f"Q: {QUESTIONS[1]}\nA: ", end="")
    streamed.print_response_stream()
    print(f"\n   read {len(streamed.source_nodes)} of {len(index.bank)} blocks")


if __name__ == "__main__":
    main()
