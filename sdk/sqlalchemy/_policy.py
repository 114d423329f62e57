"""The capture policy (what a registered model or table records) and what
one table or model captures: fields, keys, resource type."""

from __future__ import annotations

import datetime as _dt
import decimal
import enum
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from sqlalchemy.orm import (
    Mapper,
)
from sqlalchemy.schema import Column, Table
from sqlalchemy.sql.elements import ClauseElement

from auditlake.sdk._config import current_settings
from auditlake.sdk._diff import DEFAULT_REDACT, REDACTED, diff_dict


def _join_key(values: tuple[Any, ...]) -> str:
    return ",".join("" if v is None else str(v) for v in values)


@dataclass(frozen=True)
class CapturePolicy:
    """What is recorded for one model, declarative base or table (immutable).

    ``include`` (default: every column field) and ``exclude`` select the
    fields whose values go into ``changes``; a change of other fields alone
    records nothing.  ``redact`` adds key fragments to the SDK's redaction
    list (:data:`auditlake.sdk._diff.DEFAULT_REDACT` plus the configured
    ``redact``): a matching field is reported as changed with
    ``"[REDACTED]"`` values.  ``resource_type`` defaults to the table name;
    ``resource_id`` maps the primary key tuple to the ``resource_id``
    string (default: parts joined by ``,``).  ``reads=True`` records ORM
    reads, one event per query naming at most ``read_ids_max`` ids.
    """

    include: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    redact: tuple[str, ...] = ()
    resource_type: str | None = None
    resource_id: Callable[[tuple[Any, ...]], str] = _join_key
    create_action: str = "create"
    update_action: str = "update"
    delete_action: str = "delete"
    reads: bool = False
    read_action: str = "read"
    read_ids_max: int = 100

    def __post_init__(self) -> None:
        for name in ("include", "exclude", "redact"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, str):
                raise ValueError(f"{name}: a list of field names is required, got the string {value!r}")
            names = tuple(value)
            if not all(isinstance(n, str) and n for n in names):
                raise ValueError(f"{name}: field names must be non-empty strings, got {names!r}")
            object.__setattr__(self, name, names)
        for name in ("create_action", "update_action", "delete_action", "read_action"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"{name}: must be a non-empty string")
        if self.resource_type is not None and not self.resource_type:
            raise ValueError("resource_type: must be a non-empty string or None (the table name)")
        if not callable(self.resource_id):
            raise ValueError("resource_id: must be a function of the primary key tuple")
        if not isinstance(self.read_ids_max, int) or self.read_ids_max < 1:
            raise ValueError(f"read_ids_max: must be an integer >= 1, got {self.read_ids_max!r}")


# -- what one table or model captures ------------------------------------------------


_JSON_SCALARS: Final = frozenset({str, int, float, bool, type(None)})
#: Exact types -> their JSON form; the common column types, looked up in one step.
_CONVERT: Final[dict[type, Callable[[Any], Any]]] = {
    decimal.Decimal: str,
    uuid.UUID: str,
    _dt.datetime: _dt.datetime.isoformat,
    _dt.date: _dt.date.isoformat,
    _dt.time: _dt.time.isoformat,
    bytes: lambda v: "\\x" + v.hex(),
}


def _plain(value: Any) -> Any:
    """``value`` as JSON can carry it, without losing what an auditor reads."""
    kind = type(value)
    if kind in _JSON_SCALARS:
        return value
    convert = _CONVERT.get(kind)
    if convert is not None:
        return convert(value)
    if isinstance(value, _dt.date | _dt.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, enum.Enum):
        return _plain(value.value)
    if isinstance(value, bytes | bytearray | memoryview):
        return "\\x" + bytes(value).hex()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    if isinstance(value, ClauseElement):
        return f"SQL: {value}"
    return value if isinstance(value, int | float | str) else str(value)


