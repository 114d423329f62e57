"""The stored event's columns: names, Arrow types and limits.

Column names are a public contract (analysts' saved SQL depends on them);
change them only with a migration note in docs/architecture.md.
"""

from __future__ import annotations

import pyarrow as pa

#: Event fields sent by clients, in wire (protobuf) order.  ``created_at`` is
#: carried on the wire as ``created_at_us`` (int64 microseconds, UTC).
STRING_FIELDS: tuple[str, ...] = (
    "id",
    "tenant_id",
    "user_id",
    "action",
    "resource_type",
    "resource_id",
    "changes",
    "ip_address",
    "user_agent",
    "outcome",
    "reason",
    "service",
    "trace_id",
    "span_id",
    "request_id",
    "metadata",
)

#: Fields every event must carry (non-empty).
REQUIRED_FIELDS: tuple[str, ...] = ("id", "tenant_id", "action", "resource_type")

#: Maximum length in bytes (UTF-8) of each string field.
MAX_BYTES: dict[str, int] = {
    "id": 64,
    "tenant_id": 128,
    "user_id": 256,
    "action": 64,
    "resource_type": 128,
    "resource_id": 512,
    "changes": 65536,
    "ip_address": 64,
    "user_agent": 1024,
    "outcome": 16,
    "reason": 2048,
    "service": 256,
    "trace_id": 32,
    "span_id": 16,
    "request_id": 128,
    "metadata": 65536,
}

OUTCOMES: frozenset[str] = frozenset({"success", "failure", "denied"})

TIMESTAMP = pa.timestamp("us", tz="UTC")

#: The stored file schema, in file column order.  The ``date`` column is the
#: Hive partition (``date=YYYY-MM-DD/``), not stored inside files.
EVENT_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("tenant_id", pa.string(), nullable=False),
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("action", pa.string(), nullable=False),
        pa.field("resource_type", pa.string(), nullable=False),
        pa.field("resource_id", pa.string(), nullable=False),
        pa.field("changes", pa.string(), nullable=False),
        pa.field("ip_address", pa.string(), nullable=False),
        pa.field("user_agent", pa.string(), nullable=False),
        pa.field("created_at", TIMESTAMP, nullable=False),
        pa.field("outcome", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("service", pa.string(), nullable=False),
        pa.field("trace_id", pa.string(), nullable=False),
        pa.field("span_id", pa.string(), nullable=False),
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("metadata", pa.string(), nullable=False),
        pa.field("received_at", TIMESTAMP, nullable=False),
        # Integrity columns (docs/integrity.md).
        pa.field("writer_id", pa.string(), nullable=False),
        # The key_id of the ingest key that delivered the event ("" for the
        # collector's own events); absent from files written before it existed.
        pa.field("ingest_key_id", pa.string(), nullable=False),
        pa.field("seq", pa.int64(), nullable=False),
        pa.field("imported", pa.bool_(), nullable=False),
        pa.field("clock_skew", pa.bool_(), nullable=False),
        pa.field("chain_hash", pa.string(), nullable=False),
    ]
)

#: Every stored column, in file order.
COLUMNS: tuple[str, ...] = tuple(EVENT_SCHEMA.names)

#: The column added in canonical encoding version 2 (docs/integrity.md):
#: files sealed before it have every other column and no ``ingest_key_id``.
INGEST_KEY_COLUMN = "ingest_key_id"
#: The schema of files sealed before ``ingest_key_id`` existed (read, never written).
LEGACY_EVENT_SCHEMA = EVENT_SCHEMA.remove(EVENT_SCHEMA.get_field_index(INGEST_KEY_COLUMN))

#: The collector's own tenant: meta-audit events (reads, exports, retention).
SYSTEM_TENANT = "_auditlake"
#: ``service`` values of the collector's own events start with this; no
#: ingest key may send them, so a tenant cannot forge the collector's records.
RESERVED_SERVICE_PREFIX = "auditlake"
