"""Reading rows' current values inside the writing transaction.

Every before-value the capture reports is read from the database, not
taken from objects in memory (which may be stale): one ``SELECT`` of the
primary key and the audited fields per statement, with ``FOR UPDATE OF``
the model's own table where the database has it (PostgreSQL), so no other
transaction changes the rows between the read and the write.  SQLite has
no row locks and needs none: one writer at a time holds the database.

The read before a ``save()`` (one row by primary key, the most frequent)
is compiled once per model, field list and connection and then only
executed: building a Django queryset and compiling it costs several times
what the query itself does.

A list of ids goes into one ``IN (...)``; only past the number of
parameters a statement may carry (SQLite's compiled limit, 250,000 on
Debian; PostgreSQL with server-side binding, 65,535) is it split.
"""

from __future__ import annotations

import sqlite3
import weakref
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Field, Model, QuerySet

from auditlake.sdk.django._registry import internal
from auditlake.sdk.django._rows import Row

#: Parameters kept free for the rest of a statement that also lists ids.
_SPARE_PARAMETERS = 100


def id_limit(connection: BaseDatabaseWrapper) -> int | None:
    """How many ids one ``IN (...)`` may list on ``connection`` (None: no limit)."""
    if connection.vendor == "sqlite":
        connection.ensure_connection()
        getlimit = getattr(connection.connection, "getlimit", None)
        limit = getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) if getlimit else 999
        return max(limit - _SPARE_PARAMETERS, 1)
    if connection.vendor == "postgresql":
        # Django binds parameters on the client unless asked otherwise.
        binding = connection.settings_dict.get("OPTIONS", {}).get("server_side_binding")
        return 65_535 - _SPARE_PARAMETERS if binding else None
    limit = connection.features.max_query_params
    return None if limit is None else max(limit - _SPARE_PARAMETERS, 1)


def chunks(ids: Sequence[Any], limit: int | None) -> Iterator[Sequence[Any]]:
    """``ids`` in slices of at most ``limit`` (one slice when unlimited)."""
    if limit is None or len(ids) <= limit:
        yield ids
        return
    for start in range(0, len(ids), limit):
        yield ids[start : start + limit]


def lockable(queryset: QuerySet[Any]) -> bool:
    """Whether ``SELECT ... FOR UPDATE`` may be added to this query."""
    query = queryset.query
    return not (query.distinct or query.group_by is not None or query.combinator or query.is_sliced)


def locked(queryset: QuerySet[Any], connection: BaseDatabaseWrapper) -> QuerySet[Any]:
    """``queryset`` locking the rows it reads, where the database can and a
    transaction is open; only the model's own table (``OF self``)."""
    features = connection.features
    if not (features.has_select_for_update and connection.in_atomic_block and lockable(queryset)):
        return queryset
    if features.has_select_for_update_of:
        return queryset.select_for_update(of=("self",))
    return queryset.select_for_update()


def read_rows(queryset: QuerySet[Any], fields: Sequence[Field[Any, Any]]) -> dict[Any, Row]:
    """``{pk: {field name: value}}`` of the rows ``queryset`` selects: one query."""
    connection = connections[queryset.db]
    names = [f.name for f in fields]
    with internal():
        found = locked(queryset.order_by(), connection).values_list("pk", *(f.attname for f in fields))
        return {row[0]: dict(zip(names, row[1:], strict=True)) for row in found}


def read_by_ids(model: type[Model], using: str, ids: Iterable[Any],
                fields: Sequence[Field[Any, Any]]) -> dict[Any, Row]:
    """:func:`read_rows` of the rows with these primary keys."""
    wanted = list(dict.fromkeys(ids))
    rows: dict[Any, Row] = {}
    if not wanted:
        return rows
    manager = model._base_manager.using(using)  # the rows as stored, whatever the default manager hides
    for part in chunks(wanted, id_limit(connections[using])):
        rows.update(read_rows(manager.filter(pk__in=part), fields))
    return rows


class _ByPk:
    """A compiled ``SELECT <fields> FROM <table> WHERE pk = %s`` and the
    converters Django applies to its values (JSON decoded, SQLite's text
    dates parsed)."""

    __slots__ = ("compiler", "converters", "names", "sql")

    def __init__(self, compiler: Any, sql: str, names: list[str]) -> None:
        self.compiler = compiler
        self.sql = sql
        self.names = names
        self.converters = compiler.get_converters([s[0] for s in compiler.select[: compiler.col_count]])


# Per connection object (one per thread and alias): the compiler applying
# the converters holds its connection.
_BY_PK: weakref.WeakKeyDictionary[BaseDatabaseWrapper, dict[tuple[Any, ...], _ByPk | None]] = (
    weakref.WeakKeyDictionary()
)


def read_one(model: type[Model], using: str, pk: Any, fields: Sequence[Field[Any, Any]]) -> Row | None:
    """The stored values of ``fields`` of the row with primary key ``pk`` (None: no such row)."""
    connection = connections[using]
    features = connection.features
    lock = bool(features.has_select_for_update and connection.in_atomic_block)
    pk_field = model._meta.pk
    assert pk_field is not None
    param = pk_field.get_db_prep_value(pk_field.get_prep_value(pk), connection, prepared=True)
    compiled_for = _BY_PK.setdefault(connection, {})
    key = (model, tuple(f.attname for f in fields), lock)
    compiled = compiled_for.get(key)
    if compiled is None and key not in compiled_for:
        queryset = model._base_manager.using(using).filter(pk=pk).order_by().values_list(*key[1])
        if lock:
            of = ("self",) if features.has_select_for_update_of else ()
            queryset = queryset.select_for_update(of=of)
        compiler = queryset.query.get_compiler(using=using)
        sql, params = compiler.as_sql()
        # Reusable only when the key is the statement's one parameter.
        compiled = _ByPk(compiler, sql, [f.name for f in fields]) if list(params) == [param] else None
        compiled_for[key] = compiled
    if compiled is None:
        return read_by_ids(model, using, [pk], fields).get(pk)
    with internal(), connection.cursor() as cursor:
        cursor.execute(compiled.sql, [param])
        row = cursor.fetchone()
    if row is None:
        return None
    if compiled.converters:
        row = next(compiled.compiler.apply_converters([row], compiled.converters))
    return dict(zip(compiled.names, row, strict=True))
