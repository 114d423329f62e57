"""Statements on registered tables (ORM bulk and Core INSERT, UPDATE,
DELETE): the affected rows' keys and old values read at a constant number
of extra queries (docs/integrations.md)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import sqlalchemy
from sqlalchemy import select
from sqlalchemy.engine import Connection
from sqlalchemy.schema import Column, Table
from sqlalchemy.sql import ColumnElement
from sqlalchemy.sql.dml import Delete, Insert, Update, UpdateBase
from sqlalchemy.sql.elements import BinaryExpression, BindParameter, BooleanClauseList, ClauseElement

from auditlake.sdk._context import ACTOR, ActorFields
from auditlake.sdk.sqlalchemy._flush import _key_in
from auditlake.sdk.sqlalchemy._keys import _INFLIGHT_KEY
from auditlake.sdk.sqlalchemy._policy import _Capture, _plain
from auditlake.sdk.sqlalchemy._registry import REGISTRY
from auditlake.sdk.sqlalchemy._transactions import _BULK, _keep, _owner, _Pending, _SessionLog


@dataclass
class _Plan:
    """What ``after_execute`` needs of a captured statement."""

    statement: UpdateBase
    capture: _Capture
    action: str
    param_sets: list[Mapping[str, Any]]
    #: update/delete: (param set index, key, old values, new values from the SELECT)
    rows: list[tuple[int, tuple[Any, ...], dict[str, Any], dict[str, Any]]] = field(default_factory=list)
    #: update: per param set, the SET values known without the database
    set_values: list[dict[str, Any]] = field(default_factory=list)
    #: update: fields set by a Python-side onupdate function (read from the executed parameters)
    onupdate_callables: tuple[tuple[str, Column[Any]], ...] = ()
    returned_keys: bool = False


class _Inflight:
    """Plans between ``before_execute`` and ``after_execute``, per connection."""

    @staticmethod
    def push(conn: Connection, plan: _Plan) -> None:
        conn.info.setdefault(_INFLIGHT_KEY, []).append(plan)

    @staticmethod
    def pop(conn: Connection, statement: Any) -> _Plan | None:
        stack: list[_Plan] | None = conn.info.get(_INFLIGHT_KEY)
        while stack:
            plan = stack.pop()
            if plan.statement is statement:
                return plan
        return None


def _param_sets(multiparams: Any, params: Any) -> list[Mapping[str, Any]]:
    if multiparams:
        if isinstance(multiparams, Mapping):
            return [multiparams]
        return list(multiparams)
    return [params or {}]


def _where(statement: UpdateBase) -> tuple[ColumnElement[Any], ...]:
    return tuple(getattr(statement, "_where_criteria", ()))


def _equalities(criteria: Iterable[ClauseElement]) -> Iterator[ClauseElement]:
    for criterion in criteria:
        if isinstance(criterion, BooleanClauseList) and criterion.operator is sqlalchemy.sql.operators.and_:
            yield from _equalities(criterion.clauses)
        else:
            yield criterion


def _key_binds(statement: UpdateBase, capture: _Capture) -> list[str] | None:
    """Bind names of a WHERE that is exactly ``key = :bind`` (per key column), else None."""
    binds: dict[Column[Any], str] = {}
    for criterion in _equalities(_where(statement)):
        if not (isinstance(criterion, BinaryExpression) and criterion.operator is sqlalchemy.sql.operators.eq):
            return None
        left, right = criterion.left, criterion.right
        if isinstance(left, BindParameter):
            left, right = right, left
        if not isinstance(right, BindParameter) or right.value is not None or right.callable is not None:
            return None
        column = _base_column(left, capture.table)
        if column is None or not column.primary_key:
            return None
        binds[column] = right.key
    names = [binds.get(c) for _, c in capture.key]
    return None if any(n is None for n in names) else [n for n in names if n is not None]


def _base_column(element: Any, table: Table) -> Column[Any] | None:
    """The table's own column behind ``element`` (ORM-annotated or not)."""
    key = getattr(element, "key", None)
    if key is None or getattr(element, "table", None) is None:
        return None
    if element.table is not table and element.table != table:
        return None
    column = table.columns.get(key)
    if column is None:
        column = table.columns.get(getattr(element, "name", key))
    return column if isinstance(column, Column) else None


