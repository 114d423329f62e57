"""The captured event and its wire form.

``record()`` stores a plain tuple (layout below) on the caller's thread; the
export thread turns a list of them into one columnar ``ExportRequest``.
Ids are UUIDv7 (RFC 9562): 48-bit Unix milliseconds, then a 42-bit
per-process counter (random start, so ids are unique and time-ordered within
a process: "fixed-length dedicated counter", method 1) spread over rand_a and
the top of rand_b, then 32 random bits drawn on the export thread.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Mapping, Sequence
from typing import Any, Final, cast

from auditlake.packing import pack_columns, pack_int64, set_strings, unpack_columns
from auditlake.sdk._context import ActorFields
from auditlake.sdk._trace import span_ids_in
from auditlake.v1 import audit_pb2

# Positions in the captured tuple.
NS: Final = 0
SEQ: Final = 1
ACTOR: Final = 2
CONTEXT: Final = 3  # OpenTelemetry's current Context at the call
ACTION: Final = 4
RESOURCE_TYPE: Final = 5
RESOURCE_ID: Final = 6
USER_ID: Final = 7
TENANT_ID: Final = 8
OUTCOME: Final = 9
REASON: Final = 10
CHANGES: Final = 11
METADATA: Final = 12
IP_ADDRESS: Final = 13
USER_AGENT: Final = 14
REQUEST_ID: Final = 15
WAITER: Final = 16

OUTCOMES: Final = frozenset({"success", "failure", "denied"})
#: The tenant of events naming none, when no ``tenant_id`` is configured:
#: unauthenticated traffic of a multi-tenant service (setting ``anonymous_tenant``).
ANONYMOUS_TENANT: Final = "anonymous"
SEQ_BITS: Final = 42

CapturedEvent = tuple[Any, ...]


def new_sequence() -> itertools.count[int]:
    """A counter for id ordering, starting at a random point below 2**41."""
    return itertools.count(random.SystemRandom().getrandbits(SEQ_BITS - 1))


def format_uuid7(ms: int, seq: int, rand32: int) -> str:
    """The canonical text form of a UUIDv7 from its three parts.

    Groups: 32+16 bits of milliseconds; version 7 + the counter's top 12
    bits (rand_a); variant 0b10 + the next 14 counter bits; the last 16
    counter bits + 32 random bits.
    """
    return "%08x-%04x-%04x-%04x-%012x" % (  # noqa: UP031 - the fastest form here
        ms >> 16 & 0xFFFF_FFFF,
        ms & 0xFFFF,
        0x7000 | (seq >> 30 & 0xFFF),
        0x8000 | (seq >> 16 & 0x3FFF),
        (seq & 0xFFFF) << 32 | (rand32 & 0xFFFF_FFFF),
    )


_ID_SEQ = new_sequence()


def new_id(ns: int) -> str:
    """A fresh UUIDv7 for time ``ns`` (request ids, batch ids)."""
    # random's module instance is reseeded after fork by the stdlib.
    return format_uuid7(ns // 1_000_000, next(_ID_SEQ), random.getrandbits(32))


def new_request_id(ns: int) -> str:
    """A request id: 24 hex digits, the clock in ns then 32 random bits.

    Time-ordered and unique enough to correlate one request's events, and
    several times cheaper to make than a UUID string (it is made for every
    request that arrives without an ``X-Request-ID``).
    """
    return format_request_id(ns, random.getrandbits(32))


def format_request_id(ns: int, rand32: int) -> str:
    """The request id for a clock reading and 32 random bits."""
    return "%024x" % (ns << 32 | rand32)  # noqa: UP031 - fastest form


def reseed_ids() -> None:
    """Give this process its own id counter (called in a forked child)."""
    global _ID_SEQ
    _ID_SEQ = new_sequence()


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return str(value)


def to_json_object(value: object) -> str:
    """``value`` as a JSON object string ("" for None; a string is taken as JSON)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if not isinstance(value, Mapping):
        value = {"value": value}
    elif not value:
        return "{}"
    return _flat_json(value)


_encode_json = json.JSONEncoder(separators=(",", ":"), default=str, ensure_ascii=False).encode
_quote = json.encoder.encode_basestring
_LITERALS: Final = {None: "null", True: "true", False: "false"}


