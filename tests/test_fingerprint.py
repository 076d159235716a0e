"""Model fingerprints identify the checkpoint (files or weights as built), not the dtype it was loaded in.

References are computed here independently (hashlib over the files, edits made with safetensors), never
taken from the fingerprint code itself. The digest cache is checked by counting the files that get hashed.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from lychee_memory import model_loading
from lychee_memory.config import ModelSettings
from lychee_memory.model_loading import (
    LoadedModel,
    ResolvedSpec,
    digest_cache_path,
    file_sha256s,
    load_model,
    resolve_spec,
)
from lychee_memory.testing import build_tiny_model

from .conftest import requires_embedded_model


def _load(spec: str | Path, dtype: str = "float32", **options) -> LoadedModel:
    return load_model(ModelSettings(spec=str(spec), dtype=dtype, device="cpu", **options))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def file_sha256(path: Path) -> str:
    """One file's digest through the loader's digest cache."""
    return file_sha256s([path])[0]


def _save_tiny(directory: Path, family: str = "llama") -> Path:
    """A tiny model as a Hugging Face directory (config.json, model.safetensors, tokenizer files)."""
    model, tokenizer = build_tiny_model(family)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _edit_one_element(file: Path, index: int = 1) -> str:
    """Change element ``index`` of the largest tensor in a safetensors file (same size, same metadata)."""
    with safe_open(str(file), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    name = max(tensors, key=lambda key: tensors[key].numel())
    flat = tensors[name].reshape(-1)
    assert flat.numel() // 2048 > index, "the element is not in the old 2048-value strided sample"
    flat[index] += 0.5
    size = file.stat().st_size
    save_file(tensors, str(file), metadata=metadata)
    assert file.stat().st_size == size
    return name


@pytest.fixture
def hashed(monkeypatch) -> list[str]:
    """Names of the files the digest code reads, in order."""
    seen: list[str] = []
    original = model_loading._hash_file

    def counting(path: Path) -> str:
        seen.append(Path(path).name)
        return original(path)

    monkeypatch.setattr(model_loading, "_hash_file", counting)
    return seen


# Tiny models --------------------------------------------------------------------------------------------


def test_tiny_model_fingerprint_ignores_dtype_and_attention_and_tells_families_apart():
    float32 = _load("tiny-random-llama")
    bfloat16 = _load("tiny-random-llama", dtype="bfloat16")
    eager = _load("tiny-random-llama", attention="eager")
    assert bfloat16.dtype == torch.bfloat16
    assert float32.fingerprint() == bfloat16.fingerprint() == eager.fingerprint()
    assert float32.fingerprint() != _load("tiny-random-qwen2").fingerprint()
    assert len(float32.fingerprint()) == 32 and int(float32.fingerprint(), 16) >= 0
    assert "tiny-random-llama" in float32.fingerprint_source()


# Hugging Face directories -------------------------------------------------------------------------------


def test_hf_dir_fingerprint_is_the_files_not_the_dtype(tmp_path):
    directory = _save_tiny(tmp_path / "tiny")
    float32, bfloat16 = _load(directory), _load(directory, dtype="bfloat16")
    assert float32.fingerprint() == bfloat16.fingerprint()
    assert float32.source_digests == bfloat16.source_digests
    assert sorted(float32.source_digests.values()) == sorted(
        _sha256(directory / name) for name in ("config.json", "model.safetensors")
    ), "config.json and the weights, each by its SHA-256; tokenizer files are not part of it"
    assert "model.safetensors" in float32.fingerprint_source()


def test_changing_one_weight_element_changes_the_fingerprint(tmp_path):
    directory = _save_tiny(tmp_path / "tiny")
    before = _load(directory).fingerprint()
    _edit_one_element(directory / "model.safetensors")
    after = _load(directory)
    assert after.fingerprint() != before
    assert _sha256(directory / "model.safetensors") in after.source_digests.values()


def test_changing_the_config_changes_the_fingerprint(tmp_path):
    directory = _save_tiny(tmp_path / "tiny")
    before = _load(directory).fingerprint()
    config = json.loads((directory / "config.json").read_text())
    config["rms_norm_eps"] = 1e-5
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    assert _load(directory).fingerprint() != before


def test_trained_memory_tensors_are_covered(tmp_path):
    directory = _save_tiny(tmp_path / "tiny")
    memory_file = directory / "lychee_memory.safetensors"
    save_file({"model.lychee_memory_embed.weight": torch.randn(64, 64)}, str(memory_file), metadata={"format": "pt"})
    loaded = _load(directory)
    assert loaded.has_trained_memory
    _edit_one_element(memory_file)
    changed = _load(directory)
    assert changed.has_trained_memory and changed.fingerprint() != loaded.fingerprint()


def test_a_copy_of_the_checkpoint_elsewhere_has_the_same_fingerprint(tmp_path):
    directory = _save_tiny(tmp_path / "tiny")
    copy = Path(shutil.copytree(directory, tmp_path / "elsewhere" / "copy"))
    assert _load(directory).fingerprint() == _load(copy, dtype="bfloat16").fingerprint()


# The digest cache ---------------------------------------------------------------------------------------


def test_a_second_load_does_not_hash_the_weights_again(tmp_path, hashed):
    directory = _save_tiny(tmp_path / "tiny")
    first = _load(directory).fingerprint()
    assert sorted(hashed) == ["config.json", "model.safetensors"]
    hashed.clear()
    assert _load(directory, dtype="bfloat16").fingerprint() == first
    assert hashed == [], "digests come from the cache"
    weights = directory / "model.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # touched, same content
    assert _load(directory).fingerprint() == first
    assert hashed == ["model.safetensors"]


def test_digest_cache_notices_new_mtime_new_size_and_a_rewrite_that_restores_the_mtime(tmp_path, hashed):
    file = tmp_path / "weights.bin"
    file.write_bytes(b"a" * 1000)
    assert file_sha256(file) == _sha256(file) and hashed == ["weights.bin"]
    assert file_sha256(file) == _sha256(file) and hashed == ["weights.bin"], "cached"
    stat = file.stat()
    os.utime(file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    assert file_sha256(file) == _sha256(file) and len(hashed) == 2, "new mtime: hashed again"
    file.write_bytes(b"b" * 1001)
    assert file_sha256(file) == _sha256(file) and len(hashed) == 3, "new size"
    stat = file.stat()
    file.write_bytes(b"c" * 1001)  # same size; then the mtime is put back, as cp -p or rsync -t would
    os.utime(file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert file_sha256(file) == hashlib.sha256(b"c" * 1001).hexdigest() and len(hashed) == 4


def test_a_damaged_digest_cache_is_ignored_and_rewritten(tmp_path, hashed):
    file = tmp_path / "weights.bin"
    file.write_bytes(os.urandom(4096))
    cache = digest_cache_path()
    for garbage in ("{not json", '["a list"]', '{"version": 1, "files": {"x": 3}}', "\udcff"):
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_bytes(garbage.encode("utf-8", "surrogateescape"))
        hashed.clear()
        assert file_sha256(file) == _sha256(file)
        assert hashed == ["weights.bin"]
        entries = json.loads(cache.read_text())["files"]
        assert entries[str(file.resolve())]["sha256"] == _sha256(file)
    # A cached entry whose digest is not a SHA-256 is not trusted either.
    entries[str(file.resolve())]["sha256"] = "not-a-digest"
    cache.write_text(json.dumps({"version": 1, "files": entries}))
    assert file_sha256(file) == _sha256(file)


def test_a_cache_that_cannot_be_written_never_fails_a_load(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("the cache dir would have to be inside this file")
    monkeypatch.setenv("LYCHEE_CACHE_DIR", str(blocker / "cache"))
    directory = _save_tiny(tmp_path / "tiny")
    with caplog.at_level(logging.WARNING, logger="lychee_memory.model_loading"):
        loaded = _load(directory)
    assert loaded.source_digests and "could not write the file digest cache" in caplog.text


# The Hugging Face cache layout --------------------------------------------------------------------------


def _fake_hub_snapshot(root: Path, directory: Path) -> Path:
    """``directory`` laid out as the HF cache does: snapshot files are relative symlinks into blobs/."""
    repo = root / "models--someone--tiny"
    snapshot = repo / "snapshots" / ("0" * 40)
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for file in directory.iterdir():
        content = file.read_bytes()
        # LFS files are named by their SHA-256, small git files by their git blob SHA-1 (40 hex digits).
        is_lfs = file.suffix == ".safetensors"
        blob = hashlib.sha256(content).hexdigest() if is_lfs else hashlib.sha1(content).hexdigest()
        (repo / "blobs" / blob).write_bytes(content)
        (snapshot / file.name).symlink_to(Path("..") / ".." / "blobs" / blob)
    return snapshot


def test_hf_cache_blob_name_is_used_without_reading_the_file(tmp_path, monkeypatch, hashed):
    plain = _save_tiny(tmp_path / "tiny")
    snapshot = _fake_hub_snapshot(tmp_path / "hub", plain)
    link = snapshot / "model.safetensors"
    blob = link.resolve()
    assert link.is_symlink() and blob.parent.name == "blobs"

    real_open = builtins.open

    def guarded_open(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and Path(file).resolve() == blob:
            raise AssertionError("the blob was read")
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)
    assert file_sha256(link) == hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name
    monkeypatch.setattr(builtins, "open", real_open)
    assert hashed == []

    loaded = _load(snapshot)
    assert blob.name not in hashed, "the LFS blob is named by its SHA-256"
    assert (snapshot / "config.json").resolve().name in hashed, "a git blob (named by its SHA-1) is read"
    assert loaded.fingerprint() == _load(plain).fingerprint(), "same checkpoint, same fingerprint"


def test_a_symlink_to_a_file_not_named_by_its_digest_is_read(tmp_path, hashed):
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    (blobs / "weights").write_bytes(b"weights")
    link = tmp_path / "model.safetensors"
    link.symlink_to(blobs / "weights")
    assert file_sha256(link) == hashlib.sha256(b"weights").hexdigest() and hashed == ["weights"]


# GGUF files and hand-built models -----------------------------------------------------------------------


def test_gguf_source_is_the_file_sha256_whatever_its_name(tmp_path):
    payload = os.urandom(10_000)
    first = tmp_path / "a" / "model.Q4_1.gguf"
    second = tmp_path / "b" / "renamed.gguf"
    for file in (first, second):
        file.parent.mkdir()
        file.write_bytes(payload)
    digests = [
        model_loading._source_digests(ResolvedSpec(str(file), "gguf", file.parent, gguf_file=file.name))
        for file in (first, second)
    ]
    assert digests[0] == digests[1] == {"gguf": hashlib.sha256(payload).hexdigest()}


def _by_hand(model: torch.nn.Module, dtype: torch.dtype = torch.float32, **fields) -> LoadedModel:
    _, tokenizer = build_tiny_model("llama")
    return LoadedModel(
        model=model.to(dtype),
        tokenizer=tokenizer,
        resolved=ResolvedSpec("by-hand", "tiny", None, tiny_family="llama"),
        device=torch.device("cpu"),
        dtype=dtype,
        attention="sdpa",
        load_seconds=0.0,
        **fields,
    )


def test_recorded_sources_decide_the_fingerprint_not_the_loaded_dtype():
    sources = {"gguf": hashlib.sha256(b"some checkpoint").hexdigest()}
    float32 = _by_hand(build_tiny_model("llama")[0], source_digests=dict(sources))
    bfloat16 = _by_hand(build_tiny_model("llama")[0], torch.bfloat16, source_digests=dict(sources))
    assert float32.fingerprint() == bfloat16.fingerprint()
    other = _by_hand(build_tiny_model("llama")[0], source_digests={"gguf": hashlib.sha256(b"another").hexdigest()})
    assert other.fingerprint() != float32.fingerprint()


def test_a_hand_built_model_falls_back_to_every_weight_as_loaded():
    reference = _by_hand(build_tiny_model("llama")[0])
    same = _by_hand(build_tiny_model("llama")[0])
    assert reference.fingerprint() == same.fingerprint()
    assert reference.fingerprint() != _load("tiny-random-llama").fingerprint(), "not a recorded source"
    assert _by_hand(build_tiny_model("llama")[0], torch.bfloat16).fingerprint() != reference.fingerprint()
    edited, _ = build_tiny_model("llama")
    weight = edited.get_input_embeddings().weight
    with torch.no_grad():
        weight.view(-1)[1] += 0.5  # not in the old strided sample
    assert _by_hand(edited).fingerprint() != reference.fingerprint()
    assert "no recorded source" in reference.fingerprint_source()


def test_fingerprint_is_computed_once_per_instance(monkeypatch):
    loaded = _by_hand(build_tiny_model("llama")[0])
    first = loaded.fingerprint()
    monkeypatch.setattr(model_loading, "_hash_tensors", lambda *args: pytest.fail("hashed again"))
    assert loaded.fingerprint() == first


@pytest.mark.slow
@requires_embedded_model
def test_embedded_default_fingerprint_is_its_gguf_sha256_from_the_file_or_the_converted_copy():
    resolved = resolve_spec("smollm2-135m")
    assert resolved.path is not None and resolved.gguf_file is not None
    expected = {"gguf": _sha256(resolved.path / resolved.gguf_file)}
    from_gguf = _load("smollm2-135m")  # converts, and caches the float copy
    from_copy = _load("smollm2-135m", dtype="bfloat16")  # from the converted copy
    assert from_gguf.source_digests == from_copy.source_digests == expected
    assert from_gguf.fingerprint() == from_copy.fingerprint()
    assert resolved.gguf_file in from_gguf.fingerprint_source()
