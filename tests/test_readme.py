"""The README and the docs are part of the product: their Python snippets compile, their names exist, their links
resolve, the README stays a short entry page with its two commands, and the package says it is typed."""

from __future__ import annotations

import ast
import importlib
import importlib.resources
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))]
MAIN_COMMAND = (
    "bash scripts/setup.sh && .venv/bin/lychee ask examples/documents/arvel_harbour.txt "
    '--question "What is the access code for the east pier storage shed?"'
)
TEST_COMMAND = "bash scripts/setup.sh && .venv/bin/python -m pytest"


def python_snippets(path: Path = README) -> list[tuple[int, str]]:
    """(line number, code) of every ```python block of a Markdown file."""
    text = path.read_text(encoding="utf-8")
    snippets = []
    for match in re.finditer(r"^```python\n(.*?)^```", text, flags=re.S | re.M):
        snippets.append((text[: match.start()].count("\n") + 1, match.group(1)))
    return snippets


def all_snippets() -> list[tuple[str, int, str]]:
    """(file, line number, code) of every Python snippet of the README, BENCHMARKS.md and the docs pages."""
    return [(path.relative_to(ROOT).as_posix(), line, code) for path in PAGES for line, code in python_snippets(path)]


def test_the_readme_has_python_snippets():
    assert len(python_snippets()) >= 5


def test_the_docs_pages_have_python_snippets():
    assert len([where for where, _, _ in all_snippets() if where.startswith("docs/")]) >= 8


@pytest.mark.parametrize(
    "where,line,code", all_snippets(), ids=[f"{where}:{line}" for where, line, _ in all_snippets()]
)
def test_every_python_snippet_compiles_and_imports_what_exists(where, line, code):
    compile(code, f"{where}:{line}", "exec")  # every SyntaxError, including those the compiler finds
    tree = ast.parse(code)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            keywords = [keyword.arg for keyword in node.keywords if keyword.arg is not None]
            repeated = {name for name in keywords if keywords.count(name) > 1}
            assert not repeated, f"{where}:{line + node.lineno}: keyword {sorted(repeated)} passed twice"
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lychee_memory"):
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name), f"{where}:{line + node.lineno}: {node.module}.{alias.name}"
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("lychee_memory"):
                    importlib.import_module(alias.name)


def test_the_readme_is_a_short_entry_page_with_its_two_commands():
    text = README.read_text(encoding="utf-8")
    assert len(text.encode("utf-8")) < 16 * 1024, "the README is an entry page: move detail into docs/"
    assert MAIN_COMMAND in text  # .ci/run and tests/test_embedded_default.py run these
    assert TEST_COMMAND in text


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(page):
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.S | re.M)  # code is not links
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = (page.parent / target.split("#")[0]).resolve()
        assert path.exists(), f"{page.relative_to(ROOT)}: link to {target} names no file"


def test_the_package_ships_its_type_marker():
    assert importlib.resources.files("lychee_memory").joinpath("py.typed").is_file()
