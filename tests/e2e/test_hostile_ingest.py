"""A hostile client on the gRPC port: what one request may cost is bounded
before the work starts, and malformed bytes get a precise status.

Each test sends raw bytes (a stock gRPC channel with identity serializers),
as an attacker would, and reads the collector's peak memory from
/proc/PID/status (VmHWM) before and after.
"""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest

from auditlake.v1 import audit_pb2
from tests.wire_client import WireClient, make_event

METHOD = "/auditlake.v1.AuditService/Export"


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc status")


def _empty_events(n: int, batch_id: str = "b-hostile") -> bytes:
    # Field 1 (batch_id), then n empty AuditEvent entries of field 2: 2 bytes each.
    bid = batch_id.encode()
    return b"\x0a" + bytes([len(bid)]) + bid + b"\x12\x00" * n


def _call(endpoint: str, payload: bytes, key: str | None, timeout: float = 60.0) -> grpc.RpcError:
    with grpc.insecure_channel(endpoint, options=[("grpc.max_send_message_length", -1)]) as channel:
        export = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
        metadata = (("authorization", f"Bearer {key}"),) if key else ()
        with pytest.raises(grpc.RpcError) as info:
            export(payload, metadata=metadata, timeout=timeout)
        return info.value


def test_unauthenticated_flood_of_empty_events_is_refused_before_parsing(collector) -> None:  # noqa: ANN001
    # 3M empty events in 6 MB: parsed first (as before), they cost ~800 MB.
    before = _peak_rss_mb(collector.proc.pid)
    started = time.monotonic()
    err = _call(collector.endpoint, _empty_events(3_000_000), key=None)
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert time.monotonic() - started < 10
    grown = _peak_rss_mb(collector.proc.pid) - before
    assert grown < 200, f"the collector's peak memory grew {grown:.0f} MB for a 6 MB unauthenticated request"


def test_too_many_events_on_the_wire_are_counted_not_parsed(collector) -> None:  # noqa: ANN001
    key = collector.api_key("acme")
    before = _peak_rss_mb(collector.proc.pid)
    err = _call(collector.endpoint, _empty_events(3_000_000), key=key)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "more than 100000 events" in err.details()
    grown = _peak_rss_mb(collector.proc.pid) - before
    assert grown < 200, f"peak memory grew {grown:.0f} MB"
    # A valid batch right after is stored.
    client = WireClient(collector.endpoint)
    try:
        assert client.export([make_event(resource_id="after-flood")], key=key).accepted == 1
    finally:
        client.close()


def test_invalid_utf8_in_a_message_field_is_invalid_argument(collector) -> None:  # noqa: ANN001
    key = collector.api_key("acme")
    request = audit_pb2.ExportRequest(batch_id="b-utf8")
    request.events.add(id="x")
    raw = request.SerializeToString()
    bad = raw.replace(b"\x0a\x01x", b"\x0a\x01\xff")  # AuditEvent.id = one byte that is not UTF-8
    assert bad != raw
    err = _call(collector.endpoint, bad, key=key)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid ExportRequest" in err.details()


def test_truncated_bytes_are_invalid_argument_and_unauthenticated_garbage_logs_nothing(collector) -> None:  # noqa: ANN001
    key = collector.api_key("acme")
    err = _call(collector.endpoint, b"\x12\xff\xff\xff\x0f", key=key)  # a length past the end
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    log_before = collector.log()
    err = _call(collector.endpoint, b"\xff" * 64, key=None)
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "Traceback" not in collector.log()[len(log_before):]
    assert "Exception deserializing" not in collector.log()


def test_a_message_over_the_size_limit_is_refused(collector_factory) -> None:  # noqa: ANN001
    c = collector_factory(env={"AUDITLAKE_MAX_MESSAGE_BYTES": str(1024 * 1024)})
    key = c.api_key("acme")
    err = _call(c.endpoint, b"\x0a\x01b" + b"\x12\x00" * 600_000, key=key)
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_a_listener_beyond_loopback_without_tls_is_warned_about(collector_factory) -> None:  # noqa: ANN001
    c = collector_factory()
    assert "without TLS" not in c.log()
    # 0.0.0.0 binds every interface; the test still connects through loopback.
    wide = collector_factory(name="wide", extra_args=("--grpc-listen", "0.0.0.0:0"))
    assert "gRPC ingest listens on 0.0.0.0:0 without TLS" in wide.log()
