"""House rules the code keeps: import contracts, modules a reader can take in, and no use of another module's
private names. Each check reads the source tree only (fast; no model)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - import-linter brings tomli on 3.10
    import tomli as tomllib

REPOSITORY = Path(__file__).resolve().parents[1]
PACKAGE_DIRECTORIES = ("lychee_memory", "integrations", "kernels")  # all three install as lychee_memory
MAX_MODULE_LINES = 800

# Where no module may use another module's private (underscore) names: the whole package, its benchmarks and examples.
PRIVATE_NAME_SCOPE = ("lychee_memory", "integrations", "kernels", "benchmarks", "examples")

STORE_FACADE = {"__init__", "store"}  # the package's face; every other module of lychee_memory/store is a part


def python_files(*directories: str) -> list[Path]:
    return sorted(path for directory in directories for path in (REPOSITORY / directory).rglob("*.py"))


def test_import_contracts_are_kept():
    pytest.importorskip("importlinter.cli", reason="import-linter is in the dev extra")
    # In a process of its own: import-linter's command configures logging with dictConfig, which disables every
    # logger already created, and with them the log records later tests of this session check.
    run = (
        "import sys; from importlinter.cli import lint_imports; "
        f"sys.exit(lint_imports(config_filename={str(REPOSITORY / 'pyproject.toml')!r}, no_cache=True))"
    )
    result = subprocess.run([sys.executable, "-c", run], cwd=REPOSITORY, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"an import contract of pyproject.toml is broken:\n{result.stdout}{result.stderr}"


def test_the_store_contract_covers_every_part_of_the_store():
    config = tomllib.loads((REPOSITORY / "pyproject.toml").read_text(encoding="utf-8"))
    (contract,) = [c for c in config["tool"]["importlinter"]["contracts"] if "facade" in c["name"]]
    stems = {path.stem for path in (REPOSITORY / "lychee_memory" / "store").glob("*.py")}
    assert set(contract["source_modules"]) == {f"lychee_memory.store.{stem}" for stem in stems - STORE_FACADE}
    assert contract["forbidden_modules"] == ["lychee_memory.store.store"]


def test_no_module_of_the_package_is_over_the_line_limit():
    long = {
        str(path.relative_to(REPOSITORY)): lines
        for path in python_files(*PACKAGE_DIRECTORIES)
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def private_name_uses(path: Path) -> list[str]:
    """Uses in ``path`` of another module's private names: ``from project_module import _name``, and
    ``something._name`` where ``something`` is not ``self``/``cls`` nor rooted at an imported third-party module,
    and ``_name`` is not defined in ``path`` itself (a module's classes may share its private helpers)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    external: set[str] = set()  # names bound to modules outside the project (their privates are their business)
    defined: set[str] = set()  # private names this module defines: functions, classes, attributes it assigns
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            defined.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            defined.add(node.id)
        if isinstance(node, ast.Import):
            external |= {
                (alias.asname or alias.name).split(".")[0]
                for alias in node.names
                if not alias.name.startswith("lychee_memory")
            }
        elif (
            isinstance(node, ast.ImportFrom) and not node.level and not (node.module or "").startswith("lychee_memory")
        ):
            external |= {alias.asname or alias.name for alias in node.names}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("lychee_memory")):
            found += [f"{node.lineno}: imports {alias.name}" for alias in node.names if _private(alias.name)]
        if isinstance(node, ast.Attribute) and _private(node.attr):
            root = node.value
            while isinstance(root, (ast.Attribute, ast.Call, ast.Subscript)):
                root = root.func if isinstance(root, ast.Call) else root.value
            own = isinstance(node.value, ast.Name) and node.value.id in {"self", "cls"}
            if isinstance(node.value, ast.Call) and isinstance(node.value.func, ast.Name):
                own = own or node.value.func.id == "super"  # a subclass extending its base's hook
            if not own and node.attr not in defined and not (isinstance(root, ast.Name) and root.id in external):
                found.append(f"{node.lineno}: {ast.unparse(node)}")
    return sorted(found, key=lambda use: (int(use.split(":")[0]), use))


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_no_module_uses_another_modules_private_names():
    found = {
        str(path.relative_to(REPOSITORY)): uses
        for path in python_files(*PRIVATE_NAME_SCOPE)
        if (uses := private_name_uses(path))
    }
    assert not found, f"uses of another module's private names: {found}"


def test_the_private_name_check_finds_reach_ins(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import diskcache\n"
        "from lychee_memory.store.store import _MARKER\n"
        "from .codec import _hidden\n"
        "def _helper():\n"
        "    pass\n"
        "def f(store, self, other):\n"
        "    self._mine, diskcache.core._theirs, other._helper\n"
        "    return store._items.get('x'), store.objects.items._copy, super()._write()\n"
    )
    assert private_name_uses(sample) == [
        "2: imports _MARKER",
        "3: imports _hidden",
        "8: store._items",
        "8: store.objects.items._copy",
    ]