def _literal(value: Any, params: Mapping[str, Any]) -> tuple[bool, Any]:
    """(True, the Python value) when ``value`` needs no database to evaluate."""
    if isinstance(value, BindParameter):
        if value.key in params:
            return True, params[value.key]
        if value.callable is not None:
            return False, None
        return True, value.value
    if isinstance(value, ClauseElement):
        return False, None
    return True, value


class _SetClause(NamedTuple):
    """What an UPDATE writes into the captured fields."""

    #: per parameter set: the values known without the database
    known: list[dict[str, Any]]
    #: (field, SQL expression) the database evaluates (read in the same SELECT as the old values)
    computed: list[tuple[str, Any]]
    #: fields a Python onupdate function sets (read from the executed parameters)
    by_function: tuple[tuple[str, Column[Any]], ...]


def _set_clause(statement: UpdateBase, capture: _Capture, param_sets: list[Mapping[str, Any]]) -> _SetClause:
    """The UPDATE's SET as SQLAlchemy builds it: ``.values()`` entries, every
    parameter named like a column, then the onupdate defaults of the rest."""
    table = capture.table
    names = {c: n for n, c in capture.fields}
    assigned: dict[Column[Any], Any] = {}
    for key, value in (getattr(statement, "_values", None) or {}).items():
        column = table.columns.get(key) if isinstance(key, str) else _base_column(key, table)
        if isinstance(column, Column):
            assigned[column] = value
    for name in param_sets[0]:
        column = table.columns.get(name)
        if isinstance(column, Column):
            assigned[column] = sqlalchemy.bindparam(name)
    by_function = []
    for column in table.columns:
        default = column.onupdate
        if column in assigned or column not in names or default is None:
            continue
        if getattr(default, "is_clause_element", False):
            assigned[column] = default.arg  # type: ignore[attr-defined]
        elif getattr(default, "is_scalar", False):
            assigned[column] = sqlalchemy.literal(default.arg)  # type: ignore[attr-defined]
        elif getattr(default, "is_callable", False):
            by_function.append((names[column], column))
    captured = [(names[c], v) for c, v in assigned.items() if c in names]
    known: list[dict[str, Any]] = []
    for params in param_sets:
        values = {}
        for name, value in captured:
            literal, python = _literal(value, params)
            if literal:
                values[name] = python
        known.append(values)
    computed = [(name, value) for name, value in captured if not _literal(value, param_sets[0])[0]]
    return _SetClause(known, computed, tuple(by_function))


def _plan_write(conn: Connection, statement: UpdateBase, capture: _Capture, action: str,
                param_sets: list[Mapping[str, Any]]) -> _Plan:
    """UPDATE/DELETE: the affected rows' keys and old values (and an UPDATE's
    computed new values), read before the statement runs."""
    plan = _Plan(statement, capture, action, param_sets)
    computed: list[tuple[str, Any]] = []
    if isinstance(statement, Update):
        clause = _set_clause(statement, capture, param_sets)
        plan.set_values, plan.onupdate_callables = clause.known, clause.by_function
        computed = clause.computed
    key_columns = [c for _, c in capture.key]
    n_key, n_old = len(key_columns), len(capture.fields)
    base = select(*key_columns, *(c for _, c in capture.fields),
                  *(_label_new(v, i) for i, (_, v) in enumerate(computed)))
    table = capture.table
    base = base.select_from(table, *getattr(statement, "_extra_froms", ()))
    # Lock the rows (PostgreSQL; SQLite's single writer needs none) so that
    # what is read is what the statement changes.
    base = base.with_for_update(of=table)

    def read(selection: Any, index_of: Callable[[tuple[Any, ...]], int]) -> None:
        seen: set[tuple[Any, ...]] = set()
        for row in selection:
            key = tuple(row[:n_key])
            if key in seen:  # UPDATE ... FROM a join: one event per target row
                continue
            seen.add(key)
            old = {name: row[n_key + i] for i, (name, _) in enumerate(capture.fields)}
            new = {name: row[n_key + n_old + i] for i, (name, _) in enumerate(computed)}
            plan.rows.append((index_of(key), key, old, new))

    key_binds = _key_binds(statement, capture) if len(param_sets) > 1 and not computed else None
    if len(param_sets) == 1:
        read(conn.execute(base.where(*_where(statement)), dict(param_sets[0])), lambda key: 0)
    elif key_binds is not None:
        # executemany by primary key (the ORM's bulk UPDATE): one SELECT for all.
        index = {tuple(p[b] for b in key_binds): i for i, p in enumerate(param_sets)}
        for criterion in _key_in(key_columns, list(index)):
            read(conn.execute(base.where(criterion)), lambda key: index.get(key, 0))
    else:
        # Any other executemany: the statement itself runs once per parameter
        # set, and so does the SELECT of the rows each one touches.
        each = base.where(*_where(statement))
        for i, params in enumerate(param_sets):
            read(conn.execute(each, dict(params)), lambda key, i=i: i)  # type: ignore[misc]
    return plan


