"""Errors: where they cross the HTTP boundary, once.

A page (``ui_endpoint``) sends a visitor who is not signed in to the login
form and shows errors as pages; the API (``api_endpoint``) answers JSON:

- no or bad credentials: login redirect (303) / 401 with ``WWW-Authenticate``
  (credentials are checked on a worker thread: a session or token may need
  a read of the fleet state, which must not hold up the event loop)
- RoleDenied (a monitor, on an endpoint not marked for monitors): 403 page /
  403 JSON naming the role, recorded as a denied read
- QueryParameterError: 400 naming the parameter
- TenantScopeError: 403, recorded as a denied read
- no such URL, wrong method: 404, 405 (``not_found``, ``not_allowed``)
"""

from __future__ import annotations

import functools
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from auditlake.collector.admin.routes.audit import record, record_denied
from auditlake.collector.admin.routes.pages import page
from auditlake.collector.admin.routes.principal import Principal, RoleDenied, authenticate
from auditlake.collector.admin.search import QueryParameterError, QueryTimeout, TenantScopeError
from auditlake.collector.errors import AuthError

#: A handler of a signed-in user's request.
Handler = Callable[[Request, Principal], Awaitable[Response]]
#: What Starlette calls.
Endpoint = Callable[[Request], Awaitable[Response]]


def json_error(status: int, message: str, parameter: str | None = None,
               headers: dict[str, str] | None = None) -> JSONResponse:
    """``{"error": message[, "parameter": parameter]}`` with ``status``."""
    body: dict[str, Any] = {"error": message}
    if parameter is not None:
        body["parameter"] = parameter
    return JSONResponse(body, status_code=status, headers=headers)


def login_redirect(request: Request) -> RedirectResponse:
    """To the login form, coming back to this URL afterwards."""
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse("/login?" + urllib.parse.urlencode({"next": target}), status_code=303)


def ui_endpoint(handler: Handler) -> Endpoint:
    """``handler`` as a page for signed-in users (browser sessions or tokens)."""

    @functools.wraps(handler)
    async def endpoint(request: Request) -> Response:
        try:
            who = await run_in_threadpool(authenticate, request)
        except RoleDenied as exc:
            await _record_role_denied(request, exc)
            return page("error.html", request, None, 403, title="Not allowed",
                        message=f"A {exc.user.role} account has no pages: its API token reads signed tree heads "
                        "and consistency proofs only.")
        except AuthError:
            who = None
        if who is None:
            return login_redirect(request)
        try:
            return await handler(request, who)
        except QueryParameterError as exc:
            return page("error.html", request, who, 400, title="Bad request",
                        message=f"{exc.parameter}: {exc.message}")
        except TenantScopeError:
            await record_denied(request, who)
            return page("error.html", request, who, 403, title="Not allowed",
                        message="You are not allowed to read this tenant.")
        except QueryTimeout as exc:
            return page("error.html", request, who, 503, title="Query too slow", message=str(exc))

    return endpoint


def api_endpoint(handler: Handler) -> Endpoint:
    """``handler`` as a JSON API call for signed-in users (tokens or browser sessions)."""

    @functools.wraps(handler)
    async def endpoint(request: Request) -> Response:
        try:
            who = await run_in_threadpool(authenticate, request)
        except RoleDenied as exc:
            await _record_role_denied(request, exc)
            return json_error(403, str(exc))
        except AuthError as exc:
            return json_error(401, str(exc), headers={"WWW-Authenticate": "Bearer"})
        if who is None:
            return json_error(401, "authentication required: Authorization: Bearer <API token>",
                              headers={"WWW-Authenticate": "Bearer"})
        try:
            return await handler(request, who)
        except QueryParameterError as exc:
            return json_error(400, exc.message, exc.parameter)
        except TenantScopeError as exc:
            await record_denied(request, who)
            return json_error(403, str(exc), exc.parameter)
        except QueryTimeout as exc:
            return json_error(503, str(exc), headers={"Retry-After": "5"})

    return endpoint


async def not_found(request: Request, exc: Exception) -> Response:
    """404: JSON under /api/, a short page elsewhere."""
    if request.url.path.startswith("/api/"):
        return json_error(404, "not found")
    return HTMLResponse("<!doctype html><title>Not found</title><p>Not found. <a href=\"/\">Search</a>", 404)


async def not_allowed(request: Request, exc: Exception) -> Response:
    """405: JSON under /api/, a short page elsewhere."""
    if request.url.path.startswith("/api/"):
        return json_error(405, "method not allowed")
    return HTMLResponse("<!doctype html><title>Method not allowed</title><p>Method not allowed.", 405)


async def _record_role_denied(request: Request, exc: RoleDenied) -> None:
    """Record a refused call of ``exc.user``'s role, as the proof routes record theirs."""
    await record(request, action="read", user=exc.user.name, tenants=None, outcome="denied",
                 reason=f"not an endpoint for a {exc.user.role}", details={"path": request.url.path})
