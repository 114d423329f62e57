"""WSGI middleware (Flask, Django, any WSGI app).

Sets the actor scope for each request (client address, user agent, request
id, user/tenant from the application's resolver, which receives the
``environ``), and, when a :class:`RouteRule` or an :func:`audit_route` mark
applies, records one event when the response ends: when the body iterable
is exhausted or closed, or when the application raises.  Two cases make
sure no event waits on a server that never reads nor closes the body (a
test client's response left unread): an error status (4xx, 5xx), or under
Flask a body Flask holds in full (not a stream), is recorded when the
application returns; a successful stream left unread is recorded when it
is garbage-collected.  The actor scope is
also active while the server iterates a streamed body.

Under Flask, what Flask worked out is read while its request context is
alive — Flask pops it before the server iterates the body, but calls
``start_response`` inside it, so that is where: the matched URL rule
(``request.url_rule``, ``request.view_args``, the view function), and
Flask-Login's ``current_user`` to fill a missing user id (also read when an
event is recorded inside the request).  Flask's signals say the rest:
``got_request_exception`` the exception behind a 500 (the event's reason),
``request_finished`` whether the body is a stream.  At the first request,
rules that match no rule of ``app.url_map`` are logged, one warning each.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from time import time_ns
from types import TracebackType
from typing import Any

from auditlake.sdk import _http
from auditlake.sdk._context import ACTOR, Actor, ActorFields, KnownRequestActor
from auditlake.sdk._event import new_request_id
from auditlake.sdk._http import (
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

Environ = dict[str, Any]
ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]
Resolver = Callable[[Environ], Any]


class _RequestActor(KnownRequestActor):
    """The actor of one WSGI request (address, agent and id worked out at once)."""

    __slots__ = ()

    def framework_user(self) -> tuple[str | None, str | None] | None:
        """Flask-Login's ``current_user``, while Flask's request context is alive."""
        login = sys.modules.get("flask_login")
        flask = sys.modules.get("flask")
        if login is None or flask is None or not flask.has_request_context():
            return None
        if not hasattr(flask.current_app, "login_manager"):  # Flask-Login imported, not used here
            return None
        # Loads the user (once per request, as @login_required would) if the
        # view did not.
        return framework_identity(login.current_user)


class _Exchange:
    """What a watched request learns while the application runs."""

    __slots__ = ("complete", "endpoint", "error", "path_params", "routed", "status", "template")

    def __init__(self) -> None:
        self.status = 0
        self.error: str | None = None
        self.complete = False  # Flask answered with a body it holds in full
        self.template: str | None = None
        self.path_params: Mapping[str, Any] | None = None
        self.endpoint: Any = None
        self.routed = False

    def read_flask(self, actor: ActorFields) -> None:
        """The route Flask matched, and the user, while Flask's request context
        is alive (a no-op outside Flask)."""
        flask = sys.modules.get("flask")
        if flask is None or not flask.has_request_context():
            return
        self.routed = True
        request = flask.request
        rule = request.url_rule
        if rule is not None:
            self.template = rule.rule
            self.path_params = request.view_args
            self.endpoint = flask.current_app.view_functions.get(rule.endpoint)
        actor.captured()  # Flask-Login's user is kept by the request's actor now


_EXCHANGE: contextvars.ContextVar[_Exchange | None] = contextvars.ContextVar(
    "auditlake_wsgi_exchange", default=None
)


def _note_flask_exception(sender: object, exception: BaseException, **extra: object) -> None:
    """Flask's ``got_request_exception``: the exception behind its 500."""
    exchange = _EXCHANGE.get()
    if exchange is not None:
        exchange.error = type(exception).__name__
        exchange.read_flask(ACTOR.get())


def _note_flask_response(sender: object, response: Any, **extra: object) -> None:
    """Flask's ``request_finished``: whether the body is already complete."""
    exchange = _EXCHANGE.get()
    if exchange is not None:
        exchange.complete = not response.is_streamed


_flask_signals_connected = False


