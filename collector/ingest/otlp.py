"""OTLP in: OpenTelemetry's ``LogsService/Export`` on the collector's gRPC
port, so a stock OpenTelemetry SDK or Collector delivers audit events with
no auditlake code on its side (docs/otlp.md).

Owns the OTLP boundary: reading the request's structure from its bytes
(``scan_request``), turning log records into rows of the wire table
(``map_records``: the attribute mapping) and the service itself
(``OtlpLogsService``), which keeps the native path's guarantees
(receive.py): the ingest key from ``authorization: Bearer``, tenant scope,
durable in the write-ahead log before the answer, backpressure as
``RESOURCE_EXHAUSTED`` with ``RetryInfo``.  OTLP exporters retry a request
byte for byte, so the batch id is the request's SHA-256 and each event id
is derived from its record: a retry is stored once.  Records that cannot be
events are refused through ``partial_success``; the others are stored.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, NoReturn

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.resource.v1 import resource_pb2

from auditlake.collector.errors import AuthError, StorageError
from auditlake.collector.ingest.keys import IngestKey
from auditlake.collector.ingest.receive import (
    WIRE_SCHEMA,
    IngestPath,
    Rejection,
    bearer_token,
    normalize,
    reserved_service_rows,
    validate,
)
from auditlake.collector.ingest.wire import fields
from auditlake.collector.lake.batch import AcceptedBatch
from auditlake.collector.schema import STRING_FIELDS

log = logging.getLogger(__name__)

#: The gRPC service's full name (opentelemetry-proto's package + service).
SERVICE_NAME = logs_service_pb2.DESCRIPTOR.services_by_name["LogsService"].full_name

#: Log record attributes read into event fields (docs/otlp.md); the values
#: are strings (integers are taken as their decimal text).
ATTRIBUTE_FIELDS: dict[str, str] = {
    "audit.event.id": "id",
    "audit.tenant.id": "tenant_id",
    "enduser.id": "user_id",
    "audit.action": "action",
    "audit.resource.type": "resource_type",
    "audit.resource.id": "resource_id",
    "client.address": "ip_address",
    "user_agent.original": "user_agent",
    "audit.outcome": "outcome",
    "audit.reason": "reason",
    "audit.request.id": "request_id",
}
#: Attributes holding a JSON object: a JSON string, or an OTLP map.
JSON_ATTRIBUTE_FIELDS: dict[str, str] = {"audit.changes": "changes", "audit.metadata": "metadata"}
#: The resource attribute naming the service; a resource may also carry
#: ``audit.tenant.id`` for all its records.
SERVICE_ATTRIBUTE = "service.name"
TENANT_ATTRIBUTE = "audit.tenant.id"
#: The key of ``metadata`` under which a record's other attributes, its body,
#: event name and dropped-attribute count are kept (only when it has some).
OTEL_METADATA_KEY = "otel"
#: The attribute namespace the mapping owns: an ``audit.*`` name it does not
#: know is refused, because a misspelt ``audit.outcome`` would otherwise be
#: stored as a successful action.
AUDIT_PREFIX = "audit."

#: A log record larger than this is refused without being parsed: no event
#: fits in it (changes and metadata hold at most 64 KiB each), and it bounds
#: what parsing one record may cost (an empty attribute is 2 bytes sent and
#: ~55 parsed).  A resource larger than this refuses its records.
MAX_RECORD_BYTES = 256 * 1024
#: Error messages name this many records one by one at most.
_MESSAGE_NAMES = 20
_MESSAGE_BUDGET = 4096

#: Where each event field comes from, for refusals' messages.
FIELD_SOURCES: dict[str, str] = {
    **{f: f"attribute '{a}'" for a, f in ATTRIBUTE_FIELDS.items()},
    **{f: f"attribute '{a}'" for a, f in JSON_ATTRIBUTE_FIELDS.items()},
    "metadata": f"attribute 'audit.metadata' (with '{OTEL_METADATA_KEY}': the record's other attributes and body)",
    "service": f"resource attribute '{SERVICE_ATTRIBUTE}'",
    "trace_id": "trace_id",
    "span_id": "span_id",
    "created_at": "time_unix_nano (else observed_time_unix_nano)",
}

_REQUEST = logs_service_pb2.ExportLogsServiceRequest.DESCRIPTOR.fields_by_name
_RESOURCE_LOGS = logs_pb2.ResourceLogs.DESCRIPTOR.fields_by_name
_SCOPE_LOGS = logs_pb2.ScopeLogs.DESCRIPTOR.fields_by_name
_ID_SALT = b"auditlake.otlp.v1\0"


# -- the request's structure, read from its bytes -------------------------------


@dataclass(frozen=True)
class RecordPosition:
    """Where a log record sits in the request: its ordinal over the whole
    request (0-based) and its indexes at each level."""

    ordinal: int
    resource: int
    scope: int
    record: int

    def __str__(self) -> str:
        return (f"log record {self.ordinal} (resource_logs[{self.resource}].scope_logs[{self.scope}]"
                f".log_records[{self.record}])")


@dataclass
class ScopeSpan:
    """One ``ScopeLogs``: its scope's bytes and its records' (start, end) in the request."""

    scope: bytes = b""
    records: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class ResourceSpan:
    """One ``ResourceLogs``: its resource's bytes and its scopes."""

    resource: bytes = b""
    scopes: list[ScopeSpan] = field(default_factory=list)


