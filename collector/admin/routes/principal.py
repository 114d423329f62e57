"""Principal: who is asking.  Scripts send ``Authorization: Bearer`` with an
API token; browsers carry the session cookie set at login."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from auditlake.collector.admin.routes.context import admin_context
from auditlake.collector.admin.users import Session, User
from auditlake.collector.errors import AuthError

SESSION_COOKIE = "auditlake_session"


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
    AuthError."""
    admin = admin_context(request)
    auth = request.headers.get("authorization", "")
    if auth:
        if not auth.lower().startswith("bearer "):
            raise AuthError("use Authorization: Bearer <API token>")
        user = admin.users.check_token(auth[7:].strip())
        return Principal(user, None)
    session = admin.sessions.get(request.cookies.get(SESSION_COOKIE))
    if session is None:
        return None
    current = admin.users.session_user(session)
    if current is None:  # removed, replaced or logged out since this session began
        admin.sessions.end(request.cookies.get(SESSION_COOKIE))
        return None
    return Principal(current, session)


def principal_or_none(request: Request) -> Principal | None:
    """Like ``authenticate``, with a bad API token read as no credentials."""
    try:
        return authenticate(request)
    except AuthError:
        return None
