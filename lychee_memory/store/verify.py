"""Checking a store item by item, and repairing damaged blocks and gate indexes by recompressing them from the
stored text."""

from __future__ import annotations

import json

import torch

from ..chunking import Chunk
from ..errors import CorruptDocumentError, StoreError
from .block_objects import BlockObjects
from .codec import INDEX_ONLY, Damaged, block_key
from .gate_index import index_key
from .manifest import BankManifest, StoredBlock, StoredDocument, now
from .manifests import Change, Manifests
from .reading import check_block
from .recipe import BlockRecipe, RecipeForSettings
from .reports import StoreProblem, VerifyReport

# (block index, document, entry, what is wrong with the block, what is wrong with its gate index)
_Damage = tuple[int, StoredDocument, StoredBlock, str | None, str | None]


def verify_store(
    objects: BlockObjects,
    manifests: Manifests,
    repair: bool,
    recipe: BlockRecipe | None,
    recipe_for_settings: RecipeForSettings | None,
) -> VerifyReport:
    """Check every manifest, document text, block and gate index checksum; with ``repair``, recompress bad blocks.

    Repair recompresses a block from the bank's stored text with ``recipe`` (an engine's
    ``block_recipe()``) when it built the bank, else with ``recipe_for_settings(recorded settings)``, which
    rebuilds the engine the bank recorded at ingest (the CLI's ``lychee store verify --repair`` does so); that
    rewrites the block and its gate index item. A damaged text cannot be repaired (the source is gone): ingest
    that document again.
    """
    problems: list[StoreProblem] = []
    checked: dict[str, str | None] = {}  # block key -> reason it is damaged, None when fine
    checked_indexes: dict[str, str | None] = {}  # index key -> reason it is damaged, None when fine
    documents_checked = 0
    names = manifests.names()
    recipes: dict[str, BlockRecipe] = {}
    for name in names:
        try:
            manifest = manifests.require(name)
        except StoreError as error:
            problems.append(StoreProblem(bank=name, kind="manifest", reason=str(error)))
            continue
        texts: dict[str, str | None] = {}
        for stored in manifest.documents:
            documents_checked += 1
            try:
                texts[stored.id] = objects.read_text(name, stored)
            except CorruptDocumentError as error:
                texts[stored.id] = None
                problems.append(StoreProblem(name, "document", str(error), stored.text_key, None, stored.id))
        damaged: list[_Damage] = []
        for index, (_, stored, entry) in enumerate(manifest.entries()):
            if entry.key not in checked:
                checked[entry.key] = _block_damage(objects, entry, manifest)
            index_reason = _index_damage(objects, entry, manifest, checked_indexes)
            if checked[entry.key] is not None or index_reason is not None:
                damaged.append((index, stored, entry, checked[entry.key], index_reason))
        if not damaged:
            continue
        if repair:
            with manifests.writing():  # until the manifest names the rewritten index items (gc waits)
                notes, indexes = _repair_bank(objects, manifest, damaged, texts, recipe, recipe_for_settings, recipes)
                if indexes:
                    manifests.update(name, _naming(manifest, indexes))
        for index, stored, entry, block_reason, index_reason in damaged:
            note = notes[entry.key] if repair else None
            repaired = repair and note is None
            if repaired:
                checked[entry.key] = None
                if manifest.gate_index is not None:
                    checked_indexes[index_key(entry.key, manifest.gate_index)] = None
            for kind, reason in (("block", block_reason), ("index", index_reason)):
                if reason is not None:
                    reason = reason if note is None else f"{reason}; not repaired: {note}"
                    problems.append(StoreProblem(name, kind, reason, entry.key, index, stored.id, repaired))
    return VerifyReport(
        banks=len(names),
        documents_checked=documents_checked,
        blocks_checked=len(checked),
        problems=tuple(problems),
        indexes_checked=len(checked_indexes),
    )


def _block_damage(objects: BlockObjects, entry: StoredBlock, manifest: BankManifest) -> str | None:
    if entry.storage == INDEX_ONLY:  # no payload was ever stored: its text (checked above) is its source
        return None
    data = objects.block(entry.key)
    if data is None:
        return "the block is missing"
    try:
        check_block(data, entry, manifest, torch.float32)
    except Damaged as damage:
        return f"the block is damaged: {damage}"
    return None


def _index_damage(
    objects: BlockObjects, entry: StoredBlock, manifest: BankManifest, checked: dict[str, str | None]
) -> str | None:
    """What is wrong with an entry's gate index item (None: fine, or the bank has no gate index)."""
    if manifest.gate_index is None:
        return None
    expected = index_key(entry.key, manifest.gate_index)
    if entry.index_key != expected:  # the manifest names none, or one of another spec
        return objects.read_index(entry, manifest)[1]
    if expected not in checked:
        checked[expected] = objects.read_index(entry, manifest)[1]
    return checked[expected]