def _connect_flask_signals() -> None:
    global _flask_signals_connected
    flask = sys.modules.get("flask")
    if flask is None or _flask_signals_connected:
        return
    _flask_signals_connected = True
    flask.got_request_exception.connect(_note_flask_exception, weak=False)
    flask.request_finished.connect(_note_flask_response, weak=False)


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
        self._rules = RouteRules(routes)
        self._has_rules = bool(self._rules.rules)
        self._checked = False

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        """WSGI entry point."""
        if not self._checked:
            self.check_rules()
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
        base = ACTOR.get()
        if type(base) is not Actor:
            base = base.captured()
        actor = _RequestActor(
            base, user_id, tenant_id, ip=ip, user_agent=environ.get("HTTP_USER_AGENT", ""), request_id=request_id
        )
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "") or "/"
        watch = self._rules.before(method, path) if self._has_rules or _http.MARKS.any else None
        context = contextvars.copy_context()
        context.run(ACTOR.set, actor)
        if watch is None:
            return _ScopedBody(context, self.app, environ, start_response)
        exchange = _Exchange()
        context.run(_EXCHANGE.set, exchange)
        return _AuditedBody(
            context, self.app, environ, start_response,
            exchange, self._rules, None if watch is True else watch, method, path,
        )

    def check_rules(self) -> None:
        """Warn, once per rule, about route rules that match no rule of the
        Flask application's ``url_map`` (nothing to check for other apps)."""
        self._checked = True
        _connect_flask_signals()
        if not self._has_rules:
            return
        url_map = getattr(self.app, "url_map", None) or getattr(
            getattr(self.app, "__self__", None), "url_map", None  # flask_app.wsgi_app
        )
        if url_map is None:
            log.debug("auditlake: no Flask url_map reachable; route rules not checked")
            return
        routes = [(rule.rule, rule.methods) for rule in url_map.iter_rules()]
        for rule in self._rules.unmatched(routes):
            log.warning(
                "auditlake: %r matches no route of the application; it records only "
                "requests whose raw path it matches (check its method and path)",
                rule,
            )


class _ScopedBody:
    """Runs the app and iterates its body inside the request's context."""

    def __init__(
        self,
        context: contextvars.Context,
        app: WSGIApp,
        environ: Environ,
        start_response: StartResponse,
    ) -> None:
        self._context = context
        self._body = context.run(app, environ, start_response)
        self._iterator: Iterator[bytes] | None = None

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if self._iterator is None:
            self._iterator = iter(self._body)
        return self._context.run(next, self._iterator)

    def close(self) -> None:
        """Close the application's iterable (PEP 3333)."""
        close = getattr(self._body, "close", None)
        if close is not None:
            self._context.run(close)


class _AuditedBody(_ScopedBody):
    """A body whose end records the route event."""

    def __init__(
        self,
        context: contextvars.Context,
        app: WSGIApp,
        environ: Environ,
        start_response: StartResponse,
        exchange: _Exchange,
        rules: RouteRules,
        raw: tuple[RouteRule, str] | None,
        method: str,
        path: str,
    ) -> None:
        self._context = context
        self._exchange = exchange
        self._rules = rules
        self._raw = raw
        self._method = method
        self._path = path
        self._done = False

        def watched_start_response(
            status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
        ) -> Any:
            try:
                exchange.status = int(status.split(" ", 1)[0])
            except ValueError:
                exchange.status = 0
            exchange.read_flask(ACTOR.get())
            if exc_info is not None:
                return start_response(status, headers, exc_info)
            return start_response(status, headers)

        try:
            self._body = context.run(app, environ, watched_start_response)
        except BaseException as error:
            self._finish(type(error).__name__)
            raise
        self._iterator = None
        if exchange.complete or exchange.status >= 400:
            # Flask holds the whole body (not a stream), or the status already
            # decides the outcome: nothing the server does with the body can
            # change the event, so record now rather than rely on the server
            # (or a test client) reading or closing it.
            self._finish(None)

    def __next__(self) -> bytes:
        try:
            return super().__next__()
        except StopIteration:
            self._finish(None)
            raise
        except BaseException as error:
            self._finish(type(error).__name__)
            raise

    def close(self) -> None:
        """Close the application's iterable (PEP 3333) and record if not yet."""
        try:
            super().close()
        finally:
            self._finish(None)

    def __del__(self) -> None:
        # A stream neither exhausted nor closed (PEP 3333 servers always
        # close; a test client's response may be dropped unread): record what
        # is known rather than nothing.  CPython frees the body when its last
        # reference goes (or at the next garbage collection, when a caught
        # exception's traceback still holds the frames that refer to it).
        if not getattr(self, "_done", True):
            with contextlib.suppress(Exception):  # interpreter shutdown: never raise here
                self._finish(None)

    def _finish(self, error: str | None) -> None:
        if self._done:
            return
        self._done = True
        exchange = self._exchange
        template = exchange.template
        found = self._rules.resolve(
            self._method,
            template,
            self._rules.for_template(template) if template else (),
            exchange.path_params,
            exchange.endpoint,
            self._raw,
        )
        if found is None:
            return
        status = exchange.status
        if 300 <= status < 400 and exchange.template is None and exchange.routed:
            # Werkzeug's own redirect (a missing trailing slash): not the
            # action; the request that follows it records.
            return
        if error is None and status >= 500:
            error = exchange.error  # the exception Flask turned into this 500
        rule, resource_id = found
        outcome, reason, sent = route_outcome(status, error)
        metadata: dict[str, Any] = {"method": self._method, "path": self._path, "status": sent}
        if exchange.template is not None:
            metadata["route"] = exchange.template
        self._context.run(
            record, rule.action, rule.resource_type, resource_id, outcome, reason, metadata
        )
