"""Stream settings: the ``[[streams]]`` tables of ``auditlake.toml``, each
one destination, validated at start (a bad value is a ConfigError naming
the stream and the field, and ``auditlake serve`` refuses to start).

Credentials are never in the file: ``secret_env`` names an environment
variable, ``secret_file`` a file (first line); the value is held in a
:class:`Secret`, whose ``repr`` and ``str`` never show it, so no log line,
exception or status file can carry it.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from auditlake.collector.errors import ConfigError
from auditlake.collector.streams.encode import FORMATS

#: Destination types and the formats each sends.
TYPES: dict[str, tuple[str, ...]] = {"webhook": ("json", "ocsf"), "splunk": ("hec",), "syslog": ("syslog",)}
#: Characters a stream name may use: it names the stream's cursor file.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
#: The HEC endpoint appended to a Splunk ``url`` that names no path.
HEC_PATH = "/services/collector/event"


class Secret:
    """A credential: ``reveal()`` gives it to the one place that sends it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The credential itself (for a header or an HMAC key, never a log)."""
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


@dataclass(frozen=True)
class EventFilter:
    """Which stored events a stream forwards: each non-empty list must
    contain the event's value (an empty list lets every value through)."""

    tenants: tuple[str, ...] = ()
    actions: tuple[str, ...] = ()
    outcomes: tuple[str, ...] = ()

    @property
    def everything(self) -> bool:
        """True when no list restricts anything."""
        return not (self.tenants or self.actions or self.outcomes)


@dataclass(frozen=True)
class StreamSettings:
    """One ``[[streams]]`` table."""

    name: str
    #: ``webhook``, ``splunk`` or ``syslog``.
    type: str
    #: webhook / splunk: ``https://host[:port]/path`` (http:// only to loopback).
    url: str = ""
    #: syslog: ``host:port`` of a TCP listener.
    host: str = ""
    #: webhook: ``json`` or ``ocsf``; set by the type otherwise.
    format: str = ""
    filter: EventFilter = field(default_factory=EventFilter)
    #: The HMAC key (webhook, required) or HEC token (splunk, required).
    secret: Secret = field(default_factory=lambda: Secret(""), repr=False, compare=False)
    #: syslog: wrap the TCP connection in TLS (RFC 5425 transport, RFC 6587 framing).
    tls: bool = False
    #: A CA bundle to verify the destination's certificate (default: the system's).
    ca_file: str = ""
    #: Events per request at most.
    batch_events: int = 5000
    timeout_s: float = 10.0
    #: First retry delay; doubles per failure up to ``retry_max_s``.
    retry_initial_s: float = 0.5
    retry_max_s: float = 30.0
    #: Splunk: ``sourcetype`` and ``index`` of each event ("" leaves the index to the token's default).
    sourcetype: str = "auditlake:event"
    index: str = ""
    #: Seconds a hole in a writer's seq numbers may stay before the stream
    #: steps over it (history expired, or moved to the cold tier) — a hole of
    #: a seal being published closes within milliseconds.
    gap_grace_s: float = 60.0

    def __post_init__(self) -> None:
        where = f"[[streams]] {self.name!r}"
        if not NAME.fullmatch(self.name):
            raise ConfigError(f"{where}: name must match {NAME.pattern} (it names the cursor file)")
        if self.type not in TYPES:
            raise ConfigError(f"{where}: type must be one of {', '.join(TYPES)}")
        if self.format not in TYPES[self.type] or self.format not in FORMATS:
            raise ConfigError(f"{where}: format must be one of {', '.join(TYPES[self.type])}")
        if self.type == "syslog":
            host, _, port = self.host.rpartition(":")
            if not host or not port.isdigit():
                raise ConfigError(f"{where}: host must be HOST:PORT")
        else:
            parsed = urllib.parse.urlsplit(self.url)
            if parsed.scheme not in ("https", "http") or not parsed.hostname:
                raise ConfigError(f"{where}: url must be https://HOST[:PORT]/PATH")
            if parsed.username or parsed.password:
                raise ConfigError(f"{where}: url must not carry credentials: use secret_env or secret_file")
            if not self.secret:
                what = "HMAC key" if self.type == "webhook" else "HEC token"
                raise ConfigError(f"{where}: the {what} is required: secret_env = \"VAR\" or secret_file = \"PATH\"")
        if self.batch_events <= 0 or self.timeout_s <= 0:
            raise ConfigError(f"{where}: batch_events and timeout_s must be positive")
        if not 0 < self.retry_initial_s <= self.retry_max_s:
            raise ConfigError(f"{where}: need 0 < retry_initial_s <= retry_max_s")
        if self.gap_grace_s < 0:
            raise ConfigError(f"{where}: gap_grace_s must be >= 0")

    @property
    def endpoint(self) -> str:
        """Where events go, without credentials (for logs and the status)."""
        if self.type == "syslog":
            return ("syslog+tls://" if self.tls else "syslog://") + self.host
        if self.type == "splunk" and urllib.parse.urlsplit(self.url).path in ("", "/"):
            return self.url.rstrip("/") + HEC_PATH
        return self.url


