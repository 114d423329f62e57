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
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from time import time_ns
from typing import Any

from auditlake.sdk._context import ACTOR, merged_actor
from auditlake.sdk._event import new_request_id
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


class AuditMiddleware:
    """Sets the audit actor for each request; records matching routes at their end."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        resolver: Resolver | None = None,
        trusted_proxies: Iterable[str] = (),
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
        user_agent = ""
        request_id = ""
        forwarded: str | None = None
        x_forwarded_for: str | None = None
        request_id_header = self._request_id_header
        check_proxies = self._check_proxies
        for name, value in scope.get("headers") or ():
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
        client = scope.get("client")
        peer = client[0] if client else ""
        ip = (
            self._proxies.client_address(peer, forwarded, x_forwarded_for)
            if check_proxies
            else peer
        )
        if not request_id:
            request_id = new_request_id(time_ns())
        user_id = tenant_id = None
        if self._resolver is not None:
            try:
                principal = self._resolver(scope)
                if self._resolver_is_async:
                    principal = await principal
                user_id, tenant_id = principal_fields(principal)
            except Exception:  # a broken token must not turn into a 500 here
                log.warning("auditlake: the actor resolver failed", exc_info=True)
        token = ACTOR.set(merged_actor(ACTOR.get(), user_id, tenant_id, ip, user_agent, request_id))
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
                outcome=outcome,
                reason=reason,
                metadata={"method": scope["method"], "path": scope["path"], "status": status},
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
