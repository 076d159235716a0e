"""Metadata filters: which documents of a bank a question may read, from a small JSON query language.

``{"key": value}`` keeps documents whose metadata ``key`` equals ``value`` (or, for a list-valued field,
contains it); ``{"key": {"$in": [a, b]}}``, ``{"key": {"$nin": [...]}}``, ``{"key": {"$ne": v}}`` and
``{"key": {"$eq": v}}`` do what MongoDB's operators do (``$ne``/``$nin`` also keep documents without the
key). Several keys must all hold. A filter applied to a bank gives a view of it (``MemoryBank.view``): the
gate scans only the matching documents' blocks and nothing is compressed again.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .blocks import MemoryBank
from .errors import FilterError

OPERATORS = ("$eq", "$ne", "$in", "$nin")
Scalar = str | int | float | bool | None


def _check_scalar(key: str, value: object) -> Scalar:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise FilterError(
        f"filter on {key!r}: values must be strings, numbers, booleans or null, got {type(value).__name__}"
    )


def _same(stored: object, wanted: Scalar) -> bool:
    """Equality that keeps True apart from 1 (JSON tells them apart, Python does not)."""
    if isinstance(stored, bool) != isinstance(wanted, bool):
        return False
    return stored == wanted


def _holds(stored: object, wanted: Scalar) -> bool:
    """A value matches ``wanted``; a list-valued field matches when one of its items does."""
    if isinstance(stored, (list, tuple)):
        return any(_same(item, wanted) for item in stored)
    return _same(stored, wanted)


@dataclass(frozen=True)
class Condition:
    """One key's test: ``operator`` over ``values`` (one value for $eq/$ne, any number for $in/$nin)."""

    key: str
    operator: str
    values: tuple[Scalar, ...]

    def matches(self, metadata: Mapping[str, Any]) -> bool:
        present = self.key in metadata
        stored = metadata.get(self.key)
        if self.operator in ("$eq", "$in"):
            return present and any(_holds(stored, value) for value in self.values)
        return not present or not any(_holds(stored, value) for value in self.values)

    def to_json(self) -> Any:
        if self.operator in ("$in", "$nin"):
            return {self.operator: list(self.values)}
        return {self.operator: self.values[0]}


@dataclass(frozen=True)
class DocumentFilter:
    """Conditions on document metadata, all of which must hold (an empty filter keeps every document)."""

    conditions: tuple[Condition, ...] = ()

    @classmethod
    def parse(cls, filters: Mapping[str, Any] | DocumentFilter | None) -> DocumentFilter:
        """Read ``{"key": value | {"$op": value}}``; raises FilterError naming the key and what is wrong."""
        if filters is None:
            return cls()
        if isinstance(filters, DocumentFilter):
            return filters
        if not isinstance(filters, Mapping):
            raise FilterError(
                f'filters must be an object such as {{"lang": "en"}} or {{"year": {{"$in": [2023, 2024]}}}}, '
                f"got {type(filters).__name__}"
            )
        conditions = []
        for key, test in filters.items():
            if not isinstance(key, str) or not key:
                raise FilterError(f"filter keys must be non-empty metadata names, got {key!r}")
            if key.startswith("$"):
                raise FilterError(
                    f"{key!r} is not supported at the top level: list several keys to require all of them "
                    f"(operators go inside a key: {', '.join(OPERATORS)})"
                )
            if not isinstance(test, Mapping):
                conditions.append(Condition(key, "$eq", (_check_scalar(key, test),)))
                continue
            if len(test) != 1:
                raise FilterError(
                    f"filter on {key!r}: give exactly one operator ({', '.join(OPERATORS)}), got {dict(test)}"
                )
            ((operator, value),) = test.items()
            if operator not in OPERATORS:
                raise FilterError(
                    f"filter on {key!r}: unknown operator {operator!r}; use one of {', '.join(OPERATORS)}"
                )
            if operator in ("$in", "$nin"):
                if not isinstance(value, (list, tuple)):
                    raise FilterError(
                        f"filter on {key!r}: {operator} takes a list of values, got {type(value).__name__}"
                    )
                values = tuple(_check_scalar(key, item) for item in value)
            else:
                values = (_check_scalar(key, value),)
            conditions.append(Condition(key, operator, values))
        return cls(tuple(conditions))

    def __bool__(self) -> bool:
        return bool(self.conditions)

    def matches(self, metadata: Mapping[str, Any]) -> bool:
        return all(condition.matches(metadata) for condition in self.conditions)

    def to_json(self) -> dict[str, Any]:
        """The filter as JSON (operators spelled out), e.g. for logs and batching keys."""
        return {condition.key: condition.to_json() for condition in self.conditions}

    @property
    def key(self) -> str:
        """A canonical string: equal filters have equal keys (questions under one filter share a scan)."""
        return json.dumps(self.to_json(), sort_keys=True)

    def apply(self, bank: MemoryBank) -> MemoryBank:
        """The bank restricted to matching documents (the bank itself when the filter is empty)."""
        if not self.conditions:
            return bank
        return bank.view([document.id for document in bank.documents if self.matches(document.metadata)])
