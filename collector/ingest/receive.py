"""Receive: the gRPC AuditService.  Authenticate, decode the wire batch into
Arrow columns, validate, hand to the write-ahead log, answer once durable.

A batch with invalid events stores the valid ones and answers
``INVALID_ARGUMENT`` with trailing metadata saying exactly what happened
(docs/architecture.md, "Receive"): ``auditlake-accepted`` (events stored),
``auditlake-duplicates``, and the refused rows as ranges
(``auditlake-rejected: 3,5-9``) or a bitmap (``auditlake-rejected-bin``).
A retry of that batch id gets the same answer, from the batch index (the
refused rows are recorded with the batch: seal_progress.BatchOutcome).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json
from google.protobuf.message import DecodeError

from auditlake.collector.errors import AuthError, StorageError
from auditlake.collector.ingest.keys import IngestKey, IngestKeyStore
from auditlake.collector.ingest.wire import fields
from auditlake.collector.lake.batch import AcceptedBatch, BatchIndex
from auditlake.collector.lake.seal_progress import REFUSED_ROWS_KEY, BatchOutcome, RowSet
from auditlake.collector.schema import (
    MAX_BYTES,
    OUTCOMES,
    REQUIRED_FIELDS,
    RESERVED_SERVICE_PREFIX,
    STRING_FIELDS,
)
from auditlake.v1 import audit_pb2, audit_pb2_grpc

log = logging.getLogger(__name__)

#: Wire columns of a received batch, before the collector adds its own.
WIRE_SCHEMA = pa.schema(
    [pa.field(name, pa.string(), nullable=False) for name in STRING_FIELDS]
    + [pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False)]
)

_UUID_RE = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
_HEX_RE = {"trace_id": r"^([0-9a-f]{32})?$", "span_id": r"^([0-9a-f]{16})?$"}
_MAX_BATCH_ID = 128

#: The gRPC service's full name (proto package + service).
SERVICE_NAME = "auditlake.v1.AuditService"

#: Trailers of a partly refused batch (besides ``auditlake-accepted`` and
#: ``auditlake-duplicates``): its refused rows as ranges, or as a bitmap
#: when the ranges would be longer (seal_progress.RowSet); one of the two.
REJECTED_TRAILER = "auditlake-rejected"
REJECTED_BITMAP_TRAILER = "auditlake-rejected-bin"
#: Bytes the refused rows may take in a trailer.  With the message (at most
#: _MESSAGE_BUDGET) and gRPC's own headers, the trailers stay under the
#: 8 KiB a gRPC client accepts by default (``grpc.max_metadata_size``; past
#: it the client sees RESOURCE_EXHAUSTED, and would retry a batch whose
#: valid events are stored).
ROWS_BUDGET = 4096
#: Batches up to this many events always have their refused rows named (as
#: a bitmap at worst); a larger one whose refused rows are too scattered to
#: fit ROWS_BUDGET is refused as a whole, nothing stored.
ALWAYS_NAMED = ROWS_BUDGET * 8
#: Bytes of the status message, as gRPC sends it (percent-encoded).
_MESSAGE_BUDGET = 2048
#: Events named one by one in a refusal's message at most.
_MESSAGE_NAMES = 20


@dataclass(frozen=True)
class Limits:
    """Validation limits for incoming events."""

    #: Events dated further ahead of the collector clock than this are rejected.
    max_future_us: int = 24 * 3600 * 1_000_000
    #: Events further than this from the collector clock are stored, flagged.
    skew_flag_us: int = 15 * 60 * 1_000_000
    max_batch_events: int = 100_000

    def __post_init__(self) -> None:
        for name in ("max_future_us", "skew_flag_us", "max_batch_events"):
            if getattr(self, name) <= 0:
                raise ValueError(f"Limits.{name} must be positive")


@dataclass
class Rejection:
    """One event that failed validation: its index in the batch and why."""

    index: int
    event_id: str
    field: str
    message: str

    def __str__(self) -> str:
        ident = f" (id={self.event_id})" if self.event_id else ""
        what = f"field '{self.field}' " if self.field else ""
        return f"event {self.index}{ident}: {what}{self.message}"


#: Byte lengths as PackedStrings carries them, and created_at_us values.
_LE_U32 = np.dtype("<u4")
_LE_I64 = np.dtype("<i8")


def _packed_strings(column: audit_pb2.PackedStrings, name: str, count: int) -> tuple[pa.Array, list[int]]:
    """One packed column as an Arrow string array, built from its two
    buffers without a Python object per value, and the rows whose bytes are
    not UTF-8 (they hold "" in the array, for the caller to reject)."""
    raw = column.lengths
    if len(raw) != 4 * count:
        raise ValueError(
            f"packed.{name}.lengths holds {len(raw)} bytes; count={count} needs {4 * count} "
            "(one little-endian uint32 per event)"
        )
    data = column.data
    lengths = np.frombuffer(raw, _LE_U32)
    offsets = np.zeros(count + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if int(offsets[-1]) != len(data):
        raise ValueError(
            f"packed.{name}: the lengths add up to {int(offsets[-1])} bytes but data holds {len(data)}"
        )
    if len(data) > np.iinfo(np.int32).max:
        raise ValueError(f"packed.{name}: more than 2 GiB of data in one batch")
    array = pa.StringArray.from_buffers(count, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(data))
    try:
        array.validate(full=True)  # UTF-8, in C++
    except pa.ArrowInvalid:
        values = pa.Array.from_buffers(pa.binary(), count, array.buffers()[:3]).to_pylist()
        bad, text = [], []
        for i, value in enumerate(values):
            try:
                text.append(value.decode())
            except UnicodeDecodeError:
                bad.append(i)
                text.append("")
        return pa.array(text, pa.string()), bad
    return array, []


def _decode_packed(packed: audit_pb2.PackedColumns) -> tuple[pa.Table, list[tuple[int, str]]]:
    count = packed.count
    arrays = []
    invalid: list[tuple[int, str]] = []
    for name in STRING_FIELDS:
        array, bad = _packed_strings(getattr(packed, name), name, count)
        arrays.append(array)
        invalid += [(i, name) for i in bad]
    raw = packed.created_at_us
    if len(raw) != 8 * count:
        raise ValueError(
            f"packed.created_at_us holds {len(raw)} bytes; count={count} needs {8 * count} "
            "(one little-endian int64 per event)"
        )
    arrays.append(pa.array(np.frombuffer(raw, _LE_I64), pa.int64()).cast(WIRE_SCHEMA[-1].type))
    return pa.Table.from_arrays(arrays, schema=WIRE_SCHEMA), sorted(invalid)


class BatchTooLarge(ValueError):
    """A batch holds more events than the collector accepts in one request."""

    def __init__(self, events: int, limit: int, *, at_least: bool = False) -> None:
        count = f"more than {limit}" if at_least else str(events)
        super().__init__(f"batch holds {count} events; the limit is {limit}: send smaller batches")


def wire_event_count(raw: bytes, stop_after: int) -> int:
    """How many ``ExportRequest.events`` entries the serialized request holds,
    counted from the wire without parsing a message (the count stops once it
    passes ``stop_after``, so the scan costs at most that many steps).

    An empty ``AuditEvent`` costs 2 bytes on the wire and ~275 parsed: this
    check runs before parsing, so a small request cannot make a large one.
    Raises ValueError on a malformed top-level field."""
    events = 0
    for number, _, _ in fields(raw, 0, len(raw)):
        if number == _EVENTS_FIELD:
            events += 1
            if events > stop_after:
                return events
    return events


#: ExportRequest.events' field number (proto/auditlake/v1/audit.proto).
_EVENTS_FIELD = 2


def decode_request(request: audit_pb2.ExportRequest,
                   max_events: int | None = None) -> tuple[pa.Table, list[tuple[int, str]]]:
    """The request's events (messages, then columns, then packed columns) as
    one Arrow table of WIRE_SCHEMA, and the (row, field) of each value that
    is not UTF-8 (packed columns only; such a value reads as "").  Raises
    ValueError when the columns do not hold one value per event, and
    BatchTooLarge past ``max_events`` before any value is converted."""
    if max_events is not None:
        packed = request.packed.count if request.HasField("packed") else 0
        total = len(request.events) + len(request.columns.id) + packed
        if total > max_events:
            raise BatchTooLarge(total, max_events)
    tables = []
    invalid: list[tuple[int, str]] = []
    if len(request.events):
        events = request.events
        arrays = [pa.array([getattr(e, name) for e in events], pa.string()) for name in STRING_FIELDS]
        arrays.append(
            pa.array([e.created_at_us for e in events], pa.int64()).cast(WIRE_SCHEMA[-1].type)
        )
        tables.append(pa.Table.from_arrays(arrays, schema=WIRE_SCHEMA))
    cols = request.columns
    n = len(cols.id)
    if n or request.HasField("columns"):
        arrays = []
        for name in STRING_FIELDS:
            values = getattr(cols, name)
            if len(values) != n:
                raise ValueError(
                    f"columns.{name} has {len(values)} values, columns.id has {n}: "
                    "every column must hold one value per event"
                )
            # list() first: pyarrow converts a list faster than the repeated
            # container it would otherwise iterate item by item.
            arrays.append(pa.array(list(values), pa.string()))
        if len(cols.created_at_us) != n:
            raise ValueError(
                f"columns.created_at_us has {len(cols.created_at_us)} values, "
                f"columns.id has {n}"
            )
        arrays.append(pa.array(list(cols.created_at_us), pa.int64()).cast(WIRE_SCHEMA[-1].type))
        tables.append(pa.Table.from_arrays(arrays, schema=WIRE_SCHEMA))
    if request.HasField("packed"):
        before = sum(t.num_rows for t in tables)
        table, bad = _decode_packed(request.packed)
        tables.append(table)
        invalid += [(before + i, name) for i, name in bad]
    if not tables:
        return WIRE_SCHEMA.empty_table(), []
    return (tables[0] if len(tables) == 1 else pa.concat_tables(tables)), invalid


def _first(mask: pa.Array | pa.ChunkedArray) -> int | None:
    """Index of the first true value of ``mask`` (nulls count as false)."""
    idx = pc.index(pc.fill_null(mask, False), True).as_py()
    return None if idx is None or idx < 0 else int(idx)


def _all_true(mask: pa.Array | pa.ChunkedArray) -> list[int]:
    arr = pc.fill_null(mask, False)
    if not pc.any(arr).as_py():
        return []
    return [int(i) for i in pc.indices_nonzero(arr).to_pylist()]


def normalize(table: pa.Table) -> pa.Table:
    """Defaults: an empty outcome is ``success``; empty changes/metadata are ``{}``."""
    for name, default in (("outcome", "success"), ("changes", "{}"), ("metadata", "{}")):
        col = table.column(name)
        empty = pc.equal(pc.binary_length(col), 0)
        if pc.any(empty).as_py():
            i = table.schema.get_field_index(name)
            table = table.set_column(i, table.schema.field(i), pc.if_else(empty, default, col))
    return table


def _string_array(col: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if col.type != pa.string():
        col = col.cast(pa.string())
    return col


def _byte_lengths(col: pa.Array) -> np.ndarray:
    """Each value's length in bytes, from the offsets (nulls count as 0)."""
    if col.null_count:
        return np.asarray(pc.fill_null(pc.binary_length(col), 0).to_numpy(zero_copy_only=False))
    offsets = np.frombuffer(col.buffers()[1], np.int32)[col.offset : col.offset + len(col) + 1]
    return np.diff(offsets)


