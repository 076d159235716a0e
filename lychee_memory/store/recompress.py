"""Converting a bank's blocks to another codec in place, from their stored payloads and without a model:
``MemoryStore.recompress`` (CLI: ``lychee store recompress``).

Each block is decoded with the codec it was written with and encoded with the new one under its new content key
(the key names the codec); its gate index item is written again under the new block's key. The manifest is
written last, with the store's generation check like every rebuild, so a bank that changed meanwhile is converted
again from a fresh read. The old blocks stay until ``gc``. A conversion that would need bits the stored codec
threw away (to a wider codec) is refused, as is an unknown codec; every block is checked before anything is
written, so a refused or failed command changes nothing stored. Converting to the index-only ``none`` keeps the
gate index items and drops the payloads (its KV is encoded from the text when read); from ``none`` is refused:
the KV was never kept, so the bank must be ingested again.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

from ..blocks import MemoryBlock, SourceSpan
from ..errors import BankNotFoundError, ConfigurationError, CorruptBlockError, NonFiniteScalesError, StoreError
from ..gate.index_format import INDEX_DTYPES, IndexSpec
from .block_objects import BlockObjects
from .codec import INDEX_ONLY, BlockCodec, Damaged, DecodedBlock, block_key, codec_for
from .manifest import BLOCK_DTYPES, BankManifest, StoredBlock, now
from .manifests import Manifests
from .reading import check_block
from .reports import RecompressReport

logger = logging.getLogger(__name__)

RECOMPRESS_ROUNDS = 5  # a conversion that finds its bank changed by another writer catches up this many times


def keeps_bits_for(source: BlockCodec, target: BlockCodec) -> bool:
    """Whether ``target`` asks for no bit ``source`` threw away: neither its keys nor its values are wider, and two
    formats of one width are the same format (bfloat16 and float16 each keep bits the other lost)."""
    narrower = all(wanted <= kept for wanted, kept in zip(target.widths, source.widths))
    return narrower and (target.widths != source.widths or target.name == source.name)


def recompress_bank(
    objects: BlockObjects, manifests: Manifests, name: str, codec: str | None, index_dtype: str | None = None
) -> RecompressReport:
    """Convert every block of bank ``name`` to ``codec`` and/or its gate index to ``index_dtype`` (see the module);
    the report says what changed."""
    started = time.perf_counter()
    if codec is None and index_dtype is None:
        raise ConfigurationError(f"cannot recompress bank {name!r}: name a codec, an index dtype, or both")
    if codec is not None and codec not in BLOCK_DTYPES:
        raise ConfigurationError(
            f"cannot recompress bank {name!r} to {codec!r}: unknown codec; choose one of {', '.join(BLOCK_DTYPES)}"
        )
    if index_dtype is not None and index_dtype not in INDEX_DTYPES:
        raise ConfigurationError(
            f"cannot recompress bank {name!r}'s gate index to {index_dtype!r}: unknown index dtype; choose one of "
            f"{', '.join(INDEX_DTYPES)}"
        )
    target = codec_for(codec) if codec is not None else None
    converted: dict[str, StoredBlock] = {}  # old block key -> its entry under the new codec and index spec
    for _ in range(RECOMPRESS_ROUNDS):
        current = manifests.require(name)
        entries = [entry for _, _, entry in current.entries()]
        sources = sorted({entry.storage for entry in entries})
        if target is not None:
            _refuse_lost_bits(name, sources, target)
        spec = _index_spec(name, current.gate_index, index_dtype)
        reindex = spec != current.gate_index
        changing = {entry.key for entry in entries if reindex or (codec is not None and entry.storage != codec)}
        pending = {entry.key: entry for entry in entries if entry.key in changing and entry.key not in converted}
        label = codec or ", ".join(sources)
        if not changing:
            logger.info("bank %r is already stored as %s (index %s): nothing to convert", name, label, index_dtype)
            return _report(current, current, label, sources, 0, False, started)
        with manifests.writing():  # gc waits until the manifest names the new blocks
            recoded = {key: codec is not None and entry.storage != codec for key, entry in pending.items()}
            for key, entry in pending.items():  # every block checked before the first is written
                if recoded[key]:
                    _checked(objects, current, entry)
            for key, entry in pending.items():
                decoded = _checked(objects, current, entry) if recoded[key] else None
                converted[key] = _convert(objects, current, entry, decoded, target, spec)
            written = manifests.update(name, _converted(name, converted, current.generation, spec))
        if written is not None:
            count = len(changing)
            return _report(current, written, label, sources, count, True, started)
    raise StoreError(f"bank {name!r} kept changing while it was being recompressed; try again")


def _index_spec(name: str, spec: dict[str, Any] | None, index_dtype: str | None) -> dict[str, Any] | None:
    """The bank's gate index spec stored as ``index_dtype`` (unchanged when None); refuses a bank without an index
    and a conversion to a wider format (int8 to float16: the float16 bits were thrown away)."""
    if index_dtype is None:
        return spec
    if spec is None:
        raise ConfigurationError(
            f"cannot recompress bank {name!r}'s gate index to {index_dtype}: the bank has no gate index (its "
            "compressor builds none)"
        )
    stored = IndexSpec.from_description(spec)
    if stored.dtype == index_dtype:
        return spec
    if INDEX_DTYPES.index(index_dtype) < INDEX_DTYPES.index(stored.dtype):
        raise ConfigurationError(
            f"cannot recompress bank {name!r}'s gate index to {index_dtype}: it is stored as {stored.dtype}, which no "
            f"longer holds the bits {index_dtype} keeps; rebuild the bank from its stored text instead "
            f"(ingest --recompress with gate.index_dtype={index_dtype})"
        )
    return dataclasses.replace(stored, dtype=index_dtype).describe()


def _refuse_lost_bits(name: str, sources: list[str], target: BlockCodec) -> None:
    for source in sources:
        if source == INDEX_ONLY and target.name != INDEX_ONLY:
            raise ConfigurationError(
                f"cannot recompress bank {name!r} to {target.name}: it is index-only (block dtype none), its KV was "
                f"never stored; ingest it again with --block-dtype {target.name} (ingest --recompress rebuilds it from "
                "its stored text)"
            )
        stored = codec_for(source)
        if not keeps_bits_for(stored, target):
            raise ConfigurationError(
                f"cannot recompress bank {name!r} to {target.name}: its blocks stored as {source} "
                f"(keys {stored.widths[0]} bits, values {stored.widths[1]} bits per element) no longer hold the bits "
                f"{target.name} keeps (keys {target.widths[0]}, values {target.widths[1]}); rebuild the bank from its "
                f"stored text instead (ingest --recompress --block-dtype {target.name})"
            )


def _checked(objects: BlockObjects, manifest: BankManifest, entry: StoredBlock) -> DecodedBlock:
    """The entry's block, decoded with its stored codec and checked like every read; CorruptBlockError if not."""
    where = f"bank {manifest.name!r} block {entry.key[:16]} (chars {entry.char_start}-{entry.char_end})"
    advice = f"repair it first (`lychee store verify --repair --store {objects.location}`)"
    data = objects.block(entry.key)
    if data is None:
        raise CorruptBlockError(f"cannot recompress {where}: it is missing from the store; {advice}")
    try:
        return check_block(data, entry, manifest, None)
    except Damaged as damage:
        raise CorruptBlockError(f"cannot recompress {where}: it is damaged ({damage}); {advice}") from None


