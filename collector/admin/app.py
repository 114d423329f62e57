"""App: the admin server's ASGI application.  Joins the route lists of
``routes/`` (one per area) with the static files, the 404/405 handlers and
the security-headers middleware, and puts what the routes share (the
reader, the user and session stores, ...) on ``app.state.admin``.

Templates and static files are resolved relative to this package
(admin/templates, admin/static)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles

from auditlake.collector.admin.routes import api, auth, events, export, integrity, search, streams, users
from auditlake.collector.admin.routes.context import AdminContext
from auditlake.collector.admin.routes.errors import not_allowed, not_found
from auditlake.collector.admin.routes.pages import template_env

if TYPE_CHECKING:
    from auditlake.collector.admin.server import AdminServer

_HERE = Path(__file__).resolve().parent


class SecurityHeaders:
    """Pure ASGI middleware: security headers on every HTTP response."""

    HEADERS = [
        (b"content-security-policy",
         b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
         b"frame-ancestors 'none'; form-action 'self'; base-uri 'none'"),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"same-origin"),
        (b"x-frame-options", b"DENY"),
    ]

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def wrapped(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                headers += [(k, v) for k, v in self.HEADERS if k not in names]
                if b"cache-control" not in names:
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, wrapped)


def build_app(server: AdminServer) -> SecurityHeaders:
    """The ASGI application of ``server``."""
    routes: list[BaseRoute] = [
        *search.ROUTES,
        *auth.ROUTES,
        *events.ROUTES,
        *export.ROUTES,
        *integrity.ROUTES,
        *users.ROUTES,
        *api.ROUTES,
        *streams.ROUTES,
        Mount("/static", StaticFiles(directory=str(_HERE / "static")), name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_allowed})
    app.state.admin = AdminContext(
        collector=server.collector,
        data=server.data,
        users=server.users,
        sessions=server.sessions,
        throttle=server.throttle,
        reader=server.reader,
        integrity=server.integrity,
        templates=template_env(_HERE / "templates"),
        audit=server.audit,
        audit_durably=server.audit_durably,
        cached=server.cached,
        exports=server.exports,
    )
    return SecurityHeaders(app)