def _chars(col: pa.Array) -> np.ndarray:
    """The bytes of every value, back to back (no nulls)."""
    n = len(col)
    offsets = np.frombuffer(col.buffers()[1], np.int32)[col.offset : col.offset + n + 1]
    data = col.buffers()[2]
    if data is None or n == 0:
        return np.zeros(0, np.uint8)
    return np.frombuffer(data, np.uint8)[offsets[0] : offsets[-1]]


_HEX_LOWER = np.zeros(256, bool)
_HEX_LOWER[np.frombuffer(b"0123456789abcdef", np.uint8)] = True
_HEX_ANY = _HEX_LOWER.copy()
_HEX_ANY[np.frombuffer(b"ABCDEF", np.uint8)] = True
_UUID_HEX_AT = np.array([i not in (8, 13, 18, 23) for i in range(36)])


def _all_uuids(col: pa.Array, lengths: np.ndarray) -> bool:
    """True when every value is an 8-4-4-4-12 hex UUID (checked on the raw
    bytes with numpy); False means "not sure", check with the regex."""
    if col.null_count or not (lengths == 36).all():
        return False
    chars = _chars(col).reshape(-1, 36)
    return bool(_HEX_ANY[chars[:, _UUID_HEX_AT]].all() and (chars[:, ~_UUID_HEX_AT] == ord("-")).all())


