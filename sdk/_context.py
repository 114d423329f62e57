"""The actor scope: who is acting, for which tenant, from where.

One ``ContextVar`` holds an immutable :class:`Actor`, or inside a
middleware the request's :class:`RequestActor`.  ``record()`` keeps
``captured()`` of it, read once on the caller's thread: an immutable value,
so the export thread never needs the request and a later change never
rewrites an event already recorded.

A request's actor can be amended after the framework has authenticated the
user (:func:`set_actor`, or the middleware reading the framework's user).
An amendment never mutates what an event captured: it makes a new
:class:`AmendedActor` version that the request holds in one mutable slot,
shared by every context copied from the request (FastAPI runs ``def``
dependencies and endpoints in a thread with a *copy* of the context, so a
``ContextVar.set`` there would not come back; the slot does).

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

    def captured(self) -> Actor:
        """What an event recorded now keeps: this actor (it never changes)."""
        return self


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
    def captured(self) -> ActorFields:
        """The fields as they stand now, as an object that never changes
        (what ``record()`` keeps for the export thread)."""


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
    """The actor of the current context (an empty one outside any scope).

    A snapshot: to change the actor, use :func:`set_actor` or :func:`actor`
    (``current_actor().user_id = ...`` raises ``AttributeError``).
    """
    return as_actor(ACTOR.get().captured())


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
        ACTOR.get().captured(), user_id, tenant_id, ip_address, user_agent, request_id, metadata
    )
    token = ACTOR.set(scope)
    try:
        yield scope
    finally:
        ACTOR.reset(token)


def set_actor(
    user_id: str | None = None,
    tenant_id: str | None = None,
    *,
    metadata: Mapping[str, Any] | None = None,
) -> None:
    """Amend the actor from here on: for the rest of the request inside a middleware.

    Call it once the application knows who the user is, e.g. in a FastAPI
    ``Depends()`` dependency (``async def`` or ``def``) or a Flask
    ``before_request``: the request's route event and every event recorded
    later in the request carry the new values (events recorded before keep
    theirs).  A field left ``None`` keeps its value; ``metadata`` is merged.

    Outside a middleware's request it sets the actor of the current context
    until that context ends (the asyncio task, the thread, the
    ``contextvars.Context``), like entering :func:`actor` without leaving it;
    inside a ``with actor(...)`` block it lasts until the block ends.
    """
    scope = ACTOR.get()
    if isinstance(scope, (RequestActor, AmendedActor)):
        scope.request().amend(user_id, tenant_id, metadata)
    else:
        ACTOR.set(merged_actor(scope, user_id, tenant_id, metadata=metadata))


# One lock for every request's amendments: they are rare (once or twice a
# request), and two dependencies amending at once must not lose a field.
_AMEND = threading.Lock()


class RequestActor:
    """The actor of one request in a middleware (subclassed by asgi and wsgi).

    Its own fields never change once made.  Amendments (:func:`set_actor`,
    or the user the framework authenticated, from :meth:`framework_user`)
    become :class:`AmendedActor` versions; ``_latest`` is the one mutable
    slot, read by :meth:`captured` on the caller's thread and never by the
    export thread.
    """

    __slots__ = ("_base", "_latest", "tenant_id", "user_id")

    def __init__(self, base: ActorFields, user_id: str | None, tenant_id: str | None) -> None:
        self._base = base
        self.user_id = base.user_id if user_id is None else user_id
        self.tenant_id = base.tenant_id if tenant_id is None else tenant_id
        self._latest: AmendedActor | None = None

    @property
    def ip_address(self) -> str | None:
        """The client address."""
        raise NotImplementedError

    @property
    def user_agent(self) -> str | None:
        """The request's User-Agent."""
        raise NotImplementedError

    @property
    def request_id(self) -> str | None:
        """The request id."""
        raise NotImplementedError

    @property
    def metadata(self) -> Mapping[str, Any] | None:
        """Metadata of the enclosing scope."""
        return self._base.metadata

    def request(self) -> RequestActor:
        """The request this actor belongs to (itself)."""
        return self

    def framework_user(self) -> tuple[str | None, str | None] | None:
        """(user_id, tenant_id) of the user the framework authenticated, if
        it can be read now on the caller's thread; None otherwise."""
        return None

    def captured(self) -> ActorFields:
        """The newest version; a user the framework authenticated fills a
        missing user id (kept, so it is read once)."""
        latest: ActorFields = self._latest or self
        if latest.user_id is None:
            found = self.framework_user()
            if found is not None and found[0] is not None:
                latest = self.amend(found[0], found[1], None, fill=True)
        return latest

    def amend(
        self,
        user_id: str | None,
        tenant_id: str | None,
        metadata: Mapping[str, Any] | None,
        *,
        fill: bool = False,
    ) -> AmendedActor:
        """Make the request's newest version: given fields replace the current
        ones (``fill``: only fill the missing ones)."""
        with _AMEND:
            latest: ActorFields = self._latest or self
            if fill:
                user_id = latest.user_id or user_id
                tenant_id = latest.tenant_id or tenant_id
            self._latest = amended = AmendedActor(
                latest.user_id if user_id is None else user_id,
                latest.tenant_id if tenant_id is None else tenant_id,
                {**(latest.metadata or {}), **metadata} if metadata else latest.metadata,
                self,
            )
        return amended


class KnownRequestActor(RequestActor):
    """A request's actor whose address, agent and id are known when the
    request starts (WSGI, Django): they are plain values."""

    __slots__ = ("_ip", "_request_id", "_user_agent")

    def __init__(self, base: ActorFields, user_id: str | None, tenant_id: str | None, *,
                 ip: str, user_agent: str, request_id: str) -> None:
        super().__init__(base, user_id, tenant_id)
        self._ip = ip
        self._user_agent = user_agent
        self._request_id = request_id

    @property
    def ip_address(self) -> str:
        """The client address (trusted proxies applied)."""
        return self._ip

    @property
    def user_agent(self) -> str:
        """The request's User-Agent."""
        return self._user_agent

    @property
    def request_id(self) -> str:
        """The request id header, or a generated one."""
        return self._request_id


class AmendedActor:
    """One amended version of a request's actor: identity of its own, the
    request's address, agent and request id.  Never changes once made."""

    __slots__ = ("_request", "metadata", "tenant_id", "user_id")

    def __init__(
        self,
        user_id: str | None,
        tenant_id: str | None,
        metadata: Mapping[str, Any] | None,
        request: RequestActor,
    ) -> None:
        self.user_id = user_id
        self.tenant_id = tenant_id
        self.metadata = metadata
        self._request = request

    @property
    def ip_address(self) -> str | None:
        """The request's client address."""
        return self._request.ip_address

    @property
    def user_agent(self) -> str | None:
        """The request's User-Agent."""
        return self._request.user_agent

    @property
    def request_id(self) -> str | None:
        """The request id."""
        return self._request.request_id

    def request(self) -> RequestActor:
        """The request this version belongs to."""
        return self._request

    def captured(self) -> ActorFields:
        """The request's newest version (this one or a later amendment)."""
        return self._request.captured()


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
