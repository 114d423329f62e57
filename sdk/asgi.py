"""Pure ASGI middleware (FastAPI, Starlette, any ASGI app).

For each HTTP request it sets the actor scope (client address, user agent,
request id, and user/tenant from the application's resolver), and, when a
:class:`RouteRule` matches, records one event when the response really ends:
after the last body chunk, or when the application raises.  Non-HTTP scopes
(websocket, lifespan) pass straight through.

    app.add_middleware(
        AuditMiddleware,
        resolver=lambda scope: {"user_id": ..., "tenant_id": ...},
        trusted_proxies=["10.0.0.0/8"],
        routes=[RouteRule("GET", "/patients/{id}", "read", "patient")],
    )
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from random import getrandbits
from time import time_ns
from typing import Any

from auditlake.sdk._context import ACTOR, ActorFields
from auditlake.sdk._event import format_request_id
from auditlake.sdk._http import (
    RouteRule,
    TrustedProxies,
    match_route,
    outcome_for_status,
    principal_fields,
)
from auditlake.sdk._record import record_quietly as record

__all__ = ["AuditMiddleware", "RouteRule"]

log = logging.getLogger("auditlake.sdk")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Resolver = Callable[[Scope], Any]


class _RequestActor:
    """The actor of one ASGI request.

    Made on every request, so it only keeps references: the headers are read,
    the client address resolved and the request id formatted the first time
    something asks (usually the export thread, for an event).  Every input is
    captured when the request starts, so any reader gets the same values.
    """

    __slots__ = (
        "_base",
        "_client",
        "_headers",
        "_middleware",
        "_ns",
        "_rand",
        "_resolved",
        "tenant_id",
        "user_id",
    )

    def __init__(
        self,
        base: ActorFields,
        user_id: str | None,
        tenant_id: str | None,
        headers: Iterable[tuple[bytes, bytes]],
        client: Any,
        ns: int,
        rand: int,
        middleware: AuditMiddleware,
    ) -> None:
        self._base = base
        self.user_id = base.user_id if user_id is None else user_id
        self.tenant_id = base.tenant_id if tenant_id is None else tenant_id
        self._headers = headers
        self._client = client
        self._ns = ns
        self._rand = rand
        self._middleware = middleware
        self._resolved: tuple[str, str, str] | None = None

    def _fields(self) -> tuple[str, str, str]:
        resolved = self._resolved
        if resolved is None:
            resolved = self._resolved = self._middleware.request_fields(
                self._headers, self._client, self._ns, self._rand
            )
        return resolved

    @property
    def ip_address(self) -> str:
        """The client address (trusted proxies applied)."""
        return self._fields()[0]

    @property
    def user_agent(self) -> str:
        """The request's User-Agent."""
        return self._fields()[1]

    @property
    def request_id(self) -> str:
        """The request id header, or a generated one."""
        return self._fields()[2]

    @property
    def metadata(self) -> Mapping[str, Any] | None:
        """Metadata of the enclosing scope."""
        return self._base.metadata


class AuditMiddleware:
    """Sets the audit actor for each request; records matching routes at their end."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        resolver: Resolver | None = None,
        trusted_proxies: Iterable[str] | str | None = (),
        request_id_header: str = "x-request-id",
        routes: Iterable[RouteRule] = (),
    ) -> None:
        self.app = app
        self._resolver = resolver
        self._resolver_is_async = inspect.iscoroutinefunction(
            resolver
        ) or inspect.iscoroutinefunction(type(resolver).__call__)
        self._proxies = TrustedProxies(trusted_proxies)
        self._check_proxies = bool(self._proxies)
        self._request_id_header = request_id_header.lower().encode("latin-1")
        self._routes = tuple(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        user_id = tenant_id = None
        if self._resolver is not None:
            try:
                principal = self._resolver(scope)
                if self._resolver_is_async:
                    principal = await principal
                user_id, tenant_id = principal_fields(principal)
            except Exception:  # a broken token must not turn into a 500 here
                log.warning("auditlake: the actor resolver failed", exc_info=True)
        # Only references and two integers here; the headers are read when an
        # event needs them (see _RequestActor), so a request that records
        # nothing pays almost nothing.
        token = ACTOR.set(
            _RequestActor(
                ACTOR.get(),
                user_id,
                tenant_id,
                scope.get("headers") or (),
                scope.get("client"),
                time_ns(),
                getrandbits(32),
                self,
            )
        )
        try:
            matched = (
                match_route(self._routes, scope["method"], scope["path"]) if self._routes else None
            )
            if matched is None:
                await self.app(scope, receive, send)
                return
            await self._audited_call(scope, receive, send, matched[0], matched[1])
        finally:
            ACTOR.reset(token)

    def request_fields(
        self, headers: Iterable[tuple[bytes, bytes]], client: Any, ns: int, rand: int
    ) -> tuple[str, str, str]:
        """(client address, user agent, request id) of a request."""
        user_agent = ""
        request_id = ""
        forwarded: str | None = None
        x_forwarded_for: str | None = None
        request_id_header = self._request_id_header
        check_proxies = self._check_proxies
        for name, value in headers:
            if name == b"user-agent":
                user_agent = value.decode("latin-1")
            elif name == request_id_header:
                request_id = value.decode("latin-1")
            elif check_proxies and name == b"x-forwarded-for":
                text = value.decode("latin-1")
                x_forwarded_for = f"{x_forwarded_for},{text}" if x_forwarded_for else text
            elif check_proxies and name == b"forwarded":
                text = value.decode("latin-1")
                forwarded = f"{forwarded},{text}" if forwarded else text
        peer = client[0] if client else ""
        ip = (
            self._proxies.client_address(peer, forwarded, x_forwarded_for)
            if check_proxies
            else peer
        )
        return ip, user_agent, request_id or format_request_id(ns, rand)

    async def _audited_call(
        self, scope: Scope, receive: Receive, send: Send, rule: RouteRule, resource_id: str
    ) -> None:
        status = 0
        done = False

        def finish(outcome: str, reason: str) -> None:
            nonlocal done
            if done:
                return
            done = True
            record(
                rule.action,
                rule.resource_type,
                resource_id,
                outcome,
                reason,
                {"method": scope["method"], "path": scope["path"], "status": status},
            )

        async def send_and_watch(message: Message) -> None:
            nonlocal status
            kind = message["type"]
            if kind == "http.response.start":
                status = int(message["status"])
            await send(message)
            if (
                kind == "http.response.body" and not message.get("more_body", False)
            ) or kind == "http.response.pathsend":
                finish_from_status()

        def finish_from_status() -> None:
            outcome = outcome_for_status(status)
            finish(outcome, "" if outcome == "success" else f"HTTP {status}")

        try:
            await self.app(scope, receive, send_and_watch)
        except BaseException as error:
            finish("failure", type(error).__name__)
            raise
        if not done:
            # The application returned without a final body message (a server
            # extension sent the body, or the client went away).
            if status:
                finish_from_status()
            else:
                finish("failure", "no response")
