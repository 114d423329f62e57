"""CSRF: every state-changing form our pages post carries a token.  The
login form's token is also in a cookie (double submit: there is no session
yet); every later form carries the session's token.  ``read_form`` reads
those forms."""

from __future__ import annotations

import hmac
import urllib.parse
from typing import Any

from starlette.requests import Request

from auditlake.collector.admin.routes.principal import Principal

LOGIN_CSRF_COOKIE = "auditlake_login_csrf"
#: Larger form bodies read as empty forms.
MAX_FORM_BYTES = 64 * 1024


async def read_form(request: Request) -> dict[str, str]:
    """An urlencoded form body (what our pages send), at most 64 KiB; the
    first value of each field.  Anything else reads as an empty form."""
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return {}
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return {}
    pairs = urllib.parse.parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
    out: dict[str, str] = {}
    for k, v in pairs:
        out.setdefault(k, v)
    return out


def login_token_ok(sent: str, cookie: str) -> bool:
    """Whether the login form's token matches its cookie."""
    # Bytes: compare_digest refuses non-ASCII str, which a forged form may hold.
    return bool(sent and cookie and hmac.compare_digest(sent.encode(), cookie.encode()))


def session_token_ok(who: Principal, sent: Any) -> bool:
    """Whether a form's token is the token of ``who``'s session."""
    return bool(who.session and isinstance(sent, str) and sent
                and hmac.compare_digest(sent.encode(), who.session.csrf.encode()))
