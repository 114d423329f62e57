"""SQLAlchemy integration: every committed create, update and delete of a
registered model or table becomes one audit event, bulk statements included.

    from auditlake import sdk
    from auditlake.sdk import sqlalchemy as audit_sqlalchemy

    sdk.configure(service_name="billing")
    audit_sqlalchemy.register(Base, exclude=["last_seen_at"])   # every model of a declarative base
    audit_sqlalchemy.register(Patient, reads=True)              # ... and reads of patients

    with sdk.actor(user_id="u1", tenant_id="acme"), Session(engine) as session:
        session.get(Invoice, 7).status = "paid"
        session.commit()        # -> update invoices/7 {"status": {"before": "open", "after": "paid"}}

What is captured, and where (all through SQLAlchemy's event API):

* The unit of work (``Session.add``/attribute changes/``Session.delete``):
  ``after_flush`` reads each registered object's attribute history (before
  and after values the ORM already holds).  No extra query, except one
  ``SELECT`` per table per flush for objects whose old values the ORM does
  not hold (attributes expired by a commit, or deferred).
* Statements (``session.execute(update(Model).where(...))``, ORM bulk
  INSERT/UPDATE by primary key, Core ``conn.execute(table.delete()...)``):
  the engine's ``before_execute``/``after_execute``.  Extra queries per
  statement: UPDATE and DELETE one ``SELECT ... FOR UPDATE OF <table>`` of
  the affected rows before the statement (their keys and old values; the
  UPDATE's new values are its SET expressions evaluated in that same
  SELECT); INSERT none (a multi-row INSERT that does not send its keys gets
  ``RETURNING`` of them, batched by SQLAlchemy's insertmanyvalues).  The one
  exception: an executemany UPDATE/DELETE whose WHERE is not the primary
  key costs one SELECT per parameter set (the statement itself runs once
  per parameter set).  docs/integrations.md has the table.
* Transactions: events wait with the transaction (or savepoint) that made
  them and are recorded only after it commits; a rollback, or a rolled
  back savepoint, discards its own events only.
* Reads (``reads=True``): one ``read`` event per ORM query returning rows
  of the model, naming at most ``read_ids_max`` ids and the count.

The actor (``sdk.actor()``) is captured on the caller's thread when the
change is made (flush or statement), since the export thread has none.

Event fields: ``resource_type`` the table name (``resource_type=`` to
change it); ``resource_id`` the primary key, a composite key's parts
``str()``-ed and joined by ``,`` (``resource_id=`` a function of the key
tuple to change it); ``changes`` the SDK's diff format for the captured
fields, redacted as :func:`auditlake.sdk.diff` does plus ``redact=``.
Field names are the mapped attribute names (for a Core table, column
keys), the same whichever way a row changed.
"""

from __future__ import annotations

import contextvars
import datetime as _dt
import decimal
import enum
import logging
import threading
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

try:
    import sqlalchemy
    from sqlalchemy import event, inspect, select, tuple_
    from sqlalchemy.engine import Connection, Engine
    from sqlalchemy.exc import NoInspectionAvailable
    from sqlalchemy.orm import (
        Mapper,
        ORMExecuteState,
        PassiveFlag,
        Session,
        SessionTransaction,
        UOWTransaction,
    )
    from sqlalchemy.orm.attributes import instance_state
    from sqlalchemy.orm.state import InstanceState
    from sqlalchemy.pool import Pool
    from sqlalchemy.schema import Column, Table
    from sqlalchemy.sql import ColumnElement
    from sqlalchemy.sql.dml import Delete, Insert, Update, UpdateBase
    from sqlalchemy.sql.elements import BinaryExpression, BindParameter, BooleanClauseList, ClauseElement
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "auditlake.sdk.sqlalchemy needs SQLAlchemy 2.0 or later: pip install sqlalchemy"
    ) from exc