@dataclass
class ScannedRequest:
    """The structure of an ``ExportLogsServiceRequest`` down to its records,
    which stay unparsed bytes of the request."""

    resources: list[ResourceSpan]
    records: int


class RequestTooLarge(ValueError):
    """A request holds more log records (or containers) than the collector takes at once."""


def scan_request(raw: bytes, max_records: int) -> ScannedRequest:
    """The request's resources, scopes and record spans, read from its bytes
    without parsing a record.  Parsing the whole request at once would cost
    up to ~70 times its size in memory (an empty record is 2 bytes sent);
    read so, each record is parsed on its own, after its count and size are
    checked.  Raises RequestTooLarge past ``max_records`` records (or as
    many resource and scope entries), ValueError on malformed bytes."""
    resource_logs = _REQUEST["resource_logs"].number
    resource, scope_logs = _RESOURCE_LOGS["resource"].number, _RESOURCE_LOGS["scope_logs"].number
    scope, log_records = _SCOPE_LOGS["scope"].number, _SCOPE_LOGS["log_records"].number
    resources: list[ResourceSpan] = []
    records = containers = 0
    for number, start, end in fields(raw, 0, len(raw)):
        if number != resource_logs:
            continue
        current = ResourceSpan()
        resources.append(current)
        for inner, s, e in fields(raw, start, end):
            if inner == resource:
                # A message field sent twice is merged: parsing the
                # concatenated bytes does exactly that.
                current.resource += raw[s:e]
            elif inner == scope_logs:
                scoped = ScopeSpan()
                current.scopes.append(scoped)
                containers += 1
                for leaf, s2, e2 in fields(raw, s, e):
                    if leaf == scope:
                        scoped.scope += raw[s2:e2]
                    elif leaf == log_records:
                        scoped.records.append((s2, e2))
                        records += 1
                        if records > max_records:
                            raise RequestTooLarge(f"request holds more than {max_records} log records; "
                                                  "send smaller batches (the exporter's batch size)")
        containers += 1
        if containers > max_records:
            raise RequestTooLarge(f"request holds more than {max_records} resource_logs and scope_logs")
    return ScannedRequest(resources, records)


# -- the mapping: log records to rows of the wire table ---------------------------


@dataclass(frozen=True)
class RecordRejection:
    """A log record refused, and why (the message names the attribute)."""

    position: RecordPosition
    message: str

    def __str__(self) -> str:
        return f"{self.position}: {self.message}"


@dataclass
class MappedRecords:
    """The records of a request as rows of WIRE_SCHEMA (those that could be
    mapped), each row's position, and the records refused while mapping."""

    table: pa.Table
    positions: list[RecordPosition]
    refused: list[RecordRejection]
    total: int


class _Refused(ValueError):
    """A record cannot become an event (the message names the attribute)."""


def _text(value: common_pb2.AnyValue, name: str) -> str:
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "int_value":
        return str(value.int_value)
    if kind is None:
        return ""
    raise _Refused(f"attribute '{name}' must be a string (it holds a {kind.removesuffix('_value')})")


def _json_value(value: common_pb2.AnyValue) -> Any:
    """An OTLP AnyValue as a JSON value (bytes as base64, non-finite doubles as text)."""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "int_value":
        return value.int_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "double_value":
        number = value.double_value
        return number if math.isfinite(number) else str(number)
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode()
    if kind == "array_value":
        return [_json_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _json_value(kv.value) for kv in value.kvlist_value.values}
    return None


