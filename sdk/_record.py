"""``record()``: the caller's whole cost of an audit event.

It captures the arguments, the actor scope (as it stands now: see
``ActorFields.captured``), the current OpenTelemetry span and the clock
into a tuple and appends it to the processor's queue; nothing
is formatted, serialised or copied deeply here (see ``_event.py``).
Mutable ``changes``/``metadata`` dicts are copied shallowly; do not mutate
nested values after recording.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from time import time_ns
from typing import Any

from auditlake.sdk._config import PROVIDER
from auditlake.sdk._context import ACTOR
from auditlake.sdk._event import OUTCOMES
from auditlake.sdk._exceptions import NotConfiguredError
from auditlake.sdk._processor import Waiter
from auditlake.sdk._trace import current_context

log = logging.getLogger("auditlake.sdk")


def record(
    action: str,
    resource_type: str = "",
    resource_id: object = "",
    *,
    user_id: str | None = None,
    tenant_id: str | None = None,
    outcome: str = "success",
    reason: str = "",
    changes: Mapping[str, Any] | str | None = None,
    metadata: Mapping[str, Any] | str | None = None,
    ip_address: str | None = None,
    user_agent: str | None = None,
    request_id: str | None = None,
    durable: bool = False,
    timeout: float | None = None,
) -> None:
    """Record one audit event; returns at once (unless ``durable``).

    Fields left ``None`` come from the enclosing :func:`actor` scope.
    ``outcome`` is ``success``, ``failure`` or ``denied``.  With
    ``durable=True`` the call waits (up to ``timeout``, default the
    configured ``durable_timeout``) for the collector's acknowledgement and
    raises :class:`DeliveryError` / :class:`DeliveryTimeout` without it.
    """
    processor = PROVIDER.processor
    if processor is None:
        raise NotConfiguredError("call auditlake.sdk.configure() before record()")
    if outcome not in OUTCOMES or not action:
        _invalid(action, outcome)
    if type(changes) is dict:
        changes = changes.copy()
    elif changes is not None:
        changes = _json_object("changes", changes)
    if type(metadata) is dict:
        metadata = metadata.copy()
    elif metadata is not None:
        metadata = _json_object("metadata", metadata)
    waiter = Waiter() if durable else None
    event = (
        time_ns(),
        next(processor.seq),
        # captured(): an actor that never changes, so a later set_actor()
        # cannot rewrite this event on the export thread.
        ACTOR.get().captured(),
        current_context(),
        action,
        resource_type,
        resource_id,
        user_id,
        tenant_id,
        outcome,
        reason,
        changes,
        metadata,
        ip_address,
        user_agent,
        request_id,
        waiter,
    )
    queue = processor.queue
    waiting = len(queue)
    if waiting < processor.max_queue:
        queue.append(event)
        # Wake the export thread only when a batch is full; otherwise its
        # short schedule delay picks the events up.
        if not (waiting + 1) % processor.batch_size:
            processor.wake.set()
    else:
        processor.overflow(event)
    if waiter is not None:
        if timeout is None:
            timeout = PROVIDER.settings.durable_timeout
        processor.wait_durable(waiter, timeout)


def record_quietly(
    action: str,
    resource_type: str,
    resource_id: object,
    outcome: str,
    reason: str,
    metadata: Mapping[str, Any],
) -> None:
    """``record()`` for middleware: an unconfigured SDK must not break requests."""
    try:
        record(action, resource_type, resource_id, outcome=outcome, reason=reason, metadata=metadata)
    except NotConfiguredError:
        global _warned_unconfigured
        if not _warned_unconfigured:
            _warned_unconfigured = True
            log.warning("auditlake: middleware event not recorded: configure() was not called")


_warned_unconfigured = False


def _json_object(name: str, value: object) -> Mapping[str, Any] | str:
    """``changes`` / ``metadata`` other than a dict: a mapping (copied) or a
    JSON object as a string ("" for none), checked here rather than refused
    by the collector once the call has returned."""
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, str):
        if value:
            try:
                parsed = json.loads(value)
            except ValueError as exc:
                raise ValueError(f"{name}: not JSON ({exc}); pass a dict or a JSON object string") from None
            if not isinstance(parsed, dict):
                raise ValueError(f"{name}: a JSON object is required, got {type(parsed).__name__}")
        return value
    raise ValueError(f"{name}: a dict or a JSON object string is required, got {type(value).__name__}")


def _invalid(action: str, outcome: str) -> None:
    if not action:
        raise ValueError("action: must not be empty")
    raise ValueError(f"outcome: must be one of success, failure, denied (got {outcome!r})")
