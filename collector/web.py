"""Web: the admin server's routes (Starlette): pages, JSON API, exports.

Authentication: a session cookie (browsers) or ``Authorization: Bearer``
with an API token (scripts).  Every state-changing form carries the
session's CSRF token.  Errors cross the HTTP boundary here, once:
QueryParameterError -> 400, AuthError -> 401, TenantScopeError -> 403.
"""

from __future__ import annotations

import datetime as dt
import hmac
import json
import secrets
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from auditlake.collector.chart import legend, render_svg
from auditlake.collector.errors import AuthError
from auditlake.collector.export import EXTENSIONS, FORMATS, MEDIA_TYPES, ExportRun, exports_dir
from auditlake.collector.openapi import document
from auditlake.collector.schema import COLUMNS, MAX_BYTES, OUTCOMES
from auditlake.collector.search import (
    LIST_COLUMNS,
    RANGES,
    Cursor,
    Filter,
    QueryParameterError,
    TenantScopeError,
    effective_tenants,
    iso,
    json_value,
    parse_filter,
    parse_limit,
)
from auditlake.collector.users import Session, User

if TYPE_CHECKING:
    from auditlake.collector.admin import AdminServer

_HERE = Path(__file__).resolve().parent
SESSION_COOKIE = "auditlake_session"
LOGIN_CSRF_COOKIE = "auditlake_login_csrf"
_EID_OK = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
UI_DEFAULT_RANGE = "24h"


@dataclass
class Principal:
    """Who is asking: the user, and their session when it is a browser."""

    user: User
    session: Session | None

    @property
    def scope(self) -> frozenset[str] | None:
        return self.user.scope


def _env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(_HERE / "templates")),
                             autoescape=True, trim_blocks=True, lstrip_blocks=True)
    env.filters["ts"] = lambda v: iso(v).replace("T", " ").replace("Z", "") if isinstance(v, dt.datetime) else v
    env.globals["qs"] = lambda params: urllib.parse.urlencode(params, doseq=True)
    return env


