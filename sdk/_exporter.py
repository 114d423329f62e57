"""Sending one batch to the collector, and what its answer means.

gRPC statuses are mapped here, once, to :class:`ExportResult`:
OK -> ``ok``; UNAUTHENTICATED, PERMISSION_DENIED, INVALID_ARGUMENT ->
``rejected`` (never retried; the processor keeps them in the dead-letter
spool); every other status -> ``retry``, with the collector's
google.rpc.RetryInfo delay when it sent one.  A batch the collector stored
in part says so in its trailing metadata: ``auditlake-accepted`` (events
stored) and every refused row, as ranges (``auditlake-rejected: 3,5-9``) or
a bitmap (``auditlake-rejected-bin``); a collector older than those names
the first 20 refused events in its message only.  All of it is read here, once.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
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
    #: For a partial refusal: how many events were refused (0: not said),
    #: and the positions in the batch of the refused events: every one when
    #: ``refused_listed`` (the collector's ``auditlake-rejected`` trailers),
    #: else those the message names (an older collector names the first 20),
    #: with their ids in ``refused_ids`` for the caller to check.
    refused: int = 0
    refused_rows: tuple[int, ...] = ()
    refused_ids: tuple[str, ...] = ()
    refused_listed: bool = False


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


@dataclass(frozen=True, slots=True)
class ClientTls:
    """What a TLS channel to the collector is made with, read from the
    settings' files: the CA bundle to trust (None: the system roots), and a
    client certificate chain with its key for a collector that requires one
    (mutual TLS).  All PEM bytes."""

    root_certificates: bytes | None = None
    certificate_chain: bytes | None = None
    private_key: bytes | None = None

    @classmethod
    def from_files(cls, ca_file: str = "", cert_file: str = "", key_file: str = "") -> ClientTls | None:
        """The files read, or None when no file is named; ValueError
        naming the setting whose file cannot be read or holds no PEM."""
        if not (ca_file or cert_file or key_file):
            return None
        if bool(cert_file) != bool(key_file):
            raise ValueError("tls_cert_file and tls_key_file: give both (a client certificate and its key, "
                             "for mTLS) or neither")
        return cls(
            _pem("tls_ca_file", ca_file, b"CERTIFICATE") if ca_file else None,
            _pem("tls_cert_file", cert_file, b"CERTIFICATE") if cert_file else None,
            _pem("tls_key_file", key_file, b"PRIVATE KEY") if key_file else None,
        )

    def credentials(self) -> grpc.ChannelCredentials:
        """gRPC channel credentials of these certificates."""
        return grpc.ssl_channel_credentials(self.root_certificates, self.private_key, self.certificate_chain)


def _pem(setting: str, path: str, kind: bytes) -> bytes:
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        raise ValueError(f"{setting}: cannot read {path}: {error.strerror or error}") from error
    if b"-----BEGIN " not in data or kind + b"-----" not in data:
        raise ValueError(f"{setting}: {path} holds no PEM {kind.decode().lower()}")
    return data


#: What gRPC says when the collector's certificate is not trusted (or a
#: client certificate is refused): its message then gets a hint.
_TLS_FAILURE = ("handshake", "certificate", "ssl")


class GrpcExporter:
    """Exports to ``AuditService.Export`` with a Bearer API key, over TLS
    when ``tls`` is set, the endpoint says ``https://``, or ``tls_files``
    (a CA to trust, a client certificate) are given."""

    def __init__(self, endpoint: str, api_key: str = "", *, tls: bool = False,
                 tls_files: ClientTls | None = None) -> None:
        self.endpoint, secure = parse_endpoint(endpoint)
        self._tls = tls or secure or tls_files is not None
        self._tls_files = tls_files or ClientTls()
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
            self._channel = grpc.secure_channel(self.endpoint, self._tls_files.credentials(), options=options)
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
            result = result_from_error(error)
            hint = self._tls_hint(result) if self._tls and result.code == "UNAVAILABLE" else ""
            return replace(result, message=f"{result.message} ({hint})") if hint else result
        return ExportResult(
            ExportStatus.OK, accepted=int(response.accepted), duplicate=bool(response.duplicate)
        )

    def _tls_hint(self, result: ExportResult) -> str:
        """What to check when a TLS channel did not come up: gRPC's words
        for a failed handshake are OpenSSL's."""
        text = result.message.lower()
        if any(word in text for word in _TLS_FAILURE):
            return ("TLS: the collector's certificate is not signed by a CA this client trusts, or names "
                    "another host; set tls_ca_file to the CA that signed it. A collector that requires "
                    "client certificates also needs tls_cert_file and tls_key_file")
        if "socket closed" in text:
            # A collector requiring client certificates hangs up on a client
            # without one (or with one from a CA it does not accept).
            return ("TLS: if the collector requires client certificates (mutual TLS), set tls_cert_file "
                    "and tls_key_file to a certificate signed by a CA of its tls_client_ca")
        return ""

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
        trailers = dict(trailing or ())
        accepted = str(trailers.get("auditlake-accepted", ""))
        if not accepted.isdigit():
            return ExportResult(ExportStatus.REJECTED, message, code=name)
        listed = refused_rows(trailers)
        if listed is not None:
            return ExportResult(
                ExportStatus.REJECTED, message, code=name, accepted=int(accepted), partial=True,
                refused=len(listed), refused_rows=listed, refused_listed=True,
            )
        refused, rows, ids = refused_events(str(details))
        return ExportResult(
            ExportStatus.REJECTED, message, code=name, accepted=int(accepted), partial=True,
            refused=refused, refused_rows=rows, refused_ids=ids,
        )
    return ExportResult(ExportStatus.RETRY, message, code=name, retry_after=retry_delay(trailing))


