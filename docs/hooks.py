"""MkDocs hooks: the configuration reference is generated from the pydantic models, so it cannot drift from them,
and BENCHMARKS.md (with its plots) is published as a page of the site without a copy in docs/.

``python docs/hooks.py`` prints the generated reference as Markdown.
"""

from __future__ import annotations

import json
import re
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"^<!-- generated: ([a-z-]+) -->$", flags=re.M)
BENCHMARKS_PAGE = "benchmarks.md"
PLOTS = "benchmarks/plots"
# Links written for GitHub (from docs/ or from the repository root) and where the same file sits in the site.
DOCS_LINKS = (
    (re.compile(r"\]\(\.\./BENCHMARKS\.md"), "](benchmarks.md"),
    (re.compile(r"\]\(\.\./benchmarks/plots/"), "](benchmarks/plots/"),
)
ROOT_LINKS = ((re.compile(r"\]\(docs/"), "]("),)


def type_name(annotation: Any) -> str:
    """A type annotation as a reader writes it: ``int or None``, ``one of "kv", "text"``, ``list[tuple[int, int]]``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is type(None):
        return "None"
    if origin is typing.Literal:
        return "one of " + ", ".join(json.dumps(value) for value in args)
    if origin is typing.Union or origin is types.UnionType:
        return " or ".join(type_name(arg) for arg in args)
    if origin is not None:
        inner = ", ".join("..." if arg is Ellipsis else type_name(arg) for arg in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    return getattr(annotation, "__name__", str(annotation))


def default_text(field: FieldInfo) -> str:
    """The default as JSON would spell it (what a config file holds), or "required"."""
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if isinstance(value, BaseModel):
        return "its section's defaults"
    if isinstance(value, Path):
        value = str(value)
    return json.dumps(value)


def constraints(field: FieldInfo) -> str:
    """Bounds declared on the field (``>= 1``, ``< 1.0``, at least 1 character)."""
    words = []
    for item in field.metadata:
        for attribute, symbol in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if getattr(item, attribute, None) is not None:
                words.append(f"{symbol} {getattr(item, attribute)}")
        if getattr(item, "min_length", None) is not None:
            words.append(f"at least {item.min_length} character(s)")
    return ", ".join(words)


def cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def code(text: str) -> str:
    """Inline code for a table cell, with a fence long enough for any backticks inside."""
    fence = "``" if "`" in text else "`"
    return f"{fence}{cell(text)}{fence}"


def field_table(model: type[BaseModel], names: dict[str, str] | None = None) -> str:
    """One row per field of ``model`` (sections excepted): name, flat option, type, default, bounds, description."""
    header = ["field"] + (["flat option"] if names is not None else []) + ["type", "default", "bounds", "description"]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            continue  # a section: it has its own table
        row = [f"`{name}`"]
        if names is not None:
            row.append(f"`{names[name]}`" if name in names else "")
        row += [cell(type_name(annotation)), code(default_text(field)), cell(constraints(field))]
        row.append(cell(field.description or ""))
        rows.append("| " + " | ".join(row) + " |")
    return "\n".join(rows)


def engine_config_reference() -> str:
    """Every section of ``EngineConfig``, in declaration order, then its top-level fields."""
    from lychee_memory import EngineConfig

    try:  # flat keywords of LycheeMemory.from_pretrained(...) and EngineConfig.from_kwargs(...)
        from lychee_memory.config import FLAT_OPTIONS
    except ImportError:
        FLAT_OPTIONS = {}
    parts = []
    for section, field in EngineConfig.model_fields.items():
        model = field.annotation
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            continue
        flat = {name: option for option, (where, name) in FLAT_OPTIONS.items() if where == section}
        doc = (model.__doc__ or "").strip().splitlines()[0] if model.__doc__ else ""
        parts += [f"### `{section}` ({model.__name__})", "", doc, "", field_table(model, flat), ""]
    parts += ["### Top level (EngineConfig)", "", field_table(EngineConfig), ""]
    return "\n".join(parts)


def server_settings_reference() -> str:
    """The fields of ``lychee_memory.integrations.server.ServerSettings`` (what ``lychee serve`` runs with)."""
    from lychee_memory.integrations.server import ServerSettings

    return field_table(ServerSettings) + "\n"


GENERATORS = {"engine-config": engine_config_reference, "server-settings": server_settings_reference}


def expand(markdown: str) -> str:
    """Replace each ``<!-- generated: NAME -->`` line by what NAME's generator writes; an unknown NAME is an error."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in GENERATORS:
            raise ValueError(f"unknown generated section {name!r}; known: {', '.join(sorted(GENERATORS))}")
        return GENERATORS[name]()

    return MARKER.sub(replace, markdown)


def on_files(files: Any, config: Any) -> Any:
    """Publish BENCHMARKS.md as ``benchmarks.md`` and its plots at the paths its image links name."""
    from mkdocs.structure.files import File

    files.append(File.generated(config, BENCHMARKS_PAGE, abs_src_path=str(ROOT / "BENCHMARKS.md")))
    for plot in sorted((ROOT / PLOTS).glob("*.png")):
        files.append(File.generated(config, f"{PLOTS}/{plot.name}", abs_src_path=str(plot)))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Generated sections expanded; links written for GitHub pointed at the same files in the site."""
    rewrites = ROOT_LINKS if page.file.src_uri == BENCHMARKS_PAGE else DOCS_LINKS
    for pattern, replacement in rewrites:
        markdown = pattern.sub(replacement, markdown)
    return expand(markdown)


if __name__ == "__main__":
    print(expand((Path(__file__).parent / "configuration.md").read_text(encoding="utf-8")))
