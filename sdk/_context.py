"""The actor scope: who is acting, for which tenant, from where.

One ``ContextVar`` holds an immutable :class:`Actor` (or, inside the ASGI
middleware, an equally immutable request actor that formats its address,
agent and request id only when an event needs them); ``record()`` reads it
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
from typing import Any, NamedTuple, Protocol


class Actor(NamedTuple):
    """The identity and origin every event inside an ``actor()`` scope inherits."""

    # A NamedTuple rather than a frozen dataclass: the middleware builds one
    # per request, and a tuple is several times cheaper to make.
    user_id: str | None = None
    tenant_id: str | None = None
    ip_address: str | None = None
    user_agent: str | None = None
    request_id: str | None = None
    metadata: Mapping[str, Any] | None = None


class ActorFields(Protocol):
    """What the SDK reads from a scope: an :class:`Actor`, or a request's
    actor whose address, agent and request id are worked out on first use."""

    @property
    def user_id(self) -> str | None: ...
    @property
    def tenant_id(self) -> str | None: ...
    @property
    def ip_address(self) -> str | None: ...
    @property
    def user_agent(self) -> str | None: ...
    @property
    def request_id(self) -> str | None: ...
    @property
    def metadata(self) -> Mapping[str, Any] | None: ...


EMPTY_ACTOR = Actor()
ACTOR: contextvars.ContextVar[ActorFields] = contextvars.ContextVar(
    "auditlake_actor", default=EMPTY_ACTOR
)


def as_actor(scope: ActorFields) -> Actor:
    """``scope`` as a plain :class:`Actor` (resolving a lazy request actor)."""
    if type(scope) is Actor:
        return scope
    return Actor(
        scope.user_id,
        scope.tenant_id,
        scope.ip_address,
        scope.user_agent,
        scope.request_id,
        scope.metadata,
    )


def current_actor() -> Actor:
    """The actor of the current context (an empty one outside any scope)."""
    return as_actor(ACTOR.get())


def merged_actor(
    base: ActorFields,
    user_id: str | None = None,
    tenant_id: str | None = None,
    ip_address: str | None = None,
    user_agent: str | None = None,
    request_id: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Actor:
    """``base`` with the given fields replaced (``None`` keeps the outer value)."""
    return Actor(
        base.user_id if user_id is None else user_id,
        base.tenant_id if tenant_id is None else tenant_id,
        base.ip_address if ip_address is None else ip_address,
        base.user_agent if user_agent is None else user_agent,
        base.request_id if request_id is None else request_id,
        {**(base.metadata or {}), **metadata} if metadata else base.metadata,
    )


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
