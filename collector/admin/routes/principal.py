"""Principal: who is asking.  Scripts send ``Authorization: Bearer`` with an
API token; browsers carry the session cookie set at login.

Every route that needs a user resolves it here (``authenticate``, through
``errors.api_endpoint``/``ui_endpoint`` or ``principal_or_none``), so this is
where a role is held to the endpoints it may call: a monitor's request is
refused (RoleDenied) unless the route's endpoint carries ``for_monitors``.
The deny is the default: an endpoint added later is closed to monitors until
someone marks it, never open because someone forgot a check.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from starlette.requests import Request

from auditlake.collector.admin.routes.context import admin_context
from auditlake.collector.admin.users import Session, User
from auditlake.collector.errors import AuthError

SESSION_COOKIE = "auditlake_session"
#: The attribute ``for_monitors`` sets on an endpoint (``functools.wraps`` carries it to a wrapper).
_MONITORS_MAY_CALL = "auditlake_monitors_may_call"

E = TypeVar("E", bound=Callable[..., Any])


class RoleDenied(AuthError):
    """The credential is good, but its role may not call this endpoint (403, not 401)."""

    def __init__(self, user: User) -> None:
        super().__init__(f"a {user.role} may not call this endpoint: a monitor's token reads only signed tree "
                         "heads and consistency proofs (/api/v1/checkpoints/..., /api/v1/proofs/consistency)")
        self.user = user


def for_monitors(endpoint: E) -> E:
    """Mark ``endpoint`` as one a monitor may call (the route's endpoint, or
    the handler it wraps).  Only tree heads and consistency proofs carry it."""
    setattr(endpoint, _MONITORS_MAY_CALL, True)
    return endpoint


def monitors_may_call(endpoint: Any) -> bool:
    """Whether ``endpoint`` (what Starlette routed the request to) is marked ``for_monitors``."""
    return getattr(endpoint, _MONITORS_MAY_CALL, False) is True


@dataclass
class Principal:
    """Who is asking: the user, and their session when it is a browser."""

    user: User
    session: Session | None

    @property
    def scope(self) -> frozenset[str] | None:
        """The tenants the user may read (None: every tenant)."""
        return self.user.scope


def authenticate(request: Request) -> Principal | None:
    """The principal of ``request``, or None when it carries no credentials
    (or a session that has ended).  A malformed or unknown API token raises
    AuthError; a monitor's credential, on a route not marked
    ``for_monitors``, raises RoleDenied."""
    admin = admin_context(request)
    auth = request.headers.get("authorization", "")
    if auth:
        if not auth.lower().startswith("bearer "):
            raise AuthError("use Authorization: Bearer <API token>")
        user = admin.users.check_token(auth[7:].strip())
        return _admitted(request, Principal(user, None))
    session = admin.sessions.get(request.cookies.get(SESSION_COOKIE))
    if session is None:
        return None
    current = admin.users.session_user(session)
    if current is None:  # removed, replaced or logged out since this session began
        admin.sessions.end(request.cookies.get(SESSION_COOKIE))
        return None
    return _admitted(request, Principal(current, session))


def _admitted(request: Request, who: Principal) -> Principal:
    """``who``, when their role may call the endpoint ``request`` was routed
    to (outside a route, or on an unmarked one, a monitor may call nothing)."""
    if who.user.is_monitor and not monitors_may_call(request.scope.get("endpoint")):
        raise RoleDenied(who.user)
    return who


def principal_or_none(request: Request) -> Principal | None:
    """Like ``authenticate``, with a bad API token read as no credentials."""
    try:
        return authenticate(request)
    except AuthError:
        return None