def _flat_json(value: Mapping[Any, Any]) -> str:
    """JSON of a mapping; flat string/int/bool/None ones (the usual metadata)
    are written directly, about twice as fast as the json module."""
    parts = []
    for key, item in value.items():
        if type(key) is not str:
            return _encode_json(value)
        kind = type(item)
        if kind is str:
            parts.append(f"{_quote(key)}:{_quote(item)}")
        elif kind is int:
            parts.append(f"{_quote(key)}:{item}")
        elif item is None or kind is bool:
            parts.append(f"{_quote(key)}:{_LITERALS[item]}")
        else:
            return _encode_json(value)
    return "{" + ",".join(parts) + "}"


def _texts(values: Sequence[object]) -> Sequence[str]:
    """The column as it can go on the wire: strings, "" for None."""
    for value in values:
        if type(value) is not str:
            return [_text(v) for v in values]
    return cast("Sequence[str]", values)


def _with_scope(values: Sequence[object], scopes: Sequence[ActorFields], field: str) -> list[str]:
    """The explicit value, else the actor scope's."""
    return [
        (v if type(v) is str else _text(v))
        if v is not None
        else (getattr(scope, field) or "")
        for v, scope in zip(values, scopes, strict=True)
    ]


def missing_required(event: CapturedEvent, default_tenant: str) -> str:
    """The first required field (tenant_id, action, resource_type) the event lacks, or ""."""
    # An empty tenant is no tenant: the scope's, then the default, fill it.
    if not (event[TENANT_ID] or event[ACTOR].tenant_id or default_tenant):
        return "tenant_id"
    if not event[ACTION]:
        return "action"
    if not event[RESOURCE_TYPE]:
        return "resource_type"
    return ""


