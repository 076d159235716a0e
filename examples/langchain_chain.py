"""A LangChain RAG chain whose reader is Lychee memory: documents in, a streamed answer out.

    python examples/langchain_chain.py                          # tiny random model: runs in seconds, answers are noise
    python examples/langchain_chain.py --model smollm2-135m     # the embedded default model (CPU is fine)

The chain is ``{"question": RunnablePassthrough(), "documents": loader} | LycheeReader()``: the loader (or
any retriever) hands over whole documents and Lychee's gate finds the parts that matter.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from langchain_core.documents import Document
from langchain_core.runnables import RunnableLambda, RunnablePassthrough
from lychee_memory.integrations.langchain import LycheeReader, LycheeRetriever

from lychee_memory import LycheeMemory

DOCUMENTS = Path(__file__).resolve().parent / "documents"
QUESTION = "What is the access code for the east pier storage shed?"


def load_folder(folder: Path) -> list[Document]:
    """Every .txt file of a folder as a LangChain Document."""
    return [
        Document(page_content=path.read_text(encoding="utf-8"), metadata={"source": path.name}, id=path.name)
        for path in sorted(folder.glob("*.txt"))
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-random-llama", help="model spec (default: %(default)s)")
    parser.add_argument("--documents", type=Path, default=DOCUMENTS, help="folder of .txt files to read")
    parser.add_argument("--max-answer-tokens", type=int, help="cap on answer length (default: the engine's)")
    parser.add_argument("--question", default=QUESTION)
    args = parser.parse_args()

    options = {} if args.max_answer_tokens is None else {"max_answer_tokens": args.max_answer_tokens}
    engine = LycheeMemory.from_pretrained(args.model, show_progress=False, **options)
    loader = RunnableLambda(lambda _: load_folder(args.documents))
    chain = {"question": RunnablePassthrough(), "documents": loader} | LycheeReader(model=engine)

    print(f"Q: {args.question}\nA: ", end="", flush=True)
    for piece in chain.stream(args.question):
        print(piece, end="", flush=True)
    print()

    # The same documents as a retriever: the blocks the gate selects, with where they come from.
    retriever = LycheeRetriever.from_documents(load_folder(args.documents), model=engine, k=2)
    for document in retriever.invoke(args.question):
        meta = document.metadata
        print(
            f"   block {meta['block']} of {meta['doc']} chars {meta['start']}-{meta['end']} "
            f"score {meta['score']:+.2f}: {document.page_content[:70]!r}..."
        )


if __name__ == "__main__":
    main()