def _repair_bank(
    objects: BlockObjects,
    manifest: BankManifest,
    damaged: list[_Damage],
    texts: dict[str, str | None],
    recipe: BlockRecipe | None,
    recipe_for_settings: RecipeForSettings | None,
    recipes: dict[str, BlockRecipe],
) -> tuple[dict[str, str | None], dict[str, tuple[str, int]]]:
    """Repair each damaged block once: (block key -> why not repaired or None, block key -> its new index item)."""
    notes: dict[str, str | None] = {}
    indexes: dict[str, tuple[str, int]] = {}
    for _, stored, entry, block_reason, _ in damaged:
        if entry.key in notes:
            continue
        if block_reason is None and manifest.gate_index is not None:
            item = index_key(entry.key, manifest.gate_index)
            if objects.read_index(entry.model_copy(update={"index_key": item}), manifest)[1] is None:
                notes[entry.key] = None  # the item is fine (another bank's repair wrote it): name it
                indexes[entry.key] = (item, objects.index_size(item))
                continue
        notes[entry.key] = _repair_block(
            objects, manifest, entry, texts.get(stored.id), recipe, recipe_for_settings, recipes, indexes
        )
    return notes, indexes


def _repair_block(
    objects: BlockObjects,
    manifest: BankManifest,
    entry: StoredBlock,
    text: str | None,
    recipe: BlockRecipe | None,
    recipe_for_settings: RecipeForSettings | None,
    recipes: dict[str, BlockRecipe],
    indexes: dict[str, tuple[str, int]],
) -> str | None:
    """Recompress one block from the stored text and rewrite it and its gate index item (recorded in ``indexes``);
    returns why it could not, or None when repaired."""
    if text is None:
        return "the document's text is damaged too; ingest the document again"
    if manifest.legacy_fingerprint:
        return "the bank predates lychee-memory 0.2's fingerprints; rebuild it with --recompress instead"
    if manifest.before_framing:
        return "the bank predates framed blocks; rebuild it with --recompress instead"
    if recipe is None or recipe.identity != manifest.identity or recipe.gate_index != manifest.gate_index:
        if manifest.engine_config is None:
            return "the bank records no engine settings; repair it with the engine that built it"
        if recipe_for_settings is None:
            return (
                "no engine to recompress with: pass the engine's block_recipe(), or run `lychee store verify --repair`"
            )
        settings_key = json.dumps(manifest.engine_config, sort_keys=True)
        if settings_key not in recipes:
            recipes[settings_key] = recipe_for_settings(manifest.engine_config)
        recipe = recipes[settings_key]
    if recipe.identity != manifest.identity:
        return "the engine's model or compressor differs from the bank's"
    if recipe.gate_index != manifest.gate_index:
        return "the engine builds another gate index than the bank's; rebuild it with --recompress instead"
    ids = tuple(recipe.tokenize(text)[entry.token_start : entry.token_end])
    identity = manifest.identity
    key = block_key(identity.model_fingerprint, identity.compressor, entry.storage, torch.tensor(ids), identity.opening)
    if key != entry.key:
        return "the text no longer tokenizes to the block's tokens (another tokenizer?)"
    chunk = Chunk(
        document_index=0,  # compression reads only the tokens; the span comes from the manifest
        document_id="",
        token_ids=ids,
        token_start=entry.token_start,
        token_end=entry.token_end,
        char_start=entry.char_start,
        char_end=entry.char_end,
        text=text[entry.char_start : entry.char_end],
    )
    (block,) = recipe.compress([chunk])
    spec = manifest.gate_index
    if spec is not None and block.gate_keys is None:
        return "the engine made no gate index for the block"
    objects.write_block(entry.key, block, identity, entry.storage)
    if spec is not None and block.gate_keys is not None:
        indexes[entry.key] = objects.write_index(entry.key, spec, block.gate_keys, block.keys.shape[-1])
    return None


def _naming(read: BankManifest, indexes: dict[str, tuple[str, int]]) -> Change:
    """The change naming the rewritten index items in the bank's manifest (if it is still indexed as when read)."""

    def change(current: BankManifest | None) -> BankManifest | None:
        if current is None or current.gate_index != read.gate_index:
            return None
        changed = False
        for _, _, entry in current.entries():
            if entry.key in indexes and (entry.index_key, entry.index_bytes) != indexes[entry.key]:
                entry.index_key, entry.index_bytes = indexes[entry.key]
                changed = True
        if not changed:
            return None
        current.updated = now()
        return current

    return change