_KEYS = {"name", "type", "url", "host", "format", "filter", "secret_env", "secret_file", "tls", "ca_file",
         "batch_events", "timeout_s", "retry_initial_s", "retry_max_s", "sourcetype", "index", "gap_grace_s"}
_FILTER_KEYS = {"tenants", "actions", "outcomes"}


def _secret(where: str, table: dict[str, Any], env: dict[str, str]) -> Secret:
    """The credential a table names (by environment variable or file)."""
    if "secret_env" in table and "secret_file" in table:
        raise ConfigError(f"{where}: give secret_env or secret_file, not both")
    if "secret_env" in table:
        name = str(table["secret_env"])
        if name not in env or not env[name]:
            raise ConfigError(f"{where}: environment variable {name} (secret_env) is not set")
        return Secret(env[name])
    if "secret_file" in table:
        path = Path(str(table["secret_file"]))
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read secret_file {path}: {exc.strerror}") from None
        value = lines[0].strip() if lines else ""
        if not value:
            raise ConfigError(f"{where}: secret_file {path} is empty")
        return Secret(value)
    return Secret("")


def _strings(where: str, name: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: filter.{name} must be a list of strings")
    return tuple(value)


def load_streams(toml: dict[str, Any], env: dict[str, str] | None = None) -> list[StreamSettings]:
    """Every ``[[streams]]`` table of the configuration, validated
    (``env``: where ``secret_env`` is looked up, default ``os.environ``)."""
    env = dict(os.environ) if env is None else env
    tables = toml.get("streams", [])
    if not isinstance(tables, list):
        raise ConfigError("streams must be an array of tables: [[streams]]")
    out: list[StreamSettings] = []
    for i, table in enumerate(tables):
        if not isinstance(table, dict):
            raise ConfigError(f"[[streams]] #{i + 1} must be a table")
        where = f"[[streams]] {table.get('name', f'#{i + 1}')!r}"
        unknown = set(table) - _KEYS
        if unknown:
            raise ConfigError(f"{where}: unknown setting(s) {', '.join(sorted(unknown))}")
        raw_filter = table.get("filter", {})
        if not isinstance(raw_filter, dict) or set(raw_filter) - _FILTER_KEYS:
            raise ConfigError(f"{where}: filter takes tenants, actions and outcomes (lists)")
        kind = str(table.get("type", ""))
        default_format = TYPES[kind][0] if kind in TYPES else ""
        try:
            out.append(StreamSettings(
                name=str(table.get("name", "")),
                type=kind,
                url=str(table.get("url", "")),
                host=str(table.get("host", "")),
                format=str(table.get("format", default_format)),
                filter=EventFilter(**{k: _strings(where, k, v) for k, v in raw_filter.items()}),
                secret=_secret(where, table, env),
                tls=bool(table.get("tls", False)),
                ca_file=str(table.get("ca_file", "")),
                batch_events=int(table.get("batch_events", 5000)),
                timeout_s=float(table.get("timeout_s", 10.0)),
                retry_initial_s=float(table.get("retry_initial_s", 0.5)),
                retry_max_s=float(table.get("retry_max_s", 30.0)),
                sourcetype=str(table.get("sourcetype", "auditlake:event")),
                index=str(table.get("index", "")),
                gap_grace_s=float(table.get("gap_grace_s", 60.0)),
            ))
        except (TypeError, ValueError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"{where}: {exc}") from None
    names = [s.name for s in out]
    if len(set(names)) != len(names):
        raise ConfigError("[[streams]]: each stream needs its own name")
    return out
