"""The unit of work: each flushed create, update and delete of a registered
object, from the attribute history the ORM already holds."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from sqlalchemy import select, tuple_
from sqlalchemy.orm import (
    PassiveFlag,
    Session,
    UOWTransaction,
)
from sqlalchemy.orm.attributes import instance_state
from sqlalchemy.orm.state import InstanceState
from sqlalchemy.schema import Column
from sqlalchemy.sql import ColumnElement

from auditlake.sdk._context import ACTOR
from auditlake.sdk.sqlalchemy._keys import _MAX_BOUND_VALUES, _SESSION_KEY
from auditlake.sdk.sqlalchemy._policy import _Capture, _plain
from auditlake.sdk.sqlalchemy._registry import REGISTRY
from auditlake.sdk.sqlalchemy._transactions import _Pending, _SessionLog


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