from auditlake.sdk._config import current_settings
from auditlake.sdk._context import ACTOR, ActorFields
from auditlake.sdk._diff import DEFAULT_REDACT, REDACTED, diff_dict
from auditlake.sdk._exceptions import NotConfiguredError
from auditlake.sdk._record import record

if int(sqlalchemy.__version__.split(".")[0]) < 2:  # pragma: no cover
    raise ImportError(
        f"auditlake.sdk.sqlalchemy needs SQLAlchemy 2.0 or later (found {sqlalchemy.__version__}): "
        "pip install -U sqlalchemy"
    )

__all__ = ["CapturePolicy", "register", "registered", "unregister"]

log = logging.getLogger("auditlake.sdk.sqlalchemy")

#: Keys of the values this module keeps in ``Session.info`` / ``Connection.info``.
_SESSION_KEY: Final = "auditlake.sqlalchemy"
_CONNECTION_KEY: Final = "auditlake.sqlalchemy"
_INFLIGHT_KEY: Final = "auditlake.sqlalchemy.statements"

#: At most this many bound values in one ``IN (...)`` (SQLite allows 32,766).
_MAX_BOUND_VALUES: Final = 30_000


# -- the policy ------------------------------------------------------------------


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


# -- the registry ----------------------------------------------------------------