def refused_rows(trailers: dict[str, Any]) -> tuple[int, ...] | None:
    """Every refused row of a partly stored batch, from the collector's
    trailers: ``auditlake-rejected`` (ASCII ranges ``3,5-9,12``) or
    ``auditlake-rejected-bin`` (a bitmap: row i is bit ``i % 8``, least
    significant first, of byte ``i // 8``).  None when neither is there or
    well formed: the caller falls back on the message."""
    bitmap = trailers.get("auditlake-rejected-bin")
    if isinstance(bitmap, bytes) and bitmap:
        return tuple(
            8 * index + bit for index, byte in enumerate(bitmap) if byte for bit in range(8) if byte >> bit & 1
        )
    text = trailers.get("auditlake-rejected")
    if not isinstance(text, str) or not _RANGES.fullmatch(text):
        return None
    rows: list[int] = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        if len(rows) + int(last or first) - int(first) >= _MAX_LISTED:
            return None  # not a batch's rows: no list that long is built
        rows.extend(range(int(first), int(last or first) + 1))
    return tuple(rows)


_RANGES = re.compile(r"[0-9]+(?:-[0-9]+)?(?:,[0-9]+(?:-[0-9]+)?)*")
#: More rows than any batch holds (the collector takes 100,000 at most by default).
_MAX_LISTED = 1 << 24

# The collector's message for a batch stored in part (ingest/receive.py):
# "3 of 20 events rejected (17 valid events stored): event 4 (id=...): field
# 'x' ...; event 9 (id=...): ...; and 1 more".
_REFUSED_COUNT = re.compile(r"^(\d+) of \d+ events rejected")
_REFUSED_EVENT = re.compile(r"(?:^|; |: )event (\d+) \(id=([^)]*)\): field '")


def refused_events(details: str) -> tuple[int, tuple[int, ...], tuple[str, ...]]:
    """(events refused, rows named, their ids) from a partial refusal's message.

    The rows are checked against the batch's ids by the caller, so a message
    of another form (or a field value that looks like one) names nothing.
    """
    count = _REFUSED_COUNT.match(details)
    named = [(int(m.group(1)), m.group(2)) for m in _REFUSED_EVENT.finditer(details)]
    return (
        int(count.group(1)) if count else 0,
        tuple(row for row, _ in named),
        tuple(event_id for _, event_id in named),
    )


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