def _json_error(status: int, message: str, parameter: str | None = None,
                headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": message}
    if parameter is not None:
        body["parameter"] = parameter
    return JSONResponse(body, status_code=status, headers=headers)


def _valid_eid(eid: str) -> bool:
    return 8 <= len(eid) <= 64 and set(eid) <= _EID_OK


def routes_app(server: AdminServer) -> Starlette:
    """Every route of the admin server, bound to ``server``."""
    env = _env()

    # -- auth --------------------------------------------------------------

    def principal(request: Request) -> Principal | None:
        auth = request.headers.get("authorization", "")
        if auth:
            if not auth.lower().startswith("bearer "):
                raise AuthError("use Authorization: Bearer <API token>")
            user = server.users.check_token(auth[7:].strip())
            return Principal(user, None)
        session = server.sessions.get(request.cookies.get(SESSION_COOKIE))
        if session is None:
            return None
        current = server.users.get(session.user)
        if current is None:  # removed since logging in
            server.sessions.end_user(session.user)
            return None
        return Principal(current, session)

    def page(name: str, request: Request, who: Principal | None, status: int = 200, **ctx: Any) -> HTMLResponse:
        tmpl = env.get_template(name)
        html = tmpl.render(request=request, who=who, integrity=server.integrity.status,
                           csrf=who.session.csrf if who and who.session else "", **ctx)
        return HTMLResponse(html, status_code=status)

    def login_redirect(request: Request) -> RedirectResponse:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse("/login?" + urllib.parse.urlencode({"next": target}), status_code=303)

    def ui(handler: Callable[[Request, Principal], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                who = principal(request)
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
                await audit_denied(request, who)
                return page("error.html", request, who, 403, title="Not allowed",
                            message="You are not allowed to read this tenant.")
        return endpoint

    def api(handler: Callable[[Request, Principal], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                who = principal(request)
            except AuthError as exc:
                return _json_error(401, str(exc), headers={"WWW-Authenticate": "Bearer"})
            if who is None:
                return _json_error(401, "authentication required: Authorization: Bearer <API token>",
                                   headers={"WWW-Authenticate": "Bearer"})
            try:
                return await handler(request, who)
            except QueryParameterError as exc:
                return _json_error(400, exc.message, exc.parameter)
            except TenantScopeError as exc:
                await audit_denied(request, who)
                return _json_error(403, str(exc), exc.parameter)
        return endpoint

    async def audit_denied(request: Request, who: Principal) -> None:
        await run_in_threadpool(
            server.audit, action="read", user=who.user.name, tenants=None, request=request,
            outcome="denied", reason="tenant outside the reader's grant",
            details={"path": request.url.path, "query": str(request.url.query)[:2000]})

    # -- filters from the URL -------------------------------------------------

    def filter_of(request: Request, *, ui_mode: bool) -> Filter:
        q = request.query_params
        # The form always sends the range select: a preset wins over stale
        # from/to, and a custom range ignores the select.
        rng = (q.get("range") or "").strip() if ui_mode else ""
        ignored: tuple[str, ...] = ("from", "to") if rng and rng != "custom" else ("range",) if rng == "custom" else ()

        def get(name: str) -> list[str]:
            return [] if name in ignored else q.getlist(name)

        f = parse_filter(get, default_range=UI_DEFAULT_RANGE if ui_mode else "")
        return f

    def cursor_of(request: Request) -> Cursor | None:
        values = request.query_params.getlist("cursor")
        if len(values) > 1:
            raise QueryParameterError("cursor", "give at most one value")
        return Cursor.decode(values[0]) if values and values[0] else None

    def single(request: Request, name: str) -> str | None:
        values = request.query_params.getlist(name)
        if len(values) > 1:
            raise QueryParameterError(name, "give at most one value")
        return values[0] if values else None

    # -- pages ----------------------------------------------------------------

    async def login_get(request: Request) -> Response:
        token = secrets.token_urlsafe(24)
        nxt = _safe_next(request.query_params.get("next", "/"))
        resp = page("login.html", request, None, next=nxt, login_csrf=token, error="")
        _set_cookie(request, resp, LOGIN_CSRF_COOKIE, token, max_age=3600)
        return resp

    async def login_post(request: Request) -> Response:
        form = await _form(request)
        name = str(form.get("username", ""))[:MAX_BYTES["user_id"]]
        password = str(form.get("password", ""))[:1024]
        nxt = _safe_next(str(form.get("next", "/")))
        sent = str(form.get("csrf", ""))
        cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
        if not sent or not cookie or not hmac.compare_digest(sent, cookie):
            return page("error.html", request, None, 403, title="Form expired",
                        message="The login form expired or came from another site. Reload the page and try again.")
        ip = request.client.host if request.client else "?"
        keys = (f"user:{name}", f"ip:{ip}")
        wait = server.throttle.wait_s(*keys)
        if wait > 0:
            resp = page("login.html", request, None, 429, next=nxt, login_csrf=cookie,
                        error=f"Too many failed attempts. Try again in {int(wait) + 1} seconds.")
            resp.headers["Retry-After"] = str(int(wait) + 1)
            return resp
        user = await run_in_threadpool(server.users.check_password, name, password)
        if user is None:
            server.throttle.failed(*keys)
            await run_in_threadpool(server.audit, action="login_failed", user=name, tenants=None,
                                    request=request, outcome="failure", reason="wrong user name or password",
                                    resource_type="admin_session", details={})
            return page("login.html", request, None, 401, next=nxt, login_csrf=cookie,
                        error="Wrong user name or password.")
        server.throttle.succeeded(f"user:{name}")
        value, _ = server.sessions.create(user.name)
        await run_in_threadpool(server.audit, action="login", user=user.name, tenants=None, request=request,
                                resource_type="admin_session", details={"role": user.role})
        redirect = RedirectResponse(nxt, status_code=303)
        _set_cookie(request, redirect, SESSION_COOKIE, value, max_age=None)
        redirect.delete_cookie(LOGIN_CSRF_COOKIE, path="/")
        return redirect

    async def logout(request: Request) -> Response:
        who = principal_or_none(request)
        if who is None or who.session is None:
            return RedirectResponse("/login", status_code=303)
        form = await _form(request)
        if not _csrf_ok(who, form.get("csrf")):
            return page("error.html", request, who, 403, title="Form expired", message="Reload the page and try again.")
        server.sessions.end(request.cookies.get(SESSION_COOKIE))
        await run_in_threadpool(server.audit, action="logout", user=who.user.name, tenants=None,
                                request=request, resource_type="admin_session", details={})
        resp = RedirectResponse("/login", status_code=303)
        resp.delete_cookie(SESSION_COOKIE, path="/")
        return resp

    def principal_or_none(request: Request) -> Principal | None:
        try:
            return principal(request)
        except AuthError:
            return None

    @ui
    async def search_page(request: Request, who: Principal) -> Response:
        f = filter_of(request, ui_mode=True)
        cursor = cursor_of(request)
        limit = parse_limit(single(request, "limit"))
        by = single(request, "by") or "action"
        if by not in ("action", "outcome"):
            raise QueryParameterError("by", "must be action or outcome")
        tenants = effective_tenants(f, who.scope)

        def work() -> tuple[Any, Any, list[str], list[str]]:
            result = server.reader.page(f, who.scope, limit=limit, cursor=cursor)
            stats = server.reader.stats(f, who.scope, by=by)
            scope_key = tuple(sorted(who.scope)) if who.scope is not None else None
            actions = server.cached(("actions", scope_key), 60, lambda: server.reader.distinct("action", who.scope))
            known = (server.cached(("tenants",), 60, lambda: server.reader.distinct("tenant_id", None))
                     if who.scope is None else sorted(who.scope))
            server.audit(action="read", user=who.user.name, tenants=tenants, request=request,
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

    @ui
    async def event_page(request: Request, who: Principal) -> Response:
        event_id = request.path_params["id"]
        if len(event_id.encode()) > MAX_BYTES["id"] or "\x00" in event_id:
            raise QueryParameterError("id", f"is longer than {MAX_BYTES['id']} bytes")
        ev = await run_in_threadpool(server.reader.event, event_id, who.scope)
        if ev is None:
            return page("error.html", request, who, 404, title="Not found",
                        message="No event with this id (or not one you may read).")
        await run_in_threadpool(server.audit, action="read", user=who.user.name, tenants=(ev["tenant_id"],),
                                request=request, resource_id=ev["id"],
                                details={"view": "event", "event_id": ev["id"], "rows": 1})
        day = ev["created_at"].date()
        user_day = {"tenant": [ev["tenant_id"]], "user": [ev["user_id"]], "range": ["custom"],
                    "from": [day.isoformat()], "to": [(day + dt.timedelta(days=1)).isoformat()]}
        resource = {"tenant": [ev["tenant_id"]], "resource_type": [ev["resource_type"]],
                    "resource_id": [ev["resource_id"]], "range": ["all"]}
        return page("event.html", request, who, ev=ev, columns=[*COLUMNS, "date"], diff=_diff(ev["changes"]),
                    metadata=_pretty(ev["metadata"]), user_day=user_day, resource=resource)

    @ui
    async def integrity_page(request: Request, who: Principal) -> Response:
        heads = await run_in_threadpool(server.integrity.heads)
        return page("integrity.html", request, who, heads=heads)

    @ui
    async def integrity_verify(request: Request, who: Principal) -> Response:
        form = await _form(request)
        if not who.user.is_admin or not _csrf_ok(who, form.get("csrf")):
            return page("error.html", request, who, 403, title="Not allowed",
                        message="Only admins can start a verification (and the form must be fresh).")
        server.integrity.request()
        return RedirectResponse("/integrity", status_code=303)

    @ui
    async def account_page(request: Request, who: Principal) -> Response:
        return page("account.html", request, who, new_token="")

    @ui
    async def account_token(request: Request, who: Principal) -> Response:
        form = await _form(request)
        if not _csrf_ok(who, form.get("csrf")):
            return page("error.html", request, who, 403, title="Form expired", message="Reload the page and try again.")
        desc = str(form.get("description", ""))[:200]
        token = await run_in_threadpool(server.users.create_token, who.user.name, desc)
        await run_in_threadpool(server.audit, action="create", user=who.user.name, tenants=None, request=request,
                                resource_type="api_token", resource_id=token.split("_")[1],
                                details={"description": desc})
        return page("account.html", request, who, new_token=token)

    @ui
    async def users_page(request: Request, who: Principal) -> Response:
        if not who.user.is_admin:
            return page("error.html", request, who, 403, title="Not allowed", message="Only admins manage users.")
        return page("users.html", request, who, users=server.users.users())

    # -- API ------------------------------------------------------------------

    @api
    async def api_events(request: Request, who: Principal) -> Response:
        f = filter_of(request, ui_mode=False)
        cursor = cursor_of(request)
        limit = parse_limit(single(request, "limit"))
        fields_ = single(request, "fields") or "summary"
        if fields_ not in ("summary", "all"):
            raise QueryParameterError("fields", "must be summary or all")
        tenants = effective_tenants(f, who.scope)

        def work() -> Any:
            result = server.reader.page(f, who.scope, limit=limit, cursor=cursor,
                                        columns=LIST_COLUMNS if fields_ == "summary" else COLUMNS)
            server.audit(action="read", user=who.user.name, tenants=tenants, request=request,
                         details={"filter": f.describe(), "rows": len(result.rows), "view": "api"})
            return result

        result = await run_in_threadpool(work)
        events = [{k: json_value(v) for k, v in r.items()} for r in result.rows]
        return JSONResponse({"events": events, "next_cursor": result.next_cursor, "limit": limit})

    @api
    async def api_event(request: Request, who: Principal) -> Response:
        event_id = request.path_params["id"]
        if len(event_id.encode("utf-8", "replace")) > MAX_BYTES["id"] or "\x00" in event_id:
            raise QueryParameterError("id", f"is longer than {MAX_BYTES['id']} bytes")
        ev = await run_in_threadpool(server.reader.event, event_id, who.scope)
        if ev is None:
            return _json_error(404, "no event with this id (or not one you may read)")
        await run_in_threadpool(server.audit, action="read", user=who.user.name, tenants=(ev["tenant_id"],),
                                request=request, resource_id=ev["id"],
                                details={"view": "api-event", "event_id": ev["id"], "rows": 1})
        return JSONResponse({k: json_value(v) for k, v in ev.items()})

    @api
    async def api_stats(request: Request, who: Principal) -> Response:
        f = filter_of(request, ui_mode=False)
        by = single(request, "by") or "action"
        if by not in ("action", "outcome"):
            raise QueryParameterError("by", "must be action or outcome")
        tenants = effective_tenants(f, who.scope)

        def work() -> Any:
            stats = server.reader.stats(f, who.scope, by=by)
            server.audit(action="read", user=who.user.name, tenants=tenants, request=request,
                         details={"filter": f.describe(), "rows": stats.total, "view": "stats"})
            return stats

        stats = await run_in_threadpool(work)
        return JSONResponse({"bucket": stats.bucket, "by": stats.by, "buckets": [iso(b) for b in stats.buckets],
                             "series": stats.series, "total": stats.total})

    async def export(request: Request, who: Principal) -> Response:
        f = filter_of(request, ui_mode=request.url.path == "/export")
        fmt = single(request, "format") or ""
        if fmt not in FORMATS:
            raise QueryParameterError("format", f"must be one of {', '.join(FORMATS)}")
        eid = single(request, "eid") or secrets.token_urlsafe(12)
        if not _valid_eid(eid):
            raise QueryParameterError("eid", "8-64 characters of A-Z a-z 0-9 _ -")
        with server._exports_lock:
            if eid in server.exports:
                raise QueryParameterError("eid", "this export id is taken; choose another")
        tenants = effective_tenants(f, who.scope)
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        name = f"auditlake-{stamp}-{eid[:12]}.{EXTENSIONS[fmt]}"
        run = ExportRun(server.reader, f, who.scope, fmt, name, user=who.user.name,
                        signing_key=getattr(server.collector, "signing_key", None),
                        checkpoints_root=server.data.checkpoints if server.data.checkpoints.exists() else None)
        server.remember_export(eid, who.user.name, run)

        def body() -> Any:
            try:
                yield from run.chunks()
            finally:
                if run.done and run.manifest is not None:
                    folder = exports_dir(server.data)
                    folder.mkdir(parents=True, exist_ok=True)
                    (folder / f"{eid}.manifest.json").write_text(json.dumps(run.manifest, indent=1, sort_keys=True))
                server.audit(action="export", user=who.user.name, tenants=tenants, request=request,
                             resource_id=eid, outcome="success" if run.done else "failure",
                             reason="" if run.done else "the download ended early",
                             details={"filter": f.describe(), "rows": run.rows, "format": fmt,
                                      "complete": run.done,
                                      "sha256": run.manifest["sha256"] if run.manifest else ""})

        manifest_url = f"/api/v1/exports/{eid}/manifest"
        return StreamingResponse(body(), media_type=MEDIA_TYPES[fmt], headers={
            "Content-Disposition": f'attachment; filename="{name}"',
            "X-Auditlake-Export-Id": eid,
            "Link": f'<{manifest_url}>; rel="describedby"',
        })

    def export_entry(request: Request, who: Principal) -> tuple[str, Any] | None:
        eid = request.path_params["eid"]
        with server._exports_lock:
            entry = server.exports.get(eid)
        if entry is None or (entry[0] != who.user.name and not who.user.is_admin):
            return None
        return entry

    @api
    async def api_export_progress(request: Request, who: Principal) -> Response:
        entry = export_entry(request, who)
        if entry is None:
            return _json_error(404, "no export with this id (of yours)")
        run = entry[1]
        done = bool(run.done)
        return JSONResponse({"rows": run.rows, "total": run.total, "bytes": run.nbytes, "done": done,
                             "manifest": f"/api/v1/exports/{request.path_params['eid']}/manifest" if done else None})

    @api
    async def api_export_manifest(request: Request, who: Principal) -> Response:
        eid = request.path_params["eid"]
        entry = export_entry(request, who)
        manifest = entry[1].manifest if entry else None
        if manifest is None and _valid_eid(eid):
            path = exports_dir(server.data) / f"{eid}.manifest.json"
            if path.exists():
                doc = json.loads(path.read_text())
                if doc.get("exported_by") == who.user.name or who.user.is_admin:
                    manifest = doc
        if manifest is None:
            return _json_error(404, "no finished export with this id (of yours)")
        return JSONResponse(manifest, headers={
            "Content-Disposition": f'attachment; filename="{manifest.get("file", eid)}.manifest.json"'})

    @api
    async def api_integrity(request: Request, who: Principal) -> Response:
        return JSONResponse(server.integrity.status)

    async def openapi(request: Request) -> Response:
        return JSONResponse(document())

    async def healthz(request: Request) -> Response:
        return JSONResponse({"ok": True})

    routes = [
        Route("/", search_page),
        Route("/login", login_get, methods=["GET"]),
        Route("/login", login_post, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/events/{id}", event_page),
        Route("/export", ui(export)),
        Route("/integrity", integrity_page, methods=["GET"]),
        Route("/integrity/verify", integrity_verify, methods=["POST"]),
        Route("/account", account_page, methods=["GET"]),
        Route("/account/tokens", account_token, methods=["POST"]),
        Route("/users", users_page),
        Route("/healthz", healthz),
        Route("/api/v1/openapi.json", openapi),
        Route("/api/v1/events", api_events),
        Route("/api/v1/events/{id}", api_event),
        Route("/api/v1/stats", api_stats),
        Route("/api/v1/export", api(export)),
        Route("/api/v1/exports/{eid}", api_export_progress),
        Route("/api/v1/exports/{eid}/manifest", api_export_manifest),
        Route("/api/v1/integrity", api_integrity),
        Mount("/static", StaticFiles(directory=str(_HERE / "static")), name="static"),
    ]

    async def not_found(request: Request, exc: Exception) -> Response:
        if request.url.path.startswith("/api/"):
            return _json_error(404, "not found")
        return HTMLResponse("<!doctype html><title>Not found</title><p>Not found. <a href=\"/\">Search</a>", 404)

    async def not_allowed(request: Request, exc: Exception) -> Response:
        if request.url.path.startswith("/api/"):
            return _json_error(405, "method not allowed")
        return HTMLResponse("<!doctype html><title>Method not allowed</title><p>Method not allowed.", 405)

    return Starlette(routes=routes, exception_handlers={404: not_found, 405: not_allowed})


# -- small pieces --------------------------------------------------------------------


async def _form(request: Request) -> dict[str, str]:
    """An urlencoded form body (what our pages send), at most 64 KiB; the
    first value of each field.  Anything else reads as an empty form."""
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return {}
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > 64 * 1024:
            return {}
    pairs = urllib.parse.parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
    out: dict[str, str] = {}
    for k, v in pairs:
        out.setdefault(k, v)
    return out


def _safe_next(value: str) -> str:
    """A local path to go to after login (never another site)."""
    if not value.startswith("/") or value.startswith("//") or "\\" in value or len(value) > 4000:
        return "/"
    return value


def _csrf_ok(who: Principal, sent: Any) -> bool:
    return bool(who.session and isinstance(sent, str) and sent
                and hmac.compare_digest(sent.encode(), who.session.csrf.encode()))


def _set_cookie(request: Request, resp: Response, name: str, value: str, *, max_age: int | None) -> None:
    resp.set_cookie(name, value, max_age=max_age, path="/", httponly=True, samesite="strict",
                    secure=request.url.scheme == "https")


def _local(t: dt.datetime | None) -> str:
    """A datetime-local input's value (UTC)."""
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M") if t else ""


def _pretty(text: str) -> str:
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

