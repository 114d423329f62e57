"""Audit: the read-audit hook.  Every read of the log (a page, an API call,
an export) and every login, logout and token is recorded as an event
through ``AdminServer.audit`` (built by readaudit.py, stored off the
request path)."""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from auditlake.collector.admin.routes.context import admin_context
from auditlake.collector.admin.routes.principal import Principal


async def record(request: Request, **event: Any) -> None:
    """Record one event about ``request`` (keywords of ``AdminServer.audit``)."""
    await run_in_threadpool(admin_context(request).audit, request=request, **event)


async def record_denied(request: Request, who: Principal) -> None:
    """Record that ``who`` asked for a tenant outside their grant."""
    await record(request, action="read", user=who.user.name, tenants=None,
                 outcome="denied", reason="tenant outside the reader's grant",
                 details={"path": request.url.path, "query": str(request.url.query)[:2000]})