def _convert(
    objects: BlockObjects,
    manifest: BankManifest,
    entry: StoredBlock,
    decoded: DecodedBlock | None,
    target: BlockCodec | None,
    spec: dict[str, Any] | None,
) -> StoredBlock:
    """Write the decoded block with ``target`` under its new key (None: the block stays as it is) and its gate index
    item with ``spec``; its new entry."""
    key, storage, nbytes = entry.key, entry.storage, entry.nbytes
    if decoded is not None and target is not None:
        key = block_key(
            manifest.model_fingerprint, manifest.compressor, target.name, decoded.token_ids, manifest.opening
        )
        storage = target.name
        nbytes = _write_block(objects, manifest, entry, decoded, key, target)
    index: tuple[str, int] | None = None
    if spec is not None:
        index = objects.index_item(key, spec)
        if index is None:
            gate_keys, why = objects.read_index(entry, manifest)
            if gate_keys is not None:
                index = objects.write_index(key, spec, gate_keys, gate_keys.shape[-1])
            elif why is not None:
                logger.warning("bank %r block %s: its gate index is not carried over (%s)", manifest.name, key, why)
    return entry.model_copy(
        update={
            "key": key,
            "storage": storage,
            "nbytes": nbytes,
            "index_key": index[0] if index else None,
            "index_bytes": index[1] if index else 0,
        }
    )


def _write_block(
    objects: BlockObjects,
    manifest: BankManifest,
    entry: StoredBlock,
    decoded: DecodedBlock,
    key: str,
    target: BlockCodec,
) -> int:
    """Write the decoded block with ``target`` under ``key`` unless it is stored already; its stored bytes."""
    span = SourceSpan(
        document_id="",
        document_index=0,
        char_start=entry.char_start,
        char_end=entry.char_end,
        token_start=entry.token_start,
        token_end=entry.token_end,
        text="",
    )  # not stored: a block's payload holds no span
    block = MemoryBlock(
        keys=decoded.keys,
        values=decoded.values,
        valid=decoded.valid,
        next_position=int(decoded.metadata["next_position"]),
        token_ids=decoded.token_ids,
        span=span,
        compressor=decoded.metadata["compressor_name"],
    )
    shape = objects.block_shape(key)
    if shape is not None:
        return shape[1]
    try:
        return objects.write_block(key, block, manifest.identity, target.name)
    except NonFiniteScalesError as error:
        raise NonFiniteScalesError(
            f"cannot recompress bank {manifest.name!r} block {entry.key[:16]}: {error}"
        ) from None


def _converted(name: str, converted: dict[str, StoredBlock], generation: int, spec: dict[str, Any] | None):
    """The change naming the converted blocks (and the index spec) if the bank is still at ``generation``."""

    def change(latest: BankManifest | None) -> BankManifest | None:
        if latest is None:
            raise BankNotFoundError(f"bank {name!r} was deleted or renamed while it was being recompressed")
        if latest.generation != generation:
            return None
        manifest = latest.model_copy(deep=True)
        for document in manifest.documents:
            document.blocks = [converted.get(entry.key, entry) for entry in document.blocks]
        manifest.gate_index = spec
        manifest.updated = now()
        return manifest

    return change


def _report(
    before: BankManifest,
    after: BankManifest,
    codec: str,
    sources: list[str],
    converted: int,
    changed: bool,
    started: float,
) -> RecompressReport:
    return RecompressReport(
        bank=after.name,
        codec=codec,
        from_codecs=tuple(sources),
        blocks=after.info().blocks,
        converted=converted,
        bytes_before=before.info().stored_bytes,
        bytes_after=after.info().stored_bytes,
        changed=changed,
        generation=after.generation,
        seconds=time.perf_counter() - started,
    )