class _Registry:
    """Registered models, bases and tables, and their resolved captures (cached)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.classes: dict[type, CapturePolicy] = {}
        self.tables: dict[Table, CapturePolicy] = {}
        self._by_class: dict[type, _Capture | None] = {}
        self._by_table: dict[Table, _Capture | None] = {}
        self._reaches: dict[Mapper[Any], bool] = {}
        self.reads = False

    def __bool__(self) -> bool:
        return bool(self.classes or self.tables)

    def forget_resolved(self) -> None:
        self._by_class = {}
        self._by_table = {}
        self._reaches = {}
        self.reads = any(p.reads for p in self.classes.values())

    def reaches_reads(self, mapper: Mapper[Any]) -> bool:
        """Whether a query of ``mapper`` may load a read-captured model: the
        model itself, or one related to it (a joined eager load)."""
        try:
            return self._reaches[mapper]
        except KeyError:
            pass
        related = [mapper, *(r.mapper for r in mapper.relationships)]
        reaches = any((c := self.for_class(m.class_)) is not None and c.policy.reads for m in related)
        self._reaches[mapper] = reaches
        return reaches

    def for_class(self, cls: type) -> _Capture | None:
        """The capture of instances of ``cls``, or None when not registered."""
        try:
            return self._by_class[cls]
        except KeyError:
            pass
        capture = None
        for klass in cls.__mro__:
            policy = self.classes.get(klass)
            if policy is not None:
                mapper = _mapper_of(cls)
                capture = _resolved(_model_capture, policy, mapper) if mapper is not None else None
                break
        self._by_class[cls] = capture
        return capture

    def for_table(self, table: Any) -> _Capture | None:
        """The capture of statements on ``table``, or None when not registered."""
        try:
            return self._by_table[table]
        except KeyError:
            pass
        except TypeError:  # an unhashable FROM (never a Table)
            return None
        capture = None
        if isinstance(table, Table):
            # ORM statements carry an annotated copy of the table.
            capture = self._resolve_table(table._deannotate())
        self._by_table[table] = capture
        return capture

    def _resolve_table(self, table: Table) -> _Capture | None:
        owner = None
        for cls in list(self.classes):
            for mapper in _mappers_under(cls):
                if mapper.local_table is table and (mapper.inherits is None
                                                    or mapper.inherits.local_table is not table):
                    owner = mapper
                    break
            if owner is not None:
                break
        policy = self.tables.get(table)
        if policy is None and owner is not None:
            found = self.for_class(owner.class_)
            policy = found.policy if found is not None else None
        return None if policy is None else _resolved(_table_capture, policy, table, owner)


def _resolved(build: Callable[..., _Capture], *args: Any) -> _Capture | None:
    try:
        return build(*args)
    except ValueError as exc:  # e.g. a table without a primary key under a registered base
        log.warning("auditlake: not capturing: %s", exc)
        return None


def _mapper_of(cls: type) -> Mapper[Any] | None:
    try:
        mapper: object = inspect(cls)
    except NoInspectionAvailable:
        return None
    return mapper if isinstance(mapper, Mapper) else None


def _mappers_under(cls: type) -> Iterator[Mapper[Any]]:
    """Mappers of ``cls`` and of its mapped subclasses (a base: all its models)."""
    mapper = _mapper_of(cls)
    if mapper is not None:
        yield from mapper.self_and_descendants
        return
    registry = getattr(cls, "registry", None)
    for mapper in getattr(registry, "mappers", ()):
        if issubclass(mapper.class_, cls):
            yield mapper


REGISTRY: Final = _Registry()


def register(target: Any, policy: CapturePolicy | None = None, **options: Any) -> CapturePolicy:
    """Capture creates, updates and deletes of ``target``: a mapped class
    (and its subclasses), a declarative base (every model under it, defined
    now or later) or a Core :class:`~sqlalchemy.Table`.

    ``options`` are :class:`CapturePolicy` fields (``include``, ``exclude``,
    ``redact``, ``resource_type``, ``reads``, ...), or pass a ``policy``.
    Registering a target again replaces its policy.  Raises ``ValueError``
    for an unknown field name, a table without a primary key, or a target
    that is neither of the three.
    """
    if policy is None:
        policy = CapturePolicy(**options)
    elif options:
        raise ValueError("pass either a policy or its fields, not both")
    with REGISTRY.lock:
        if isinstance(target, Table):
            _table_capture(policy, target, None, strict=True)  # a bad field name fails here, not in a flush
            REGISTRY.tables[target] = policy
        elif isinstance(target, type) and (_mapper_of(target) is not None
                                            or hasattr(getattr(target, "registry", None), "mappers")):
            mapper = _mapper_of(target)
            if mapper is not None:
                _model_capture(policy, mapper, strict=True)
            REGISTRY.classes[target] = policy
        else:
            raise ValueError(f"register: a mapped class, a declarative base or a Table is required, got {target!r}")
        REGISTRY.forget_resolved()
        _LISTENERS.install()
    return policy


def unregister(target: Any = None) -> None:
    """Stop capturing ``target``; with no argument, everything (and remove
    the SQLAlchemy listeners).  Events already captured are still sent when
    their transaction commits."""
    with REGISTRY.lock:
        if target is None:
            REGISTRY.classes.clear()
            REGISTRY.tables.clear()
        else:
            REGISTRY.classes.pop(target, None)
            REGISTRY.tables.pop(target, None)
        REGISTRY.forget_resolved()
        if not REGISTRY:
            _LISTENERS.remove()


def registered(target: Any) -> CapturePolicy | None:
    """The policy ``target`` (a mapped class or a Table) is captured with, or None."""
    capture = REGISTRY.for_table(target) if isinstance(target, Table) else (
        REGISTRY.for_class(target) if isinstance(target, type) else None)
    return None if capture is None else capture.policy


# -- pending events and their transactions ------------------------------------------


#: (action, resource_type, resource_id, changes, actor, metadata)
_Pending = tuple[str, str, str, dict[str, Any], ActorFields, dict[str, Any] | None]

_BULK: Final[dict[str, Any]] = {"bulk": True}
_warned_unconfigured = False


def _deliver(events: Sequence[_Pending]) -> None:
    """Record committed events, each under the actor captured with it.

    Runs inside SQLAlchemy's commit: it must never raise into the
    application, whose data is already committed.
    """
    global _warned_unconfigured
    current = None
    token = None
    try:
        for action, resource_type, resource_id, changes, actor, metadata in events:
            if actor is not current:
                if token is not None:
                    ACTOR.reset(token)
                token = ACTOR.set(actor)
                current = actor
            record(action, resource_type, resource_id, changes=changes, metadata=metadata)
    except NotConfiguredError:
        if not _warned_unconfigured:
            _warned_unconfigured = True
            log.warning("auditlake: %d data change events not recorded: configure() was not called",
                        len(events))
    except Exception:  # noqa: BLE001 - the commit has happened; report, never raise
        log.exception("auditlake: recording committed data change events failed")
    finally:
        if token is not None:
            ACTOR.reset(token)


class _SessionLog:
    """One Session's captured events, held by the transaction or savepoint
    that made them until it commits (then sent, or handed to its parent
    savepoint) or rolls back (then dropped)."""

    __slots__ = ("before_images", "connections", "flush", "pending", "released")

    def __init__(self) -> None:
        self.pending: dict[SessionTransaction, list[_Pending]] = {}
        self.released: set[SessionTransaction] = set()
        self.connections: list[Connection] = []
        self.flush: UOWTransaction | None = None
        self.before_images: dict[InstanceState[Any], dict[str, Any]] = {}

    @staticmethod
    def of(session: Session) -> _SessionLog:
        found = session.info.get(_SESSION_KEY)
        if found is None:
            found = session.info[_SESSION_KEY] = _SessionLog()
        return found

    @staticmethod
    def boundary(session: Session) -> SessionTransaction | None:
        """The savepoint or root transaction an event made now belongs to."""
        return session.get_nested_transaction() or session.get_transaction()

    def add(self, session: Session, events: list[_Pending]) -> None:
        transaction = self.boundary(session)
        if transaction is not None:  # always, inside a flush or a session's statement
            self.pending.setdefault(transaction, []).extend(events)

    def in_flush(self) -> bool:
        flush = self.flush
        transaction = getattr(flush, "transaction", None) if flush is not None else None
        return transaction is not None and transaction.is_active


class _ConnectionLog:
    """Events of statements run on a Connection no Session owns, by
    savepoint; sent once the COMMIT has succeeded (SQLAlchemy's ``commit``
    connection event fires just before the COMMIT, so they wait for the
    connection's next transaction or its return to the pool, and a failed
    COMMIT, reported by ``handle_error``, drops them)."""

    __slots__ = ("committing", "pending", "savepoints")

    def __init__(self) -> None:
        self.pending: list[_Pending] = []
        self.savepoints: list[tuple[str, int]] = []
        self.committing: list[_Pending] = []

    @staticmethod
    def of(info: dict[Any, Any]) -> _ConnectionLog:
        found = info.get(_CONNECTION_KEY)
        if found is None:
            found = info[_CONNECTION_KEY] = _ConnectionLog()
        return found

    def send_committed(self) -> None:
        if self.committing:
            events, self.committing = self.committing, []
            _deliver(events)


#: The Session whose transaction a Connection serves (set by ``after_begin``,
#: dropped when that transaction ends).  Keyed by the Connection object, which
#: SQLAlchemy makes per checkout, never by the pooled DBAPI connection.
_OWNERS: Final[weakref.WeakKeyDictionary[Connection, weakref.ref[Session]]] = weakref.WeakKeyDictionary()


def _owner(conn: Connection) -> Session | None:
    ref = _OWNERS.get(conn)
    return ref() if ref is not None else None


def _keep(conn: Connection, events: list[_Pending]) -> None:
    """Hold statement events with the transaction they belong to."""
    if not events:
        return
    session = _owner(conn)
    if session is not None and _SessionLog.boundary(session) is not None:
        _SessionLog.of(session).add(session, events)
    else:
        _ConnectionLog.of(conn.info).pending.extend(events)


# Session transaction events


def _on_after_begin(session: Session, transaction: SessionTransaction, connection: Connection) -> None:
    _SessionLog.of(session).connections.append(connection)
    _OWNERS[connection] = weakref.ref(session)


def _on_after_commit(session: Session) -> None:
    found: _SessionLog | None = session.info.get(_SESSION_KEY)
    if found is None:
        return
    nested = session.get_nested_transaction()
    if nested is not None:  # a savepoint released: its events go up at its end
        found.released.add(nested)
        return
    root = session.get_transaction()
    events = found.pending.pop(root, []) if root is not None else []
    if not events:
        return
    # A session joined to a transaction it did not begin (Session(bind=conn)
    # inside conn.begin()) has committed nothing yet: the events wait for
    # that connection's own COMMIT.
    for connection in found.connections:
        if not connection.closed and connection.in_transaction():
            _OWNERS.pop(connection, None)
            _ConnectionLog.of(connection.info).pending.extend(events)
            return
    _deliver(events)


def _parent_boundary(transaction: SessionTransaction) -> SessionTransaction | None:
    parent = transaction.parent
    while parent is not None and not parent.nested and parent.parent is not None:
        parent = parent.parent
    return parent


def _on_after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    found: _SessionLog | None = session.info.get(_SESSION_KEY)
    if found is None:
        return
    events = found.pending.pop(transaction, None)
    released = transaction in found.released
    found.released.discard(transaction)
    if events and transaction.nested and released:
        parent = _parent_boundary(transaction)
        if parent is not None:
            found.pending.setdefault(parent, []).extend(events)
    if transaction.parent is None:
        for connection in found.connections:
            _OWNERS.pop(connection, None)
        found.connections.clear()
        found.pending.clear()
        found.released.clear()
        found.before_images.clear()
        found.flush = None


# Connection transaction events (statements outside any Session)


def _on_begin(conn: Connection) -> None:
    found: _ConnectionLog | None = conn.info.get(_CONNECTION_KEY)
    if found is not None:
        found.send_committed()  # the previous transaction's COMMIT succeeded
        found.pending.clear()
        found.savepoints.clear()


def _on_commit(conn: Connection) -> None:
    found: _ConnectionLog | None = conn.info.get(_CONNECTION_KEY)
    if found is not None and found.pending:
        found.committing.extend(found.pending)
        found.pending.clear()
        found.savepoints.clear()


def _on_rollback(conn: Connection) -> None:
    found: _ConnectionLog | None = conn.info.get(_CONNECTION_KEY)
    if found is not None:
        found.pending.clear()
        found.savepoints.clear()
        found.committing.clear()


def _on_savepoint(conn: Connection, name: str | None) -> None:
    if _owner(conn) is None:
        if name is None:
            # SQLAlchemy names the savepoint after this event, from the
            # Connection's counter: the name rollback/release will carry.
            name = f"sa_savepoint_{getattr(conn, '_Connection__savepoint_seq', 0) + 1}"
        found = _ConnectionLog.of(conn.info)
        found.savepoints.append((name, len(found.pending)))


def _on_rollback_savepoint(conn: Connection, name: str, context: Any) -> None:
    found: _ConnectionLog | None = conn.info.get(_CONNECTION_KEY)
    if found is None:
        return
    for index, (marker, size) in enumerate(found.savepoints):
        if marker == name:
            del found.pending[size:]
            del found.savepoints[index:]
            return


def _on_release_savepoint(conn: Connection, name: str, context: Any) -> None:
    found: _ConnectionLog | None = conn.info.get(_CONNECTION_KEY)
    if found is None:
        return
    for index, (marker, _) in enumerate(found.savepoints):
        if marker == name:
            del found.savepoints[index:]
            return


def _on_handle_error(context: Any) -> None:
    conn = context.connection
    if conn is None or conn.closed:
        return
    if context.statement is not None:
        stack = conn.info.get(_INFLIGHT_KEY)
        if stack:
            stack.clear()  # the statement failed: nothing to record
        return
    found: _ConnectionLog | None = conn.info.get(_CONNECTION_KEY)
    if found is not None:
        found.committing.clear()  # the COMMIT itself failed


def _on_checkin(dbapi_connection: Any, connection_record: Any) -> None:
    if connection_record is None:
        return
    found: _ConnectionLog | None = connection_record.info.get(_CONNECTION_KEY)
    if found is not None:
        found.send_committed()
        found.pending.clear()
        found.savepoints.clear()


# -- the unit of work --------------------------------------------------------------


def _key_in(columns: Sequence[Column[Any]], keys: Sequence[tuple[Any, ...]]) -> Iterator[ColumnElement[bool]]:
    """``key IN (...)`` criteria, in chunks that fit every database's limit."""
    size = max(1, _MAX_BOUND_VALUES // len(columns))
    for start in range(0, len(keys), size):
        chunk = keys[start:start + size]
        if len(columns) == 1:
            yield columns[0].in_([k[0] for k in chunk])
        else:
            yield tuple_(*columns).in_(chunk)


def _identity(state: InstanceState[Any]) -> tuple[Any, ...] | None:
    key = state.key
    return tuple(key[1]) if key is not None else None


def _on_before_flush(session: Session, flush_context: UOWTransaction, instances: Any) -> None:
    found = _SessionLog.of(session)
    found.flush = flush_context
    images: dict[InstanceState[Any], dict[str, Any]] = {}
    found.before_images = images
    # Old values the ORM does not hold (an attribute set after a commit
    # expired it, or a deleted object's deferred/expired columns): one SELECT
    # per table for all such objects, before the flush overwrites them.
    wanted: dict[_Capture, dict[tuple[Any, ...], InstanceState[Any]]] = {}
    for obj in session.dirty:
        capture = REGISTRY.for_class(type(obj))
        if capture is None:
            continue
        state = instance_state(obj)
        loaded = state.dict
        if capture.onupdate:
            # The flush writes Python-side onupdate values over these, with no history.
            images[state] = {name: loaded[name] for name, _ in capture.onupdate if name in loaded}
        modified = state.committed_state
        for name, _ in capture.fields:
            if name in modified:
                history = state.get_history(name, PassiveFlag.PASSIVE_NO_INITIALIZE)
                if history.added and not history.deleted:
                    _want(wanted, capture, state)
                    break
    for obj in session.deleted:
        capture = REGISTRY.for_class(type(obj))
        if capture is not None:
            state = instance_state(obj)
            loaded = state.dict
            if any(name not in loaded for name, _ in capture.fields):
                _want(wanted, capture, state)
    for capture, states in wanted.items():
        key_columns = [c for _, c in capture.key]
        columns = [c for _, c in capture.fields]
        first = next(iter(states.values()))
        connection = session.connection(bind_arguments={"mapper": first.mapper})
        for criterion in _key_in(key_columns, list(states)):
            for row in connection.execute(select(*key_columns, *columns).where(criterion)):
                owner = states.get(tuple(row[: len(key_columns)]))
                if owner is not None:
                    old = {name: row[len(key_columns) + i] for i, (name, _) in enumerate(capture.fields)}
                    images[owner] = {**old, **images.get(owner, {})}


def _want(wanted: dict[_Capture, dict[tuple[Any, ...], InstanceState[Any]]], capture: _Capture,
          state: InstanceState[Any]) -> None:
    identity = _identity(state)
    if identity is not None:
        wanted.setdefault(capture, {})[identity] = state


def _on_after_flush(session: Session, flush_context: UOWTransaction) -> None:
    found = _SessionLog.of(session)
    actor = ACTOR.get().captured()
    events: list[_Pending] = []
    images = found.before_images
    # The flush's own list of what it wrote: it includes objects the session
    # lists nowhere (orphans deleted by a delete-orphan cascade).  Recorded
    # in the order the application made them: inserts as added, then deletes.
    for state, (is_delete, list_only) in sorted(flush_context.states.items(), key=_flush_order):
        if list_only:
            continue
        capture = REGISTRY.for_class(state.class_)
        if capture is None:
            continue
        change: _Change | None
        if is_delete:
            change = _deleted(capture, state, images.get(state, {}))
        elif state.key is None:  # pending until this flush: an INSERT
            change = _created(capture, state)
        else:
            change = _updated(capture, state, images.get(state, {}))
        if change is not None:
            action, resource_id, changes = change
            events.append((action, capture.resource_type, resource_id, changes, actor, None))
    found.before_images = {}
    if events:
        found.add(session, events)


def _flush_order(item: tuple[InstanceState[Any], tuple[bool, bool]]) -> tuple[bool, int, str]:
    state, (is_delete, _) = item
    order = state.insert_order
    return is_delete, order if order is not None else 1 << 62, str(_identity(state))


_Change = tuple[str, str, dict[str, dict[str, object]]]


def _created(capture: _Capture, state: InstanceState[Any]) -> _Change:
    loaded = state.dict
    after = {name: _plain(loaded[name]) for name, _ in capture.fields if name in loaded}
    key = tuple(loaded.get(name) for name, _ in capture.key)
    return capture.policy.create_action, capture.resource_id(key), capture.changes({}, after)


def _deleted(capture: _Capture, state: InstanceState[Any], known: Mapping[str, Any]) -> _Change:
    loaded = state.dict
    before = {name: _plain(loaded[name] if name in loaded else known.get(name)) for name, _ in capture.fields}
    key = _identity(state) or tuple(loaded.get(name) for name, _ in capture.key)
    return capture.policy.delete_action, capture.resource_id(key), capture.changes(before, {})


def _updated(capture: _Capture, state: InstanceState[Any], known: Mapping[str, Any]) -> _Change | None:
    before: dict[str, Any] = {}
    after: dict[str, Any] = {}
    modified = state.committed_state
    for name, _ in capture.fields:
        if name not in modified:
            continue
        history = state.get_history(name, PassiveFlag.PASSIVE_NO_INITIALIZE)
        if not history.added and not history.deleted:
            continue
        after[name] = _plain(history.added[0]) if history.added else None
        before[name] = _plain(history.deleted[0] if history.deleted else known.get(name))
    if modified:
        # onupdate values the flush set (Python-side: in the object now;
        # SQL-side: only when fetched, e.g. eager_defaults=True).
        loaded = state.dict
        for name, _ in capture.onupdate:
            if name not in after and name in loaded:
                after[name] = _plain(loaded[name])
                before[name] = _plain(known.get(name))
    changes = capture.changes(before, after) if after else {}
    if not changes:
        return None
    return capture.policy.update_action, capture.resource_id(_identity(state) or ()), changes


def _on_after_flush_postexec(session: Session, flush_context: UOWTransaction) -> None:
    found: _SessionLog | None = session.info.get(_SESSION_KEY)
    if found is not None:
        found.flush = None


# -- statements ---------------------------------------------------------------------


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


# -- reads --------------------------------------------------------------------------


#: Objects loaded while a read-captured query is buffered (joined eager loads included).
_LOADED: Final[contextvars.ContextVar[list[Any] | None]] = contextvars.ContextVar(
    "auditlake_sqlalchemy_loaded", default=None)


def _on_load(target: Any, context: Any) -> None:
    bucket = _LOADED.get()
    if bucket is not None:
        bucket.append(target)


def _on_do_orm_execute(state: ORMExecuteState) -> Any:
    if not REGISTRY.reads or not state.is_select or state.is_column_load:
        return None
    mappers = state.all_mappers
    if not any(REGISTRY.reaches_reads(m) for m in mappers):
        return None
    if state.execution_options.get("yield_per") or state.execution_options.get("stream_results"):
        # A streamed result is never buffered here: the event names no ids.
        for capture in _read_captures(mappers):
            _record_read(capture, None, None)
        return None
    loaded: list[Any] = []
    token = _LOADED.set(loaded)
    try:
        frozen = state.invoke_statement().freeze()
    finally:
        _LOADED.reset(token)
    rows = frozen.data
    ids: dict[_Capture, dict[str, None]] = {}
    for row in rows:
        # session.scalars() buffers the objects themselves, execute() rows of them.
        for value in (row if isinstance(row, tuple) or hasattr(row, "_mapping") else (row,)):
            _note_read(ids, value)
    for value in loaded:
        _note_read(ids, value)
    for capture, found in ids.items():
        names = list(found)
        _record_read(capture, names[: capture.policy.read_ids_max], len(names))
    if not ids and rows:  # columns only (select(Patient.name)): rows were read, ids unknown
        for capture in _read_captures(mappers):
            _record_read(capture, None, len(rows))
    return frozen()


def _read_captures(mappers: Iterable[Mapper[Any]]) -> list[_Capture]:
    found = (REGISTRY.for_class(m.class_) for m in mappers)
    return list(dict.fromkeys(c for c in found if c is not None and c.policy.reads))


def _note_read(ids: dict[_Capture, dict[str, None]], value: Any) -> None:
    if not hasattr(value, "_sa_instance_state"):
        return
    capture = REGISTRY.for_class(type(value))
    if capture is None or not capture.policy.reads:
        return
    identity = _identity(instance_state(value))
    ids.setdefault(capture, {})[capture.resource_id(identity) if identity is not None else ""] = None


def _record_read(capture: _Capture, ids: list[str] | None, count: int | None) -> None:
    """One event per query: the single id as resource_id, at most
    ``read_ids_max`` ids and the count in metadata."""
    policy = capture.policy
    metadata: dict[str, Any] = {}
    if ids is not None:
        metadata["ids"] = ids
    if count is not None:
        metadata["count"] = count
        if ids is not None and count > len(ids):
            metadata["truncated"] = True
    else:
        metadata["streamed"] = True
    try:
        record(policy.read_action, capture.resource_type, ids[0] if count == 1 and ids else "",
               metadata=metadata)
    except NotConfiguredError:
        global _warned_unconfigured
        if not _warned_unconfigured:
            _warned_unconfigured = True
            log.warning("auditlake: read events not recorded: configure() was not called")


# -- listeners -----------------------------------------------------------------------


class _Listeners:
    """SQLAlchemy listeners, installed with the first registration and
    removed with the last (class-level: every Session, Engine and Pool)."""

    def __init__(self) -> None:
        self.installed = False

    def _all(self) -> list[tuple[Any, str, Callable[..., Any], dict[str, Any]]]:
        return [
            (Session, "before_flush", _on_before_flush, {}),
            (Session, "after_flush", _on_after_flush, {}),
            (Session, "after_flush_postexec", _on_after_flush_postexec, {}),
            (Session, "after_begin", _on_after_begin, {}),
            (Session, "after_commit", _on_after_commit, {}),
            (Session, "after_transaction_end", _on_after_transaction_end, {}),
            (Session, "do_orm_execute", _on_do_orm_execute, {}),
            (Engine, "before_execute", _on_before_execute, {"retval": True}),
            (Engine, "after_execute", _on_after_execute, {}),
            (Engine, "handle_error", _on_handle_error, {}),
            (Engine, "begin", _on_begin, {}),
            (Engine, "commit", _on_commit, {}),
            (Engine, "rollback", _on_rollback, {}),
            (Engine, "savepoint", _on_savepoint, {}),
            (Engine, "rollback_savepoint", _on_rollback_savepoint, {}),
            (Engine, "release_savepoint", _on_release_savepoint, {}),
            (Pool, "checkin", _on_checkin, {}),
            (Mapper, "after_mapper_constructed", _on_mapper_constructed, {}),
            (Mapper, "load", _on_load, {}),
        ]

    def install(self) -> None:
        if self.installed:
            return
        for target, name, fn, kw in self._all():
            event.listen(target, name, fn, **kw)
        self.installed = True

    def remove(self) -> None:
        if not self.installed:
            return
        for target, name, fn, _ in self._all():
            if event.contains(target, name, fn):
                event.remove(target, name, fn)
        self.installed = False


def _on_mapper_constructed(mapper: Mapper[Any], cls: type) -> None:
    # A model defined after register(Base) must not stay cached as "not captured".
    REGISTRY.forget_resolved()


_LISTENERS: Final = _Listeners()
