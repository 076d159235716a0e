"""Every settings field says what it does (the configuration reference and CLI help read these descriptions, so a
field without one is a blank row), and ``lychee serve``'s flags come from ``ServerSettings`` without the server extra.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from lychee_memory.integrations.server.settings import ServerSettings
from pydantic import BaseModel

from lychee_memory.config import EngineConfig
from lychee_memory.training.compressor import CompressorTrainingConfig
from lychee_memory.training.gate import GateTrainingConfig
from lychee_memory.training.rl_run import RLTrainingConfig


def _models(model: type[BaseModel]) -> list[type[BaseModel]]:
    """``model`` and the settings sections it holds, recursively."""
    found = [model]
    for field in model.model_fields.values():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            found += _models(field.annotation)
    return found


MODELS = [
    *_models(EngineConfig),
    ServerSettings,
    CompressorTrainingConfig,
    GateTrainingConfig,
    RLTrainingConfig,
]
FIELDS = [(model, name) for model in MODELS for name in model.model_fields]


@pytest.mark.parametrize("model,name", FIELDS, ids=[f"{model.__name__}.{name}" for model, name in FIELDS])
def test_every_settings_field_has_a_one_line_description(model, name):
    description = model.model_fields[name].description
    assert description and description.strip(), f"{model.__name__}.{name} has no description"
    assert "\n" not in description.strip(), f"{model.__name__}.{name}: one line, please"


def test_the_engine_sections_are_all_checked():
    assert len(_models(EngineConfig)) == 1 + sum(
        isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel)
        for f in EngineConfig.model_fields.values()
    )


def test_serve_flags_derive_from_server_settings():
    from lychee_memory.cli import build_parser

    args = build_parser().parse_args(["serve"])
    defaults = ServerSettings()
    for name in ("store", "host", "port", "keys_file", "max_document_bytes", "max_request_bytes"):
        assert getattr(args, name) == getattr(defaults, name)
    for name in ("batch_window_ms", "max_batch", "recompress", "shutdown_timeout"):
        assert getattr(args, name) == getattr(defaults, name)
    assert args.api_key is None and defaults.api_keys == []


HELP_WITHOUT_FASTAPI = textwrap.dedent(
    """
    import sys
    for name in ("fastapi", "uvicorn", "prometheus_client"):
        sys.modules[name] = None  # importing it now raises ImportError, as when the server extra is missing
    from lychee_memory.cli import main
    try:
        main(sys.argv[1:])
    except SystemExit as exit_:
        assert exit_.code == 0, exit_.code
    assert "lychee_memory.integrations.server.service" not in sys.modules
    from lychee_memory.integrations.server import ServerSettings
    assert ServerSettings().port == 8000
    """
)


@pytest.mark.parametrize("argv", [["--help"], ["serve", "--help"]], ids=" ".join)
def test_help_needs_no_server_extra(argv):
    result = subprocess.run(
        [sys.executable, "-c", HELP_WITHOUT_FASTAPI, *argv],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "200"},  # help lines unwrapped
    )
    assert result.returncode == 0, result.stderr
    assert "usage: lychee" in result.stdout
    if argv[0] == "serve":
        assert "--max-document-bytes" in result.stdout and "(default 8388608)" in result.stdout
