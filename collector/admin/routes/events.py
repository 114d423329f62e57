"""Events route: ``GET /events/{id}``, one event in full: every column,
its changes as a before/after table, its metadata pretty-printed, and
links to the same user's day and to the resource's history."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from auditlake.collector.admin.routes.audit import record
from auditlake.collector.admin.routes.context import admin_context
from auditlake.collector.admin.routes.errors import ui_endpoint
from auditlake.collector.admin.routes.pages import page
from auditlake.collector.admin.routes.principal import Principal
from auditlake.collector.admin.search import QueryParameterError
from auditlake.collector.schema import COLUMNS, MAX_BYTES


@ui_endpoint
async def event_page(request: Request, who: Principal) -> Response:
    """The event with the URL's id (when ``who`` may read its tenant)."""
    event_id = request.path_params["id"]
    if len(event_id.encode()) > MAX_BYTES["id"] or "\x00" in event_id:
        raise QueryParameterError("id", f"is longer than {MAX_BYTES['id']} bytes")
    ev = await run_in_threadpool(admin_context(request).reader.event, event_id, who.scope)
    if ev is None:
        return page("error.html", request, who, 404, title="Not found",
                    message="No event with this id (or not one you may read).")
    await record(request, action="read", user=who.user.name, tenants=(ev["tenant_id"],), resource_id=ev["id"],
                 details={"view": "event", "event_id": ev["id"], "rows": 1})
    day = ev["created_at"].date()
    user_day = {"tenant": [ev["tenant_id"]], "user": [ev["user_id"]], "range": ["custom"],
                "from": [day.isoformat()], "to": [(day + dt.timedelta(days=1)).isoformat()]}
    resource = {"tenant": [ev["tenant_id"]], "resource_type": [ev["resource_type"]],
                "resource_id": [ev["resource_id"]], "range": ["all"]}
    return page("event.html", request, who, ev=ev, columns=[*COLUMNS, "date"], diff=_diff(ev["changes"]),
                metadata=_pretty(ev["metadata"]), user_day=user_day, resource=resource)


def _pretty(text: str) -> str:
    """JSON indented for reading; other text as it is."""
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False, sort_keys=True)
    except (TypeError, ValueError):
        return text


def _show(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _diff(changes: str) -> list[tuple[str, str, str]] | None:
    """(path, before, after) rows of a ``changes`` object, or None when it is
    not of the {"path": {"before": x, "after": y}} shape."""
    try:
        doc = json.loads(changes)
    except (TypeError, ValueError):
        return None
    if not isinstance(doc, dict) or not doc:
        return None
    rows = []
    for path, change in doc.items():
        if isinstance(change, dict) and ("before" in change or "after" in change):
            rows.append((str(path), _show(change.get("before")), _show(change.get("after"))))
        else:
            rows.append((str(path), "", _show(change)))
    return rows


ROUTES: list[BaseRoute] = [
    Route("/events/{id}", event_page),
]
