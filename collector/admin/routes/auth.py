"""Auth routes: signing in and out, and the signed-in user's API tokens.

- ``GET /login``: the login form (sets the form's CSRF cookie)
- ``POST /login``: check the password (throttled), start a session (valid at
  every collector of the lake: ``admin/users.py``), go on to ``next``; a
  monitor gets no session (its API token is all it needs, and a session
  would only be refused on every page)
- ``POST /logout``: end the session (at every collector of the lake)
- ``GET /account``: the account page
- ``POST /account/tokens``: create an API token, shown once
"""

from __future__ import annotations

import secrets

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from auditlake.collector.admin.routes.audit import record
from auditlake.collector.admin.routes.context import admin_context
from auditlake.collector.admin.routes.csrf import LOGIN_CSRF_COOKIE, login_token_ok, read_form, session_token_ok
from auditlake.collector.admin.routes.errors import ui_endpoint
from auditlake.collector.admin.routes.pages import page
from auditlake.collector.admin.routes.principal import SESSION_COOKIE, Principal, principal_or_none
from auditlake.collector.admin.users import LoginBusy
from auditlake.collector.schema import MAX_BYTES


async def login_get(request: Request) -> Response:
    """The login form."""
    token = secrets.token_urlsafe(24)
    nxt = _safe_next(request.query_params.get("next", "/"))
    resp = page("login.html", request, None, next=nxt, login_csrf=token, error="")
    _set_cookie(request, resp, LOGIN_CSRF_COOKIE, token, max_age=3600)
    return resp


async def login_post(request: Request) -> Response:
    """Check a user name and password; on success start a session."""
    admin = admin_context(request)
    form = await read_form(request)
    name = str(form.get("username", ""))[:MAX_BYTES["user_id"]]
    password = str(form.get("password", ""))[:1024]
    nxt = _safe_next(str(form.get("next", "/")))
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not login_token_ok(str(form.get("csrf", "")), cookie):
        return page("error.html", request, None, 403, title="Form expired",
                    message="The login form expired or came from another site. Reload the page and try again.")
    ip = request.client.host if request.client else "?"
    keys = (f"user:{name}", f"ip:{ip}")
    # The attempt is counted before the password is checked, so simultaneous
    # guesses cannot all pass the throttle before the first failure counts.
    wait, stamp = admin.throttle.reserve(*keys)
    if wait > 0:
        return _too_many(request, nxt, cookie, wait, "Too many failed attempts.")
    try:
        user = await run_in_threadpool(admin.users.check_password, name, password)
    except LoginBusy:
        admin.throttle.succeeded("", stamp=stamp, reserved=keys)  # not the user's failure
        return _too_many(request, nxt, cookie, 1.0, "The server is busy checking other logins.")
    if user is None:
        await record(request, action="login_failed", user=name, tenants=None, outcome="failure",
                     reason="wrong user name or password", resource_type="admin_session", details={})
        return page("login.html", request, None, 401, next=nxt, login_csrf=cookie,
                    error="Wrong user name or password.")
    admin.throttle.succeeded(f"user:{name}", stamp=stamp, reserved=keys)
    if user.is_monitor:
        await record(request, action="login_failed", user=user.name, tenants=None, outcome="denied",
                     reason="a monitor has no pages", resource_type="admin_session", details={"role": user.role})
        return page("login.html", request, None, 403, next=nxt, login_csrf=cookie,
                    error="A monitor account cannot sign in: its API token reads signed tree heads and "
                    "consistency proofs (auditlake monitor --url), and nothing else.")
    value, _ = await run_in_threadpool(admin.sessions.create, user.name, user.generation)
    await record(request, action="login", user=user.name, tenants=None,
                 resource_type="admin_session", details={"role": user.role})
    redirect = RedirectResponse(nxt, status_code=303)
    _set_cookie(request, redirect, SESSION_COOKIE, value, max_age=None)
    redirect.delete_cookie(LOGIN_CSRF_COOKIE, path="/")
    return redirect


async def logout(request: Request) -> Response:
    """End the browser's session."""
    who = await run_in_threadpool(principal_or_none, request)
    if who is None or who.session is None:
        return RedirectResponse("/login", status_code=303)
    form = await read_form(request)
    if not session_token_ok(who, form.get("csrf")):
        return page("error.html", request, who, 403, title="Form expired", message="Reload the page and try again.")
    # At every collector of the lake: the session's record is deleted.
    await run_in_threadpool(admin_context(request).sessions.end, request.cookies.get(SESSION_COOKIE))
    await record(request, action="logout", user=who.user.name, tenants=None,
                 resource_type="admin_session", details={})
    resp = RedirectResponse("/login", status_code=303)
    resp.delete_cookie(SESSION_COOKIE, path="/")
    return resp


@ui_endpoint
async def account_page(request: Request, who: Principal) -> Response:
    """The signed-in user's account page."""
    return page("account.html", request, who, new_token="")


@ui_endpoint
async def account_token(request: Request, who: Principal) -> Response:
    """Create an API token for the signed-in user and show it once."""
    form = await read_form(request)
    if not session_token_ok(who, form.get("csrf")):
        return page("error.html", request, who, 403, title="Form expired", message="Reload the page and try again.")
    desc = str(form.get("description", ""))[:200]
    token = await run_in_threadpool(admin_context(request).users.create_token, who.user.name, desc)
    await record(request, action="create", user=who.user.name, tenants=None, resource_type="api_token",
                 resource_id=token.split("_")[1], details={"description": desc})
    return page("account.html", request, who, new_token=token)


def _too_many(request: Request, nxt: str, cookie: str, wait: float, why: str) -> Response:
    resp = page("login.html", request, None, 429, next=nxt, login_csrf=cookie,
                error=f"{why} Try again in {int(wait) + 1} seconds.")
    resp.headers["Retry-After"] = str(int(wait) + 1)
    return resp


def _safe_next(value: str) -> str:
    """A local path to go to after login (never another site)."""
    if not value.startswith("/") or value.startswith("//") or "\\" in value or len(value) > 4000:
        return "/"
    return value


def _set_cookie(request: Request, resp: Response, name: str, value: str, *, max_age: int | None) -> None:
    # Secure whenever the browser came over HTTPS (uvicorn believes the local
    # TLS terminator's X-Forwarded-Proto).
    resp.set_cookie(name, value, max_age=max_age, path="/", httponly=True, samesite="strict",
                    secure=request.url.scheme == "https")


ROUTES: list[BaseRoute] = [
    Route("/login", login_get, methods=["GET"]),
    Route("/login", login_post, methods=["POST"]),
    Route("/logout", logout, methods=["POST"]),
    Route("/account", account_page, methods=["GET"]),
    Route("/account/tokens", account_token, methods=["POST"]),
]
