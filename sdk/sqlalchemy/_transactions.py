"""Pending events and the transactions that hold them: recorded after the
commit, discarded with a rollback or a rolled-back savepoint."""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any, Final

from sqlalchemy.engine import Connection
from sqlalchemy.orm import (
    Session,
    SessionTransaction,
    UOWTransaction,
)
from sqlalchemy.orm.state import InstanceState

from auditlake.sdk._context import ACTOR, ActorFields
from auditlake.sdk._exceptions import NotConfiguredError
from auditlake.sdk._record import record
from auditlake.sdk.sqlalchemy._keys import _CONNECTION_KEY, _INFLIGHT_KEY, _SESSION_KEY, log

#: (action, resource_type, resource_id, changes, actor, metadata)
_Pending = tuple[str, str, str, dict[str, Any], ActorFields, dict[str, Any] | None]

_BULK: Final[dict[str, Any]] = {"bulk": True}
_warned_unconfigured = False


def warn_unconfigured(what: str) -> None:
    """Say once per process that events were not recorded for want of ``configure()``."""
    global _warned_unconfigured
    if not _warned_unconfigured:
        _warned_unconfigured = True
        log.warning("auditlake: %s not recorded: configure() was not called", what)


def _deliver(events: Sequence[_Pending]) -> None:
    """Record committed events, each under the actor captured with it.

    Runs inside SQLAlchemy's commit: it must never raise into the
    application, whose data is already committed.
    """
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
        warn_unconfigured(f"{len(events)} data change events")
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


