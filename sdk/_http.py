"""What both middlewares share: client address, route rules, route events.

Route rules are matched against the raw path before the application runs
(so a request no rule can concern costs nothing more), and against the
route the framework matched (its template and path parameters, or an
endpoint marked with :func:`audit_route`) once the application has routed
it.  The user the framework authenticated is read with
:func:`framework_identity`.

The client address is taken from ``Forwarded`` (RFC 7239) or
``X-Forwarded-For`` only when the directly connected peer is a trusted proxy;
the header is then read right to left, skipping trusted proxies, and the
first untrusted hop is the client.  Anyone can send these headers, so an
untrusted peer's claim is ignored.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

log = logging.getLogger("auditlake.sdk")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_FORWARDED_FOR = re.compile(r'for=("[^"]*"|[^;,\s]+)', re.IGNORECASE)


class TrustedProxies:
    """A set of proxy addresses and networks whose forwarding headers we believe."""

    def __init__(self, proxies: Iterable[str] | str | None = ()) -> None:
        # A string is one network or a comma-separated list ("10.0.0.0/8" is
        # not iterated character by character); None is no proxy.
        items = [] if proxies is None else proxies.split(",") if isinstance(proxies, str) else list(proxies)
        networks = []
        for p in items:
            if not isinstance(p, str):
                raise ValueError(f"trusted_proxies: {p!r} is not an address or network (a string)")
            if p.strip():
                try:
                    networks.append(ipaddress.ip_network(p.strip(), strict=False))
                except ValueError as exc:
                    raise ValueError(f"trusted_proxies: {p.strip()!r} is not an address or network: {exc}") from None
        self._networks: tuple[Network, ...] = tuple(networks)
        self._cache: dict[str, bool] = {}

    def __bool__(self) -> bool:
        return bool(self._networks)

    def trusts(self, address: str) -> bool:
        """True when ``address`` is one of the trusted proxies."""
        known = self._cache.get(address)
        if known is not None:
            return known
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            trusted = False
        else:
            trusted = any(ip in network for network in self._networks)
        if len(self._cache) >= 4096:  # peers are few (proxies); clients many
            self._cache.clear()
        self._cache[address] = trusted
        return trusted

    def client_address(self, peer: str, forwarded: str | None, x_forwarded_for: str | None) -> str:
        """The client address for a request from ``peer`` carrying these headers."""
        if not self._networks or not self.trusts(peer):
            return peer
        if forwarded:
            hops = [_strip_forwarded(m) for m in _FORWARDED_FOR.findall(forwarded)]
        elif x_forwarded_for:
            hops = [h.strip() for h in x_forwarded_for.split(",") if h.strip()]
        else:
            return peer
        for hop in reversed(hops):
            if not self.trusts(hop):
                return hop if _is_address(hop) else peer
        return hops[0] if hops and _is_address(hops[0]) else peer


def _strip_forwarded(value: str) -> str:
    value = value.strip().strip('"')
    if value.startswith("["):  # "[2001:db8::1]:4711"
        return value[1 : value.find("]")] if "]" in value else value[1:]
    if value.count(":") == 1:  # "192.0.2.1:4711"
        return value.split(":", 1)[0]
    return value


def _is_address(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


# A placeholder in any framework's route template: Starlette/FastAPI
# "{name}" or "{name:converter}", Flask/Werkzeug "<name>" or "<converter:name>"
# (converters may take arguments: "<any(a, b):name>").
_PLACEHOLDER = re.compile(r"\{(\w+)(?::([^}]*))?\}|<(?:([^>]*):)?(\w+)>")
# What a converter's value looks like in a raw path; anything else one segment.
_CONVERTER_REGEX: dict[str, str] = {
    "path": ".+",
    "int": "[0-9]+",
    "float": r"[0-9]+(?:\.[0-9]+)?",
    "uuid": "[0-9a-fA-F-]+",
}


def _converter(match: re.Match[str]) -> str:
    converter = match.group(2) if match.group(1) else match.group(3)
    return (converter or "").split("(", 1)[0].strip()


def template_names(template: str) -> list[str]:
    """The placeholder names of a route template, in order."""
    return [m.group(1) or m.group(4) for m in _PLACEHOLDER.finditer(template)]


def template_shape(template: str) -> str:
    """A template with its placeholders unnamed (``/patients/{}``) and no
    trailing slash: two templates with one shape route the same paths."""
    shape = _PLACEHOLDER.sub("{}", template)
    return shape.rstrip("/") or "/"


def template_regex(template: str) -> re.Pattern[str]:
    """A regex matching the raw paths of a template (named groups; an
    optional trailing slash)."""
    regex, at = "", 0
    for m in _PLACEHOLDER.finditer(template):
        regex += re.escape(template[at : m.start()])
        regex += f"(?P<{m.group(1) or m.group(4)}>{_CONVERTER_REGEX.get(_converter(m), '[^/]+')})"
        at = m.end()
    regex += re.escape(template[at:].rstrip("/"))
    return re.compile(f"^{regex}/?$")


@dataclass(frozen=True, slots=True)
class RouteRule:
    """Record an event for requests matching ``method`` and ``path``.

    ``path`` is a route template, written as the framework writes it or
    not (``/patients/{id}``, ``/patients/{id:int}``, ``/patients/<int:id>``
    are one rule).  It matches a request whose matched route has the same
    template (placeholder names aside), or whose raw path it matches.
    ``resource_id`` names the placeholder holding the id (the only
    placeholder by default); its value comes from the framework's path
    parameters when the route is known.  ``method`` may be ``*``; ``path``
    ``*`` matches every route the framework matched.
    """

    method: str
    path: str
    action: str
    resource_type: str
    resource_id: str | None = None
    _pattern: re.Pattern[str] | None = field(init=False, repr=False, compare=False)
    _shape: str = field(init=False, repr=False, compare=False)
    _id_name: str | None = field(init=False, repr=False, compare=False)
    _id_index: int | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.path != "*" and not self.path.startswith("/"):
            raise ValueError(f"path: {self.path!r} is neither a route template starting with / nor *")
        names = template_names(self.path)
        if self.resource_id is not None and self.path != "*" and self.resource_id not in names:
            raise ValueError(f"resource_id: {self.resource_id!r} is not a placeholder of {self.path}")
        id_name = self.resource_id or (names[0] if len(names) == 1 else None)
        object.__setattr__(self, "method", self.method.upper())
        object.__setattr__(self, "_pattern", None if self.path == "*" else template_regex(self.path))
        object.__setattr__(self, "_shape", template_shape(self.path))
        object.__setattr__(self, "_id_name", id_name)
        object.__setattr__(self, "_id_index", names.index(id_name) if id_name in names else None)

    def match(self, method: str, path: str) -> str | None:
        """The resource id when this rule matches the raw ``path`` ("" without a
        placeholder), else None (always None for ``*``: that needs the route)."""
        if self.method != "*" and self.method != method:
            return None
        found = self._pattern.match(path) if self._pattern is not None else None
        if found is None:
            return None
        return found.group(self._id_name) if self._id_name else ""

    def id_parameter(self, template: str) -> str | None:
        """The path parameter of ``template`` (a route this rule matches)
        that holds the resource id."""
        names = template_names(template)
        if self.path == "*":
            if self.resource_id is not None:
                return self.resource_id if self.resource_id in names else None
            return names[0] if len(names) == 1 else None
        if self._id_index is None or self._id_index >= len(names):
            return None
        return names[self._id_index]

    def matches_route(self, template: str, methods: Iterable[str] | None) -> bool:
        """Whether this rule can match requests routed to ``template``
        answering ``methods`` (None: any) — the start-up check."""
        if self.method != "*" and methods is not None and self.method not in methods:
            return False
        if self.path == "*" or self._shape == template_shape(template):
            return True
        # A rule naming one concrete path of a templated route.
        return not template_names(self.path) and template_regex(template).match(self.path) is not None


def match_route(rules: tuple[RouteRule, ...], method: str, path: str) -> tuple[RouteRule, str] | None:
    """The first rule matching the raw request path and the resource id it extracted."""
    for rule in rules:
        resource_id = rule.match(method, path)
        if resource_id is not None:
            return rule, resource_id
    return None


#: The attribute :func:`audit_route` sets on an endpoint.
ROUTE_MARK = "__auditlake_route__"


class _Marks:
    """Whether any endpoint was marked by :func:`audit_route` (then the
    middlewares watch every request, as any may reach a marked endpoint)."""

    any = False


MARKS = _Marks()

Endpoint = Any


def audit_route(
    action: str, resource_type: str, *, resource_id: str | None = None
) -> Callable[[Endpoint], Endpoint]:
    """Mark an endpoint: each request it serves records one event (the
    middleware's route event), whatever its path.

    ``resource_id`` names the path parameter holding the id (the route's
    only parameter by default).  The endpoint is returned unchanged, so the
    decorator goes above or below the framework's route decorator::

        @app.get("/patients/{patient_id}")
        @audit_route("read", "patient")
        async def get_patient(patient_id: str) -> Patient: ...
    """
    rule = RouteRule("*", "*", action, resource_type, resource_id)

    def mark(endpoint: Endpoint) -> Endpoint:
        setattr(endpoint, ROUTE_MARK, rule)
        MARKS.any = True
        return endpoint

    return mark


Candidates = tuple[tuple[RouteRule, str | None], ...]


class RouteRules:
    """A middleware's rules, matched twice: on the raw path before the
    application runs (is the request worth watching?) and on the route the
    framework matched once it is known (which rule, which resource id)."""

    def __init__(self, rules: Iterable[RouteRule]) -> None:
        self.rules = tuple(rules)
        self._every_route = any(rule.path == "*" for rule in self.rules)
        self._by_template: dict[str, Candidates] = {}

    def before(self, method: str, path: str) -> tuple[RouteRule, str] | Literal[True] | None:
        """The rule matching the raw path and its resource id; else True when
        the request must be watched anyway (a ``*`` rule or a marked
        endpoint may apply once the route is known), else None."""
        rules = self.rules
        matched = match_route(rules, method, path) if rules else None
        if matched is not None:
            return matched
        return True if (self._every_route or MARKS.any) else None

    def resolve(
        self,
        method: str,
        template: str | None,
        candidates: Candidates,
        path_params: Mapping[str, Any] | None,
        endpoint: Endpoint,
        raw: tuple[RouteRule, str] | None,
    ) -> tuple[RouteRule, str] | None:
        """The rule that applies once the framework routed the request: the
        endpoint's mark, else a rule for the matched route's template (its
        ``candidates``, from :meth:`for_template`), else the rule that
        matched the raw path."""
        if template is not None:
            if MARKS.any and endpoint is not None:
                marked = getattr(endpoint, ROUTE_MARK, None)
                if isinstance(marked, RouteRule):
                    return marked, _parameter(path_params, marked.id_parameter(template))
            for rule, parameter in candidates:
                if rule.method == "*" or rule.method == method:
                    return rule, _parameter(path_params, parameter)
        return raw

    def for_template(self, template: str) -> Candidates:
        """The rules that may apply to requests routed to ``template``, each
        with the path parameter holding its resource id."""
        found = self._by_template.get(template)
        if found is None:
            shape = template_shape(template)
            found = tuple(
                (rule, rule.id_parameter(template))
                for rule in self.rules
                if rule.path == "*" or rule._shape == shape
            )
            if len(self._by_template) >= 1024:  # templates with a mount's values in them
                self._by_template.clear()
            self._by_template[template] = found
        return found

    def unmatched(self, routes: Iterable[tuple[str, Iterable[str] | None]]) -> list[RouteRule]:
        """The rules that match none of ``routes`` ((template, methods) pairs)."""
        routes = list(routes)
        return [
            rule for rule in self.rules
            if not any(rule.matches_route(template, methods) for template, methods in routes)
        ]


def _parameter(path_params: Mapping[str, Any] | None, name: str | None) -> str:
    if name is None or not path_params:
        return ""
    value = path_params.get(name)
    return "" if value is None else value if type(value) is str else str(value)


def outcome_for_status(status: int) -> str:
    """2xx and 3xx success, 401/403 denied, anything else failure.

    A redirect or a 304 is the application doing what was asked (the
    redirects a router issues for a missing trailing slash record nothing:
    see the middlewares)."""
    if 200 <= status < 400:
        return "success"
    if status in (401, 403):
        return "denied"
    return "failure"


def route_outcome(status: int, error: str | None) -> tuple[str, str, int]:
    """(outcome, reason, status the client received) of a route event.

    ``error`` is the type name of an exception the application raised.  One
    raised before any response reached the client gets a 500 from whatever
    is outside (Starlette's ServerErrorMiddleware, Flask, the server), so
    the event says 500 whichever way the middleware is installed.
    """
    if error is not None:
        return "failure", error, status or 500
    if not status:
        return "failure", "no response", 0
    outcome = outcome_for_status(status)
    return outcome, "" if outcome == "success" else f"HTTP {status}", status


def framework_identity(user: object) -> tuple[str | None, str | None] | None:
    """(user_id, tenant_id) of a framework's authenticated user object, or
    None when it is absent or anonymous.

    Starlette's ``scope["user"]`` (``BaseUser``: ``identity``, else
    ``display_name``), Flask-Login's ``current_user`` (``get_id()``), or
    any object with ``is_authenticated`` and ``user_id``; a ``tenant_id``
    attribute gives the tenant.
    """
    try:
        if user is None or not getattr(user, "is_authenticated", False):
            return None
        user_id = getattr(user, "user_id", None)
        if user_id is None and callable(getattr(user, "get_id", None)):
            user_id = user.get_id()  # type: ignore[attr-defined]
        for name in ("identity", "display_name"):  # Starlette's BaseUser
            if user_id is not None:
                break
            try:
                user_id = getattr(user, name, None)
            except NotImplementedError:  # SimpleUser has no identity
                user_id = None
        tenant_id = getattr(user, "tenant_id", None)
    except Exception:  # a user object that cannot answer is no user, never a 500
        log.debug("auditlake: could not read the framework's user", exc_info=True)
        return None
    if user_id is None:
        return None
    return str(user_id), None if tenant_id is None else str(tenant_id)


def principal_fields(principal: Any) -> tuple[str | None, str | None]:
    """(user_id, tenant_id) from a resolver's answer: a mapping, an object or None."""
    if principal is None:
        return None, None
    if type(principal) is dict or isinstance(principal, Mapping):
        user, tenant = principal.get("user_id"), principal.get("tenant_id")
    else:
        user, tenant = getattr(principal, "user_id", None), getattr(principal, "tenant_id", None)
    if user is not None and type(user) is not str:
        user = str(user)
    if tenant is not None and type(tenant) is not str:
        tenant = str(tenant)
    return user, tenant
