"""A raw gRPC client for tests: builds columnar ExportRequests and sends them,
so collector tests do not depend on the SDK."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any

import grpc

from auditlake.collector.schema import STRING_FIELDS
from auditlake.packing import pack_columns
from auditlake.v1 import audit_pb2, audit_pb2_grpc


def make_event(i: int = 0, **fields: Any) -> dict[str, Any]:
    """A complete, valid event; ``fields`` override."""
    event: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "tenant_id": "acme",
        "user_id": f"user-{i % 7}",
        "action": "read",
        "resource_type": "patient",
        "resource_id": f"p-{i}",
        "changes": "{}",
        "ip_address": "10.0.0.1",
        "user_agent": "test-agent/1.0",
        "outcome": "success",
        "reason": "",
        "service": "tests",
        "trace_id": "",
        "span_id": "",
        "request_id": f"req-{i}",
        "metadata": "{}",
        "created_at_us": int(time.time() * 1_000_000),
    }
    event.update(fields)
    return event


def request(
    events: Sequence[dict[str, Any]], batch_id: str | None = None, form: str = "columns"
) -> audit_pb2.ExportRequest:
    """Events as a columnar ExportRequest: repeated fields (``form="columns"``)
    or packed columns (``form="packed"``, the SDK's form)."""
    if form == "packed":
        names = (*STRING_FIELDS, "created_at_us")
        packed = pack_columns({name: [e[name] for e in events] for name in names})
        return audit_pb2.ExportRequest(batch_id=batch_id or str(uuid.uuid4()), packed=packed)
    cols = audit_pb2.EventColumns()
    for name in STRING_FIELDS:
        getattr(cols, name).extend([e[name] for e in events])
    cols.created_at_us.extend([e["created_at_us"] for e in events])
    return audit_pb2.ExportRequest(batch_id=batch_id or str(uuid.uuid4()), columns=cols)


class WireClient:
    """One channel to a collector."""

    def __init__(self, endpoint: str) -> None:
        self.channel = grpc.insecure_channel(endpoint)
        self.stub = audit_pb2_grpc.AuditServiceStub(self.channel)

    def export(self, events: Sequence[dict[str, Any]], key: str | None,
               batch_id: str | None = None, timeout: float = 30,
               form: str = "columns") -> audit_pb2.ExportResponse:
        metadata = [("authorization", f"Bearer {key}")] if key is not None else []
        return self.stub.Export(request(events, batch_id, form), metadata=metadata, timeout=timeout)

    def close(self) -> None:
        self.channel.close()
