"""The SQLAlchemy event listeners, installed with the first registration
and removed with the last."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import (
    Mapper,
    Session,
)
from sqlalchemy.pool import Pool

from auditlake.sdk.sqlalchemy._flush import _on_after_flush, _on_after_flush_postexec, _on_before_flush
from auditlake.sdk.sqlalchemy._reads import _on_do_orm_execute, _on_load
from auditlake.sdk.sqlalchemy._registry import REGISTRY
from auditlake.sdk.sqlalchemy._statements import _on_after_execute, _on_before_execute
from auditlake.sdk.sqlalchemy._transactions import (
    _on_after_begin,
    _on_after_commit,
    _on_after_transaction_end,
    _on_begin,
    _on_checkin,
    _on_commit,
    _on_handle_error,
    _on_release_savepoint,
    _on_rollback,
    _on_rollback_savepoint,
    _on_savepoint,
)


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
