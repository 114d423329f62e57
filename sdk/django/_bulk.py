"""``QuerySet.update()``, ``bulk_update()`` and ``bulk_create()``: statements
Django sends no signal for, captured at a constant number of extra queries.

The three ``QuerySet`` methods are wrapped once, at ``ready()``, on
Django's ``QuerySet`` itself, so every manager and custom queryset that
ends in them is covered; for a model that is not registered the wrapper
is one dict lookup.  Each captured call runs in ``atomic(savepoint=False)``
(a no-op inside a transaction) and costs, on top of Django's own queries:

    update(field=value, ...)          +1  SELECT ... FOR UPDATE of the rows' audited fields
    update(field=F(...) / expr)       +2  ... and one SELECT of the values the database computed
    bulk_update(objs, fields)         +1  SELECT ... FOR UPDATE by primary key (+1 for expressions)
    bulk_create(objs)                 +0  the primary keys come back (RETURNING)
    bulk_create(..., update_conflicts=True)
                                      +1  SELECT of the rows whose unique fields the objects repeat
    bulk_create(..., ignore_conflicts=True)
                                      +2  ... and one of the rows that are there after it

(past the database's parameter limit, see ``_before``, one more per such
slice of ids).  Where the database locks rows (PostgreSQL), ``update()``
is sent restricted to the primary keys it read, so a row another
transaction makes match the filter between the read and the write is not
changed unaudited; on SQLite the statement is sent as written.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from django.db import connections, transaction
from django.db.models import Field, Model, Q, QuerySet

from auditlake.sdk.django._before import id_limit, read_by_ids, read_rows
from auditlake.sdk.django._emit import Event, emit_on_commit
from auditlake.sdk.django._registry import SHAPES, capturing, internal, wrap
from auditlake.sdk.django._rows import ModelShape, Row, coerced

_ORIGINALS: dict[str, Callable[..., Any]] = {}


def _is_expression(value: object) -> bool:
    return hasattr(value, "resolve_expression")


def _update_events(shape: ModelShape, before: dict[Any, Row], after: dict[Any, Row],
                   metadata: dict[str, Any]) -> list[Event]:
    patterns = shape.patterns()
    action = shape.actions["update"]
    events: list[Event] = []
    for pk, old in before.items():
        new = after.get(pk)
        if new is None:
            continue
        changes = shape.changes(old, new, patterns)
        if changes:
            events.append((action, shape.resource_type, str(pk), changes, metadata))
    return events


def update(self: QuerySet[Any], **kwargs: Any) -> int:
    """``QuerySet.update()``, capturing each changed row of a registered model."""
    original = _ORIGINALS["update"]
    shape = SHAPES.get(self.model)
    if shape is None or not capturing():
        return original(self, **kwargs)  # type: ignore[no-any-return]
    fields = shape.audited(kwargs)
    if not fields or self.query.is_sliced or self.query.combinator:
        # Nothing audited changes, or Django refuses the statement: its own error.
        return original(self, **kwargs)  # type: ignore[no-any-return]
    db = self.db
    connection = connections[db]
    with transaction.atomic(using=db, savepoint=False):
        before = read_rows(self, fields)
        limit = id_limit(connection)
        target = self
        if connection.features.has_select_for_update and (limit is None or len(before) <= limit):
            target = self.filter(pk__in=list(before))
        count: int = original(target, **kwargs)
        values = {f: kwargs[f.name] if f.name in kwargs else kwargs[f.attname] for f in fields}
        computed = [f for f, value in values.items() if _is_expression(value)]
        after: dict[Any, Row] = {}
        if computed:
            after = read_by_ids(self.model, db, list(before), computed)
        constant = {f.name: coerced(f, value, None) for f, value in values.items() if f not in computed}
        after = {pk: {**constant, **after.get(pk, {})} for pk in before}
        emit_on_commit(db, _update_events(shape, before, after, {"operation": "update"}))
    return count


def bulk_update(self: QuerySet[Any], objs: Iterable[Model], fields: Sequence[str],
                batch_size: int | None = None) -> int:
    """``QuerySet.bulk_update()``, capturing each changed row of a registered model."""
    original = _ORIGINALS["bulk_update"]
    shape = SHAPES.get(self.model)
    if shape is None or not capturing():
        return original(self, objs, fields, batch_size)  # type: ignore[no-any-return]
    objs = tuple(objs)
    audited = shape.audited(fields)
    if not audited or not objs:
        return original(self, objs, fields, batch_size)  # type: ignore[no-any-return]
    db = self.db
    with transaction.atomic(using=db, savepoint=False):
        # Read first: bulk_update raises for objects without a primary key
        # before writing, and so will this read for the same objects.
        before = read_by_ids(self.model, db, [obj.pk for obj in objs], audited)
        # The value each row gets: Django's CASE takes the first object of a pk.
        written: dict[Any, Row] = {}
        for obj in objs:
            written.setdefault(obj.pk, shape.values_of(obj, audited))
        with internal():  # Django's bulk_update calls update() once per batch
            count: int = original(self, objs, fields, batch_size)
        computed = [f for f in audited if any(_is_expression(row.get(f.name)) for row in written.values())]
        if computed:
            fresh = read_by_ids(self.model, db, list(written), computed)
            for pk, row in written.items():
                row.update(fresh.get(pk, {}))
        emit_on_commit(db, _update_events(shape, before, written, {"operation": "bulk_update"}))
    return count


def _conflict_key(shape: ModelShape, objs: list[Model], unique_fields: Sequence[str] | None
                  ) -> tuple[Field[Any, Any], ...] | None:
    """The fields that say whether an object's row already exists."""
    meta = shape.model._meta
    if unique_fields:
        return tuple(_concrete(meta.pk if name == "pk" else meta.get_field(name)) for name in unique_fields)
    if all(obj.pk is not None for obj in objs):
        return (_concrete(meta.pk),)
    for f in meta.concrete_fields:
        if f.unique and not f.primary_key and all(obj.__dict__.get(f.attname) is not None for obj in objs):
            return (f,)
    for names in meta.unique_together:
        together = tuple(_concrete(meta.get_field(name)) for name in names)
        if all(obj.__dict__.get(f.attname) is not None for obj in objs for f in together):
            return together
    return None