def encode_batch(
    events: Sequence[CapturedEvent],
    batch_id: str,
    service: str,
    rng: random.Random,
    default_tenant: str = "",
) -> audit_pb2.ExportRequest:
    """One ExportRequest holding ``events`` in order, as packed columns
    (auditlake.packing: Arrow's layout, so the collector decodes it without
    a Python object per value)."""
    # Transpose once (in C), then build each column with a comprehension.
    cols = list(zip(*events, strict=True))
    scopes: Sequence[ActorFields] = cols[ACTOR]
    getrandbits = rng.getrandbits
    n = len(events)
    request = audit_pb2.ExportRequest(batch_id=batch_id)
    c = request.packed
    c.count = n
    set_strings(
        c.id,
        [format_uuid7(ns // 1_000_000, seq, getrandbits(32)) for ns, seq in zip(cols[NS], cols[SEQ], strict=True)],
    )
    set_strings(
        c.tenant_id,
        [
            (v if type(v) is str else _text(v)) or scope.tenant_id or default_tenant
            for v, scope in zip(cols[TENANT_ID], scopes, strict=True)
        ],
    )
    set_strings(c.user_id, _with_scope(cols[USER_ID], scopes, "user_id"))
    set_strings(c.action, _texts(cols[ACTION]))
    set_strings(c.resource_type, _texts(cols[RESOURCE_TYPE]))
    set_strings(c.resource_id, _texts(cols[RESOURCE_ID]))
    set_strings(c.changes, [v if type(v) is str else to_json_object(v) for v in cols[CHANGES]])
    set_strings(c.ip_address, _with_scope(cols[IP_ADDRESS], scopes, "ip_address"))
    set_strings(c.user_agent, _with_scope(cols[USER_AGENT], scopes, "user_agent"))
    c.created_at_us = pack_int64([ns // 1000 for ns in cols[NS]])
    set_strings(c.outcome, _texts(cols[OUTCOME]))
    set_strings(c.reason, _texts(cols[REASON]))
    set_strings(c.service, [service] * n)
    contexts = cols[CONTEXT]
    if not any(contexts):
        blank = [""] * n
        set_strings(c.trace_id, blank)
        set_strings(c.span_id, blank)
    else:
        pairs = [span_ids_in(context) for context in contexts]
        set_strings(c.trace_id, [pair[0] for pair in pairs])
        set_strings(c.span_id, [pair[1] for pair in pairs])
    set_strings(c.request_id, _with_scope(cols[REQUEST_ID], scopes, "request_id"))
    set_strings(
        c.metadata,
        [_metadata(meta, scope.metadata) for meta, scope in zip(cols[METADATA], scopes, strict=True)],
    )
    return request


def _metadata(meta: object, inherited: Mapping[str, Any] | None) -> str:
    if inherited:
        if meta is None:
            meta = inherited
        elif isinstance(meta, Mapping):
            meta = {**inherited, **meta}
    if type(meta) is str:
        return meta
    return to_json_object(meta)


COLUMN_NAMES: Final = (
    "id",
    "tenant_id",
    "user_id",
    "action",
    "resource_type",
    "resource_id",
    "changes",
    "ip_address",
    "user_agent",
    "created_at_us",
    "outcome",
    "reason",
    "service",
    "trace_id",
    "span_id",
    "request_id",
    "metadata",
)


def split_request(
    request: audit_pb2.ExportRequest,
) -> tuple[audit_pb2.ExportRequest, audit_pb2.ExportRequest]:
    """The two halves of a request's events, with ids derived from its batch id.

    Derived ids are deterministic, so a half that is retried or spooled is
    still stored once.
    """
    rows = decode_columns(request)
    middle = len(rows) // 2
    return (
        request_of(rows[:middle], f"{request.batch_id}.0"),
        request_of(rows[middle:], f"{request.batch_id}.1"),
    )


def split_by_tenant(request: audit_pb2.ExportRequest) -> list[audit_pb2.ExportRequest]:
    """A request's events, one request per tenant (in order of first
    appearance), with ids ``<batch_id>.t0``, ``.t1``... derived from its batch
    id: deterministic, so a part that is retried or spooled is stored once."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in decode_columns(request):
        groups.setdefault(str(row["tenant_id"]), []).append(row)
    return [
        request_of(rows, f"{request.batch_id}.t{n}") for n, rows in enumerate(groups.values())
    ]


def tenants_of(request: audit_pb2.ExportRequest) -> set[str]:
    """The distinct tenant ids of a request's events."""
    return {str(row["tenant_id"]) for row in decode_columns(request)}


def select_rows(
    request: audit_pb2.ExportRequest, rows: Sequence[int], batch_id: str
) -> audit_pb2.ExportRequest:
    """The events at positions ``rows`` of a request (in its order), as a new
    request with ``batch_id``."""
    events = decode_columns(request)
    return request_of([events[i] for i in sorted(set(rows))], batch_id)


def fill_tenant(request: audit_pb2.ExportRequest, tenant: str) -> audit_pb2.ExportRequest | None:
    """The request with ``tenant`` for its events that have none (same batch
    id), or None when every event has one."""
    rows = decode_columns(request)
    if not tenant or all(row["tenant_id"] for row in rows):
        return None
    for row in rows:
        row["tenant_id"] = row["tenant_id"] or tenant
    return request_of(rows, request.batch_id)


def request_of(rows: Sequence[Mapping[str, Any]], batch_id: str) -> audit_pb2.ExportRequest:
    """A packed request of events given as dicts of columns (``decode_columns``)."""
    request = audit_pb2.ExportRequest(batch_id=batch_id)
    request.packed.CopyFrom(pack_columns({name: [r[name] for r in rows] for name in COLUMN_NAMES}))
    return request


def decode_columns(request: audit_pb2.ExportRequest) -> list[dict[str, Any]]:
    """The events of a request, in all its forms (events, columns, packed),
    as dicts (tests, the in-memory exporter, splitting a batch)."""
    rows = [{name: getattr(e, name) for name in COLUMN_NAMES} for e in request.events]
    columns = request.columns
    lists = [list(getattr(columns, name)) for name in COLUMN_NAMES]
    rows += [dict(zip(COLUMN_NAMES, row, strict=True)) for row in zip(*lists, strict=True)]
    if request.packed.count:
        packed = unpack_columns(request.packed)
        lists = [packed[name] for name in COLUMN_NAMES]
        rows += [dict(zip(COLUMN_NAMES, row, strict=True)) for row in zip(*lists, strict=True)]
    return rows
