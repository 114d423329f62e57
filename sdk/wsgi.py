"""WSGI middleware (Flask, Django, any WSGI app).

Sets the actor scope for each request (client address, user agent, request
id, user/tenant from the application's resolver, which receives the
``environ``), and, when a :class:`RouteRule` matches, records one event when
the response ends: when the body iterable is exhausted or closed, or when
the application raises.  The actor scope is also active while the server
iterates a streamed body.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable, Iterable, Iterator
from time import time_ns
from types import TracebackType
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

Environ = dict[str, Any]
ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]
Resolver = Callable[[Environ], Any]


class AuditMiddleware:
    """Sets the audit actor for each request; records matching routes at their end."""

    def __init__(
        self,
        app: WSGIApp,
        *,
        resolver: Resolver | None = None,
        trusted_proxies: Iterable[str] | str | None = (),
        request_id_header: str = "X-Request-ID",
        routes: Iterable[RouteRule] = (),
    ) -> None:
        self.app = app
        self._resolver = resolver
        self._proxies = TrustedProxies(trusted_proxies)
        self._request_id_key = "HTTP_" + request_id_header.upper().replace("-", "_")
        self._routes = tuple(routes)

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        """WSGI entry point."""
        peer = environ.get("REMOTE_ADDR", "") or ""
        if self._proxies:
            ip = self._proxies.client_address(
                peer, environ.get("HTTP_FORWARDED"), environ.get("HTTP_X_FORWARDED_FOR")
            )
        else:
            ip = peer
        request_id = environ.get(self._request_id_key) or new_request_id(time_ns())
        user_id = tenant_id = None
        if self._resolver is not None:
            try:
                user_id, tenant_id = principal_fields(self._resolver(environ))
            except Exception:  # a broken token must not turn into a 500 here
                log.warning("auditlake: the actor resolver failed", exc_info=True)
        scope = merged_actor(
            ACTOR.get(), user_id, tenant_id, ip, environ.get("HTTP_USER_AGENT", ""), request_id
        )
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "") or "/"
        matched = match_route(self._routes, method, path) if self._routes else None
        context = contextvars.copy_context()
        context.run(ACTOR.set, scope)
        if matched is None:
            return _ScopedBody(context, self.app, environ, start_response, None)
        return _ScopedBody(
            context, self.app, environ, start_response, (matched[0], matched[1], method, path)
        )


class _ScopedBody:
    """Runs the app and iterates its body inside the request's context."""

    def __init__(
        self,
        context: contextvars.Context,
        app: WSGIApp,
        environ: Environ,
        start_response: StartResponse,
        audit: tuple[RouteRule, str, str, str] | None,
    ) -> None:
        self._context = context
        self._audit = audit
        self._status = 0
        self._done = audit is None

        def watched_start_response(
            status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
        ) -> Any:
            try:
                self._status = int(status.split(" ", 1)[0])
            except ValueError:
                self._status = 0
            if exc_info is not None:
                return start_response(status, headers, exc_info)
            return start_response(status, headers)

        try:
            self._body = context.run(app, environ, watched_start_response)
        except BaseException as error:
            self._finish("failure", type(error).__name__)
            raise
        self._iterator: Iterator[bytes] | None = None

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if self._iterator is None:
            self._iterator = iter(self._body)
        try:
            return self._context.run(next, self._iterator)
        except StopIteration:
            self._finish_from_status()
            raise
        except BaseException as error:
            self._finish("failure", type(error).__name__)
            raise

    def close(self) -> None:
        """Close the application's iterable (PEP 3333) and record if not yet."""
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                self._context.run(close)
        finally:
            self._finish_from_status()

    def _finish_from_status(self) -> None:
        outcome = outcome_for_status(self._status)
        self._finish(outcome, "" if outcome == "success" else f"HTTP {self._status}")

    def _finish(self, outcome: str, reason: str) -> None:
        if self._done or self._audit is None:
            return
        self._done = True
        rule, resource_id, method, path = self._audit
        self._context.run(
            record,
            rule.action,
            rule.resource_type,
            resource_id,
            outcome,
            reason,
            {"method": method, "path": path, "status": self._status},
        )
