"""``ServerSettings``: how ``lychee serve`` runs, in a module free of the server extra.

The CLI derives ``lychee serve``'s flags, choices and defaults from these fields, so ``lychee --help`` must be able
to import them without FastAPI, uvicorn or prometheus-client installed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lychee_memory.choices import DEFAULT_BLOCK_DTYPE, DEFAULT_INDEX_DTYPE
from lychee_memory.config import EngineConfig

MiB = 1024 * 1024


class ServerSettings(BaseModel):
    """How ``lychee serve`` runs: where the store is, who may call, limits, batching and the engine's options."""

    model_config = ConfigDict(extra="forbid")

    store: str | None = Field(
        default=None,
        description="store directory or URL (s3://bucket/prefix?manifests=postgresql://...); None = the default store. "
        f"New banks are written with {DEFAULT_BLOCK_DTYPE} blocks and an {DEFAULT_INDEX_DTYPE} gate index",
    )

    @field_validator("store", mode="before")
    @classmethod
    def _store_text(cls, value: object) -> object:
        return os.fspath(value) if isinstance(value, os.PathLike) else value

    host: str = Field(
        default="127.0.0.1", description="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: all)"
    )
    port: int = Field(default=8000, ge=0, le=65535, description="TCP port to listen on")
    api_keys: list[str] = Field(
        default_factory=list,
        description="keys callers send as 'Authorization: Bearer KEY', each reaching every bank (no keys and no keys_file: no auth)",
    )
    keys_file: Path | None = Field(
        default=None, description='JSON {"KEY": ["bank-prefix", ...]}: each key reaches the banks under its prefixes'
    )
    max_document_bytes: int = Field(default=8 * MiB, gt=0, description="largest document text accepted (413 above)")
    max_request_bytes: int = Field(default=64 * MiB, gt=0, description="largest request body accepted (413 above)")
    batch_window_ms: float = Field(
        default=5.0, ge=0, le=1000, description="milliseconds a question waits for others to share a batched scan"
    )
    max_batch: int = Field(default=16, ge=1, le=256, description="most questions answered by one batched scan")
    recompress: bool = Field(
        default=False,
        description="at startup, rebuild banks another model or other settings built (else the server refuses them)",
    )
    shutdown_timeout: float = Field(
        default=60.0, ge=0, description="seconds a running ingest may take to finish on shutdown"
    )
    engine: dict[str, Any] = Field(
        default_factory=dict,
        description="LycheeMemory.from_pretrained options (model, gate, ...) laid over engine_config",
    )
    engine_config: EngineConfig | None = Field(
        default=None, description="the engine's base settings; None = EngineConfig() defaults"
    )
