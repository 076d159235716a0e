"""Write a needle-in-a-haystack document (SQuAD paragraphs plus one planted fact) for trying `lychee ask`.

    python benchmarks/needle_document.py --data ../shared/data --tokens 30000 --out /tmp/needle-30k.txt
    lychee ask /tmp/needle-30k.txt --question "<the printed question>"

Prints the question and the expected answer. The haystack is read from the dataset directory at run
time and is never stored in the repository.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=os.environ.get("LYCHEE_DATA_DIR"))
    parser.add_argument("--tokens", type=int, default=30000)
    parser.add_argument("--needle", type=int, default=0, help="index into lychee_memory.eval.tasks.NEEDLES")
    parser.add_argument("--depth", type=float, default=0.55, help="where the fact goes, 0 = start, 1 = end")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--model", default="smollm2-135m", help="whose tokenizer counts the tokens")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    from lychee_memory.config import ModelSettings
    from lychee_memory.eval.needles import NEEDLES
    from lychee_memory.eval.tasks import data_dir, load_squad_paragraphs, needle_document
    from lychee_memory.model_loading import load_model

    tokenizer = load_model(ModelSettings(spec=args.model)).tokenizer
    needle = NEEDLES[args.needle]
    text = needle_document(
        load_squad_paragraphs(data_dir(args.data)), tokenizer, args.tokens, needle, args.depth, args.seed
    )
    args.out.write_text(text, encoding="utf-8")
    tokens = len(tokenizer(text, add_special_tokens=False, verbose=False).input_ids)
    print(f"wrote {args.out} ({tokens} tokens)\nquestion: {needle.question}\nanswer:   {needle.answer}")


if __name__ == "__main__":
    main()
