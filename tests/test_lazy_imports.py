"""The package's top level resolves its public names on first use, and the command line (``lychee --help``, parsing
any command, ``lychee mcp`` up to its first tool call) starts without torch or transformers."""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap

import pytest

import lychee_memory

HEAVY = ("torch", "transformers")

# The defining module of every public name, written out here (not read from the package's own table) so that a
# name re-pointed at another module, or a new name left out, fails.
DEFINED_IN = {
    "Answer": "answer",
    "AnswerStream": "answer",
    "GateScore": "answer",
    "SelectedBlock": "answer",
    "FullContext": "baselines",
    "MemAgent": "baselines",
    "BankIdentity": "blocks",
    "MemoryBank": "blocks",
    "MemoryBlock": "blocks",
    "SourceSpan": "blocks",
    "EngineConfig": "config",
    "Document": "documents",
    "LycheeMemory": "engine",
    "Excerpt": "excerpts",
    "DocumentFilter": "filters",
    "BankInfo": "store.reports",
    "BlockRecipe": "store.recipe",
    "GcReport": "store.reports",
    "IngestReport": "store.reports",
    "MemoryStore": "store.store",
    "StoredBank": "store.store",
    "StoreProblem": "store.reports",
    "StoreUsage": "store.reports",
    "VerifyReport": "store.reports",
}
ERRORS = [name for name in lychee_memory.__all__ if name.endswith("Error")]


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)


def test_importing_the_package_and_building_the_command_line_leaves_torch_and_transformers_out():
    result = run_python(
        """
        import contextlib, io, sys
        import lychee_memory, lychee_memory.cli
        from lychee_memory.cli import build_parser, main
        parser = build_parser()
        parser.parse_args(["store", "ls"])
        parser.parse_args(["mcp", "--store", "x"])
        with contextlib.redirect_stdout(io.StringIO()) as shown:
            try:
                main(["--help"])
            except SystemExit as exit_:
                assert exit_.code == 0, exit_.code
        assert "usage: lychee" in shown.getvalue()
        print(sorted(name for name in ("torch", "transformers") if name in sys.modules))
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_the_mcp_runner_imports_no_engine_and_a_train_command_still_parses_its_config_flags():
    result = run_python(
        """
        import sys
        import importlib.util
        if importlib.util.find_spec("mcp") is not None:  # the mcp extra
            import lychee_memory.integrations.mcp.runner
            assert "lychee_memory.integrations.server.service" not in sys.modules
            assert "lychee_memory.engine" not in sys.modules
        print(sorted(name for name in ("torch", "transformers") if name in sys.modules))
        from lychee_memory.cli import build_parser
        args = build_parser().parse_args(["train", "rl", "--out", "o", "--rank", "4"])
        assert args.rank == 4 and args.train_command == "rl" and callable(args.handler)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("name", sorted(DEFINED_IN))
def test_every_lazy_name_is_the_object_of_its_defining_module(name):
    defining = importlib.import_module(f"lychee_memory.{DEFINED_IN[name]}")
    assert getattr(lychee_memory, name) is getattr(defining, name)
    assert getattr(defining, name).__module__ == defining.__name__


def test_the_public_names_are_the_lazy_ones_the_errors_and_nothing_else():
    from lychee_memory import errors

    assert sorted(lychee_memory.__all__) == sorted([*DEFINED_IN, *ERRORS])
    for name in ERRORS:
        assert vars(lychee_memory)[name] is getattr(errors, name)  # eager: no lookup through __getattr__
    assert set(lychee_memory.__all__) <= set(dir(lychee_memory))
    assert "__version__" in dir(lychee_memory)


def test_an_unknown_name_is_an_attribute_error_naming_the_module():
    with pytest.raises(AttributeError, match=r"module 'lychee_memory' has no attribute 'NoSuchThing'"):
        lychee_memory.NoSuchThing  # noqa: B018
    with pytest.raises(ImportError, match="NoSuchThing"):
        from lychee_memory import NoSuchThing  # noqa: F401


def test_the_command_lines_choices_are_the_implementations_names():
    from lychee_memory.baselines import BASELINES
    from lychee_memory.choices import BASELINE_NAMES, BLOCK_DTYPES, TASKS
    from lychee_memory.eval import tasks
    from lychee_memory.store import BLOCK_DTYPES as STORE_DTYPES

    assert tuple(BASELINES) == BASELINE_NAMES
    assert STORE_DTYPES is BLOCK_DTYPES and tasks.TASKS is TASKS


def test_the_mcp_service_is_built_on_first_use_and_its_keys_at_startup(tmp_path):
    pytest.importorskip("mcp", reason="the mcp extra")
    from lychee_memory.integrations.mcp.runner import DeferredService
    from lychee_memory.integrations.server.service import MemoryService
    from lychee_memory.integrations.server.settings import ServerSettings
    from mcp.server.mcpserver.exceptions import ToolError

    from lychee_memory import ConfigurationError

    service = DeferredService(ServerSettings(store=str(tmp_path / "store"), api_keys=["key-a"]))
    assert service.built is None and service.keys.enabled  # the keys are read, nothing else is built
    assert not (tmp_path / "store").exists()
    assert service.list_banks(None) == []  # the first use builds the service (and creates the store)
    built = service.built
    assert isinstance(built, MemoryService) and service.service() is built and service.store is built.store
    service.stop()

    with pytest.raises(ConfigurationError):  # a key file that is not there still fails at startup
        DeferredService(ServerSettings(store=str(tmp_path / "store"), keys_file=str(tmp_path / "no-keys.json")))
    (tmp_path / "a-file").write_text("not a store")
    broken = DeferredService(ServerSettings(store=str(tmp_path / "a-file")))
    with pytest.raises(ToolError, match="a-file"):  # a store that cannot open is the tool's error, naming it
        broken.list_banks(None)
    assert broken.built is None
    broken.stop()  # nothing was built: nothing to stop
