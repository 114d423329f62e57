"""Search route: ``GET /``, the search page: the filter form, a page of
matching events (newest first, with a cursor to older ones) and the
activity chart of the whole match (by action or by outcome)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from auditlake.collector.admin.chart import legend, render_svg
from auditlake.collector.admin.export import FORMATS
from auditlake.collector.admin.routes.context import admin_context
from auditlake.collector.admin.routes.errors import ui_endpoint
from auditlake.collector.admin.routes.pages import page
from auditlake.collector.admin.routes.params import cursor_of, filter_of, single
from auditlake.collector.admin.routes.principal import Principal
from auditlake.collector.admin.search import (
    RANGES,
    QueryParameterError,
    effective_tenants,
    iso,
    parse_limit,
)
from auditlake.collector.schema import OUTCOMES

#: How long the lists behind the form's suggestions (actions, tenants) are kept.
_SUGGESTIONS_TTL_S = 60


@ui_endpoint
async def search_page(request: Request, who: Principal) -> Response:
    """A page of events matching the URL's filter, with its chart."""
    admin = admin_context(request)
    f = filter_of(request, ui_mode=True)
    cursor = cursor_of(request)
    limit = parse_limit(single(request, "limit"))
    by = single(request, "by") or "action"
    if by not in ("action", "outcome"):
        raise QueryParameterError("by", "must be action or outcome")
    tenants = effective_tenants(f, who.scope)

    def work() -> tuple[Any, Any, list[str], list[str]]:
        result = admin.reader.page(f, who.scope, limit=limit, cursor=cursor)
        stats = admin.reader.stats(f, who.scope, by=by)
        scope_key = tuple(sorted(who.scope)) if who.scope is not None else None
        actions = admin.cached(("actions", scope_key), _SUGGESTIONS_TTL_S,
                               lambda: admin.reader.distinct("action", who.scope))
        known = (admin.cached(("tenants",), _SUGGESTIONS_TTL_S, lambda: admin.reader.distinct("tenant_id", None))
                 if who.scope is None else sorted(who.scope))
        admin.audit(action="read", user=who.user.name, tenants=tenants, request=request,
                    details={"filter": f.describe(), "rows": len(result.rows), "view": "search",
                             "page": "next" if cursor else "first"})
        return result, stats, actions, known

    result, stats, actions, known = await run_in_threadpool(work)
    params = f.to_params()
    if by != "action":
        params["by"] = [by]
    # Older pages pin a relative range ("last 24 h") to its start now, so
    # the window does not slide while someone pages through it.
    older = dict(params, cursor=[result.next_cursor]) if result.next_cursor else None
    if older is not None and f.range not in ("", "custom", "all") and f.start is not None:
        older.pop("range", None)
        older.update({"range": ["custom"], "from": [iso(f.start)]})
    return page("search.html", request, who, f=f, rows=result.rows, older=older,
                params=params, stats=stats, chart=render_svg(stats), legend=legend(stats),
                actions=sorted(set(actions) | set(f.actions)), tenants=known, outcomes=sorted(OUTCOMES),
                ranges=[r for r in RANGES if r != "all"] + ["all"], by=by, cursor=cursor,
                formats=FORMATS, from_value=_local(f.start) if f.range == "custom" else "",
                to_value=_local(f.end) if f.range == "custom" else "")


def _local(t: dt.datetime | None) -> str:
    """A datetime-local input's value (UTC)."""
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M") if t else ""


ROUTES: list[BaseRoute] = [
    Route("/", search_page),
]
