"""How much does each block codec change what the model reads? Quantised vs computed KV of the embedded default.

A short generated document (filler sentences from a seeded RNG and one planted needle of the evaluation family,
``eval.needles.single_needle``) is ingested in memory; every block's keys and values go through each codec
(encode, decode) and are compared with the computed ones: relative key and value error (Frobenius), the
attention-output error per layer on the question's tokens read after the block (each layer's self-attention
output, relative), and the gate's score per block (the stage-2 rule's gain; the drift against bfloat16 and
whether the needle's block still ranks first). Bytes per document token count the stored blocks alone (framed
safetensors, as written) and, for the arithmetic, the codec's bytes per element times the model's elements per
token. ``--codecs`` names shipped codecs, measured at their shipped groups (k4v3: keys in groups of 128 slots,
values of 64 channels). ``--groups K`` or ``K:V`` adds unregistered codecs of each group kind with K-slot key groups
and V-channel value groups (V = K when left out), named ``KIND-gK`` or ``KIND-gK:V``.

The index-only tier ``none`` stores no KV: its blocks are encoded from the stored text when read. Its row ingests
the document into a ``none`` store and reads every block back through the engine (``engine.open_bank``), so its
errors against the computed KV are measured, not assumed; they are 0 by construction (the same forward).

    python benchmarks/codec_fidelity.py --tokens 3000 --codecs bfloat16 int8 int4 k4v3 k4v2 int2 none
    python benchmarks/codec_fidelity.py --tokens 3000 --codecs bfloat16 --groups 32 64 128
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

FILLER = (
    "The {a} of the {b} was {c} in the {d} season.",
    "Travellers said the {b} near the {a} had grown {c}.",
    "Every {d} morning the {a} keepers counted the {b} twice.",
    "A {c} wind crossed the {b} and reached the {a} by noon.",
)
WORDS = {
    "a": "harbour mill archive orchard quarry lighthouse market bridge".split(),
    "b": "river tower garden valley station library forest square".split(),
    "c": "quiet crowded narrow golden restless ancient bright distant".split(),
    "d": "dry wet cold long early late warm short".split(),
}


def generated_document(tokenizer, tokens: int, seed: int) -> tuple[str, str, str]:
    """A document of about ``tokens`` tokens with one needle in its middle; returns (text, question, answer)."""
    from lychee_memory.eval.needles import single_needle

    rng = random.Random(seed)
    needle, question, answer = single_needle(rng)
    sentences: list[str] = []
    while len(tokenizer(" ".join(sentences), add_special_tokens=False)["input_ids"]) < tokens:
        sentences.extend(
            rng.choice(FILLER).format(**{slot: rng.choice(words) for slot, words in WORDS.items()}) for _ in range(50)
        )
    sentences.insert(len(sentences) // 2, needle[0])
    return " ".join(sentences), question, answer


def attention_outputs(engine, block, prompt_ids: list[int]) -> list:
    """Each layer's self-attention output on the prompt's tokens, read after ``block`` (and the opening)."""
    from lychee_memory.kv_prefix import PromptRow, prefill

    captured: list = []
    layers = engine.loaded.model.get_decoder().layers
    hooks = [
        layer.self_attn.register_forward_hook(lambda _m, _i, output: captured.append(output[0].float().clone()))
        for layer in layers
    ]
    try:
        prefill(engine.loaded, [PromptRow(prompt_ids, block, engine.opening)])
    finally:
        for hook in hooks:
            hook.remove()
    return captured


SHIPPED = ("bfloat16", "int8", "int4", "k4v3", "k4v2", "int2", "none")
GROUP_KINDS = ("int4", "k4v3", "k4v2", "int2")


def group_sizes(text: str) -> tuple[int, int]:
    """``"64"`` -> (64, 64); ``"128:64"`` -> (128, 64): key group (slots) and value group (channels)."""
    parts = text.split(":")
    if len(parts) > 2 or not all(part.isdigit() and int(part) > 0 for part in parts):
        raise argparse.ArgumentTypeError(f"a group is K or K:V with positive K and V, got {text!r}")
    return int(parts[0]), int(parts[-1])


def index_only_blocks(engine, text: str, expected: int) -> list:
    """The document's blocks as an index-only (``none``) bank reads them: ingested into a ``none`` store in a
    temporary folder, opened by the engine, every block encoded from the stored text."""
    from lychee_memory import Document
    from lychee_memory.store import MemoryStore

    with tempfile.TemporaryDirectory(prefix="codec_fidelity_") as folder:
        store = MemoryStore(Path(folder), block_dtype="none")
        engine.ingest([Document.from_text(text, id="doc")], store=store, bank="doc")
        bank = engine.open_bank("doc", store)
        blocks = [bank.block(index) for index in range(len(bank.spans))]
        store.close()
    if len(blocks) != expected:
        raise SystemExit(f"the none bank has {len(blocks)} blocks, the in-memory bank {expected}")
    return blocks


def relative(error, reference) -> float:
    return float((error - reference).norm() / reference.norm().clamp_min(1e-12))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tokens", type=int, default=3000, help="document length in tokens")
    parser.add_argument(
        "--codecs", nargs="+", default=list(SHIPPED), help="shipped codecs, at their groups (bfloat16 always first)"
    )
    parser.add_argument(
        "--groups", nargs="*", type=group_sizes, default=[], help="K or K:V: key/value groups of extra variants"
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "codec_fidelity.json")
    args = parser.parse_args()

    import torch

    from lychee_memory import Document, LycheeMemory
    from lychee_memory.blocks import MemoryBlock
    from lychee_memory.gate.rules import ScoreRequest
    from lychee_memory.store.codec import CODECS, INDEX_ONLY, GroupCodec

    started = time.perf_counter()
    torch.manual_seed(0)
    engine = LycheeMemory.from_pretrained(args.model)
    text, question, answer = generated_document(engine.loaded.tokenizer, args.tokens, args.seed)
    bank = engine.ingest([Document.from_text(text, id="doc")])
    blocks = [bank.block(index) for index in range(len(bank.spans))]
    needle_block = next(index for index, span in enumerate(bank.spans) if answer in span.text)
    layers, heads, _, head_dim = blocks[0].keys.shape
    elements = 2 * layers * heads * head_dim  # keys and values, per token
    tokens = sum(span.token_end - span.token_start for span in bank.spans)
    prompt_ids = engine.prompts.encode_text("Question: " + question)
    memory = getattr(engine.rule, "initial_memory", "")

    unknown = [name for name in args.codecs if name not in CODECS]
    if unknown:
        raise SystemExit(f"--codecs: unknown codec(s) {unknown}; known: {sorted(CODECS)}")
    # bfloat16 first: the reference of the gains
    codecs = {name: CODECS[name] for name in ["bfloat16", *(n for n in args.codecs if n != "bfloat16")]}
    for key_group, value_group in args.groups:
        for kind in GROUP_KINDS:
            shipped = CODECS[kind]
            assert isinstance(shipped, GroupCodec)
            label = f"{kind}-g{key_group}" if key_group == value_group else f"{kind}-g{key_group}:{value_group}"
            codecs[label] = dataclasses.replace(shipped, key_group=key_group, value_group=value_group)
    stored_blocks = index_only_blocks(engine, text, len(blocks)) if INDEX_ONLY in codecs else []

    def scores(candidates: list[MemoryBlock]) -> list[float]:
        requests = [ScoreRequest(question, memory, block) for block in candidates]
        return engine.rule.score(engine.loaded, engine.prompts, requests)

    reference_outputs = [attention_outputs(engine, block, prompt_ids) for block in blocks]
    rows = []
    reference_gains: list[float] | None = None
    for name, codec in codecs.items():
        decoded, key_errors, value_errors, stored = [], [], [], 0
        for number, block in enumerate(blocks):
            if name == INDEX_ONLY:  # nothing stored: the block as the engine encodes it from the stored text
                keys, values, tensors = stored_blocks[number].keys, stored_blocks[number].values, {}
            else:
                tensors = codec.encode(block.keys, block.values, block.valid)
                keys, values = codec.decode(tensors, block.keys.dtype)
            valid = block.valid
            key_errors.append(relative(keys[:, :, valid], block.keys[:, :, valid]))
            value_errors.append(relative(values[:, :, valid], block.values[:, :, valid]))
            decoded.append(
                MemoryBlock(
                    keys, values, block.valid, block.next_position, block.token_ids, block.span, block.compressor
                )
            )
            stored += sum(tensor.numel() * tensor.element_size() for tensor in tensors.values())
        per_layer = [[] for _ in range(layers)]
        for index, block in enumerate(decoded):
            outputs = attention_outputs(engine, block, prompt_ids)
            for layer, (mine, theirs) in enumerate(zip(outputs, reference_outputs[index])):
                per_layer[layer].append(relative(mine, theirs))
        layer_means = [statistics.fmean(values) for values in per_layer]
        gains = scores(decoded)
        if name == "bfloat16":
            reference_gains = gains
        assert reference_gains is not None, "bfloat16 is measured first"
        drift = [abs(mine - theirs) for mine, theirs in zip(gains, reference_gains)]
        ranking = sorted(range(len(gains)), key=lambda index: -gains[index])
        reference_ranking = sorted(range(len(reference_gains)), key=lambda index: -reference_gains[index])
        rows.append(
            {
                "codec": name,
                "bytes_per_token_tensors": stored / tokens,
                "key_group": getattr(codec, "key_group", None),
                "value_group": getattr(codec, "value_group", None),
                "bytes_per_token_arithmetic": elements
                * (codec.stored_bytes_per_element() if isinstance(codec, GroupCodec) else codec.bytes_per_element),
                "key_error": statistics.fmean(key_errors),
                "value_error": statistics.fmean(value_errors),
                "attention_error_mean": statistics.fmean(layer_means),
                "attention_error_max_layer": max(layer_means),
                "attention_error_worst_layer": layer_means.index(max(layer_means)),
                "gain_drift_max": max(drift),
                "needle_first": ranking[0] == needle_block,
                "ranking_changed": ranking != reference_ranking,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    result = {
        "model": args.model,
        "tokens": tokens,
        "blocks": len(blocks),
        "slots_per_block": [block.num_slots for block in blocks],
        "elements_per_token": elements,
        "needle_block": needle_block,
        "seconds": time.perf_counter() - started,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(table(result))


def table(result: dict) -> str:
    """The result as the markdown table BENCHMARKS.md holds."""
    lines = [
        "| codec | B/token (stored tensors) | B/token (arithmetic) | key err | value err | attn-out err mean / worst"
        " layer | gate gain drift max | needle block first | ranking changed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['codec']} | {row['bytes_per_token_tensors']:,.0f} | {row['bytes_per_token_arithmetic']:,.0f} | "
            f"{row['key_error']:.4f} | {row['value_error']:.4f} | {row['attention_error_mean']:.4f} / "
            f"{row['attention_error_max_layer']:.4f} (L{row['attention_error_worst_layer']}) | "
            f"{row['gain_drift_max']:.3f} | {row['needle_first']} | {row['ranking_changed']} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
