"""The docs site builds strictly (no broken link, no page left out of the nav, no unknown generated section), and
its configuration reference lists every field of the pydantic models it is generated from."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

from lychee_memory import EngineConfig

ROOT = Path(__file__).resolve().parents[1]


def load_hooks():
    """docs/hooks.py, the MkDocs hook that generates the configuration reference."""
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_configuration_reference_lists_every_engine_setting():
    reference = load_hooks().engine_config_reference()
    for section, field in EngineConfig.model_fields.items():
        model = field.annotation
        if isinstance(model, type) and issubclass(model, BaseModel):
            assert f"### `{section}` ({model.__name__})" in reference
            for name in model.model_fields:
                assert f"| `{name}` |" in reference, f"{section}.{name} missing from the configuration reference"
        else:
            assert f"| `{section}` |" in reference, f"{section} missing from the configuration reference"


def test_every_flat_option_the_reference_names_is_accepted():
    reference = load_hooks().engine_config_reference()
    defaults = EngineConfig()
    named = 0
    for section, field in EngineConfig.model_fields.items():
        model = field.annotation
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            continue
        table = reference.split(f"### `{section}`")[1].split("\n### ")[0]
        for name in model.model_fields:
            found = re.search(rf"^\| `{name}` \| `(\w+)` \|", table, flags=re.M)
            if found:
                named += 1
                value = getattr(getattr(defaults, section), name)
                assert getattr(getattr(EngineConfig.from_kwargs(**{found.group(1): value}), section), name) == value
    assert named >= 10, "the reference names the flat keywords of LycheeMemory.from_pretrained"


def test_the_configuration_reference_lists_every_server_setting():
    from lychee_memory.integrations.server import ServerSettings  # settings.py: no server extra needed

    reference = load_hooks().server_settings_reference()
    for name in ServerSettings.model_fields:
        assert f"| `{name}` |" in reference, f"ServerSettings.{name} missing from the configuration reference"


def test_an_unknown_generated_section_is_an_error():
    with pytest.raises(ValueError, match="unknown generated section"):
        load_hooks().expand("<!-- generated: no-such-table -->")


def test_the_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs", reason="mkdocs is in the dev extra; without it the site cannot be built")
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "WARNING" not in output, output
    configuration = (site / "configuration" / "index.html").read_text(encoding="utf-8")
    assert "<code>max_relevant_blocks</code>" in configuration and "<code>batch_window_ms</code>" in configuration
    assert (site / "benchmarks" / "index.html").is_file()  # BENCHMARKS.md, published by the hook