@dataclass(frozen=True, eq=False)
class _Capture:
    """A registered model's or table's resolved policy: fields, key, names."""

    policy: CapturePolicy
    table: Table
    resource_type: str
    #: (field name, column) of every captured field.
    fields: tuple[tuple[str, Column[Any]], ...]
    #: (field name, column) of the primary key, in key order.
    key: tuple[tuple[str, Column[Any]], ...]
    #: captured fields whose column has an onupdate default (set by SQLAlchemy, not by the application)
    onupdate: tuple[tuple[str, Column[Any]], ...] = ()
    _patterns: list[tuple[tuple[str, ...], tuple[tuple[str, ...], frozenset[str]]]] = field(
        default_factory=list)

    def resource_id(self, key: tuple[Any, ...]) -> str:
        if len(key) == 1:
            value = key[0]
            if self.policy.resource_id is _join_key:
                return "" if value is None else str(value)
        return self.policy.resource_id(key)

    def _redaction(self) -> tuple[tuple[str, ...], frozenset[str]]:
        """The redaction patterns in force, and which captured fields they hide."""
        # The configured redact list may change with configure(): recomputed
        # only when it does (one small cache per capture).
        configured = current_settings().redact
        cached = self._patterns
        if cached and cached[0][0] is configured:
            return cached[0][1]
        patterns = tuple(p.lower().replace("-", "_") for p in (*DEFAULT_REDACT, *configured, *self.policy.redact))
        hidden = frozenset(name for name, _ in self.fields
                           if any(p in name.lower().replace("-", "_") for p in patterns))
        cached[:] = [(configured, (patterns, hidden))]
        return patterns, hidden

    def changes(self, before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, dict[str, object]]:
        """:func:`auditlake.sdk._diff.diff_dict` of the two, as the SDK's diff()
        reports it; flat values take a short path (a field's redaction
        depends only on its name), JSON values the diff's own walk."""
        patterns, hidden = self._redaction()
        out: dict[str, dict[str, object]] = {}
        for name in (*before, *(n for n in after if n not in before)):
            old, new = before.get(name), after.get(name)
            if isinstance(old, dict | list) or isinstance(new, dict | list):
                out.update(diff_dict({name: old} if name in before else {},
                                     {name: new} if name in after else {}, redact=patterns))
            elif type(old) is not type(new) or old != new:  # True == 1, but a bool becoming 1 is a change
                if name in hidden:
                    out[name] = {"before": None if old is None else REDACTED,
                                 "after": None if new is None else REDACTED}
                else:
                    out[name] = {"before": old, "after": new}
        return out


def _field_names(mapper: Mapper[Any] | None, table: Table) -> dict[Column[Any], str]:
    """Column -> field name: the mapped attribute name where a mapper maps it."""
    names: dict[Column[Any], str] = {}
    for column in table.columns:
        name = column.key
        if mapper is not None:
            try:
                name = mapper.get_property_by_column(column).key
            except Exception:  # noqa: BLE001 - an unmapped column keeps its key
                name = column.key
        names[column] = name
    return names


def _build_capture(policy: CapturePolicy, table: Table, names: Mapping[Column[Any], str],
                   columns: Iterable[Column[Any]], key_columns: Sequence[Column[Any]],
                   what: str, strict: bool) -> _Capture:
    candidates = [(names[c], c) for c in columns]
    available = {n for n, _ in candidates}
    # A policy registered for one model names that model's fields; one
    # registered for a whole base may name fields only some models have.
    for listed, label in ((policy.include or (), "include"), (policy.exclude, "exclude")):
        unknown = [n for n in listed if n not in available]
        if unknown and strict:
            raise ValueError(f"{label}: {', '.join(unknown)} not a field of {what} "
                             f"(fields: {', '.join(sorted(available))})")
    chosen = tuple((n, c) for n, c in candidates
                   if (policy.include is None or n in policy.include) and n not in policy.exclude)
    key = tuple((names[c], c) for c in key_columns)
    if not key:
        raise ValueError(f"{what} has no primary key: auditlake needs one for resource_id")
    onupdate = tuple((n, c) for n, c in chosen if c.onupdate is not None or c.server_onupdate is not None)
    return _Capture(policy, table, policy.resource_type or table.name, chosen, key, onupdate)


def _model_capture(policy: CapturePolicy, mapper: Mapper[Any], strict: bool = False) -> _Capture:
    table = mapper.local_table
    if not isinstance(table, Table):
        raise ValueError(f"{mapper.class_.__name__} is not mapped to a table")
    names: dict[Column[Any], str] = {}
    columns: list[Column[Any]] = []
    for prop in mapper.column_attrs:
        column = prop.columns[0]
        # Plain table columns only: column_property() expressions are not stored.
        if isinstance(column, Column) and column.table in mapper.tables and column not in names:
            names[column] = prop.key
            columns.append(column)
    key_columns = [c for c in mapper.primary_key if isinstance(c, Column)]
    for column in key_columns:
        names.setdefault(column, column.key)
    return _build_capture(policy, table, names, columns, key_columns, mapper.class_.__name__, strict)


def _table_capture(policy: CapturePolicy, table: Table, mapper: Mapper[Any] | None,
                   strict: bool = False) -> _Capture:
    names = _field_names(mapper, table)
    return _build_capture(policy, table, names, table.columns, list(table.primary_key.columns),
                          f"table {table.name}", strict)


