"""Checking a store item by item, and repairing damaged blocks by recompressing them from the stored text."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import torch

from ..chunking import Chunk
from ..errors import CorruptDocumentError, StoreError
from .codec import Damaged, block_key, encode_block
from .manifest import BankManifest, StoredBlock, StoredDocument
from .recipe import BlockRecipe, RecipeForSettings
from .reports import StoreProblem, VerifyReport

if TYPE_CHECKING:
    from .store import MemoryStore


def verify_store(
    store: MemoryStore,
    repair: bool,
    recipe: BlockRecipe | None,
    recipe_for_settings: RecipeForSettings | None,
) -> VerifyReport:
    """Check every manifest, document text and block checksum; with ``repair``, recompress bad blocks.

    Repair recompresses a block from the bank's stored text with ``recipe`` (an engine's
    ``block_recipe()``) when it built the bank, else with ``recipe_for_settings(recorded settings)``, which
    rebuilds the engine the bank recorded at ingest (the CLI's ``lychee store verify --repair`` does so). A
    damaged text cannot be repaired (the source is gone): ingest that document again.
    """
    problems: list[StoreProblem] = []
    checked: dict[str, str | None] = {}  # key -> reason it is damaged, None when fine
    documents_checked = 0
    names = store.bank_names()
    recipes: dict[str, BlockRecipe] = {}
    for name in names:
        try:
            manifest = store._manifest(name)
        except StoreError as error:
            problems.append(StoreProblem(bank=name, kind="manifest", reason=str(error)))
            continue
        texts: dict[str, str | None] = {}
        for stored in manifest.documents:
            documents_checked += 1
            try:
                texts[stored.id] = store._read_text(name, stored)
            except CorruptDocumentError as error:
                texts[stored.id] = None
                problems.append(StoreProblem(name, "document", str(error), stored.text_key, None, stored.id))
        damaged: list[tuple[int, StoredDocument, StoredBlock, str]] = []
        for index, (_, stored, entry) in enumerate(manifest.entries()):
            if entry.key not in checked:
                checked[entry.key] = _block_damage(store, entry, manifest)
            if checked[entry.key] is not None:
                damaged.append((index, stored, entry, checked[entry.key]))
        for index, stored, entry, reason in damaged:
            repaired = False
            if repair:
                note = _repair_block(store, manifest, entry, texts.get(stored.id), recipe, recipe_for_settings, recipes)
                repaired = note is None
                if repaired:
                    checked[entry.key] = None
                else:
                    reason = f"{reason}; not repaired: {note}"
            problems.append(StoreProblem(name, "block", reason, entry.key, index, stored.id, repaired))
    return VerifyReport(
        banks=len(names), documents_checked=documents_checked, blocks_checked=len(checked), problems=tuple(problems)
    )


def _block_damage(store: MemoryStore, entry: StoredBlock, manifest: BankManifest) -> str | None:
    data = store._items.get("block:" + entry.key)
    if data is None:
        return "the block is missing"
    try:
        store._check_block(data, entry, manifest, torch.float32)
    except Damaged as damage:
        return f"the block is damaged: {damage}"
    return None


def _repair_block(
    store: MemoryStore,
    manifest: BankManifest,
    entry: StoredBlock,
    text: str | None,
    recipe: BlockRecipe | None,
    recipe_for_settings: RecipeForSettings | None,
    recipes: dict[str, BlockRecipe],
) -> str | None:
    """Recompress one block from the stored text; returns why it could not, or None when repaired."""
    if text is None:
        return "the document's text is damaged too; ingest the document again"
    if manifest.legacy_fingerprint:
        return "the bank predates lychee-memory 0.2's fingerprints; rebuild it with --recompress instead"
    if recipe is None or recipe.identity != manifest.identity:
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
    ids = tuple(recipe.tokenize(text)[entry.token_start : entry.token_end])
    identity = manifest.identity
    if block_key(identity.model_fingerprint, identity.compressor, entry.storage, torch.tensor(ids)) != entry.key:
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
    with store._writing_blocks():
        (block,) = recipe.compress([chunk])
        store._items.put("block:" + entry.key, encode_block(block, entry.storage, identity))
    return None
