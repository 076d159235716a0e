"""The README is part of the product: its Python snippets compile, its names exist, and the package says it is typed."""

from __future__ import annotations

import ast
import importlib
import importlib.resources
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_snippets() -> list[tuple[int, str]]:
    """(line number, code) of every ```python block of the README."""
    text = README.read_text(encoding="utf-8")
    snippets = []
    for match in re.finditer(r"^```python\n(.*?)^```", text, flags=re.S | re.M):
        snippets.append((text[: match.start()].count("\n") + 1, match.group(1)))
    return snippets


def test_the_readme_has_python_snippets():
    assert len(python_snippets()) >= 5


@pytest.mark.parametrize("line,code", python_snippets(), ids=lambda value: str(value) if isinstance(value, int) else "")
def test_every_readme_python_snippet_compiles_and_imports_what_exists(line, code):
    compile(code, f"README.md:{line}", "exec")  # every SyntaxError, including those the compiler finds
    tree = ast.parse(code)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            keywords = [keyword.arg for keyword in node.keywords if keyword.arg is not None]
            repeated = {name for name in keywords if keywords.count(name) > 1}
            assert not repeated, f"README.md:{line + node.lineno}: keyword {sorted(repeated)} passed twice"
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lychee_memory"):
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name), f"README.md:{line + node.lineno}: {node.module}.{alias.name}"


def test_the_package_ships_its_type_marker():
    assert importlib.resources.files("lychee_memory").joinpath("py.typed").is_file()
