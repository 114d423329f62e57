"""Integrity routes: the result of the last verification of the lake.

- ``GET /integrity``: the status page, with each writer's newest signed chain head
  and each stream's lag (docs/streams.md)
- ``POST /integrity/verify``: start a verification now (admins)
- ``GET /api/v1/integrity``: the status as JSON

The lake-wide figures (event and file counts, chain heads with their
sequence numbers, the problems found) tell the volume of every tenant: only
admins see them; an auditor sees whether the lake verified, and when.
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from auditlake.collector.admin.routes.context import admin_context
from auditlake.collector.admin.routes.csrf import read_form, session_token_ok
from auditlake.collector.admin.routes.errors import api_endpoint, ui_endpoint
from auditlake.collector.admin.routes.pages import page, status_for
from auditlake.collector.admin.routes.principal import Principal
from auditlake.collector.admin.routes.streams import stream_statuses


@ui_endpoint
async def integrity_page(request: Request, who: Principal) -> Response:
    """The status page (the status itself is on every page, in the header)."""
    heads = await run_in_threadpool(admin_context(request).integrity.heads) if who.user.is_admin else []
    # Stream lags tell every tenant's event volume too: admins only.
    streams = stream_statuses(admin_context(request).data.root) if who.user.is_admin else []
    return page("integrity.html", request, who, heads=heads, streams=streams)


@ui_endpoint
async def integrity_verify(request: Request, who: Principal) -> Response:
    """Wake the background verifier, back to the status page."""
    form = await read_form(request)
    if not who.user.is_admin or not session_token_ok(who, form.get("csrf")):
        return page("error.html", request, who, 403, title="Not allowed",
                    message="Only admins can start a verification (and the form must be fresh).")
    admin_context(request).integrity.request()
    return RedirectResponse("/integrity", status_code=303)


@api_endpoint
async def integrity_status(request: Request, who: Principal) -> Response:
    """The last verification's status."""
    return JSONResponse(status_for(admin_context(request).integrity.status, who))


ROUTES: list[BaseRoute] = [
    Route("/integrity", integrity_page, methods=["GET"]),
    Route("/integrity/verify", integrity_verify, methods=["POST"]),
    Route("/api/v1/integrity", integrity_status),
]
