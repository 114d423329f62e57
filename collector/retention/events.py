"""Meta-audit: the system tenant's events about auditlake itself (a move, an
expiry, an import), and how a run stores them through the collector's WAL.

Every move and expiry is announced once: the cold index lists the checkpoints
whose events are not stored yet, and the batch id is the checkpoint's, so a
retry after a crash stores them once.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from auditlake.collector.ingest.receive import WIRE_SCHEMA, Limits, normalize, validate
from auditlake.collector.lake.batch import AcceptedBatch
from auditlake.collector.lake.cold import ColdIndex
from auditlake.collector.retention.policy import RetentionPolicy
from auditlake.collector.schema import SYSTEM_TENANT

SYSTEM_ACTOR = "auditlake-retention"

#: Stores one batch of events under a batch id (idempotent per id).
Emitter = Callable[[str, pa.Table], None]


def _uuid7(ms: int) -> str:
    raw = bytearray(ms.to_bytes(6, "big") + os.urandom(10))
    raw[6] = 0x70 | (raw[6] & 0x0F)
    raw[8] = 0x80 | (raw[8] & 0x3F)
    return str(uuid.UUID(bytes=bytes(raw)))


def meta_events(action: str, items: list[tuple[str, dict[str, Any]]], *,
                resource_type: str = "partition", user_id: str = SYSTEM_ACTOR,
                outcome: str = "success", reason: str = "") -> pa.Table:
    """System-tenant audit events about auditlake itself, one per
    (resource_id, metadata) item, as one validated WIRE_SCHEMA table."""
    now_us = time.time_ns() // 1000
    n = len(items)
    cols: dict[str, list[Any]] = {name: [""] * n for name in WIRE_SCHEMA.names}
    cols["id"] = [_uuid7(now_us // 1000) for _ in items]
    cols["resource_id"] = [rid for rid, _ in items]
    cols["metadata"] = [json.dumps(meta, sort_keys=True) for _, meta in items]
    cols["created_at"] = [now_us] * n
    for name, value in (("tenant_id", SYSTEM_TENANT), ("user_id", user_id), ("action", action),
                        ("resource_type", resource_type), ("outcome", outcome), ("reason", reason),
                        ("service", "auditlake")):
        cols[name] = [value] * n
    arrays = [pa.array(cols[f.name], pa.int64()).cast(f.type) if f.name == "created_at"
              else pa.array(cols[f.name], f.type) for f in WIRE_SCHEMA]
    table = normalize(pa.Table.from_arrays(arrays, schema=WIRE_SCHEMA))
    problems = validate(table, now_us, Limits())
    if problems:
        raise ValueError(f"meta-audit event is invalid: {problems[0]}")
    return table


def meta_event(action: str, resource_id: str, metadata: dict[str, Any], **kwargs: Any) -> pa.Table:
    """One system-tenant audit event (see ``meta_events``)."""
    return meta_events(action, [(resource_id, metadata)], **kwargs)


def collector_emitter(collector: Any) -> Emitter:
    """An Emitter storing through a Collector's WAL (started or not); a batch
    id already stored is skipped, so re-announcing after a crash is harmless."""

    def emit(batch_id: str, table: pa.Table) -> None:
        owned, _ = collector.batches.claim(batch_id)
        if not owned:
            return
        batch = AcceptedBatch(batch_id, time.time_ns() // 1000, table, False)
        try:
            collector.store(batch).result()
        except BaseException:
            collector.batches.finish(batch_id, None)
            raise
        collector.batches.finish(batch_id, table.num_rows)

    return emit


def announce_pending(index: ColdIndex, emit: Emitter, policy: RetentionPolicy) -> None:
    """Store the meta-audit events of checkpoints not announced yet (one
    event per partition; the batch id is the checkpoint's, so a retry
    after a crash stores them once)."""
    while index.unannounced:
        a = index.unannounced[0]
        action = "retention_move" if a["kind"] == "move" else "retention_expire"
        items = [
            (day, {**info, "day": day, "checkpoint_seal": a["seal"], "writer": a["writer"],
                   "cold": policy.cold,
                   **({"policy": policy.as_json()} if a["kind"] == "expire" else {})})
            for day, info in sorted(a["days"].items())
        ]
        if items:
            emit(f"retention-{a['kind']}-{a['writer']}-{a['seal']}", meta_events(action, items))
        index.unannounced.pop(0)
        index.save()
