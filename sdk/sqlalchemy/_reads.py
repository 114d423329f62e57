"""Reads of models registered with ``reads=True``: one bounded event per query."""

from __future__ import annotations

import contextvars
from collections.abc import Iterable
from typing import Any, Final

from sqlalchemy.orm import (
    Mapper,
    ORMExecuteState,
)
from sqlalchemy.orm.attributes import instance_state

from auditlake.sdk._exceptions import NotConfiguredError
from auditlake.sdk._record import record
from auditlake.sdk.sqlalchemy._flush import _identity
from auditlake.sdk.sqlalchemy._policy import _Capture
from auditlake.sdk.sqlalchemy._registry import REGISTRY
from auditlake.sdk.sqlalchemy._transactions import warn_unconfigured

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
        warn_unconfigured("read events")


