"""Pages: the Jinja environment over admin/templates, and rendering one
page with what every page shows (the user, the integrity badge, the
session's CSRF token)."""

from __future__ import annotations

import datetime as dt
import urllib.parse
from pathlib import Path
from typing import Any

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse

from auditlake.collector.admin.routes.context import admin_context
from auditlake.collector.admin.routes.principal import Principal
from auditlake.collector.admin.search import iso


def template_env(directory: Path) -> jinja2.Environment:
    """The templates in ``directory``, autoescaped, with the ``ts`` filter and ``qs`` global."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(directory)),
                             autoescape=True, trim_blocks=True, lstrip_blocks=True)
    env.filters["ts"] = _timestamp
    env.globals["qs"] = _query_string
    return env


def _timestamp(value: Any) -> Any:
    """A datetime as ``YYYY-MM-DD HH:MM:SS.ffffff`` (UTC); anything else as it is."""
    return iso(value).replace("T", " ").replace("Z", "") if isinstance(value, dt.datetime) else value


def _query_string(params: Any) -> str:
    return urllib.parse.urlencode(params, doseq=True)


def page(name: str, request: Request, who: Principal | None, status: int = 200, **ctx: Any) -> HTMLResponse:
    """The template ``name`` rendered for ``who`` with ``ctx``."""
    admin = admin_context(request)
    html = admin.templates.get_template(name).render(
        request=request, who=who, integrity=status_for(admin.integrity.status, who),
        csrf=who.session.csrf if who and who.session else "", **ctx)
    return HTMLResponse(html, status_code=status)


#: What of a verification's status every reader may see.
_FOR_EVERYONE = ("state", "ok", "time", "seconds", "source")


def status_for(status: dict[str, Any], who: Principal | None) -> dict[str, Any]:
    """The integrity status as ``who`` may see it: all of it for admins;
    for others whether it verified and when, without lake-wide figures."""
    if who is not None and who.user.is_admin:
        return status
    out = {k: status[k] for k in _FOR_EVERYONE if k in status}
    if status.get("ok") is False:
        out["summary"] = "problems found; an administrator can see them"
    elif status.get("ok") is True:
        out["summary"] = "verified"
    return out
