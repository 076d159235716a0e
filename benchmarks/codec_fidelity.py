"""How much does each block codec change what the model reads? Quantised vs computed KV of the embedded default.

A short generated document (filler sentences from a seeded RNG and one planted needle of the evaluation family,
``eval.needles.single_needle``) is ingested in memory; every block's keys and values go through each codec
(encode, decode) and are compared with the computed ones: relative key and value error (Frobenius), the
attention-output error per layer on the question's tokens read after the block (each layer's self-attention
output, relative), and the gate's score per block (the stage-2 rule's gain; the drift against bfloat16 and
whether the needle's block still ranks first). Bytes per document token count the stored blocks alone (framed
safetensors, as written) and, for the arithmetic, the codec's bytes per element times the model's elements per
token. Group sizes other than the shipped one are measured as unregistered codecs of the same kind.

    python benchmarks/codec_fidelity.py --tokens 3000 --groups 32 64 128
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
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


def relative(error, reference) -> float:
    return float((error - reference).norm() / reference.norm().clamp_min(1e-12))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tokens", type=int, default=3000, help="document length in tokens")
    parser.add_argument("--groups", nargs="+", type=int, default=[32, 64, 128], help="group sizes to compare")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "codec_fidelity.json")
    args = parser.parse_args()

    import torch

    from lychee_memory import Document, LycheeMemory
    from lychee_memory.blocks import MemoryBlock
    from lychee_memory.gate.rules import ScoreRequest
    from lychee_memory.store.codec import CODECS, GroupCodec

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

    codecs = {name: CODECS[name] for name in ("bfloat16", "float16", "int8")}  # bfloat16 first: the reference
    for group in args.groups:
        for kind in ("int4", "k4v2", "int2"):
            shipped = CODECS[kind]
            assert isinstance(shipped, GroupCodec)
            same_kind = GroupCodec(kind, shipped.bytes_per_element, shipped.key_bits, shipped.value_bits, group)
            codecs[f"{kind}-g{group}"] = shipped if group == shipped.group else same_kind

    def scores(candidates: list[MemoryBlock]) -> list[float]:
        requests = [ScoreRequest(question, memory, block) for block in candidates]
        return engine.rule.score(engine.loaded, engine.prompts, requests)

    reference_outputs = [attention_outputs(engine, block, prompt_ids) for block in blocks]
    rows = []
    reference_gains: list[float] | None = None
    for name, codec in codecs.items():
        decoded, key_errors, value_errors, stored = [], [], [], 0
        for block in blocks:
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
