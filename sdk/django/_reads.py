"""Sensitive reads: one ``read`` event per query of a model that asks for it.

A model registered with ``"reads": True`` (or a number) records each query
that loads its rows, when the query runs: a patient fetched by primary key
is ``read clinic.Patient/42``; a list page of 25 is one event whose
``metadata`` names the ids (``{"ids": [...], "count": 25}``), the first
``read_max_ids`` of them, and the count of them all.  A query that finds
nothing records nothing.  Ids come from the model instances, or from
``values()`` / ``values_list()`` rows when they include the primary key
(otherwise the event carries the count alone).

Covered: evaluating a queryset (iteration, ``list()``, ``get()``,
``first()``, related-object access, ``prefetch_related``) and
``iterator()`` (recorded when it is exhausted or closed).  Not covered:
rows that arrive through another model's query (``select_related``),
``raw()`` SQL, and ``aiterator()``.  Reads are recorded at once, not on
commit: a read happened whether or not the transaction commits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from django.db.models import QuerySet
from django.db.models.query import (
    FlatValuesListIterable,
    ModelIterable,
    NamedValuesListIterable,
    ValuesIterable,
    ValuesListIterable,
)

from auditlake.sdk.django._emit import record_safely
from auditlake.sdk.django._registry import READS, capturing, wrap
from auditlake.sdk.django._rows import ModelShape

_ORIGINALS: dict[str, Callable[..., Any]] = {}


def _id_getter(queryset: QuerySet[Any], shape: ModelShape) -> Callable[[Any], Any] | None:
    """How to take the primary key from one result row of ``queryset`` (None: it has none)."""
    iterable = queryset._iterable_class
    if issubclass(iterable, ModelIterable):
        return operator_pk
    meta = shape.model._meta
    names = {"pk", meta.pk.name, meta.pk.attname}
    fields: tuple[str, ...] = getattr(queryset, "_fields", None) or ()
    if issubclass(iterable, ValuesIterable):
        key = next((name for name in (*fields, meta.pk.attname) if name in names), None)
        return None if key is None else (lambda row: row.get(key))
    if issubclass(iterable, ValuesListIterable | NamedValuesListIterable):
        if not fields:  # values_list(): every concrete field, in model order
            fields = tuple(f.attname for f in meta.concrete_fields)
        index = next((i for i, name in enumerate(fields) if name in names), None)
        return None if index is None else (lambda row: row[index])
    if issubclass(iterable, FlatValuesListIterable):
        return (lambda row: row) if fields and fields[0] in names else None
    return None


def operator_pk(obj: Any) -> Any:
    """The primary key of a model instance."""
    return obj.pk


class _ReadIds:
    """The ids one query read: the first ``limit`` of them, and the count."""

    __slots__ = ("count", "get_id", "ids", "limit", "shape")

    def __init__(self, shape: ModelShape, get_id: Callable[[Any], Any] | None) -> None:
        self.shape = shape
        self.get_id = get_id
        self.limit: int = shape.reads or 0
        self.ids: list[str] = []
        self.count = 0

    def add(self, row: Any) -> None:
        self.count += 1
        if self.get_id is not None and len(self.ids) < self.limit:
            self.ids.append(str(self.get_id(row)))

    def record(self) -> None:
        if not self.count:
            return
        shape = self.shape
        metadata: dict[str, Any] = {"count": self.count}
        if self.get_id is not None:
            metadata["ids"] = self.ids
        resource_id = self.ids[0] if self.count == 1 and self.ids else ""
        record_safely(shape.actions["read"], shape.resource_type, resource_id, None, metadata)


def fetch_all(self: QuerySet[Any]) -> None:
    """``QuerySet._fetch_all()``, recording a read of a model that asks for it."""
    original = _ORIGINALS["_fetch_all"]
    if self._result_cache is not None:
        return original(self)  # type: ignore[no-any-return]
    shape = READS.get(self.model)
    if shape is None or not capturing():
        return original(self)  # type: ignore[no-any-return]
    original(self)
    read = _ReadIds(shape, _id_getter(self, shape))
    result: list[Any] = self._result_cache or []
    read.count = len(result)
    if read.get_id is not None:
        read.ids = [str(read.get_id(row)) for row in result[: read.limit]]
    read.record()


def iterator(self: QuerySet[Any], chunk_size: int | None = None) -> Iterator[Any]:
    """``QuerySet.iterator()``, recording the read when it ends."""
    rows: Iterator[Any] = _ORIGINALS["iterator"](self, chunk_size=chunk_size)
    shape = READS.get(self.model)
    if shape is None or not capturing():
        return rows
    return _counted(rows, _ReadIds(shape, _id_getter(self, shape)))


def _counted(rows: Iterator[Any], read: _ReadIds) -> Iterator[Any]:
    try:
        for row in rows:
            read.add(row)
            yield row
    finally:
        read.record()


def install() -> None:
    """Wrap the two QuerySet methods (once; only when some model records reads)."""
    for name, wrapper in (("_fetch_all", fetch_all), ("iterator", iterator)):
        wrap(QuerySet, name, wrapper, _ORIGINALS)