def _label_new(value: Any, index: int) -> Any:
    return value.label(f"_auditlake_new_{index}") if hasattr(value, "label") else \
        sqlalchemy.literal(value).label(f"_auditlake_new_{index}")


def _on_before_execute(conn: Connection, clauseelement: Any, multiparams: Any, params: Any,
                       execution_options: Any) -> tuple[Any, Any, Any]:
    if not isinstance(clauseelement, UpdateBase):
        return clauseelement, multiparams, params
    capture = REGISTRY.for_table(clauseelement.table)
    if capture is None:
        return clauseelement, multiparams, params
    session = _owner(conn)
    if session is not None and _SessionLog.of(session).in_flush():
        return clauseelement, multiparams, params  # the unit of work: after_flush records it
    policy = capture.policy
    param_sets = _param_sets(multiparams, params)
    if isinstance(clauseelement, Insert):
        plan = _Plan(clauseelement, capture, policy.create_action, param_sets)
        rewritten = _with_returned_keys(conn, clauseelement, capture, param_sets)
        if rewritten is not None:
            plan.statement = clauseelement = rewritten
            plan.returned_keys = True
    elif isinstance(clauseelement, Update):
        plan = _plan_write(conn, clauseelement, capture, policy.update_action, param_sets)
    elif isinstance(clauseelement, Delete):
        plan = _plan_write(conn, clauseelement, capture, policy.delete_action, param_sets)
    else:  # pragma: no cover - every UpdateBase is one of the three
        return clauseelement, multiparams, params
    _Inflight.push(conn, plan)
    return clauseelement, multiparams, params


def _with_returned_keys(conn: Connection, statement: Insert, capture: _Capture,
                        param_sets: list[Mapping[str, Any]]) -> Insert | None:
    """A multi-row INSERT whose keys the database makes: the same INSERT
    returning the keys and the captured columns as stored (SQLAlchemy's
    ``return_defaults``, run in insertmanyvalues batches), or None when not
    needed or not possible.  Each returned row is a whole event, so the
    rows need not come back in the order of the parameter sets (asking
    for that order makes SQLite insert one row per statement)."""
    if len(param_sets) < 2 or statement._returning or statement._return_defaults:
        return None
    if all(c.key in param_sets[0] for _, c in capture.key):
        return None
    if not conn.dialect.insert_executemany_returning:
        return None
    wanted = list(dict.fromkeys([*(c for _, c in capture.key), *(c for _, c in capture.fields)]))
    return statement.return_defaults(supplemental_cols=wanted)


def _on_after_execute(conn: Connection, clauseelement: Any, multiparams: Any, params: Any,
                      execution_options: Any, result: Any) -> None:
    if not isinstance(clauseelement, UpdateBase):
        return
    plan = _Inflight.pop(conn, clauseelement)
    if plan is None:
        return
    actor = ACTOR.get().captured()
    if isinstance(clauseelement, Insert):
        events = _insert_events(plan, result, actor)
    else:
        events = _write_events(plan, result, actor)
    _keep(conn, events)


