"""Deletes: ``Model.delete()``, ``QuerySet.delete()`` and what they cascade to.

Both go through Django's deletion ``Collector``, so that is where the
capture sits (wrapped once at ``ready()``), rather than on the
``pre_delete``/``post_delete`` signals: a signal receiver makes Django load
every row to delete and delete them 100 at a time, where without one it
sends a single ``DELETE ... WHERE <filter>``.  Just before the collector
deletes, one ``SELECT ... FOR UPDATE`` per registered model it will delete
from reads the rows' audited fields (the rows it loaded by primary key, the
rows of its fast-delete queries by their filters, OR-ed together); after
it, one event per row is handed to ``on_commit``.  A ``SET_NULL`` cascade
is an ``update()`` and is captured as one (see ``_bulk``).

The rows the collector loads itself to find cascades are not read events.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from typing import Any

from django.db import transaction
from django.db.models import QuerySet
from django.db.models.deletion import Collector

from auditlake.sdk.django._before import read_by_ids, read_rows
from auditlake.sdk.django._emit import Event, emit_on_commit
from auditlake.sdk.django._registry import SHAPES, capturing, internal, wrap
from auditlake.sdk.django._rows import ModelShape, Row

_ORIGINALS: dict[str, Callable[..., Any]] = {}


def _doomed(collector: Collector) -> dict[ModelShape, tuple[list[Any], list[QuerySet[Any]]]]:
    """Per registered model: the primary keys the collector loaded, and its fast-delete queries."""
    doomed: dict[ModelShape, tuple[list[Any], list[QuerySet[Any]]]] = {}
    for model, instances in collector.data.items():
        shape = SHAPES.get(model)
        if shape is not None and instances:
            doomed.setdefault(shape, ([], []))[0].extend(obj.pk for obj in instances)
    for queryset in collector.fast_deletes:
        shape = SHAPES.get(queryset.model)
        if shape is not None:
            doomed.setdefault(shape, ([], []))[1].append(queryset)
    return doomed


def delete(self: Collector) -> tuple[int, dict[str, int]]:
    """``Collector.delete()``, capturing the rows of registered models it deletes."""
    original = _ORIGINALS["delete"]
    doomed = _doomed(self) if capturing() else {}
    if not doomed:
        return original(self)  # type: ignore[no-any-return]
    using = self.using
    with transaction.atomic(using=using, savepoint=False):
        rows: dict[ModelShape, dict[Any, Row]] = {}
        for shape, (pks, querysets) in doomed.items():
            found = read_by_ids(shape.model, using, pks, shape.fields) if pks else {}
            by_model: dict[type[Any], list[QuerySet[Any]]] = {}
            for queryset in querysets:  # a proxy's queries and its model's do not combine
                by_model.setdefault(queryset.model, []).append(queryset)
            for same_model in by_model.values():
                found.update(read_rows(functools.reduce(operator.or_, same_model), shape.fields))
            rows[shape] = found
        result = original(self)
        events: list[Event] = []
        for shape, found in rows.items():
            patterns = shape.patterns()
            action = shape.actions["delete"]
            events.extend(
                (action, shape.resource_type, str(pk), shape.changes(row, None, patterns), None)
                for pk, row in found.items()
            )
        emit_on_commit(using, events)
    return result  # type: ignore[no-any-return]


def collect(self: Collector, *args: Any, **kwargs: Any) -> None:
    """``Collector.collect()``, its own reads kept out of the read events."""
    with internal():
        _ORIGINALS["collect"](self, *args, **kwargs)


def install() -> None:
    """Wrap the collector's two methods (once)."""
    for name, wrapper in (("delete", delete), ("collect", collect)):
        wrap(Collector, name, wrapper, _ORIGINALS)

