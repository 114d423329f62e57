"""OTLP in: acknowledged events/s through the collector's OpenTelemetry
``LogsService/Export`` next to its native ``AuditService/Export``, the same
events, batch size and concurrency, measured in the same run (runs
alternate, medians).  Both answers mean the same thing: the events are in
the fsync'd write-ahead log.

The OTLP requests carry each event as a log record with the audit.*
attributes of docs/otlp.md (no ``audit.event.id``: the collector derives
the ids, as it must for stock exporters); the native ones are the SDK's
packed columns.  Both are serialised before the clock starts.

    .venv/bin/python bench/otlp_bench.py [--quick]

(bench/otlp_receiver.py is something else: a do-nothing OTLP receiver, the
baseline of e2e_bench.py.)
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from common import send_payloads, start_collector, stop_process  # noqa: E402
from ingest_bench import make_events, packed_payloads  # noqa: E402

#: Records per request: the OpenTelemetry SDK's BatchLogRecordProcessor default.
BATCH = 512
STREAMS = 4
TENANTS = 20  # make_events spreads events over tenant-0 .. tenant-19

_ATTRIBUTES = {
    "action": "audit.action", "resource_type": "audit.resource.type", "resource_id": "audit.resource.id",
    "user_id": "enduser.id", "tenant_id": "audit.tenant.id", "ip_address": "client.address",
    "user_agent": "user_agent.original", "outcome": "audit.outcome", "reason": "audit.reason",
    "request_id": "audit.request.id", "changes": "audit.changes", "metadata": "audit.metadata",
}


def otlp_payloads(cols: dict[str, list[Any]], batch: int) -> list[tuple[bytes, int]]:
    """``cols`` as serialised ExportLogsServiceRequests of ``batch`` records."""
    from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
    from opentelemetry.proto.common.v1 import common_pb2

    n = len(cols["id"])
    payloads = []
    for start in range(0, n, batch):
        req = logs_service_pb2.ExportLogsServiceRequest()
        resource_logs = req.resource_logs.add()
        resource_logs.resource.attributes.add(key="service.name", value=common_pb2.AnyValue(string_value="billing"))
        scope = resource_logs.scope_logs.add()
        scope.scope.name = "app.audit"
        for i in range(start, min(start + batch, n)):
            record = scope.log_records.add()
            record.time_unix_nano = cols["created_at_us"][i] * 1000
            record.trace_id = bytes.fromhex(cols["trace_id"][i])
            record.span_id = bytes.fromhex(cols["span_id"][i])
            for column, name in _ATTRIBUTES.items():
                value = cols[column][i]
                if value:
                    record.attributes.add(key=name, value=common_pb2.AnyValue(string_value=value))
        payloads.append((req.SerializeToString(), min(batch, n - start)))
    return payloads


def _exporter(channel: Any, payloads: list[tuple[bytes, int]], otlp: bool) -> Any:
    """An ``export(data, metadata, timeout)`` for send_payloads whose answer
    has ``accepted`` (OTLP's has not: records sent minus those rejected)."""
    from types import SimpleNamespace

    from opentelemetry.proto.collector.logs.v1 import logs_service_pb2

    from auditlake.v1 import audit_pb2

    if not otlp:
        return channel.unary_unary("/auditlake.v1.AuditService/Export", request_serializer=None,
                                   response_deserializer=audit_pb2.ExportResponse.FromString)
    call = channel.unary_unary("/opentelemetry.proto.collector.logs.v1.LogsService/Export",
                               request_serializer=None,
                               response_deserializer=logs_service_pb2.ExportLogsServiceResponse.FromString)
    counts = {id(data): count for data, count in payloads}

    def export(data: bytes, metadata: Any, timeout: float) -> Any:
        answer = call(data, metadata=metadata, timeout=timeout)
        rejected = answer.partial_success.rejected_log_records
        if rejected:
            raise RuntimeError(f"bench records rejected: {answer.partial_success.error_message}")
        return SimpleNamespace(accepted=counts[id(data)])

    return export


def run(otlp: bool, total: int, seed: int) -> float:
    """Acknowledged events/s of one fresh collector taking ``total`` events."""
    import grpc

    cols = make_events(total, seed)
    payloads = otlp_payloads(cols, BATCH) if otlp else packed_payloads(cols, BATCH)
    tmp = Path(tempfile.mkdtemp(prefix="auditlake-otlp-bench-"))
    data = tmp / "data"
    data.mkdir()
    proc, endpoint, _ = start_collector(data, tenant="tenant-0", seal_interval=1.0)
    try:
        key = subprocess.run(
            [sys.executable, "-m", "auditlake.collector", "keys", "create", "--data", str(data),
             *[a for i in range(TENANTS) for a in ("--tenant", f"tenant-{i}")]],
            capture_output=True, text=True, check=True).stdout.strip()
        channel = grpc.insecure_channel(endpoint, options=[("grpc.max_send_message_length", 64 << 20)])
        got = send_payloads(_exporter(channel, payloads, otlp), [("authorization", "Bearer " + key)],
                            payloads, STREAMS)
        channel.close()
    finally:
        stop_process(proc)
        shutil.rmtree(tmp, ignore_errors=True)
    if got["acked"] != total:
        raise RuntimeError(f"{got['acked']} of {total} events acknowledged")
    return float(got["acked"] / (got["end"] - got["start"]))


def bench_rows(quick: bool = False) -> list[tuple[str, str, str, str]]:
    """The OTLP row for `make bench`: medians of alternating runs."""
    total = 40_000 if quick else 200_000
    runs = 1 if quick else 3
    load = os.getloadavg()[0]
    otlp, native = [], []
    for i in range(runs):  # alternate, so both see the same machine noise
        native.append(run(False, total, seed=i))
        otlp.append(run(True, total, seed=i))
    a, b = statistics.median(otlp), statistics.median(native)
    return [(
        f"OTLP LogsService/Export ingest, {BATCH}-record requests x {STREAMS} streams, records with the "
        f"audit.* attributes, ids derived by the collector (acked: fsync'd WAL; events/s; median of {runs}; "
        f"load avg {load:.1f} at start)",
        f"{a:,.0f}", f"{b:,.0f} (native AuditService/Export, same events in {BATCH}-event packed batches)",
        f"{a / b:.2f}x",
    )]


if __name__ == "__main__":
    from common import print_table

    print_table(bench_rows(quick="--quick" in sys.argv))