def _json_object(value: common_pb2.AnyValue, name: str) -> str:
    """A JSON-object attribute as JSON text (validation checks a string's content)."""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "kvlist_value":
        return _dumps(_json_value(value))
    if kind is None:
        return ""
    raise _Refused(f"attribute '{name}' must be a JSON object (a JSON string or a map; it holds a "
                   f"{kind.removesuffix('_value')})")


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _hex_id(raw: bytes, size: int, name: str) -> str:
    if not raw or not any(raw):  # absent, or all zero: OTel's "no id"
        return ""
    if len(raw) != size:
        raise _Refused(f"{name} must be {size} bytes (it holds {len(raw)})")
    return raw.hex()


def uuid7_from(ms: int, entropy: bytes) -> str:
    """A UUIDv7 with timestamp ``ms`` and 74 bits taken from ``entropy``:
    time-ordered like the SDK's ids, so the lake stores it as compactly."""
    raw = bytearray(min(max(ms, 0), (1 << 48) - 1).to_bytes(6, "big") + entropy[:10])
    raw[6] = 0x70 | (raw[6] & 0x0F)
    raw[8] = 0x80 | (raw[8] & 0x3F)
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@dataclass
class _ResourceFacts:
    service: str
    tenant: str
    refusal: str = ""


def _resource_facts(resource: bytes) -> _ResourceFacts:
    if len(resource) > MAX_RECORD_BYTES:
        return _ResourceFacts("", "", f"its resource is {len(resource)} bytes, over {MAX_RECORD_BYTES}")
    try:
        parsed = resource_pb2.Resource.FromString(resource)
    except DecodeError as exc:
        return _ResourceFacts("", "", f"its resource is not a valid Resource: {exc}")
    service = tenant = ""
    try:
        for kv in parsed.attributes:
            if kv.key == SERVICE_ATTRIBUTE:
                service = _text(kv.value, SERVICE_ATTRIBUTE)
            elif kv.key == TENANT_ATTRIBUTE:
                tenant = _text(kv.value, TENANT_ATTRIBUTE)
    except _Refused as exc:
        return _ResourceFacts("", "", f"resource {exc}")
    return _ResourceFacts(service, tenant)


def _table(rows: Sequence[dict[str, str]], created_us: Sequence[int]) -> pa.Table:
    """Rows of event fields (a missing field is "") as a table of WIRE_SCHEMA."""
    arrays = [pa.array([row.get(name, "") for row in rows], pa.string()) for name in STRING_FIELDS]
    arrays.append(pa.array(created_us, pa.int64()).cast(WIRE_SCHEMA[-1].type))
    return pa.Table.from_arrays(arrays, schema=WIRE_SCHEMA)


def _map_record(record: logs_pb2.LogRecord, facts: _ResourceFacts,
                default_tenant: str, key: IngestKey) -> tuple[dict[str, str], int]:
    """One record's event fields (without ``id`` unless the record names
    it) and its time in microseconds.  Raises _Refused."""
    row: dict[str, str] = {"service": facts.service}
    tenant = ""
    other: dict[str, Any] = {}
    attributes = record.attributes
    values = {kv.key: kv.value for kv in attributes}
    if len(values) != len(attributes):
        names = [kv.key for kv in attributes]
        twice = next(name for name in names if names.count(name) > 1)
        raise _Refused(f"attribute '{twice}' appears twice")
    for name, value in values.items():
        column = ATTRIBUTE_FIELDS.get(name)
        if column is not None:
            # Nearly every value is a string: test for that before anything else.
            text = value.string_value if value.WhichOneof("value") == "string_value" else _text(value, name)
            if column == "tenant_id":
                tenant = text
            else:
                row[column] = text
        elif name in JSON_ATTRIBUTE_FIELDS:
            row[JSON_ATTRIBUTE_FIELDS[name]] = _json_object(value, name)
        elif name.startswith(AUDIT_PREFIX):
            known = ", ".join(sorted(n for n in (*ATTRIBUTE_FIELDS, *JSON_ATTRIBUTE_FIELDS)
                                     if n.startswith(AUDIT_PREFIX)))
            raise _Refused(f"unknown attribute '{name}' (the audit.* attributes are {known})")
        else:
            other[name] = _json_value(value)
    tenant = tenant or facts.tenant or default_tenant
    if not tenant:
        raise _Refused(f"attribute '{TENANT_ATTRIBUTE}' is required: this ingest key writes several tenants "
                       f"({', '.join(sorted(key.tenants))})")
    row["tenant_id"] = tenant
    row["trace_id"] = _hex_id(record.trace_id, 16, "trace_id")
    row["span_id"] = _hex_id(record.span_id, 8, "span_id")
    extras: dict[str, Any] = {}
    if other:
        extras["attributes"] = other
    body = _json_value(record.body) if record.HasField("body") else None
    if body is not None and body != "":
        extras["body"] = body
    if record.event_name:
        extras["event_name"] = record.event_name
    if record.dropped_attributes_count:
        extras["dropped_attributes_count"] = record.dropped_attributes_count
    if extras:
        row["metadata"] = _with_extras(row.get("metadata", ""), extras)
    nanos = record.time_unix_nano or record.observed_time_unix_nano
    return row, nanos // 1000