def _write_events(plan: _Plan, result: Any, actor: ActorFields) -> list[_Pending]:
    capture = plan.capture
    policy = capture.policy
    events: list[_Pending] = []
    if plan.action == policy.delete_action:
        for _, key, old, _new in plan.rows:
            before = {name: _plain(v) for name, v in old.items()}
            events.append((plan.action, capture.resource_type, capture.resource_id(key),
                           capture.changes(before, {}), actor, _BULK))
        return events
    executed = _executed_parameters(result)
    for index, key, old, new in plan.rows:
        after = dict(plan.set_values[index]) if index < len(plan.set_values) else {}
        after.update(new)
        if plan.onupdate_callables and index < len(executed):
            for name, column in plan.onupdate_callables:
                if column.key in executed[index]:
                    after[name] = executed[index][column.key]
        before = {name: _plain(old.get(name)) for name in after}
        changes = capture.changes(before, {name: _plain(v) for name, v in after.items()})
        if changes:
            events.append((plan.action, capture.resource_type, capture.resource_id(key), changes, actor, _BULK))
    return events


def _executed_parameters(result: Any) -> list[Mapping[str, Any]]:
    context = getattr(result, "context", None)
    return list(getattr(context, "compiled_parameters", None) or ())


def _multi_values_row(table: Table, values: Any) -> dict[str, Any]:
    """Column key -> Python value of one row of a multi-VALUES INSERT
    (SQL expressions are left out; scalar defaults filled in)."""
    row: dict[str, Any] = {}
    items = values.items() if isinstance(values, Mapping) else zip(table.columns, values, strict=False)
    for key, value in items:
        column = table.columns.get(key) if isinstance(key, str) else _base_column(key, table)
        if column is not None:
            literal, python = _literal(value, {})
            if literal:
                row[column.key] = python
    for column in table.columns:
        default = column.default
        if column.key not in row and default is not None and getattr(default, "is_scalar", False):
            row[column.key] = default.arg  # type: ignore[attr-defined]
    return row


def _insert_events(plan: _Plan, result: Any, actor: ActorFields) -> list[_Pending]:
    capture = plan.capture
    statement = plan.statement
    table = capture.table
    action = plan.action
    metadata = _BULK
    if getattr(statement, "_post_values_clause", None) is not None:
        metadata = {"bulk": True, "upsert": True}  # ON CONFLICT: may have updated instead
    if getattr(statement, "select", None) is not None:  # INSERT ... FROM SELECT: the database's rows
        summary: dict[str, Any] = {"bulk": True, "from_select": True}
        count = getattr(result, "rowcount", -1)
        if isinstance(count, int) and count >= 0:  # some drivers report -1 here
            summary["rowcount"] = count
        return [(action, capture.resource_type, "", {}, actor, summary)]
    rows: list[dict[str, Any]]
    keys: list[tuple[Any, ...] | None]
    multi = getattr(statement, "_multi_values", ())
    if multi:  # insert().values([{...}, {...}]): the values are in the statement
        rows = [_multi_values_row(table, values) for values in multi[0]]
        keys = [None] * len(rows)
    elif plan.returned_keys:
        # Our RETURNING: the rows as stored, keys included.
        wanted = list(dict.fromkeys([*(c for _, c in capture.key), *(c for _, c in capture.fields)]))
        returned = getattr(result, "returned_defaults_rows", None) or ()
        rows = [{c.key: r._mapping[c] for c in wanted} for r in returned]
        keys = [None] * len(rows)
    else:
        rows = [dict(p) for p in _executed_parameters(result)]
        keys = [None] * len(rows)
        try:
            if statement._return_defaults:
                keys = [tuple(k) for k in result.inserted_primary_key_rows]
            elif len(rows) == 1:
                keys = [tuple(result.inserted_primary_key)]
        except Exception:  # noqa: BLE001 - keys the dialect cannot give: taken from the values below
            pass
    events: list[_Pending] = []
    names = {c.key: n for n, c in capture.fields}
    for row, key in zip(rows, keys, strict=False):
        if key is None or any(v is None for v in key):
            key = tuple(row.get(c.key) for _, c in capture.key)
        after = {names[k]: _plain(v) for k, v in row.items() if k in names}
        for (name, column), value in zip(capture.key, key, strict=True):
            if column.key in names and name not in after:  # a key the database made
                after[name] = _plain(value)
        events.append((action, capture.resource_type, capture.resource_id(key),
                       capture.changes({}, after), actor, metadata))
    return events


