"""What a stored block costs per document token, per codec, for the embedded default and for the 7B-8B models
users run on GPUs: every registered codec encodes a random 1,024-slot block of each geometry through the store's
own writer (``codec.encode_block``: framed, checksummed safetensors with scales, zeros, valid mask and token ids),
and the bytes written are divided by the slots. No model is loaded: the geometry is all a codec's size depends on.
The gate index (float16 keys of the prefilter's heads) comes on top: heads x head_dim x 2 bytes per token.

    python benchmarks/codec_bytes.py            # prints a markdown table
    python benchmarks/codec_bytes.py --json     # the same numbers as JSON
"""

from __future__ import annotations

import argparse
import json

# (layers, KV heads, head_dim) from each model's published config.json
GEOMETRIES = {
    "SmolLM2-135M-Instruct (embedded default)": (30, 3, 64),
    "Qwen2.5-7B-Instruct": (28, 4, 128),
    "Llama-3.1-8B-Instruct": (32, 8, 128),
}
SLOTS = 1024


def block_bytes_per_token(layers: int, heads: int, head_dim: int, storage: str, slots: int = SLOTS) -> float:
    """Stored bytes of one ``slots``-slot block of this geometry written with codec ``storage``, per slot."""
    import torch

    from lychee_memory.blocks import BankIdentity, MemoryBlock, SourceSpan
    from lychee_memory.store.codec import encode_block

    generator = torch.Generator().manual_seed(0)
    shape = (layers, heads, slots, head_dim)
    block = MemoryBlock(
        keys=torch.randn(shape, generator=generator, dtype=torch.float32).to(torch.bfloat16),
        values=torch.randn(shape, generator=generator, dtype=torch.float32).to(torch.bfloat16),
        valid=torch.ones(slots, dtype=torch.bool),
        next_position=slots,
        token_ids=torch.arange(slots),
        span=SourceSpan(
            document_id="d", document_index=0, char_start=0, char_end=slots, token_start=0, token_end=slots, text=""
        ),
        compressor="none",
    )
    identity = BankIdentity(model_fingerprint="geometry", compressor={"name": "none"}, chunk_tokens=slots)
    return len(encode_block(block, storage, identity)) / slots


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a markdown table")
    args = parser.parse_args()

    from lychee_memory.store.codec import CODECS, INDEX_ONLY

    codecs = [name for name in CODECS if name != INDEX_ONLY]
    rows = {
        model: {codec: round(block_bytes_per_token(*geometry, codec)) for codec in codecs}
        for model, geometry in GEOMETRIES.items()
    }
    if args.json:
        print(json.dumps({"slots": SLOTS, "geometries": GEOMETRIES, "block_bytes_per_token": rows}, indent=2))
        return
    print(f"| model (layers x KV heads x head_dim) | {' | '.join(codecs)} |")
    print("|---|" + "---|" * len(codecs))
    for model, sizes in rows.items():
        layers, heads, head_dim = GEOMETRIES[model]
        cells = " | ".join(f"{sizes[codec]:,}" for codec in codecs)
        print(f"| {model} ({layers} x {heads} x {head_dim}) | {cells} |")


if __name__ == "__main__":
    main()
