"""The integration examples run end to end as a user runs them, on the tiny model (CI)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str) -> str:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), "--model", "tiny-random-llama", "--max-answer-tokens", "16"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_llama_index_app():
    output = run_example("llama_index_app.py")
    assert output.count("Q: ") == 2 and output.count("A: ") == 2
    assert "source arvel_harbour.txt chars " in output
    assert "read " in output and " blocks" in output


def test_langchain_chain():
    output = run_example("langchain_chain.py")
    assert "Q: What is the access code for the east pier storage shed?" in output
    assert 1 <= output.count("   block ") <= 2 and "score " in output  # k=2 caps what the gate selected


def test_agent_tool():
    output = run_example("agent_tool.py")
    assert "LangChain tool arvel_guide:" in output and "LangChain tool arvel_guide_passages:" in output
    assert '"question"' in output and "-> ToolMessage: " in output
    assert "LlamaIndex tool arvel_guide:" in output and "source blocks)" in output


@pytest.mark.parametrize("name", ["llama_index_app.py", "langchain_chain.py", "agent_tool.py"])
def test_examples_document_the_embedded_default(name):
    text = (EXAMPLES / name).read_text()
    assert f"python examples/{name} --model smollm2-135m" in text
    assert 'default="tiny-random-llama"' in text
