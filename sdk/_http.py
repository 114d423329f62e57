"""What both middlewares share: client address, route rules, outcome from status.

The client address is taken from ``Forwarded`` (RFC 7239) or
``X-Forwarded-For`` only when the directly connected peer is a trusted proxy;
the header is then read right to left, skipping trusted proxies, and the
first untrusted hop is the client.  Anyone can send these headers, so an
untrusted peer's claim is ignored.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

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


@dataclass(frozen=True, slots=True)
class RouteRule:
    """Record an event for requests matching ``method`` and ``path``.

    ``path`` is a pattern such as ``/patients/{id}``; ``resource_id`` names
    the placeholder holding the id (the only placeholder by default).
    ``method`` may be ``*``.
    """

    method: str
    path: str
    action: str
    resource_type: str
    resource_id: str | None = None
    _pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)
    _id_name: str | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = re.findall(r"{(\w+)}", self.path)
        if self.resource_id is not None and self.resource_id not in names:
            raise ValueError(f"resource_id: {self.resource_id!r} is not a placeholder of {self.path}")
        regex = ""
        for part in re.split(r"({\w+})", self.path):
            if part.startswith("{") and part.endswith("}"):
                regex += f"(?P<{part[1:-1]}>[^/]+)"
            else:
                regex += re.escape(part)
        object.__setattr__(self, "_pattern", re.compile(f"^{regex}/?$"))
        id_name = self.resource_id or (names[0] if len(names) == 1 else None)
        object.__setattr__(self, "_id_name", id_name)
        object.__setattr__(self, "method", self.method.upper())

    def match(self, method: str, path: str) -> str | None:
        """The resource id when this rule matches ("" without a placeholder), else None."""
        if self.method != "*" and self.method != method:
            return None
        found = self._pattern.match(path)
        if found is None:
            return None
        return found.group(self._id_name) if self._id_name else ""


def match_route(rules: tuple[RouteRule, ...], method: str, path: str) -> tuple[RouteRule, str] | None:
    """The first rule matching the request and the resource id it extracted."""
    for rule in rules:
        resource_id = rule.match(method, path)
        if resource_id is not None:
            return rule, resource_id
    return None


def outcome_for_status(status: int) -> str:
    """2xx success, 401/403 denied, anything else failure."""
    if 200 <= status < 300:
        return "success"
    if status in (401, 403):
        return "denied"
    return "failure"


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
