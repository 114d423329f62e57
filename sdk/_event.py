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
from typing import Any, Final

from auditlake.sdk._context import Actor
from auditlake.sdk._trace import INVALID_SPAN as _INVALID_SPAN
from auditlake.sdk._trace import span_ids
from auditlake.v1 import audit_pb2

# Positions in the captured tuple.
NS: Final = 0
SEQ: Final = 1
ACTOR: Final = 2
SPAN: Final = 3
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
SEQ_BITS: Final = 42

CapturedEvent = tuple[Any, ...]


def new_sequence() -> itertools.count[int]:
    """A counter for id ordering, starting at a random point below 2**41."""
    return itertools.count(random.SystemRandom().getrandbits(SEQ_BITS - 1))


def format_uuid7(ms: int, seq: int, rand32: int) -> str:
    """The canonical text form of a UUIDv7 from its three parts."""
    value = (
        (ms & 0xFFFF_FFFF_FFFF) << 80
        | 0x7 << 76
        | ((seq >> 30) & 0xFFF) << 64
        | 0b10 << 62
        | (seq & 0x3FFF_FFFF) << 32
        | (rand32 & 0xFFFF_FFFF)
    )
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_ID_SEQ = new_sequence()


def new_id(ns: int) -> str:
    """A fresh UUIDv7 for time ``ns`` (request ids, batch ids)."""
    # random's module instance is reseeded after fork by the stdlib.
    return format_uuid7(ns // 1_000_000, next(_ID_SEQ), random.getrandbits(32))


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
    return _encode_json(value)


_encode_json = json.JSONEncoder(separators=(",", ":"), default=str, ensure_ascii=False).encode


def encode_batch(
    events: Sequence[CapturedEvent], batch_id: str, service: str, rng: random.Random
) -> audit_pb2.ExportRequest:
    """One columnar ExportRequest holding ``events`` in order."""
    ids: list[str] = []
    tenants: list[str] = []
    users: list[str] = []
    actions: list[str] = []
    rtypes: list[str] = []
    rids: list[str] = []
    changes: list[str] = []
    ips: list[str] = []
    agents: list[str] = []
    created: list[int] = []
    outcomes: list[str] = []
    reasons: list[str] = []
    traces: list[str] = []
    spans: list[str] = []
    requests: list[str] = []
    metadata: list[str] = []
    getrandbits = rng.getrandbits
    for event in events:
        ns = event[NS]
        scope: Actor = event[ACTOR]
        ids.append(format_uuid7(ns // 1_000_000, event[SEQ], getrandbits(32)))
        created.append(ns // 1000)
        tenant = event[TENANT_ID]
        tenants.append(_text(tenant if tenant is not None else scope.tenant_id))
        user = event[USER_ID]
        users.append(_text(user if user is not None else scope.user_id))
        actions.append(event[ACTION])
        value = event[RESOURCE_TYPE]
        rtypes.append(value if type(value) is str else _text(value))
        value = event[RESOURCE_ID]
        rids.append(value if type(value) is str else _text(value))
        value = event[CHANGES]
        changes.append(value if type(value) is str else to_json_object(value))
        ip = event[IP_ADDRESS]
        ips.append(_text(ip if ip is not None else scope.ip_address))
        agent = event[USER_AGENT]
        agents.append(_text(agent if agent is not None else scope.user_agent))
        outcomes.append(event[OUTCOME])
        value = event[REASON]
        reasons.append(value if type(value) is str else _text(value))
        span = event[SPAN]
        if span is None or span is _INVALID_SPAN:
            traces.append("")
            spans.append("")
        else:
            trace_id, span_id = span_ids(span)
            traces.append(trace_id)
            spans.append(span_id)
        request = event[REQUEST_ID]
        requests.append(_text(request if request is not None else scope.request_id))
        meta = event[METADATA]
        if scope.metadata:
            if meta is None:
                meta = scope.metadata
            elif isinstance(meta, Mapping):
                meta = {**scope.metadata, **meta}
        metadata.append(to_json_object(meta))
    request_pb = audit_pb2.ExportRequest(batch_id=batch_id)
    columns = request_pb.columns
    columns.id.extend(ids)
    columns.tenant_id.extend(tenants)
    columns.user_id.extend(users)
    columns.action.extend(actions)
    columns.resource_type.extend(rtypes)
    columns.resource_id.extend(rids)
    columns.changes.extend(changes)
    columns.ip_address.extend(ips)
    columns.user_agent.extend(agents)
    columns.created_at_us.extend(created)
    columns.outcome.extend(outcomes)
    columns.reason.extend(reasons)
    columns.service.extend([service] * len(events))
    columns.trace_id.extend(traces)
    columns.span_id.extend(spans)
    columns.request_id.extend(requests)
    columns.metadata.extend(metadata)
    return request_pb


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


def decode_columns(request: audit_pb2.ExportRequest) -> list[dict[str, Any]]:
    """The events of a columnar request as dicts (tests, the in-memory exporter)."""
    columns = request.columns
    lists = [list(getattr(columns, name)) for name in COLUMN_NAMES]
    return [dict(zip(COLUMN_NAMES, row, strict=True)) for row in zip(*lists, strict=True)]
