"""Django's authentication signals as the SDK's compliance events.

    user_logged_in     ->  login(user id, method=<authentication backend>)
    user_logged_out    ->  logout(user id)          (nothing for an anonymous logout)
    user_login_failed  ->  login_failed(the username tried, reason="invalid credentials")

They are recorded at once (a sign-in happened whatever the transaction
does), inside the request's actor scope when the middleware is installed,
so they carry the client address, user agent and request id.  The user id
is the attribute ``AUDITLAKE["user_id"]`` names (``pk`` by default), the
same one the middleware gives every other event of the user.
"""

from __future__ import annotations

import logging
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed

from auditlake.sdk._compliance import login, login_failed, logout
from auditlake.sdk._exceptions import NotConfiguredError
from auditlake.sdk.django._settings import Options

log = logging.getLogger("auditlake.sdk")

_USER_ID = ["pk"]  # AUDITLAKE["user_id"], set by connect()


def user_identity(user: Any, attribute: str) -> tuple[str, str | None] | None:
    """(user_id, tenant_id) of an authenticated Django user, None for anyone else."""
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    value = user.get_username() if attribute == "username" else getattr(user, attribute, None)
    if value is None:
        return None
    tenant = getattr(user, "tenant_id", None)
    return str(value), None if tenant is None else str(tenant)


_warned = [False]


def _guarded(what: str, call: Any, *args: Any, **kwargs: Any) -> None:
    try:
        call(*args, **kwargs)
    except NotConfiguredError:
        if not _warned[0]:  # once: every sign-in would repeat it
            _warned[0] = True
            log.warning("auditlake: %s not recorded: the SDK is not configured", what)
    except Exception:
        log.exception("auditlake: could not record %s", what)


def on_login(sender: Any, request: Any = None, user: Any = None, **kwargs: Any) -> None:
    """``user_logged_in``."""
    identity = user_identity(user, _USER_ID[0])
    if identity is not None:
        backend = getattr(user, "backend", "") or ""
        _guarded("a login", login, identity[0], tenant_id=identity[1], method=backend.rsplit(".", 1)[-1])


def on_logout(sender: Any, request: Any = None, user: Any = None, **kwargs: Any) -> None:
    """``user_logged_out``."""
    identity = user_identity(user, _USER_ID[0])
    if identity is not None:
        _guarded("a logout", logout, identity[0], tenant_id=identity[1])


def on_login_failed(sender: Any, credentials: Any = None, request: Any = None, **kwargs: Any) -> None:
    """``user_login_failed``: the name tried (Django has already hidden the password)."""
    credentials = credentials or {}
    field = get_user_model().USERNAME_FIELD
    username = credentials.get(field) or credentials.get("username") or ""
    _guarded("a failed login", login_failed, str(username), reason="invalid credentials")


def connect(options: Options) -> None:
    """Connect the three receivers, or disconnect them when ``auth_signals`` is off."""
    _USER_ID[0] = options.user_id
    for signal, receiver in ((user_logged_in, on_login), (user_logged_out, on_logout),
                             (user_login_failed, on_login_failed)):
        if options.auth_signals:
            signal.connect(receiver, dispatch_uid="auditlake")
        else:
            signal.disconnect(dispatch_uid="auditlake")
