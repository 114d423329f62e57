"""The Django middleware: the actor of each request.

    MIDDLEWARE = [
        ...,
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "auditlake.sdk.django.middleware.AuditMiddleware",   # after it: request.user exists
        ...,
    ]

Every event recorded while the request is handled (model changes, reads,
logins, ``record()`` calls in views) carries the request's client address
(``X-Forwarded-For`` / ``Forwarded`` believed only from
``AUDITLAKE["trusted_proxies"]``, as the SDK's ASGI and WSGI middleware
do), its ``User-Agent``, its request id (the ``X-Request-ID`` header, or
one made up) and the user: ``request.user`` is read when the first event
that needs it is recorded, never for a request that records nothing (it
costs Django a session and a user query).  A user who signs in during the
request is the actor of the events after it.  ``tenant_id`` comes from a
``tenant_id`` attribute of the user, or from ``AUDITLAKE["resolver"]``.

Sync and async (ASGI) stacks alike.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from time import time_ns
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponseBase

from auditlake.sdk._context import ACTOR, Actor, ActorFields, KnownRequestActor
from auditlake.sdk._event import new_request_id
from auditlake.sdk._http import TrustedProxies, principal_fields
from auditlake.sdk.django._auth import user_identity
from auditlake.sdk.django._registry import current_options, internal

__all__ = ["AuditMiddleware"]

log = logging.getLogger("auditlake.sdk")

GetResponse = Callable[[HttpRequest], Any]


class DjangoRequestActor(KnownRequestActor):
    """The actor of one Django request; the user is read from ``request.user`` on first need."""

    __slots__ = ("_reading", "_request", "_user_attribute")

    def __init__(self, base: ActorFields, user_id: str | None, tenant_id: str | None, *,
                 request: HttpRequest, ip: str, user_agent: str, request_id: str,
                 user_attribute: str) -> None:
        super().__init__(base, user_id, tenant_id, ip=ip, user_agent=user_agent, request_id=request_id)
        self._request = request
        self._user_attribute = user_attribute
        self._reading = False

    def framework_user(self) -> tuple[str | None, str | None] | None:
        """``request.user``, if authenticated (loading it runs Django's session
        and user queries: neither is captured, nor recorded as a read)."""
        if self._reading:  # loading the user records something: no actor for that
            return None
        user = getattr(self._request, "user", None)
        if user is None:
            return None
        self._reading = True
        try:
            with internal():
                found = user_identity(user, self._user_attribute)
        except Exception:  # a user that cannot be loaded is no user, never a 500
            log.debug("auditlake: could not read request.user", exc_info=True)
            return None
        finally:
            self._reading = False
        return None if found is None else (found[0], found[1])


class AuditMiddleware:
    """Sets the audit actor for each request (place it after AuthenticationMiddleware)."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: GetResponse) -> None:
        self.get_response = get_response
        options = current_options()
        self._proxies = TrustedProxies(options.trusted_proxies)
        self._request_id_key = "HTTP_" + options.request_id_header.upper().replace("-", "_")
        self._resolver = options.resolver
        self._user_attribute = options.user_id
        self._async = iscoroutinefunction(get_response)
        if self._async:
            markcoroutinefunction(self)

    def actor_for(self, request: HttpRequest) -> DjangoRequestActor:
        """The actor of ``request``."""
        meta = request.META
        peer = meta.get("REMOTE_ADDR", "") or ""
        ip = self._proxies.client_address(peer, meta.get("HTTP_FORWARDED"), meta.get("HTTP_X_FORWARDED_FOR")) \
            if self._proxies else peer
        user_id = tenant_id = None
        if self._resolver is not None:
            try:
                user_id, tenant_id = principal_fields(self._resolver(request))
            except Exception:  # a broken token must not turn into a 500 here
                log.warning("auditlake: the actor resolver failed", exc_info=True)
        base = ACTOR.get()
        if type(base) is not Actor:
            base = base.captured()
        return DjangoRequestActor(
            base, user_id, tenant_id, request=request, ip=ip,
            user_agent=meta.get("HTTP_USER_AGENT", ""),
            request_id=meta.get(self._request_id_key) or new_request_id(time_ns()),
            user_attribute=self._user_attribute,
        )

    def __call__(self, request: HttpRequest) -> HttpResponseBase | Awaitable[HttpResponseBase]:
        """Handle one request inside its actor scope."""
        if self._async:
            return self._acall(request)
        token = ACTOR.set(self.actor_for(request))
        try:
            response: HttpResponseBase = self.get_response(request)
            return response
        finally:
            ACTOR.reset(token)

    async def _acall(self, request: HttpRequest) -> HttpResponseBase:
        token = ACTOR.set(self.actor_for(request))
        try:
            response: HttpResponseBase = await self.get_response(request)
            return response
        finally:
            ACTOR.reset(token)