def _all_hex(col: pa.Array, lengths: np.ndarray, width: int) -> bool:
    """True when every value is empty or ``width`` lowercase hex digits."""
    if col.null_count or not ((lengths == 0) | (lengths == width)).all():
        return False
    return bool(_HEX_LOWER[_chars(col)].all())


def _non_object_values(col: pa.Array) -> list[str]:
    """The distinct values of ``col`` that are not one JSON object.  Each
    distinct value is parsed once: real traffic repeats its metadata and
    many of its changes."""
    distinct = pc.unique(col)
    distinct = distinct.filter(pc.not_equal(distinct, "{}"))
    if len(distinct) == 0 or _all_json_objects(distinct):
        return []
    bad = []
    for value in distinct.to_pylist():
        try:
            ok = isinstance(json.loads(value), dict)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            bad.append(value)
    return bad


def validate(
    table: pa.Table,
    now_us: int,
    limits: Limits,
    not_utf8: Sequence[tuple[int, str]] = (),
) -> list[Rejection]:
    """Every validation problem of a normalized batch, at most one per event.

    ``not_utf8`` lists the (row, field) values decode_request found not to
    be UTF-8.  The common case (every event valid) is checked with numpy on
    the raw column buffers; the precise per-event messages come from slower
    checks run only when something is wrong.
    """
    problems: dict[int, Rejection] = {}
    ids = table.column("id")

    def reject_rows(rows: Iterable[int], field: str, message: str) -> None:
        for i in rows:
            i = int(i)
            if i not in problems:
                problems[i] = Rejection(i, ids[i].as_py()[:64], field, message)

    def reject(mask: pa.Array | pa.ChunkedArray, field: str, message: str) -> None:
        reject_rows(_all_true(mask), field, message)

    for i, name in not_utf8:
        reject_rows([i], name, "is not valid UTF-8")
    columns = {name: _string_array(table.column(name)) for name in STRING_FIELDS}
    lengths = {name: _byte_lengths(col) for name, col in columns.items()}
    for name in REQUIRED_FIELDS:
        empty = lengths[name] == 0
        if empty.any():
            reject_rows(np.flatnonzero(empty), name, "is required")
    for name in STRING_FIELDS:
        limit = MAX_BYTES[name]
        over = lengths[name] > limit
        if over.any():
            reject_rows(np.flatnonzero(over), name, f"is longer than {limit} bytes")
    id_col = columns["id"]
    if not _all_uuids(id_col, lengths["id"]):
        reject(
            pc.and_(
                pc.greater(pc.binary_length(id_col), 0),
                pc.invert(pc.match_substring_regex(id_col, _UUID_RE)),
            ),
            "id",
            "is not a UUID (expected 8-4-4-4-12 hex digits, e.g. a UUIDv7)",
        )
    reject(
        pc.invert(pc.is_in(columns["outcome"], pa.array(sorted(OUTCOMES)))),
        "outcome",
        f"must be one of {', '.join(sorted(OUTCOMES))}",
    )
    for name, regex in _HEX_RE.items():
        if _all_hex(columns[name], lengths[name], MAX_BYTES[name]):
            continue
        reject(
            pc.invert(pc.match_substring_regex(columns[name], regex)),
            name,
            "must be lowercase hex of the W3C trace-context length, or empty",
        )
    created = pc.cast(table.column("created_at"), pa.int64())
    reject(pc.less_equal(created, 0), "created_at", "is missing (created_at_us must be > 0)")
    reject(
        pc.greater(created, now_us + limits.max_future_us),
        "created_at",
        f"is more than {limits.max_future_us // 3_600_000_000} h ahead of the collector clock",
    )
    for name in ("changes", "metadata"):
        bad = _non_object_values(columns[name])
        if bad:
            reject(pc.is_in(columns[name], pa.array(bad, pa.string())), name, "must be a JSON object")
    return [problems[i] for i in sorted(problems)]


