"""Pure ASGI middleware (FastAPI, Starlette, any ASGI app).

For each HTTP request it sets the actor scope (client address, user agent,
request id, and user/tenant from the application's resolver), and, when a
:class:`RouteRule` or an :func:`audit_route` mark applies, records one
event when the response really ends: after the last body chunk, or when
the application raises.  Non-HTTP scopes (websocket, lifespan) pass
straight through.

    app.add_middleware(
        AuditMiddleware,
        resolver=lambda scope: {"user_id": ..., "tenant_id": ...},
        trusted_proxies=["10.0.0.0/8"],
        routes=[RouteRule("GET", "/patients/{patient_id}", "read", "patient")],
    )

What the framework works out is used once it is known, read from the ASGI
scope (Starlette routes in place, on the dict every middleware shares): the
matched route (``scope["route"]``, ``scope["path_params"]``,
``scope["endpoint"]``) picks the rule and the resource id, and the user
Starlette's ``AuthenticationMiddleware`` put in ``scope["user"]`` fills a
missing user id.  At start-up (lifespan, or the first request) rules that
match no route of the application are logged, one warning each.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, MutableMapping
from random import getrandbits
from time import time_ns
from typing import Any

from auditlake.sdk import _http
from auditlake.sdk._context import ACTOR, Actor, ActorFields, RequestActor
from auditlake.sdk._event import format_request_id
from auditlake.sdk._http import (
    Candidates,
    RouteRule,
    RouteRules,
    TrustedProxies,
    audit_route,
    framework_identity,
    principal_fields,
    route_outcome,
)
from auditlake.sdk._record import record_quietly as record

__all__ = ["AuditMiddleware", "RouteRule", "audit_route"]

log = logging.getLogger("auditlake.sdk")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Resolver = Callable[[Scope], Any]


class _RequestActor(RequestActor):
    """The actor of one ASGI request.

    Made on every request, so it only keeps references: the headers are read,
    the client address resolved and the request id formatted the first time
    something asks (usually the export thread, for an event).  Every input is
    captured when the request starts, so any reader gets the same values.
    The ASGI scope is kept while the request runs, to read ``scope["user"]``.
    """

    __slots__ = ("_client", "_headers", "_middleware", "_ns", "_rand", "_resolved", "_scope")

    def __init__(
        self,
        base: ActorFields,
        user_id: str | None,
        tenant_id: str | None,
        scope: Scope,
        ns: int,
        rand: int,
        middleware: AuditMiddleware,
    ) -> None:
        # RequestActor's fields set here rather than through super(): this
        # runs on every request.
        self._base = base
        self.user_id = base.user_id if user_id is None else user_id
        self.tenant_id = base.tenant_id if tenant_id is None else tenant_id
        self._latest = None
        self._scope: Scope | None = scope
        self._headers: Iterable[tuple[bytes, bytes]] = scope.get("headers") or ()
        self._client = scope.get("client")
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

    def framework_user(self) -> tuple[str | None, str | None] | None:
        """The user in ``scope["user"]`` (Starlette's AuthenticationMiddleware)."""
        scope = self._scope
        user = scope.get("user") if scope is not None else None
        return None if user is None else framework_identity(user)


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
        self._rules = RouteRules(routes)
        self._has_rules = bool(self._rules.rules)
        self._checked = False
        # id(route) -> (route, template, candidates): what a route implies,
        # worked out once (routes live as long as the application).
        self._seen_routes: dict[int, tuple[object, str | None, Candidates]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point."""
        if scope["type"] != "http":
            if not self._checked and scope["type"] == "lifespan":
                self.check_rules()
            await self.app(scope, receive, send)
            return
        if not self._checked:
            self.check_rules()
        user_id = tenant_id = None
        if self._resolver is not None:
            try:
                principal = self._resolver(scope)
                if self._resolver_is_async:
                    principal = await principal
                user_id, tenant_id = principal_fields(principal)
            except Exception:  # a broken token must not turn into a 500 here
                log.warning("auditlake: the actor resolver failed", exc_info=True)
        base = ACTOR.get()
        if type(base) is not Actor:  # inside another request's scope
            base = base.captured()
        # Only references and two integers here; the headers are read when an
        # event needs them (see _RequestActor), so a request that records
        # nothing pays almost nothing.
        actor = _RequestActor(base, user_id, tenant_id, scope, time_ns(), getrandbits(32), self)
        token = ACTOR.set(actor)
        try:
            watch = (
                self._rules.before(scope["method"], scope["path"])
                if self._has_rules or _http.MARKS.any
                else None
            )
            if watch is None:
                await self.app(scope, receive, send)
            else:
                await self._audited_call(scope, receive, send, None if watch is True else watch)
        finally:
            actor._scope = None  # the scope is the application's; events keep only the actor
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

    def check_rules(self) -> None:
        """Warn, once per rule, about route rules that match no route of the
        application (found through ``.app`` down to a Starlette/FastAPI
        router); nothing to check when no router is reachable."""
        self._checked = True
        if not self._has_rules:
            return
        routes = _application_routes(self.app)
        if routes is None:
            log.debug("auditlake: no Starlette/FastAPI routes reachable; route rules not checked")
            return
        for rule in self._rules.unmatched(routes):
            log.warning(
                "auditlake: %r matches no route of the application; it records only "
                "requests whose raw path it matches (check its method and path)",
                rule,
            )

    async def _audited_call(
        self, scope: Scope, receive: Receive, send: Send, raw: tuple[RouteRule, str] | None
    ) -> None:
        status = 0
        done = False
        root_path = scope.get("root_path", "")

        def finish(error: str | None) -> None:
            nonlocal done
            if not done:
                done = True
                self._record_route(scope, root_path, raw, status, error)

        async def send_and_watch(message: Message) -> None:
            nonlocal status
            kind = message["type"]
            if kind == "http.response.start":
                status = int(message["status"])
            await send(message)
            if (
                (kind == "http.response.body" and not message.get("more_body", False))
                or kind == "http.response.pathsend"
            ) and status < 500:
                # A 5xx waits for the application to return or raise: an
                # exception behind it is the event's reason (Starlette's
                # ServerErrorMiddleware sends the 500, then re-raises).
                finish(None)

        try:
            await self.app(scope, receive, send_and_watch)
        except BaseException as error:
            finish(type(error).__name__)
            raise
        # The application returned: after a 5xx, or without a final body
        # message (a server extension sent the body, or the client went away).
        finish(None)

    def _record_route(
        self,
        scope: Scope,
        root_path: str,
        raw: tuple[RouteRule, str] | None,
        status: int,
        error: str | None,
    ) -> None:
        template, candidates = self._route(scope, root_path)
        found = self._rules.resolve(
            scope["method"], template, candidates, scope.get("path_params"), scope.get("endpoint"), raw
        )
        if found is None:
            return
        if 300 <= status < 400 and template is None and "router" in scope:
            # The router's own redirect (a missing or extra trailing slash):
            # not the action; the request that follows it records.
            return
        rule, resource_id = found
        outcome, reason, sent = route_outcome(status, error)
        metadata: dict[str, Any] = {"method": scope["method"], "path": scope["path"], "status": sent}
        if template is not None:
            metadata["route"] = template
        record(rule.action, rule.resource_type, resource_id, outcome, reason, metadata)

    def _route(self, scope: Scope, root_path: str) -> tuple[str | None, Candidates]:
        """The matched route's template and the rules that may apply to it."""
        route = scope.get("route")
        if route is None:
            return None, ()
        if scope.get("root_path", "") != root_path:  # mounted: the template holds the mount's values
            template = route_template(scope, root_path)
            return template, self._rules.for_template(template) if template else ()
        key = route
        fastapi = scope.get("fastapi")
        if type(fastapi) is dict and fastapi:  # an included router's route: its context has the full template
            key = fastapi.get("effective_route_context") or route
        seen = self._seen_routes.get(id(key))
        if seen is None or seen[0] is not key:
            template = route_template(scope, root_path)
            seen = (key, template, self._rules.for_template(template) if template else ())
            if len(self._seen_routes) >= 4096:  # routes made per request: do not grow
                self._seen_routes.clear()
            self._seen_routes[id(key)] = seen
        return seen[1], seen[2]


def route_template(scope: Mapping[str, Any], root_path: str) -> str | None:
    """The template of the route Starlette/FastAPI matched, mount prefix included.

    FastAPI's included routers keep the full template in their route context;
    a Starlette ``Mount`` moves its matched prefix into ``root_path`` (its
    own placeholders therefore appear with their values).
    """
    route = scope.get("route")
    if route is None:
        return None
    fastapi = scope.get("fastapi")
    if type(fastapi) is dict:
        path = getattr(fastapi.get("effective_route_context"), "path", None)
        if type(path) is str and path:
            return path
    path = getattr(route, "path", None)
    if type(path) is not str:
        return None
    mounted = str(scope.get("root_path", ""))[len(root_path) :]
    if not hasattr(route, "endpoint"):  # a Mount of an application that does not route
        return mounted.removesuffix(path) + path + "/{path}"
    return mounted + path


def _application_routes(app: object) -> list[tuple[str, Any]] | None:
    """Every (template, methods) of the first router found down ``app``'s
    ``.app`` chain (Starlette, FastAPI, their middleware), or None."""
    for _ in range(64):  # a middleware chain, never a cycle
        routes = getattr(app, "routes", None)
        if isinstance(routes, list):
            return list(_walk_routes(routes, ""))
        app = getattr(app, "app", None)
        if app is None:
            return None
    return None


def _walk_routes(routes: Iterable[Any], prefix: str) -> Iterator[tuple[str, Any]]:
    for route in routes:
        contexts = getattr(route, "effective_route_contexts", None)
        if callable(contexts):  # FastAPI's include_router: full templates
            for context in contexts():
                yield prefix + context.path, context.methods or None
            continue
        path = getattr(route, "path", None)
        if type(path) is not str:
            continue
        if hasattr(route, "endpoint"):
            yield prefix + path, getattr(route, "methods", None)
            continue
        inner = getattr(route, "routes", None)  # a Mount
        if inner:
            yield from _walk_routes(inner, prefix + path)
        else:
            yield prefix + path + "/{path:path}", None
