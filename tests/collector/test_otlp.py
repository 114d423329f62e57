"""OTLP in: a stock OpenTelemetry SDK's OTLPLogExporter delivers audit
events to the collector's LogsService/Export, with the native path's
guarantees (key, tenant scope, durable before the answer, a retry stored
once, RESOURCE_EXHAUSTED with RetryInfo), and records that cannot be events
refused through partial_success (docs/otlp.md)."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, set_span_in_context

from auditlake.collector.ingest.keys import IngestKey
from auditlake.collector.ingest.otlp import (
    MAX_RECORD_BYTES,
    RequestTooLarge,
    map_records,
    scan_request,
)
from tests.collector.durability_client import ingest_key, wait_sealed
from tests.collector.test_durability import lake_id_counts
from tests.conftest import CollectorProcess

EXPORT = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"
TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
SPAN_ID = 0x00F067AA0BA902B7


# -- building OTLP requests by hand (what any exporter sends) -----------------------


def any_value(value: Any) -> common_pb2.AnyValue:
    if isinstance(value, bool):
        return common_pb2.AnyValue(bool_value=value)
    if isinstance(value, str):
        return common_pb2.AnyValue(string_value=value)
    if isinstance(value, int):
        return common_pb2.AnyValue(int_value=value)
    if isinstance(value, float):
        return common_pb2.AnyValue(double_value=value)
    if isinstance(value, bytes):
        return common_pb2.AnyValue(bytes_value=value)
    if isinstance(value, dict):
        return common_pb2.AnyValue(kvlist_value=common_pb2.KeyValueList(
            values=[common_pb2.KeyValue(key=k, value=any_value(v)) for k, v in value.items()]))
    return common_pb2.AnyValue(array_value=common_pb2.ArrayValue(values=[any_value(v) for v in value]))


def record(attributes: dict[str, Any], *, time_ns: int | None = None, body: Any = None,
           trace_id: bytes = b"", span_id: bytes = b"") -> logs_pb2.LogRecord:
    """A log record with ``attributes``, dated now unless told."""
    rec = logs_pb2.LogRecord(
        time_unix_nano=time.time_ns() if time_ns is None else time_ns,
        attributes=[common_pb2.KeyValue(key=k, value=any_value(v)) for k, v in attributes.items()],
        trace_id=trace_id, span_id=span_id)
    if body is not None:
        rec.body.CopyFrom(any_value(body))
    return rec


def audit(action: str = "invoice.update", **extra: Any) -> dict[str, Any]:
    """The attributes of a valid audit record."""
    return {"audit.action": action, "audit.resource.type": "invoice", "enduser.id": "u-1", **extra}


def request(*records: logs_pb2.LogRecord, service: str = "billing",
            resource: dict[str, Any] | None = None) -> logs_service_pb2.ExportLogsServiceRequest:
    """One resource (``service.name`` = ``service``), one scope, ``records``."""
    attrs = {"service.name": service, **(resource or {})}
    return logs_service_pb2.ExportLogsServiceRequest(resource_logs=[logs_pb2.ResourceLogs(
        resource=resource_pb2.Resource(
            attributes=[common_pb2.KeyValue(key=k, value=any_value(v)) for k, v in attrs.items()]),
        scope_logs=[logs_pb2.ScopeLogs(log_records=list(records))])])


class RawOtlp:
    """LogsService/Export over a plain gRPC channel: the exact bytes, the full answer."""

    def __init__(self, endpoint: str, key: str) -> None:
        self.channel = grpc.insecure_channel(endpoint)
        self._export = self.channel.unary_unary(
            EXPORT, request_serializer=None,
            response_deserializer=logs_service_pb2.ExportLogsServiceResponse.FromString)
        self.metadata = [("authorization", f"Bearer {key}")]

    def export(self, req: logs_service_pb2.ExportLogsServiceRequest | bytes,
               timeout: float = 20.0) -> logs_service_pb2.ExportLogsServiceResponse:
        raw = req if isinstance(req, bytes) else req.SerializeToString()
        answer: logs_service_pb2.ExportLogsServiceResponse = self._export(
            raw, metadata=self.metadata, timeout=timeout)
        return answer

    def close(self) -> None:
        self.channel.close()


@pytest.fixture
def otlp_collector(collector_factory: Callable[..., CollectorProcess]) -> CollectorProcess:
    return collector_factory()


@pytest.fixture
def raw_client(otlp_collector: CollectorProcess) -> Iterator[RawOtlp]:
    client = RawOtlp(otlp_collector.endpoint, ingest_key(otlp_collector.data, "acme"))
    yield client
    client.close()


def key_id(token: str) -> str:
    return token[len("alk_"):].split("_", 1)[0]


def stored(collector: CollectorProcess, where: str = "true") -> list[dict[str, Any]]:
    return collector.query(
        "SELECT id, tenant_id, user_id, action, resource_type, resource_id, changes, ip_address, user_agent, "
        "outcome, reason, service, trace_id, span_id, request_id, metadata, ingest_key_id, "
        f"epoch_us(created_at) AS created_us FROM events WHERE {where} ORDER BY created_at")


# -- a stock OpenTelemetry SDK, configured only by its environment ------------------


def test_the_otel_sdk_exporter_delivers_audit_events_with_the_mapped_fields(
    otlp_collector: CollectorProcess, monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = ingest_key(otlp_collector.data, "acme", "globex")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://{otlp_collector.endpoint}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", f"authorization=Bearer%20{key}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")
    provider = LoggerProvider(resource=Resource.create({"service.name": "billing"}))
    provider.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter()))
    logger = provider.get_logger("app.audit")
    span = NonRecordingSpan(SpanContext(TRACE_ID, SPAN_ID, is_remote=False, trace_flags=TraceFlags(1)))
    when = (int(time.time()) - 60) * 1_000_000_000 + 123_456_000
    given_id = str(uuid.uuid4())
    logger.emit(
        timestamp=when, body="invoice updated", context=set_span_in_context(span, Context()),
        attributes={
            "audit.action": "invoice.update", "audit.resource.type": "invoice", "audit.resource.id": 42,
            "audit.outcome": "denied", "audit.reason": "over limit", "audit.tenant.id": "globex",
            "enduser.id": "alice", "client.address": "203.0.113.7", "user_agent.original": "curl/8",
            "audit.changes": json.dumps({"total": {"before": 10, "after": 12}}),
            "audit.metadata": json.dumps({"route": "/invoices/{id}"}), "audit.request.id": "req-1",
            "http.route": "/invoices/{id}",
        })
    logger.emit(timestamp=when + 1000, attributes={
        "audit.action": "invoice.read", "audit.resource.type": "invoice", "audit.event.id": given_id,
        "audit.tenant.id": "acme"})
    provider.shutdown()  # flushes: export() returned, so the events are durable

    assert otlp_collector.wait_for_count(2) == 2
    first, second = stored(otlp_collector)
    assert {k: v for k, v in first.items() if k not in ("id", "changes", "metadata")} == {
        "tenant_id": "globex", "user_id": "alice", "action": "invoice.update", "resource_type": "invoice",
        "resource_id": "42", "ip_address": "203.0.113.7", "user_agent": "curl/8", "outcome": "denied",
        "reason": "over limit", "service": "billing", "trace_id": f"{TRACE_ID:032x}",
        "span_id": f"{SPAN_ID:016x}", "request_id": "req-1", "ingest_key_id": key_id(key),
        "created_us": when // 1000,
    }
    assert json.loads(first["changes"]) == {"total": {"before": 10, "after": 12}}
    # audit.metadata, and beside it what else the record said: nothing is dropped unseen.
    assert json.loads(first["metadata"]) == {
        "route": "/invoices/{id}", "otel": {"attributes": {"http.route": "/invoices/{id}"},
                                            "body": "invoice updated"}}
    made = uuid.UUID(first["id"])
    assert made.version == 7 and (made.int >> 80) == when // 1_000_000  # time-ordered, like the SDK's ids
    assert second["id"] == given_id and second["tenant_id"] == "acme"
    assert (second["outcome"], second["changes"], second["metadata"]) == ("success", "{}", "{}")


def test_a_single_tenant_key_supplies_the_tenant(raw_client: RawOtlp, otlp_collector: CollectorProcess) -> None:
    answer = raw_client.export(request(record(audit()), record(audit("invoice.delete"))))
    assert not answer.HasField("partial_success")
    assert otlp_collector.wait_for_count(2) == 2
    assert {r["tenant_id"] for r in stored(otlp_collector)} == {"acme"}


# -- refusals ------------------------------------------------------------------------


def test_a_wrong_key_is_unauthenticated_and_the_exporter_does_not_retry(otlp_collector: CollectorProcess) -> None:
    client = RawOtlp(otlp_collector.endpoint, "alk_0000_not-a-key")
    with pytest.raises(grpc.RpcError) as err:
        client.export(request(record(audit())))
    client.close()
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "authorization=Bearer" in (err.value.details() or "")
    exporter = OTLPLogExporter(endpoint=otlp_collector.endpoint, insecure=True,
                               headers={"authorization": "Bearer alk_0000_not-a-key"})
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    started = time.monotonic()
    provider.get_logger("audit").emit(attributes=audit())
    assert time.monotonic() - started < 2.0  # not retried: UNAUTHENTICATED is final
    provider.shutdown()
    assert otlp_collector.query("SELECT count(*) AS n FROM events")[0]["n"] == 0


def test_a_tenant_the_key_may_not_write_is_permission_denied_and_nothing_is_stored(
    raw_client: RawOtlp, otlp_collector: CollectorProcess,
) -> None:
    with pytest.raises(grpc.RpcError) as err:
        raw_client.export(request(record(audit()), record(audit(**{"audit.tenant.id": "globex"}))))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    details = err.value.details() or ""
    assert "log record 1 (resource_logs[0].scope_logs[0].log_records[1])" in details and "'globex'" in details
    # The same check for a tenant named on the resource.
    with pytest.raises(grpc.RpcError) as err:
        raw_client.export(request(record(audit()), resource={"audit.tenant.id": "globex"}))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    raw_client.export(request(record(audit("marker"))))
    assert otlp_collector.wait_for_count(1, "action = 'marker'") == 1
    assert otlp_collector.query("SELECT count(*) AS n FROM events")[0]["n"] == 1


def test_malformed_bytes_are_invalid_argument(raw_client: RawOtlp) -> None:
    with pytest.raises(grpc.RpcError) as err:
        raw_client.export(b"\x0a\x05\x12\x03")  # a field running past the end of its message
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid ExportLogsServiceRequest" in (err.value.details() or "")


def test_records_missing_audit_attributes_are_refused_through_partial_success_and_the_rest_stored(
    raw_client: RawOtlp, otlp_collector: CollectorProcess,
) -> None:
    no_action = {k: v for k, v in audit().items() if k != "audit.action"}
    req = request(record(audit("first")), record(no_action), record(audit("third")),
                  record(audit("fourth", **{"audit.outcom": "denied"})),  # misspelt: never stored as success
                  record(audit("fifth", **{"audit.outcome": "maybe"})))
    answer = raw_client.export(req)
    partial = answer.partial_success
    assert partial.rejected_log_records == 3
    message = partial.error_message
    assert message.startswith("3 of 5 log records rejected (2 accepted): ")
    assert "log record 1 (resource_logs[0].scope_logs[0].log_records[1]): attribute 'audit.action' is required" \
        in message
    assert "log record 3 (resource_logs[0].scope_logs[0].log_records[3]): unknown attribute 'audit.outcom'" \
        in message
    assert "log record 4 (resource_logs[0].scope_logs[0].log_records[4]): attribute 'audit.outcome' must be one of" \
        in message
    assert otlp_collector.wait_for_count(2) == 2
    assert [r["action"] for r in stored(otlp_collector)] == ["first", "third"]
    # A retry of the request gets the same answer and stores nothing again.
    again = raw_client.export(req)
    assert again.partial_success == partial
    time.sleep(1.0)
    assert otlp_collector.query("SELECT count(*) AS n FROM events")[0]["n"] == 2
    assert "3 of 5 log records rejected" in otlp_collector.log()  # Python's exporter does not show it


# -- a retried export is stored once ---------------------------------------------------


def test_the_same_request_twice_is_stored_once_also_across_a_kill_9(
    collector_factory: Callable[..., CollectorProcess],
) -> None:
    collector = collector_factory(seal_interval=3)
    key = ingest_key(collector.data, "acme")
    client = RawOtlp(collector.endpoint, key)
    records = [record(audit(f"a-{i}", **{"n": i})) for i in range(50)]
    raw = request(*records).SerializeToString()
    assert not client.export(raw).HasField("partial_success")
    assert not client.export(raw).HasField("partial_success")  # the exporter's retry after a lost answer
    # Concurrent retries: one stores, the others wait for it.
    errors: list[BaseException] = []

    def resend() -> None:
        try:
            client.export(raw)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=resend) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    collector.kill()  # acknowledged, maybe not sealed: the WAL holds it
    collector.start()
    client.close()
    client = RawOtlp(collector.endpoint, key)
    assert not client.export(raw).HasField("partial_success")
    # The same records in a request of other bytes (re-batched): event ids
    # derived from each record's content store them once too.
    extra = record(audit("extra"))
    assert not client.export(request(*records[:10], extra)).HasField("partial_success")
    client.close()
    collector.stop()
    counts = lake_id_counts(collector.data)
    assert len(counts) == 51 and set(counts.values()) == {1}


def test_identical_records_in_one_request_are_distinct_events(
    raw_client: RawOtlp, otlp_collector: CollectorProcess,
) -> None:
    same = record(audit("login"), time_ns=time.time_ns())
    raw_client.export(request(same, same, same))
    assert otlp_collector.wait_for_count(3) == 3
    assert len({r["id"] for r in stored(otlp_collector)}) == 3


# -- backpressure --------------------------------------------------------------------


def test_backpressure_is_resource_exhausted_with_retry_info_which_the_exporter_honours(
    collector_factory: Callable[..., CollectorProcess], caplog: pytest.LogCaptureFixture,
) -> None:
    # A long seal interval keeps the first batch unsealed; the env var sets the limit.
    collector = collector_factory(seal_interval=4, env={"AUDITLAKE_MAX_UNSEALED_EVENTS": "10"})
    key = ingest_key(collector.data, "acme")
    client = RawOtlp(collector.endpoint, key)
    client.export(request(*[record(audit(f"first-{i}")) for i in range(50)]))
    with pytest.raises(grpc.RpcError) as err:
        client.export(request(record(audit("refused"))))
    client.close()
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "unsealed events" in (err.value.details() or "")
    trailers = dict(err.value.trailing_metadata() or ())
    status = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
    info = error_details_pb2.RetryInfo()
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0] and status.details[0].Unpack(info)
    assert info.retry_delay.seconds * 1e9 + info.retry_delay.nanos == 0.25e9
    assert error_details_pb2.RetryInfo.FromString(trailers["google.rpc.retryinfo-bin"]) == info

    # The real exporter waits as RetryInfo says (0.25 s, where its own
    # backoff would start near 1 s) and its records land once there is room.
    exporter = OTLPLogExporter(endpoint=collector.endpoint, insecure=True,
                               headers={"authorization": f"Bearer {key}"})
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    with caplog.at_level(logging.WARNING, logger="opentelemetry.exporter.otlp.proto.grpc.exporter"):
        provider.get_logger("audit").emit(attributes=audit("retried"))
    assert "RESOURCE_EXHAUSTED" in caplog.text and "retrying in 0.25s" in caplog.text
    if "Failed to export" in caplog.text:  # still busy after its six tries: send it again once sealed
        wait_sealed(collector.data, 50)
        provider.get_logger("audit").emit(attributes=audit("retried"))
    provider.shutdown()
    assert collector.wait_for_count(1, "action = 'retried'") == 1


# -- the mapping and the wire scan, in process ------------------------------------------


KEY = IngestKey("k1", "", frozenset({"acme"}), "2025-01-01T00:00:00Z")


def mapped(req: logs_service_pb2.ExportLogsServiceRequest, key: IngestKey = KEY) -> Any:
    raw = req.SerializeToString()
    return map_records(raw, scan_request(raw, 1000), key)


def test_mapping_keeps_other_attributes_and_refuses_what_cannot_be_an_event() -> None:
    big = "x" * MAX_RECORD_BYTES
    out = mapped(request(
        record(audit(**{"audit.changes": {"a": {"before": 1, "after": [2, 3]}}, "retries": 3, "ratio": 0.5,
                        "flag": True, "blob": b"\x00\x01"}), body={"k": "v"}),
        record(audit(**{"audit.metadata": json.dumps({"otel": 1}), "other": "x"})),
        record(audit(**{"audit.resource.id": ["a", "b"]})),
        record(audit(**{"huge": big})),
        record(audit(), trace_id=b"\x01\x02"),
    ))
    assert out.total == 5 and out.table.num_rows == 1
    row = out.table.to_pylist()[0]
    assert json.loads(row["changes"]) == {"a": {"before": 1, "after": [2, 3]}}
    assert json.loads(row["metadata"]) == {"otel": {"attributes": {"retries": 3, "ratio": 0.5, "flag": True,
                                                                   "blob": "AAE="},
                                                    "body": {"k": "v"}}}
    reasons = {r.position.ordinal: r.message for r in out.refused}
    assert reasons[1].startswith("attribute 'audit.metadata' may not hold the key 'otel'")
    assert reasons[2] == "attribute 'audit.resource.id' must be a string (it holds a array)"
    assert reasons[3].endswith(f"bytes, over {MAX_RECORD_BYTES}: no event is that large")
    assert reasons[4] == "trace_id must be 16 bytes (it holds 2)"


def test_a_key_of_several_tenants_needs_the_tenant_named() -> None:
    key = IngestKey("k2", "", frozenset({"acme", "globex"}), "2025-01-01T00:00:00Z")
    out = mapped(request(record(audit()), record(audit(**{"audit.tenant.id": "globex"}))), key)
    assert out.table.column("tenant_id").to_pylist() == ["globex"]
    assert "'audit.tenant.id' is required: this ingest key writes several tenants (acme, globex)" \
        in out.refused[0].message


def test_event_ids_are_the_same_for_the_same_request_and_differ_for_other_content() -> None:
    now = time.time_ns()
    req = request(record(audit(), time_ns=now), record(audit(), time_ns=now), record(audit("b"), time_ns=now))
    ids = mapped(req).table.column("id").to_pylist()
    assert ids == mapped(req).table.column("id").to_pylist()
    assert len(set(ids)) == 3
    other_service = mapped(request(record(audit(), time_ns=now), service="shipping")).table.column("id")
    assert other_service[0].as_py() not in ids


_attr = st.tuples(st.text(min_size=1, max_size=8), st.one_of(st.text(max_size=20), st.integers(-5, 5)))
_records = st.lists(st.lists(_attr, max_size=4), max_size=4)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
                          st.lists(_records, max_size=3)), max_size=4))
def test_the_wire_scan_finds_exactly_the_records_protobuf_parses(shape: list[Any]) -> None:
    req = logs_service_pb2.ExportLogsServiceRequest()
    for resource_attrs, scopes in shape:
        rl = req.resource_logs.add()
        for k, v in resource_attrs.items():
            rl.resource.attributes.add(key=k, value=any_value(v))
        for n, records in enumerate(scopes):
            sl = rl.scope_logs.add()
            sl.scope.name = f"scope-{n}"
            for attrs in records:
                sl.log_records.append(record(dict(attrs), time_ns=n + 1))
    raw = req.SerializeToString()
    scanned = scan_request(raw, 10_000)
    parsed = logs_service_pb2.ExportLogsServiceRequest.FromString(raw)
    assert scanned.records == sum(len(s.log_records) for r in parsed.resource_logs for s in r.scope_logs)
    assert len(scanned.resources) == len(parsed.resource_logs)
    for got, want in zip(scanned.resources, parsed.resource_logs, strict=True):
        assert resource_pb2.Resource.FromString(got.resource) == want.resource
        assert [[logs_pb2.LogRecord.FromString(raw[a:b]) for a, b in s.records] for s in got.scopes] == \
            [list(s.log_records) for s in want.scope_logs]


def test_the_wire_scan_refuses_too_many_records_and_malformed_bytes() -> None:
    raw = request(*[record(audit()) for _ in range(11)]).SerializeToString()
    with pytest.raises(RequestTooLarge, match="more than 10 log records"):
        scan_request(raw, 10)
    # 100,000 empty resource_logs (2 bytes each): refused before any is parsed
    with pytest.raises(RequestTooLarge, match="resource_logs and scope_logs"):
        scan_request(b"\x0a\x00" * 100_001, 100_000)
    for bad in (raw[:-1], b"\x0b", b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"):
        with pytest.raises(ValueError, match="malformed"):
            scan_request(bad, 10_000)
