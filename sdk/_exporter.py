"""Sending one batch to the collector, and what its answer means.

gRPC statuses are mapped here, once, to :class:`ExportResult`:
OK -> ``ok``; UNAUTHENTICATED, PERMISSION_DENIED, INVALID_ARGUMENT ->
``rejected`` (never retried, never spooled); every other status -> ``retry``,
with the collector's google.rpc.RetryInfo delay when it sent one.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from auditlake.v1 import audit_pb2, audit_pb2_grpc

_REJECTED = frozenset(
    {
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.INVALID_ARGUMENT,
    }
)


class ExportStatus(enum.Enum):
    """How a batch fared."""

    OK = "ok"
    RETRY = "retry"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class ExportResult:
    """The outcome of one export call."""

    status: ExportStatus
    message: str = ""
    code: str = ""  # the gRPC status name, e.g. INVALID_ARGUMENT
    retry_after: float | None = None
    accepted: int = 0
    duplicate: bool = False
    #: The collector stored the batch's valid events and refused the rest
    #: (``accepted`` of them stored; trailer ``auditlake-accepted``).
    partial: bool = False


class Exporter(Protocol):
    """Sends a columnar batch somewhere; must be safe to call from one thread."""

    def export(self, request: audit_pb2.ExportRequest, timeout: float) -> ExportResult:
        """Send ``request``; never raise for a delivery problem, return a result."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


_ROUND_ROBIN = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})

#: The collector's port when an endpoint names none (gRPC's own default, 443, never is it).
DEFAULT_PORT = 4317
_SCHEMES = {"https://": True, "grpcs://": True, "http://": False, "grpc://": False}


def _with_port(address: str, endpoint: str) -> str:
    """``host:port`` of one address, the port added when missing."""
    host, port = address, ""
    if address.startswith("["):  # [v6]:port
        close = address.find("]")
        if close < 0:
            raise ValueError(f"endpoint {endpoint!r}: unclosed '[' in {address!r}")
        host, port = address[: close + 1], address[close + 2 :] if address[close + 1 : close + 2] == ":" else ""
    elif address.count(":") == 1:
        host, port = address.split(":")
    elif ":" in address:  # a bare IPv6 address
        host = f"[{address}]"
    if not host or any(c in host for c in " /\\?#@") or host.strip("[]") == "":
        raise ValueError(f"endpoint {endpoint!r}: {address!r} is not a host name or address")
    if port and not (port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"endpoint {endpoint!r}: port {port!r} is not a number from 1 to 65535")
    return f"{host}:{port or DEFAULT_PORT}"


def parse_endpoint(endpoint: str) -> tuple[str, bool]:
    """(gRPC target, TLS) of a configured endpoint: ``host[:port]``,
    ``https://host[:port]`` (TLS), or a gRPC target naming several
    collectors (``ipv4:a:4317,b:4317``, ``ipv6:...``, ``dns:///name:4317``,
    ``unix:/path``).  A missing port is 4317; anything else that is not an
    address is a ValueError naming it."""
    text = endpoint.strip()
    tls = False
    for scheme, secure in _SCHEMES.items():
        if text.startswith(scheme):
            text, tls = text[len(scheme) :], secure
            break
    text = text.rstrip("/")
    if not text:
        raise ValueError(f"endpoint {endpoint!r}: names no collector")
    if text.startswith(("unix:", "unix-abstract:")):
        return text, tls
    if text.startswith(("ipv4:", "ipv6:")):
        kind, _, addresses = text.partition(":")
        parts = [a.strip() for a in addresses.split(",")]
        if not all(parts):
            raise ValueError(f"endpoint {endpoint!r}: an empty address in the list")
        return f"{kind}:" + ",".join(_with_port(a, endpoint) for a in parts), tls
    if text.startswith("dns:"):
        prefix, rest = "dns:", text[len("dns:") :]
        if rest.startswith("//"):  # dns://[authority]/host[:port]
            authority, _, rest = rest[2:].partition("/")
            prefix = f"dns://{authority}/"
        return prefix + _with_port(rest, endpoint), tls
    if "://" in text or "," in text:
        raise ValueError(f"endpoint {endpoint!r}: not host:port, https://host:port or a gRPC target "
                         "(ipv4:a:4317,b:4317 or dns:///name:4317)")
    return _with_port(text, endpoint), tls


