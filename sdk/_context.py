"""The actor scope: who is acting, for which tenant, from where.

One ``ContextVar`` holds an immutable :class:`Actor`; ``record()`` reads it
once on the caller's thread, so the export thread never needs the request.
asyncio tasks inherit the scope of the code that created them; threads do
only when started with a copied context (Python 3.11's ``threading.Thread``
does not copy it: use :func:`start_thread` or ``contextvars.copy_context()``).
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True, slots=True)
class Actor:
    """The identity and origin every event inside an ``actor()`` scope inherits."""

    user_id: str | None = None
    tenant_id: str | None = None
    ip_address: str | None = None
    user_agent: str | None = None
    request_id: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)


EMPTY_ACTOR = Actor()
ACTOR: contextvars.ContextVar[Actor] = contextvars.ContextVar("auditlake_actor", default=EMPTY_ACTOR)


def current_actor() -> Actor:
    """The actor of the current context (an empty one outside any scope)."""
    return ACTOR.get()


def merged_actor(
    base: Actor,
    user_id: str | None = None,
    tenant_id: str | None = None,
    ip_address: str | None = None,
    user_agent: str | None = None,
    request_id: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Actor:
    """``base`` with the given fields replaced (``None`` keeps the outer value)."""
    changes: dict[str, Any] = {}
    if user_id is not None:
        changes["user_id"] = user_id
    if tenant_id is not None:
        changes["tenant_id"] = tenant_id
    if ip_address is not None:
        changes["ip_address"] = ip_address
    if user_agent is not None:
        changes["user_agent"] = user_agent
    if request_id is not None:
        changes["request_id"] = request_id
    if metadata:
        changes["metadata"] = {**base.metadata, **metadata}
    return replace(base, **changes) if changes else base


@contextmanager
def actor(
    user_id: str | None = None,
    tenant_id: str | None = None,
    *,
    ip_address: str | None = None,
    user_agent: str | None = None,
    request_id: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Iterator[Actor]:
    """Scope in which every recorded event is attributed to this actor.

    Scopes nest: a field left ``None`` keeps the value of the enclosing scope.
    Usable in sync and async code (``with actor(...)`` around ``await``).
    """
    scope = merged_actor(
        ACTOR.get(), user_id, tenant_id, ip_address, user_agent, request_id, metadata
    )
    token = ACTOR.set(scope)
    try:
        yield scope
    finally:
        ACTOR.reset(token)


def start_thread(
    target: Callable[..., object], *args: Any, name: str | None = None, daemon: bool | None = None
) -> threading.Thread:
    """Start a thread that runs ``target`` in a copy of the caller's context.

    Plain ``threading.Thread`` on Python 3.11 starts with an empty context, so
    events recorded there would lose the actor; this helper keeps it.
    """
    context = contextvars.copy_context()
    thread = threading.Thread(
        target=context.run, args=(target, *args), name=name, daemon=daemon
    )
    thread.start()
    return thread
