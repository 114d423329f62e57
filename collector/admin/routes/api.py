"""API routes: the JSON API's reads of events, and its description.

- ``GET /api/v1/events``: a page of events matching the filter, with a cursor
- ``GET /api/v1/events/{id}``: one event
- ``GET /api/v1/stats``: counts per time bucket, by action or outcome
- the Merkle proof routes of ``proofs.py`` (``/api/v1/events/{id}/proof``,
  ``/api/v1/proofs/consistency``, ``/api/v1/checkpoints/...``), served with these
- ``GET /api/v1/openapi.json``: the OpenAPI document (no sign-in)

Exports and integrity have their own modules (export.py, integrity.py).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from auditlake.collector.admin.openapi import document
from auditlake.collector.admin.routes import proofs
from auditlake.collector.admin.routes.audit import record
from auditlake.collector.admin.routes.context import admin_context
from auditlake.collector.admin.routes.errors import api_endpoint, json_error
from auditlake.collector.admin.routes.params import cursor_of, filter_of, single
from auditlake.collector.admin.routes.principal import Principal
from auditlake.collector.admin.search import (
    LIST_COLUMNS,
    Cursor,
    QueryParameterError,
    effective_tenants,
    iso,
    json_value,
    parse_limit,
)
from auditlake.collector.schema import COLUMNS, MAX_BYTES


@api_endpoint
async def events(request: Request, who: Principal) -> Response:
    """A page of events matching the URL's filter, newest first."""
    admin = admin_context(request)
    f = filter_of(request, ui_mode=False)
    cursor = cursor_of(request)
    limit = parse_limit(single(request, "limit"))
    fields_ = single(request, "fields") or "summary"
    if fields_ not in ("summary", "all"):
        raise QueryParameterError("fields", "must be summary or all")
    tenants = effective_tenants(f, who.scope)

    def work() -> tuple[list[dict[str, Any]], str | None]:
        result = admin.reader.page(f, who.scope, limit=limit, cursor=cursor,
                                   columns=LIST_COLUMNS if fields_ == "summary" else COLUMNS)
        rows, next_cursor = _within_page_bytes(result.rows, result.next_cursor)
        admin.audit(action="read", user=who.user.name, tenants=tenants, request=request,
                    details={"filter": f.describe(), "rows": len(rows), "view": "api"})
        return rows, next_cursor

    rows, next_cursor = await run_in_threadpool(work)
    return JSONResponse({"events": rows, "next_cursor": next_cursor, "limit": limit})


#: The most one page of events may weigh (JSON bytes): a page of large
#: events ends early, with a cursor to the rest, whatever ``limit`` says.
MAX_PAGE_BYTES = 4 * 1024 * 1024


def _within_page_bytes(raw: list[dict[str, Any]], next_cursor: str | None) -> tuple[list[dict[str, Any]], str | None]:
    """The page's rows as JSON values, cut where they pass MAX_PAGE_BYTES
    (at least one row), with the cursor to continue after the last kept."""
    rows: list[dict[str, Any]] = []
    size = 0
    for i, r in enumerate(raw):
        row = {k: json_value(v) for k, v in r.items()}
        size += sum(len(str(v)) + len(k) + 8 for k, v in row.items())
        if rows and size > MAX_PAGE_BYTES:
            last = raw[i - 1]
            us = (last["created_at"] - _EPOCH) // dt.timedelta(microseconds=1)
            return rows, Cursor(int(us), str(last["id"])).encode()
        rows.append(row)
    return rows, next_cursor


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@api_endpoint
async def event(request: Request, who: Principal) -> Response:
    """The event with the URL's id (when ``who`` may read its tenant)."""
    event_id = request.path_params["id"]
    if len(event_id.encode("utf-8", "replace")) > MAX_BYTES["id"] or "\x00" in event_id:
        raise QueryParameterError("id", f"is longer than {MAX_BYTES['id']} bytes")
    ev = await run_in_threadpool(admin_context(request).reader.event, event_id, who.scope)
    if ev is None:
        return json_error(404, "no event with this id (or not one you may read)")
    await record(request, action="read", user=who.user.name, tenants=(ev["tenant_id"],), resource_id=ev["id"],
                 details={"view": "api-event", "event_id": ev["id"], "rows": 1})
    return JSONResponse({k: json_value(v) for k, v in ev.items()})


@api_endpoint
async def stats(request: Request, who: Principal) -> Response:
    """Counts of the events matching the URL's filter per time bucket."""
    admin = admin_context(request)
    f = filter_of(request, ui_mode=False)
    by = single(request, "by") or "action"
    if by not in ("action", "outcome"):
        raise QueryParameterError("by", "must be action or outcome")
    tenants = effective_tenants(f, who.scope)

    def work() -> Any:
        result = admin.reader.stats(f, who.scope, by=by)
        admin.audit(action="read", user=who.user.name, tenants=tenants, request=request,
                    details={"filter": f.describe(), "rows": result.total, "view": "stats"})
        return result

    result = await run_in_threadpool(work)
    return JSONResponse({"bucket": result.bucket, "by": result.by, "buckets": [iso(b) for b in result.buckets],
                         "series": result.series, "total": result.total})


async def openapi(request: Request) -> Response:
    """The OpenAPI 3 document of this API."""
    return JSONResponse(document())


ROUTES: list[BaseRoute] = [
    Route("/api/v1/openapi.json", openapi),
    Route("/api/v1/events", events),
    Route("/api/v1/events/{id}", event),
    Route("/api/v1/stats", stats),
    *proofs.ROUTES,
]