def _concrete(field: object) -> Field[Any, Any]:
    if not isinstance(field, Field):
        raise TypeError(f"{field!r} is not a concrete field")
    return field


def _key_filter(key: tuple[Field[Any, Any], ...], values: list[tuple[Any, ...]]) -> Q:
    if len(key) == 1:
        return Q(**{f"{key[0].attname}__in": [v[0] for v in values]})
    return functools.reduce(
        operator.or_, (Q(**{f.attname: v for f, v in zip(key, value, strict=True)}) for value in values)
    )


def _read_by_key(shape: ModelShape, db: str, key: tuple[Field[Any, Any], ...],
                 values: list[tuple[Any, ...]]) -> dict[tuple[Any, ...], tuple[Any, Row]]:
    """{key value: (pk, row)} of the stored rows with these key values."""
    if not values:
        return {}
    wanted = tuple(dict.fromkeys((*key, *shape.fields)))
    rows = read_rows(shape.model._base_manager.using(db).filter(_key_filter(key, values)), wanted)
    names = [f.name for f in key]
    return {tuple(row[name] for name in names): (pk, row) for pk, row in rows.items()}


def bulk_create(self: QuerySet[Any], objs: Iterable[Model], batch_size: int | None = None,
                ignore_conflicts: bool = False, update_conflicts: bool = False,
                update_fields: Sequence[str] | None = None, unique_fields: Sequence[str] | None = None
                ) -> list[Model]:
    """``QuerySet.bulk_create()``, capturing each row it creates (or updates, on conflict)."""
    original = _ORIGINALS["bulk_create"]
    shape = SHAPES.get(self.model)
    arguments = {"batch_size": batch_size, "ignore_conflicts": ignore_conflicts,
                 "update_conflicts": update_conflicts, "update_fields": update_fields,
                 "unique_fields": unique_fields}
    if shape is None or not capturing():
        return original(self, objs, **arguments)  # type: ignore[no-any-return]
    objs = list(objs)
    if not objs:
        return original(self, objs, **arguments)  # type: ignore[no-any-return]
    db = self.db
    create = shape.actions["create"]
    metadata = {"operation": "bulk_create"}
    patterns = shape.patterns()
    with transaction.atomic(using=db, savepoint=False):
        if not (ignore_conflicts or update_conflicts):
            created = original(self, objs, **arguments)
            emit_on_commit(db, [
                (create, shape.resource_type, "" if obj.pk is None else str(obj.pk),
                 shape.changes(None, shape.values_of(obj), patterns), metadata)
                for obj in objs
            ])
            return created  # type: ignore[no-any-return]
        key = _conflict_key(shape, objs, unique_fields)
        if key is None:
            # No key to tell a created row from an ignored one by: record
            # each object as an attempt, and say so.
            created = original(self, objs, **arguments)
            emit_on_commit(db, [
                (create, shape.resource_type, "" if obj.pk is None else str(obj.pk),
                 shape.changes(None, shape.values_of(obj), patterns),
                 {**metadata, "conflicts": "unknown: no unique key to check"})
                for obj in objs
            ])
            return created  # type: ignore[no-any-return]
        values = list(dict.fromkeys(tuple(obj.__dict__.get(f.attname) for f in key) for obj in objs))
        existing = _read_by_key(shape, db, key, values)
        created = original(self, objs, **arguments)
        stored: dict[tuple[Any, ...], Any] | None = None
        if ignore_conflicts or any(obj.pk is None for obj in objs):
            # Which rows are there now that were not before: DO NOTHING
            # returns no ids, and an object may have hit another unique key.
            new = [v for v in values if v not in existing]
            stored = {k: pk for k, (pk, _) in _read_by_key(shape, db, key, new).items()}
        updated = shape.audited(update_fields or ()) if update_conflicts else ()
        events: list[Event] = []
        seen: set[tuple[Any, ...]] = set()
        for obj in objs:
            value = tuple(obj.__dict__.get(f.attname) for f in key)
            if value in seen:
                continue
            seen.add(value)
            if value in existing:
                if updated:
                    pk, row = existing[value]
                    changes = shape.changes(row, shape.values_of(obj, updated), patterns)
                    if changes:
                        events.append((shape.actions["update"], shape.resource_type, str(pk), changes, metadata))
                continue
            pk = obj.pk if stored is None else stored.get(value)
            if pk is None:
                continue  # not stored: a conflict on another unique key
            events.append((create, shape.resource_type, str(pk),
                           shape.changes(None, shape.values_of(obj), patterns), metadata))
        emit_on_commit(db, events)
    return created  # type: ignore[no-any-return]


def install() -> None:
    """Wrap the three methods on Django's QuerySet (once)."""
    for name, wrapper in (("update", update), ("bulk_update", bulk_update), ("bulk_create", bulk_create)):
        wrap(QuerySet, name, wrapper, _ORIGINALS)

