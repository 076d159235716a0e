"""Command-line flags read from pydantic fields: type, choices, default and help come from the model, never copied.

The engine flags (``options.py``) and the trainers' flags (``train.py``) are built here from the settings models
they fill, so a default or a choice is written once, in the model.
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined


class ArgumentTarget(Protocol):
    """An argparse parser or argument group: anything flags are added to."""

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action: ...


def field_default(field: FieldInfo) -> Any:
    """A field's default value (calling its default factory), None when it has none."""
    if field.default_factory is not None:
        return field.default_factory()  # type: ignore[call-arg]
    return None if field.default is PydanticUndefined else field.default


def _without_none(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        kept = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if len(kept) == 1:
            return kept[0]
    return annotation


def _json_argument(annotation: Any, description: str) -> Callable[[str], Any]:
    """An argparse type reading JSON and validating it against a field's annotation (e.g. [[17, 3], [18, 0]])."""
    adapter = TypeAdapter(annotation)

    def parse(text: str) -> Any:
        try:
            return adapter.validate_json(text)
        except ValidationError as error:
            problem = "; ".join(item["msg"] for item in error.errors())
            raise argparse.ArgumentTypeError(f"expected JSON ({description}), got {text!r}: {problem}") from None

    return parse


def field_help(field: FieldInfo, template: str = "{description}") -> str | None:
    """The field's description as flag help, ending with its default when the text does not already say it."""
    text = template.format(description=field.description or "").strip()
    default = field_default(field)
    if not (default is None or default is False or default == []) and "default" not in text:
        shown = " ".join(map(str, default)) if isinstance(default, list) else default
        text = f"{text} (default {shown})".strip()
    return text.replace("None = ", "not given: ").replace("%", "%%") or None


def field_argument(field: FieldInfo) -> dict[str, Any]:
    """``add_argument`` keywords for a flag that sets ``field``: its type or choices, default and help."""
    annotation = _without_none(field.annotation)
    kwargs: dict[str, Any] = {"default": field_default(field), "help": field_help(field)}
    item = typing.get_args(annotation)[0] if typing.get_origin(annotation) is list else None
    if typing.get_origin(annotation) is Literal:
        kwargs["choices"] = list(typing.get_args(annotation))
    elif annotation is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif annotation in (int, float, Path):
        kwargs["type"] = annotation
    elif item in (int, float, str):
        kwargs["nargs"] = "+"
        if item is not str:
            kwargs["type"] = item
    elif annotation is not str:
        kwargs["type"] = _json_argument(annotation, field.description or str(annotation))
        kwargs["metavar"] = "JSON"
    return kwargs


def flag_name(name: str, spellings: Mapping[str, str] = {}) -> str:  # noqa: B006 (read only)
    """``--name-with-dashes`` for a field, or its spelling from ``spellings`` (``{"init_weights": "init"}``)."""
    return "--" + spellings.get(name, name).replace("_", "-")


def add_field_flags(
    parser: ArgumentTarget,
    model: type[BaseModel],
    names: Iterable[str],
    *,
    spellings: Mapping[str, str] = {},  # noqa: B006 (read only)
    helps: Mapping[str, str] = {},  # noqa: B006 (read only)
    overrides: Mapping[str, Mapping[str, Any]] = {},  # noqa: B006 (read only)
) -> dict[str, str]:
    """Add one flag per named field of ``model``; returns field name -> argparse dest, for ``field_values``.

    ``helps`` holds help templates (``"{description}, as JSON"``) for fields whose description says too little on
    a command line; ``overrides`` replaces ``add_argument`` keywords outright.
    """
    dests = {}
    for name in names:
        field = model.model_fields[name]
        kwargs = {**field_argument(field), **overrides.get(name, {})}
        if name in helps:
            kwargs["help"] = field_help(field, helps[name])
        dests[name] = parser.add_argument(flag_name(name, spellings), **kwargs).dest
    return dests


def field_values(args: argparse.Namespace, dests: Mapping[str, str]) -> dict[str, Any]:
    """The parsed values of flags added by ``add_field_flags``, by field name."""
    return {name: getattr(args, dest) for name, dest in dests.items()}