class GrpcExporter:
    """Exports to ``AuditService.Export`` with a Bearer API key."""

    def __init__(self, endpoint: str, api_key: str = "", *, tls: bool = False) -> None:
        self.endpoint, secure = parse_endpoint(endpoint)
        self._tls = tls or secure
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {api_key}"),) if api_key else ()
        )
        self._channel: grpc.Channel | None = None
        self._stub: Any = None

    def _connect(self) -> Any:
        # The channel is made on first use, on the export thread, so a process
        # that configures and then forks has no gRPC state to inherit.
        # Short reconnect backoff: the SDK's own retry loop paces attempts,
        # and a collector that is back must be reached within a second or two.
        options = [
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ("grpc.enable_retries", 0),
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.min_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2000),
            # Several collectors (``ipv4:a:4317,b:4317``, or a DNS name with
            # several addresses): every call goes to the next ready one, and
            # one that is down is skipped until it is back.  gRPC's own
            # balancer; with one address it changes nothing.
            ("grpc.service_config", _ROUND_ROBIN),
        ]
        if self._tls:
            self._channel = grpc.secure_channel(
                self.endpoint, grpc.ssl_channel_credentials(), options=options
            )
        else:
            self._channel = grpc.insecure_channel(self.endpoint, options=options)
        self._stub = audit_pb2_grpc.AuditServiceStub(self._channel)  # type: ignore[no-untyped-call]
        return self._stub

    def export(self, request: audit_pb2.ExportRequest, timeout: float) -> ExportResult:
        """Send one batch and map the answer."""
        stub = self._stub or self._connect()
        try:
            response = stub.Export(request, timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as error:
            return result_from_error(error)
        return ExportResult(
            ExportStatus.OK, accepted=int(response.accepted), duplicate=bool(response.duplicate)
        )

    def close(self) -> None:
        """Close the channel (a new one is made if export is called again)."""
        channel, self._channel, self._stub = self._channel, None, None
        if channel is not None:
            channel.close()


def result_from_error(error: grpc.RpcError) -> ExportResult:
    """Map a failed call to an ExportResult (the one place statuses are read)."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else str(error)
    message = f"{code.name}: {details}" if code is not None else str(details)
    name = code.name if code is not None else ""
    trailing = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
    if code in _REJECTED:
        for key, value in trailing or ():
            if key == "auditlake-accepted":
                return ExportResult(
                    ExportStatus.REJECTED, message, code=name, accepted=int(value), partial=True
                )
        return ExportResult(ExportStatus.REJECTED, message, code=name)
    return ExportResult(ExportStatus.RETRY, message, code=name, retry_after=retry_delay(trailing))


def retry_delay(trailing: Sequence[tuple[str, Any]] | None) -> float | None:
    """The google.rpc.RetryInfo delay in ``grpc-status-details-bin``, if any.

    Decoded by hand (Status.details -> Any -> RetryInfo.retry_delay ->
    Duration) so the SDK needs no googleapis-common-protos.
    """
    for key, value in trailing or ():
        if key != "grpc-status-details-bin" or not isinstance(value, bytes):
            continue
        try:
            for number, detail in _fields(value):
                if number != 3 or not isinstance(detail, bytes):
                    continue
                parts = dict(_fields(detail))
                type_url = parts.get(1, b"")
                if isinstance(type_url, bytes) and type_url.endswith(b"google.rpc.RetryInfo"):
                    payload = parts.get(2, b"")
                    for field, duration in _fields(payload if isinstance(payload, bytes) else b""):
                        if field == 1 and isinstance(duration, bytes):
                            d = dict(_fields(duration))
                            seconds, nanos = d.get(1, 0), d.get(2, 0)
                            if isinstance(seconds, int) and isinstance(nanos, int):
                                return seconds + nanos / 1e9
        except (IndexError, ValueError):
            return None
    return None


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(data: bytes) -> Iterator[tuple[int, int | bytes]]:
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            yield number, value
        elif wire == 2:
            length, pos = _varint(data, pos)
            if pos + length > len(data):
                raise ValueError("truncated field")
            yield number, data[pos : pos + length]
            pos += length
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
