"""LangGraph's store filters on item values: ``{"field": value}`` and the operators ``$eq $ne $gt $gte $lt $lte``.

A filter maps top-level value fields to a value (equality; a dict of plain keys matches nested fields) or to
operators, all of which must hold. Comparisons follow PostgreSQL's JSONB as LangGraph's own stores do: ``$gt``
and friends compare numbers with numbers and strings with strings, and a missing field or a value of another type
never matches. An operator LangGraph does not define, or an ill-formed filter, raises FilterError naming it,
before anything is read: a filter is never silently dropped.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from typing import Any

from lychee_memory import FilterError

ORDERING: dict[str, Callable[[Any, Any], bool]] = {
    "$gt": operator.gt,
    "$gte": operator.ge,
    "$lt": operator.lt,
    "$lte": operator.le,
}
OPERATORS = ("$eq", "$ne", *ORDERING)


def check_filter(filters: object) -> dict[str, Any]:
    """The filter as a dict, or FilterError saying what is wrong with it (unknown operator, not a dict...)."""
    if filters is None:
        return {}
    if not isinstance(filters, Mapping):
        raise FilterError(
            f'filter must be a dict such as {{"kind": "note"}} or {{"score": {{"$gte": 3}}}}, got {type(filters).__name__}'
        )
    for field, test in filters.items():
        if not isinstance(field, str) or not field:
            raise FilterError(f"filter fields must be non-empty strings, got {field!r}")
        if field.startswith("$"):
            raise FilterError(
                f"{field!r} is not supported at the top level of a filter: list several fields to require all of them "
                f"(operators go inside a field: {', '.join(OPERATORS)})"
            )
        _check_test(field, test)
    return dict(filters)


def _check_test(field: str, test: object) -> None:
    if not isinstance(test, Mapping):
        return
    operators = [key for key in test if isinstance(key, str) and key.startswith("$")]
    if operators and len(operators) != len(test):
        raise FilterError(f"filter on {field!r} mixes operators and fields: {dict(test)}")
    for name in operators:
        if name not in OPERATORS:
            raise FilterError(f"filter on {field!r}: unknown operator {name!r}; use one of {', '.join(OPERATORS)}")
        if name in ORDERING and not _orderable(test[name]):
            raise FilterError(
                f"filter on {field!r}: {name} compares numbers or strings, got {type(test[name]).__name__}"
            )
    if not operators:
        for key, nested in test.items():
            _check_test(f"{field}.{key}", nested)


def _orderable(value: object) -> bool:
    return isinstance(value, (int, float, str)) and not isinstance(value, bool)


def matches(value: Mapping[str, Any], filters: Mapping[str, Any]) -> bool:
    """Whether an item's value passes a checked filter (every field's test holds)."""
    return all(_compare(value.get(field), test, field in value) for field, test in filters.items())


def _compare(stored: Any, test: Any, present: bool) -> bool:
    if isinstance(test, Mapping) and any(isinstance(key, str) and key.startswith("$") for key in test):
        return all(_apply(stored, name, wanted, present) for name, wanted in test.items())
    if isinstance(test, Mapping):
        if not isinstance(stored, Mapping):
            return False
        return all(_compare(stored.get(key), nested, key in stored) for key, nested in test.items())
    return present and _equal(stored, test)


def _apply(stored: Any, name: str, wanted: Any, present: bool) -> bool:
    if name == "$eq":
        return present and _equal(stored, wanted)
    if name == "$ne":
        return not (present and _equal(stored, wanted))
    if not present or not _orderable(stored):
        return False
    if isinstance(stored, str) != isinstance(wanted, str):
        return False
    return ORDERING[name](stored, wanted)


def _equal(stored: Any, wanted: Any) -> bool:
    """JSON equality: True is not 1, 1 equals 1.0, lists and objects compare item by item."""
    if isinstance(stored, bool) or isinstance(wanted, bool):
        return isinstance(stored, bool) and isinstance(wanted, bool) and stored == wanted
    return stored == wanted
