"""Events held until their transaction commits.

Each captured statement (one ``save()``, one ``update()``, one
``bulk_update()``, one deletion) becomes one :class:`Emission`: its events,
the actor as it stood on the caller's thread when the statement ran, and a
copy of the caller's context (the OpenTelemetry span).  It is handed to
``transaction.on_commit``, which is what makes a rollback send nothing:
Django runs the callback after ``COMMIT``, drops it on rollback, and drops
the callbacks registered inside a savepoint that is rolled back.  Outside a
transaction (autocommit) Django runs it at once, after the statement.

A callback never raises: an SDK that is not configured, or an event the SDK
refuses, is logged and the application's commit goes on.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Mapping
from typing import Any

from django.db import transaction
from django.db.transaction import TransactionManagementError

from auditlake.sdk._context import ACTOR, Actor, as_actor
from auditlake.sdk._exceptions import NotConfiguredError
from auditlake.sdk._record import record

log = logging.getLogger("auditlake.sdk")

#: (action, resource_type, resource_id, changes, metadata)
Event = tuple[str, str, str, Mapping[str, Any] | None, Mapping[str, Any] | None]

_warned = False


def record_safely(
    action: str,
    resource_type: str,
    resource_id: str,
    changes: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
    **fields: Any,
) -> None:
    """``record()`` that never raises into the application (it logs instead)."""
    try:
        record(action, resource_type, resource_id, changes=changes, metadata=metadata, **fields)
    except NotConfiguredError:
        global _warned
        if not _warned:
            _warned = True
            log.warning("auditlake: Django events not recorded: the SDK is not configured "
                        "(call auditlake.sdk.configure(), or set AUDITLAKE['configure'])")
    except Exception:
        log.exception("auditlake: could not record %s %s/%s", action, resource_type, resource_id)


class Emission:
    """One statement's events, recorded when (and only if) its transaction commits."""

    __slots__ = ("actor", "context", "events")

    def __init__(self, events: list[Event]) -> None:
        self.events = events
        # A plain Actor: resolved now, on the caller's thread, so a later
        # set_actor() in the request cannot rewrite what this statement did.
        self.actor: Actor = as_actor(ACTOR.get().captured())
        self.context = contextvars.copy_context()

    def __call__(self) -> None:
        """Record the events (Django's on_commit callback)."""
        self.context.run(self._record)

    def _record(self) -> None:
        ACTOR.set(self.actor)  # in this statement's own copy of the context
        for action, resource_type, resource_id, changes, metadata in self.events:
            record_safely(action, resource_type, resource_id, changes, metadata)


def emit_on_commit(using: str, events: list[Event]) -> None:
    """Record ``events`` once the transaction on ``using`` commits."""
    if not events:
        return
    emission = Emission(events)
    try:
        transaction.on_commit(emission, using=using)
    except TransactionManagementError:
        # set_autocommit(False) without atomic(): Django has no commit hook
        # to offer; the statement has run, so record it now.
        emission()