#: One thread: a batch is small, and the gRPC workers already run in parallel.
_JSON_ONE_THREAD = pa_json.ReadOptions(use_threads=False, block_size=64 << 20)
_JSON_OBJECTS_ONLY = pa_json.ParseOptions(
    explicit_schema=pa.schema([]), unexpected_field_behavior="ignore"
)


def _all_json_objects(col: pa.Array | pa.ChunkedArray) -> bool:
    """True when every value is one JSON object, checked in C++ (pyarrow's
    newline-delimited JSON reader: ~10x faster than json.loads per row).
    False means "not sure": the caller checks row by row (values holding a
    newline, or two objects on one line, land there too)."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    # One value per line, each at least one object: then n rows parsed means
    # exactly one object per value.
    if pc.any(pc.match_substring(col, "\n")).as_py() or not pc.all(
        pc.and_(pc.starts_with(col, "{"), pc.ends_with(col, "}"))
    ).as_py():
        return False
    joined = pc.binary_join(pa.ListArray.from_arrays(pa.array([0, len(col)], pa.int32()), col), "\n")
    try:
        parsed = pa_json.read_json(
            pa.BufferReader(joined[0].as_buffer()),
            read_options=_JSON_ONE_THREAD,
            parse_options=_JSON_OBJECTS_ONLY,
        )
    except pa.ArrowInvalid:
        return False
    return bool(parsed.num_rows == len(col))


# -- the service -----------------------------------------------------------------


def bearer_token(context: grpc.ServicerContext) -> str | None:
    """The ingest key a call carries (``authorization: Bearer <key>``, or
    ``x-api-key``), for every ingest service on the port."""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            v = str(value)
            return v[7:].strip() if v.lower().startswith("bearer ") else v.strip()
        if key == "x-api-key":
            return str(value).strip()
    return None


@dataclass(frozen=True)
class IngestPath:
    """What every ingest service on the port (AuditService here, OTLP's
    LogsService in otlp.py) authenticates against and stores through, and
    the one limit on how many requests decode and validate at once, so the
    two services together never put more threads on the GIL than cores."""

    keys: IngestKeyStore
    store: Callable[[AcceptedBatch], Future[object]]
    batches: BatchIndex
    limits: Limits
    overloaded: Callable[[], tuple[float, str] | None]
    clock: Callable[[], float]
    #: Row indices of a batch whose (tenant_id, id) is already stored.
    seen: Callable[[pa.Table], np.ndarray]
    # Decoding and validating hold the GIL much of the time: more threads
    # doing it at once than there are cores only fight over it (and
    # starve the sealer); the other workers wait here, off the GIL.
    cpu: threading.BoundedSemaphore


class AuditService(audit_pb2_grpc.AuditServiceServicer):
    """gRPC AuditService.Export: the ingest boundary, where errors become statuses."""

    def __init__(
        self,
        keys: IngestKeyStore,
        store: Callable[[AcceptedBatch], Future[object]],
        batches: BatchIndex,
        *,
        limits: Limits | None = None,
        overloaded: Callable[[], tuple[float, str] | None] = lambda: None,
        clock: Callable[[], float] = time.time,
        max_concurrent: int | None = None,
        seen: Callable[[pa.Table], np.ndarray] = lambda table: np.zeros(0, np.int64),
    ) -> None:
        #: Shared with the other services on the port (otlp.OtlpLogsService).
        self.path = IngestPath(keys, store, batches, limits or Limits(), overloaded, clock, seen,
                               threading.BoundedSemaphore(max_concurrent or os.cpu_count() or 2))
        self._keys = keys
        self._store = store
        self._batches = batches
        self._limits = self.path.limits
        self._overloaded = overloaded
        self._clock = clock
        self._seen = seen
        self._cpu = self.path.cpu

    def handler(self) -> grpc.GenericRpcHandler:
        """The service for ``grpc.Server.add_generic_rpc_handlers``: Export
        receives the request's raw bytes, so the key is checked and the
        events counted before anything is parsed."""
        return grpc.method_handlers_generic_handler(SERVICE_NAME, {
            "Export": grpc.unary_unary_rpc_method_handler(
                self.export_wire, request_deserializer=None,
                response_serializer=audit_pb2.ExportResponse.SerializeToString),
        })

    def export_wire(self, raw: bytes, context: grpc.ServicerContext) -> audit_pb2.ExportResponse:
        """Export from the serialized request: authenticate from the call's
        metadata, bound the event count on the wire, then parse."""
        key = self._authenticate(context)
        try:
            events = wire_event_count(raw, self._limits.max_batch_events)
            if events > self._limits.max_batch_events:
                raise BatchTooLarge(events, self._limits.max_batch_events, at_least=True)
            with self._cpu:
                request = audit_pb2.ExportRequest.FromString(raw)
        except (ValueError, DecodeError) as exc:
            # DecodeError covers invalid UTF-8 in a string field, too.
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"not a valid ExportRequest: {exc}"
                          if isinstance(exc, DecodeError) else str(exc))
        return self._export(request, key, context)

    def Export(  # noqa: N802 - gRPC method name
        self, request: audit_pb2.ExportRequest, context: grpc.ServicerContext
    ) -> audit_pb2.ExportResponse:
        """Export from an already parsed request (in-process callers)."""
        return self._export(request, self._authenticate(context), context)

    def _authenticate(self, context: grpc.ServicerContext) -> IngestKey:
        try:
            return self._keys.authenticate(bearer_token(context))
        except AuthError as exc:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
        except StorageError as exc:
            # A shared lake's keys could not be read yet (the bucket is
            # unreachable at the first check after start): retry later.
            context.abort(grpc.StatusCode.UNAVAILABLE, f"cannot read the ingest keys: {exc}")
        raise AssertionError("abort() raises")

    def _export(self, request: audit_pb2.ExportRequest, key: IngestKey,
                context: grpc.ServicerContext) -> audit_pb2.ExportResponse:
        batch_id = request.batch_id
        if not batch_id or len(batch_id) > _MAX_BATCH_ID or not batch_id.isprintable():
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"batch_id is required (1..{_MAX_BATCH_ID} printable characters, unique per batch)",
            )
        try:
            with self._cpu:
                table, not_utf8 = decode_request(request, self._limits.max_batch_events)
        except (ValueError, pa.ArrowException) as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        tenants = table.column("tenant_id")
        foreign = pc.invert(pc.is_in(tenants, pa.array(sorted(key.tenants), pa.string())))
        bad = _first(pc.and_(foreign, pc.greater(pc.binary_length(tenants), 0)))
        if bad is not None:
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"event {bad} (id={table.column('id')[bad].as_py()}): this API key may not "
                f"write tenant '{tenants[bad].as_py()}' (allowed: {', '.join(sorted(key.tenants))}); "
                "nothing in this batch was stored",
            )
        # Batch ids are the client's: scoped by the key that sent them, so one
        # tenant's id can neither hide another's batch nor probe for it.
        scoped = f"{key.key_id}/{batch_id}"
        stored = self._batches.stored(scoped)
        if stored is not None:  # a retry of a stored batch: answer even when busy
            return self._answer_again(stored, table, not_utf8, context)
        busy = self._overloaded()
        if busy is not None:
            _abort_exhausted(context, *busy)

        owned, previous = self._batches.claim(scoped)
        if not owned:
            if isinstance(previous, Future):
                try:
                    outcome = previous.result(timeout=30)
                except Exception:  # noqa: BLE001 - the first attempt failed: retry it
                    context.abort(grpc.StatusCode.ABORTED, "a concurrent attempt failed; retry")
            else:
                outcome = previous if previous is not None else 0
            return self._answer_again(outcome, table, not_utf8, context)

        accepted: int | None = None
        duplicates = 0
        try:
            with self._cpu:
                now_us = int(self._clock() * 1_000_000)
                table = normalize(table)
                rejections = self._rejections(table, now_us, not_utf8)
                refused = RowSet.of(r.index for r in rejections) if rejections else RowSet()
                durable: Future[object] | None = None
                if refused.size <= ROWS_BUDGET:  # else nothing is stored (below)
                    table, duplicates = self._valid_rows(table, rejections, refused, batch_id)
                    # The key's id (never its secret) is stored with each event,
                    # covered by the chain: who delivered it is part of the evidence.
                    durable = (self._store(AcceptedBatch(scoped, now_us, table, ingest_key_id=key.key_id))
                               if table.num_rows else None)
            if durable is not None:
                durable.result()  # the fsync, shared with concurrent requests
            accepted = table.num_rows
        except Exception as exc:
            log.exception("storing batch %s failed", batch_id)
            self._batches.finish(scoped, None)
            context.abort(grpc.StatusCode.UNAVAILABLE, f"the collector could not store the batch: {exc}")
        if refused.size > ROWS_BUDGET:
            self._batches.finish(scoped, None)  # nothing stored: a retry is judged anew
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, _scattered_message(rejections, table.num_rows))
        assert accepted is not None  # set, or abort() raised
        self._batches.finish(scoped, BatchOutcome(accepted, refused) if refused.count else accepted)
        if rejections:
            _abort_refused(context, rejections, accepted, duplicates, refused, again=False)
        return audit_pb2.ExportResponse(accepted=accepted, duplicate=False, duplicates=duplicates)

    def _rejections(self, table: pa.Table, now_us: int, not_utf8: Sequence[tuple[int, str]]) -> list[Rejection]:
        """Every invalid event of a normalized batch, one Rejection each, by row."""
        found = validate(table, now_us, self._limits, not_utf8)
        named = {r.index for r in found}
        found += [r for r in reserved_service_rows(table) if r.index not in named]
        found.sort(key=lambda r: r.index)
        return found

    def _valid_rows(self, table: pa.Table, rejections: Sequence[Rejection], refused: RowSet,
                    batch_id: str) -> tuple[pa.Table, int]:
        """The rows of ``table`` to store (the refused ones recorded in its
        metadata, for the batch index and state/batches.log) and how many
        were dropped as duplicates."""
        if rejections:
            rejected = pa.array([r.index for r in rejections], pa.int64())
            keep = pc.invert(pc.is_in(pa.array(range(table.num_rows), pa.int64()), rejected))
            table = table.filter(keep).replace_schema_metadata({REFUSED_ROWS_KEY: refused.encode().encode()})
        # Events this tenant stored before (or repeated in the batch) are
        # dropped here and counted in the answer; a copy racing in a
        # concurrent batch is dropped when sealing.
        dup_rows = self._seen(table)
        if len(dup_rows):
            log.info("dropped %d events of batch %s whose (tenant, id) was stored before",
                     len(dup_rows), batch_id)
            keep_rows = np.ones(table.num_rows, bool)
            keep_rows[dup_rows] = False
            table = table.filter(pa.array(keep_rows))
        return table, len(dup_rows)

    def _answer_again(self, outcome: int, table: pa.Table, not_utf8: Sequence[tuple[int, str]],
                      context: grpc.ServicerContext) -> audit_pb2.ExportResponse:
        """The answer to a batch id stored before (or in flight): the first
        answer again, so a client whose first answer was lost learns which
        events were refused (read as "duplicate, all stored", they would be
        lost without a trace)."""
        accepted, n = int(outcome), table.num_rows
        recorded = outcome.refused if isinstance(outcome, BatchOutcome) else None
        if recorded is None and n <= accepted:
            return audit_pb2.ExportResponse(accepted=accepted, duplicate=True)
        # The reasons are not recorded, only the rows: the retry carries the
        # same events, so validating them again names the reasons.  For a
        # batch whose rows are not recorded (stored by an older collector, or
        # replayed from the write-ahead log after a crash), the events missing
        # from its count were refused or duplicates: validation tells which.
        with self._cpu:
            found = self._rejections(normalize(table), int(self._clock() * 1_000_000), not_utf8)
        if recorded is None:
            if not found:
                return audit_pb2.ExportResponse(accepted=accepted, duplicate=True)
            refused, rejections = RowSet.of(r.index for r in found), found
        else:
            refused, reasons = recorded, {r.index: r for r in found}
            ids = table.column("id")
            rejections = [
                reasons.get(i) or Rejection(i, ids[i].as_py()[:64] if i < n else "", "",
                                            "was refused when the batch was first received")
                for i in recorded.rows()
            ]
        duplicates = max(0, n - accepted - refused.count)
        _abort_refused(context, rejections, accepted, duplicates, refused, again=True)
        raise AssertionError("abort() raises")


def _wire_size(text: str) -> int:
    """Bytes of ``text`` as a grpc-message (percent-encoded outside printable ASCII)."""
    return sum(1 if 0x20 <= b <= 0x7E and b != 0x25 else 3 for b in text.encode())


def _named(rejections: Sequence[Rejection], budget: int) -> str:
    """The first rejections, each with its reason, within ``budget`` bytes
    (at least one), and how many more there are."""
    shown: list[str] = []
    size = 0
    for rejection in rejections[:_MESSAGE_NAMES]:
        text = str(rejection)
        cost = _wire_size(text) + 2
        if shown and size + cost > budget:
            break
        shown.append(text)
        size += cost
    more = f"; and {len(rejections) - len(shown)} more" if len(rejections) > len(shown) else ""
    return "; ".join(shown) + more


def _abort_refused(context: grpc.ServicerContext, rejections: Sequence[Rejection], accepted: int,
                   duplicates: int, refused: RowSet, *, again: bool) -> None:
    """INVALID_ARGUMENT for a batch stored in part: the refused rows in a
    trailer, the first reasons in the message (old clients read the rows
    from it: keep its form)."""
    trailers: list[tuple[str, str | bytes]] = [
        ("auditlake-accepted", str(accepted)), ("auditlake-duplicates", str(duplicates))]
    if refused.size <= ROWS_BUDGET:  # else (an older collector's record): the message only
        trailers.append((REJECTED_BITMAP_TRAILER, refused.bitmap) if refused.bitmap
                        else (REJECTED_TRAILER, refused.ranges))
    if again:
        trailers.append(("auditlake-duplicate", "true"))
    context.set_trailing_metadata(tuple(trailers))
    head = (f"{len(rejections)} of {len(rejections) + accepted} events rejected "
            f"({accepted} valid events stored): ")
    context.abort(grpc.StatusCode.INVALID_ARGUMENT, head + _named(rejections, _MESSAGE_BUDGET - len(head)))


def _scattered_message(rejections: Sequence[Rejection], total: int) -> str:
    head = (f"{len(rejections)} of {total} events are invalid, too scattered through the batch to "
            f"name in one answer: nothing of this batch was stored; send batches of at most "
            f"{ALWAYS_NAMED} events, or fix these: ")
    return head + _named(rejections, _MESSAGE_BUDGET - len(head))


def reserved_service_rows(table: pa.Table) -> list[Rejection]:
    """Events claiming to be the collector's own (its service names): only
    the collector writes those, never an ingest key."""
    service = table.column("service")
    mask = pc.starts_with(pc.utf8_lower(service), RESERVED_SERVICE_PREFIX)
    ids = table.column("id")
    return [Rejection(i, ids[i].as_py()[:64], "service",
                      f"'{service[i].as_py()[:64]}' is reserved for the collector's own events "
                      f"(service names starting with '{RESERVED_SERVICE_PREFIX}')")
            for i in _all_true(mask)]


def _abort_exhausted(context: grpc.ServicerContext, delay_s: float, why: str = "over its limits") -> None:
    """RESOURCE_EXHAUSTED with a google.rpc.RetryInfo the client should honour."""
    from google.protobuf import any_pb2, duration_pb2  # noqa: PLC0415

    message = f"collector busy ({why}); nothing was stored: retry in {delay_s:g} s"
    try:
        from google.rpc import error_details_pb2, status_pb2  # noqa: PLC0415
    except ImportError:  # googleapis-common-protos absent: plain status
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, message)
    retry = error_details_pb2.RetryInfo(
        retry_delay=duration_pb2.Duration(seconds=int(delay_s), nanos=int((delay_s % 1) * 1e9))
    )
    detail = any_pb2.Any()
    detail.Pack(retry)
    status = status_pb2.Status(
        code=grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], message=message, details=[detail]
    )
    context.set_trailing_metadata((("grpc-status-details-bin", status.SerializeToString()),))
    context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, message)
