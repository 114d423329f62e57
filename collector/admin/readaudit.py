"""Reading the log is audited: each search, detail view and export (and each
admin login) becomes an event of its own, stored through the same
validation, WAL and chain as live traffic.

In the collector the event goes straight to ``Collector.store``; a command
run outside it (``auditlake export``) drops it into the inbox.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pyarrow as pa

from auditlake.collector.admin.search import uuid7
from auditlake.collector.errors import StorageError
from auditlake.collector.ingest.receive import WIRE_SCHEMA, Limits, normalize, validate
from auditlake.collector.schema import MAX_BYTES, STRING_FIELDS, SYSTEM_TENANT

#: The ``service`` of meta-audit events.
SERVICE = "auditlake-admin"


def _clip(value: str, limit: int) -> str:
    raw = value.encode("utf-8", "replace")
    return raw[:limit].decode("utf-8", "ignore") if len(raw) > limit else value


def meta_event(*, action: str, user: str, tenant: str | None, resource_id: str = "",
               details: dict[str, Any] | None = None, ip: str = "", user_agent: str = "",
               outcome: str = "success", reason: str = "", resource_type: str = "audit_log",
               request_id: str = "", at_us: int | None = None) -> pa.Table:
    """One validated WIRE_SCHEMA row describing a read of the log.
    ``tenant`` None means the read spanned tenants: SYSTEM_TENANT.
    ``at_us``: when the read happened (default now)."""
    meta = json.dumps(details or {}, sort_keys=True, ensure_ascii=False, default=str)
    if len(meta.encode()) > MAX_BYTES["metadata"]:
        meta = json.dumps({"truncated": True, "rows": (details or {}).get("rows")})
    values: dict[str, str] = {name: "" for name in STRING_FIELDS}
    values.update(
        id=uuid7(),
        tenant_id=_clip(tenant or SYSTEM_TENANT, MAX_BYTES["tenant_id"]),
        user_id=_clip(user, MAX_BYTES["user_id"]),
        action=action,
        resource_type=resource_type,
        resource_id=_clip(resource_id, MAX_BYTES["resource_id"]),
        ip_address=_clip(ip, MAX_BYTES["ip_address"]),
        user_agent=_clip(user_agent, MAX_BYTES["user_agent"]),
        outcome=outcome,
        reason=_clip(reason, MAX_BYTES["reason"]),
        service=SERVICE,
        request_id=_clip(request_id, MAX_BYTES["request_id"]),
        metadata=meta,
        changes="{}",
    )
    now_us = int(time.time() * 1_000_000)
    arrays = [pa.array([values[n]], pa.string()) for n in STRING_FIELDS]
    arrays.append(pa.array([at_us or now_us], pa.int64()).cast(WIRE_SCHEMA[-1].type))
    table = normalize(pa.Table.from_arrays(arrays, schema=WIRE_SCHEMA))
    problems = validate(table, now_us, Limits())
    if problems:  # our own event: a bug, never the reader's fault
        raise StorageError(f"meta-audit event invalid: {problems[0]}")
    return table