def _with_extras(metadata: str, extras: dict[str, Any]) -> str:
    """``audit.metadata`` with the record's other content under OTEL_METADATA_KEY."""
    try:
        merged = json.loads(metadata) if metadata else {}
    except ValueError:
        merged = None
    if not isinstance(merged, dict):
        raise _Refused("attribute 'audit.metadata' must be a JSON object")
    if OTEL_METADATA_KEY in merged:
        raise _Refused(f"attribute 'audit.metadata' may not hold the key '{OTEL_METADATA_KEY}': the collector "
                       "keeps the record's other attributes and body there")
    merged[OTEL_METADATA_KEY] = extras
    return _dumps(merged)


def map_records(raw: bytes, scanned: ScannedRequest, key: IngestKey) -> MappedRecords:
    """The request's log records as rows of WIRE_SCHEMA.  A record without
    ``audit.event.id`` gets a UUIDv7 from its time and the SHA-256 of its
    resource, scope and record bytes (and, for the n-th byte-identical
    record of the same request, n): a retried request maps to the same ids."""
    default_tenant = next(iter(key.tenants)) if len(key.tenants) == 1 else ""
    rows: list[dict[str, str]] = []
    created: list[int] = []
    positions: list[RecordPosition] = []
    refused: list[RecordRejection] = []
    occurrences: dict[bytes, int] = {}
    ordinal = 0
    for r, resource in enumerate(scanned.resources):
        facts = _resource_facts(resource.resource)
        resource_hash = hashlib.sha256(_ID_SALT)
        resource_hash.update(hashlib.sha256(resource.resource).digest())
        for s, scope in enumerate(resource.scopes):
            scope_hash = resource_hash.copy()
            scope_hash.update(hashlib.sha256(scope.scope).digest())
            for k, (start, end) in enumerate(scope.records):
                position = RecordPosition(ordinal, r, s, k)
                ordinal += 1
                try:
                    if facts.refusal:
                        raise _Refused(facts.refusal)
                    if end - start > MAX_RECORD_BYTES:
                        raise _Refused(f"is {end - start} bytes, over {MAX_RECORD_BYTES}: no event is that large")
                    body = raw[start:end]
                    try:
                        record = logs_pb2.LogRecord.FromString(body)
                    except DecodeError as exc:
                        raise _Refused(f"is not a valid LogRecord: {exc}") from exc
                    row, created_us = _map_record(record, facts, default_tenant, key)
                except _Refused as exc:
                    refused.append(RecordRejection(position, str(exc)))
                    continue
                if "id" not in row:
                    digest_of = scope_hash.copy()
                    digest_of.update(body)
                    digest = digest_of.digest()
                    seen = occurrences.get(digest, 0)
                    occurrences[digest] = seen + 1
                    if seen:
                        digest = hashlib.sha256(digest + seen.to_bytes(8, "big")).digest()
                    row["id"] = uuid7_from(created_us // 1000, digest)
                rows.append(row)
                created.append(created_us)
                positions.append(position)
    return MappedRecords(_table(rows, created), positions, refused, ordinal)


def _translated(rejection: Rejection, position: RecordPosition) -> RecordRejection:
    """A validation Rejection (wire field names) in OTLP terms."""
    if rejection.field == "created_at" and rejection.message.startswith("is missing"):
        return RecordRejection(position, "time_unix_nano and observed_time_unix_nano are both unset")
    source = FIELD_SOURCES.get(rejection.field, rejection.field)
    return RecordRejection(position, f"{source} {rejection.message}" if source else rejection.message)


def partial_success_message(refused: Sequence[RecordRejection], total: int) -> str:
    """``error_message`` of a partial success: the count, then the first
    refusals with their positions and reasons."""
    head = f"{len(refused)} of {total} log records rejected ({total - len(refused)} accepted): "
    shown: list[str] = []
    size = len(head)
    for rejection in refused[:_MESSAGE_NAMES]:
        text = str(rejection)
        if shown and size + len(text) + 2 > _MESSAGE_BUDGET:
            break
        shown.append(text)
        size += len(text) + 2
    more = f"; and {len(refused) - len(shown)} more" if len(refused) > len(shown) else ""
    return head + "; ".join(shown) + more


# -- the service ----------------------------------------------------------------


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    context.abort(code, message)
    raise AssertionError("abort() raises")


def _abort_busy(context: grpc.ServicerContext, delay_s: float, why: str) -> NoReturn:
    """RESOURCE_EXHAUSTED with a google.rpc.RetryInfo, the one form of it
    the OTLP specification lets an exporter retry.  Sent twice: in the
    standard ``grpc-status-details-bin`` (a google.rpc.Status, which Go and
    Java exporters and the OpenTelemetry Collector read) and alone in
    ``google.rpc.retryinfo-bin`` (which the Python exporter reads)."""
    from google.protobuf import any_pb2, duration_pb2  # noqa: PLC0415
    from google.rpc import error_details_pb2, status_pb2  # noqa: PLC0415

    message = f"collector busy ({why}); nothing was stored: retry in {delay_s:g} s"
    retry = error_details_pb2.RetryInfo(
        retry_delay=duration_pb2.Duration(seconds=int(delay_s), nanos=int((delay_s % 1) * 1e9)))
    detail = any_pb2.Any()
    detail.Pack(retry)
    status = status_pb2.Status(code=grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], message=message,
                               details=[detail])
    context.set_trailing_metadata((("grpc-status-details-bin", status.SerializeToString()),
                                   ("google.rpc.retryinfo-bin", retry.SerializeToString())))
    _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, message)


