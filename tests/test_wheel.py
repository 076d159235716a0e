"""The wheel holds every package and data file of the tree, under the names users import.

``pyproject.toml`` lists its packages by hand (``integrations/`` and ``kernels/`` install as ``lychee_memory``
subpackages), so a new package left out of that list would be missing from what users install while every test
run from the checkout still passed. This builds the wheel from a copy of the tree and compares.
"""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Where each source tree installs: the package-dir mapping of pyproject.toml, written out independently here.
INSTALLED_AS = {
    "lychee_memory": "lychee_memory",
    "integrations": "lychee_memory/integrations",
    "kernels": "lychee_memory/kernels",
}
BUILD_FILES = ("pyproject.toml", "README.md")
SKIPPED_PARTS = {"__pycache__"}
SKIPPED_SUFFIXES = (".pyc", ".pyo")


def tree_files() -> list[str]:
    """Every file of the three source trees that users must get, as a path inside the wheel."""
    tracked = _tracked_files()
    expected = []
    for source, installed in INSTALLED_AS.items():
        for path in sorted((ROOT / source).rglob("*")):
            relative = path.relative_to(ROOT)
            if not path.is_file() or SKIPPED_PARTS & set(relative.parts) or path.name.endswith(SKIPPED_SUFFIXES):
                continue
            if tracked is not None and relative.as_posix() not in tracked:
                continue  # ignored by git: a build or scratch file of this checkout
            expected.append(installed + "/" + relative.relative_to(source).as_posix())
    return expected


def _tracked_files() -> set[str] | None:
    """The files git tracks or would track (not ignored); None outside a git checkout: then every file counts."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", *INSTALLED_AS],
            cwd=ROOT,
            capture_output=True,
            check=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return {name for name in listed.stdout.decode().split("\0") if name}


def build_wheel(destination: Path) -> Path:
    """Build the wheel from a clean copy of the tree (no stale ``build/`` can add what the package list misses)."""
    source = destination / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    for name in INSTALLED_AS:
        shutil.copytree(ROOT / name, source / name, ignore=ignore)
    for name in BUILD_FILES:
        shutil.copy2(ROOT / name, source / name)
    wheels = destination / "wheels"
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q"]
    result = subprocess.run(
        [*command, "-w", str(wheels), str(source)], capture_output=True, text=True, timeout=600, cwd=destination
    )
    assert result.returncode == 0, f"wheel build failed:\n{result.stdout}\n{result.stderr}"
    (wheel,) = wheels.glob("lychee_memory-*.whl")
    return wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel"))


def test_every_package_and_data_file_is_in_the_wheel(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    expected = tree_files()
    packages = {name.rsplit("/", 1)[0] for name in expected if name.endswith("/__init__.py")}
    assert {"lychee_memory", "lychee_memory/integrations", "lychee_memory/kernels", "lychee_memory/store"} <= packages
    assert "lychee_memory/py.typed" in expected
    missing = sorted(name for name in expected if name not in names)
    missing_packages = sorted(package for package in packages if f"{package}/__init__.py" not in names)
    assert not missing, (
        f"the wheel lacks {len(missing)} file(s) of the tree, packages {missing_packages or 'none'} "
        "(add each package to [tool.setuptools] packages in pyproject.toml, data files to package-data): "
        + ", ".join(missing[:20])
    )


def test_every_python_directory_is_a_package():
    """A directory of modules without ``__init__.py`` would not install even when listed."""
    for source in INSTALLED_AS:
        for path in (ROOT / source).rglob("*.py"):
            assert (path.parent / "__init__.py").is_file(), f"{path.parent.relative_to(ROOT)} has no __init__.py"


def test_the_wheel_installs_the_command(wheel):
    with zipfile.ZipFile(wheel) as archive:
        (entry_points,) = [name for name in archive.namelist() if name.endswith(".dist-info/entry_points.txt")]
        parser = configparser.ConfigParser()
        parser.read_string(archive.read(entry_points).decode("utf-8"))
    assert parser["console_scripts"]["lychee"] == "lychee_memory.cli:main"