class OtlpLogsService:
    """gRPC ``opentelemetry.proto.collector.logs.v1.LogsService/Export``:
    log records in, audit events stored, through the same write path as
    AuditService (receive.py)."""

    def __init__(self, path: IngestPath) -> None:
        """``path``: the native AuditService's (its ``path``): the same keys,
        write path, batch ids and limits, and one CPU limit for both."""
        self._keys = path.keys
        self._store = path.store
        self._batches = path.batches
        self._limits = path.limits
        self._overloaded = path.overloaded
        self._clock = path.clock
        #: Row indices of a batch whose (tenant_id, id) is already stored.
        self._seen = path.seen
        self._cpu = path.cpu

    def handler(self) -> grpc.GenericRpcHandler:
        """The service for ``grpc.Server.add_generic_rpc_handlers``: Export
        receives the raw bytes, so the key is checked and the records
        counted before anything is parsed."""
        return grpc.method_handlers_generic_handler(SERVICE_NAME, {
            "Export": grpc.unary_unary_rpc_method_handler(
                self.export_wire, request_deserializer=None,
                response_serializer=logs_service_pb2.ExportLogsServiceResponse.SerializeToString),
        })

    def export_wire(self, raw: bytes, context: grpc.ServicerContext) -> logs_service_pb2.ExportLogsServiceResponse:
        """Export from the serialized request."""
        key = self._authenticate(context)
        try:
            with self._cpu:
                scanned = scan_request(raw, self._limits.max_batch_events)
        except ValueError as exc:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"not a valid ExportLogsServiceRequest: {exc}"
                   if not isinstance(exc, RequestTooLarge) else str(exc))
        if scanned.records == 0:
            return logs_service_pb2.ExportLogsServiceResponse()
        with self._cpu:
            mapped = map_records(raw, scanned, key)
        self._check_tenants(mapped, key, context)
        # OTLP requests carry no batch id; exporters retry the same bytes.
        # Scoped by the key, as the native batch ids are.
        scoped = f"{key.key_id}/otlp-{hashlib.sha256(raw).hexdigest()}"
        if self._batches.stored(scoped) is not None:  # a retry: answer even when busy
            return self._answer_again(mapped)
        busy = self._overloaded()
        if busy is not None:
            _abort_busy(context, *busy)
        owned, previous = self._batches.claim(scoped)
        if not owned:
            if isinstance(previous, Future):
                try:
                    previous.result(timeout=30)
                except Exception:  # noqa: BLE001 - the first attempt failed: retry it
                    _abort(context, grpc.StatusCode.ABORTED, "a concurrent attempt failed; retry")
            return self._answer_again(mapped)
        try:
            with self._cpu:
                now_us = int(self._clock() * 1_000_000)
                refused, table = self._refusals(mapped, now_us)
                table, duplicates = self._new_rows(table)
                # The key's id (never its secret) is stored with each event.
                durable = (self._store(AcceptedBatch(scoped, now_us, table, ingest_key_id=key.key_id))
                           if table.num_rows else None)
            if durable is not None:
                durable.result()  # the fsync, shared with concurrent requests
        except Exception as exc:
            log.exception("storing OTLP batch %s failed", scoped)
            self._batches.finish(scoped, None)
            _abort(context, grpc.StatusCode.UNAVAILABLE, f"the collector could not store the batch: {exc}")
        self._batches.finish(scoped, table.num_rows)
        if duplicates:
            log.info("dropped %d events of OTLP batch %s whose (tenant, id) was stored before",
                     duplicates, scoped)
        return self._answer(refused, mapped.total, key)

    def _authenticate(self, context: grpc.ServicerContext) -> IngestKey:
        try:
            return self._keys.authenticate(bearer_token(context))
        except AuthError as exc:
            _abort(context, grpc.StatusCode.UNAUTHENTICATED, f"{exc} (OTLP exporters: headers "
                   "'authorization=Bearer <key>', e.g. OTEL_EXPORTER_OTLP_HEADERS=authorization=Bearer%20<key>)")
        except StorageError as exc:
            _abort(context, grpc.StatusCode.UNAVAILABLE, f"cannot read the ingest keys: {exc}")

    def _check_tenants(self, mapped: MappedRecords, key: IngestKey, context: grpc.ServicerContext) -> None:
        """PERMISSION_DENIED, nothing stored, for a record of a tenant the key may not write."""
        tenants = mapped.table.column("tenant_id")
        foreign = pc.invert(pc.is_in(tenants, pa.array(sorted(key.tenants), pa.string())))
        rows = pc.indices_nonzero(pc.fill_null(foreign, False))
        if len(rows):
            row = rows[0].as_py()
            _abort(context, grpc.StatusCode.PERMISSION_DENIED,
                   f"{mapped.positions[row]}: this API key may not write tenant '{tenants[row].as_py()}' "
                   f"(allowed: {', '.join(sorted(key.tenants))}); nothing in this request was stored")

    def _refusals(self, mapped: MappedRecords, now_us: int) -> tuple[list[RecordRejection], pa.Table]:
        """Every refused record (mapping and validation, by position) and
        the normalized rows that passed validation."""
        table = normalize(mapped.table)
        found = validate(table, now_us, self._limits)
        named = {r.index for r in found}
        found += [r for r in reserved_service_rows(table) if r.index not in named]
        refused = list(mapped.refused) + [_translated(r, mapped.positions[r.index]) for r in found]
        refused.sort(key=lambda r: r.position.ordinal)
        if found:
            keep = np.ones(table.num_rows, bool)
            keep[[r.index for r in found]] = False
            table = table.filter(pa.array(keep))
        return refused, table

    def _new_rows(self, table: pa.Table) -> tuple[pa.Table, int]:
        """``table`` without the events stored before (or repeated in it)."""
        dup_rows = self._seen(table)
        if not len(dup_rows):
            return table, 0
        keep = np.ones(table.num_rows, bool)
        keep[dup_rows] = False
        return table.filter(pa.array(keep)), len(dup_rows)

    def _answer_again(self, mapped: MappedRecords) -> logs_service_pb2.ExportLogsServiceResponse:
        """The answer to a request stored before (or in flight): nothing is
        stored again; the refusals are found again from the same bytes."""
        with self._cpu:
            refused, _ = self._refusals(mapped, int(self._clock() * 1_000_000))
        return self._answer(refused, mapped.total, None)

    def _answer(self, refused: Sequence[RecordRejection], total: int,
                key: IngestKey | None) -> logs_service_pb2.ExportLogsServiceResponse:
        if not refused:
            return logs_service_pb2.ExportLogsServiceResponse()
        message = partial_success_message(refused, total)
        if key is not None:
            # Some exporters (Python's) do not report partial success at all:
            # the collector's log is where an operator sees it.
            log.warning("OTLP export with ingest key %s: %s", key.key_id, message)
        return logs_service_pb2.ExportLogsServiceResponse(
            partial_success=logs_service_pb2.ExportLogsPartialSuccess(
                rejected_log_records=len(refused), error_message=message))
