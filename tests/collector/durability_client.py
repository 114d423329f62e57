"""A raw gRPC ingest client for the durability tests (no SDK): builds
columnar batches and sends them with an explicit batch id."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import grpc

from auditlake.v1 import audit_pb2, audit_pb2_grpc


def new_ids(n: int) -> list[str]:
    """``n`` fresh UUID strings."""
    return [str(uuid.uuid4()) for _ in range(n)]


def columns(ids: Sequence[str], tenant: str = "acme", created_at_us: int | None = None,
            changes: str = "") -> audit_pb2.EventColumns:
    """One column batch: an event per id, everything else constant."""
    n = len(ids)
    now = created_at_us or int(time.time() * 1_000_000)
    return audit_pb2.EventColumns(
        id=list(ids),
        tenant_id=[tenant] * n,
        user_id=["u1"] * n,
        action=["update"] * n,
        resource_type=["document"] * n,
        resource_id=[f"doc-{i}" for i in range(n)],
        changes=[changes] * n,
        ip_address=["10.0.0.1"] * n,
        user_agent=["test"] * n,
        created_at_us=[now + i for i in range(n)],
        outcome=[""] * n,
        reason=[""] * n,
        service=["billing"] * n,
        trace_id=[""] * n,
        span_id=[""] * n,
        request_id=[""] * n,
        metadata=[""] * n,
    )


class Client:
    """An ingest-key holding client of one collector endpoint."""

    def __init__(self, endpoint: str, key: str) -> None:
        # Reconnect fast after a kill -9 (gRPC's default backoff grows to minutes).
        self.channel = grpc.insecure_channel(endpoint, options=[
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 500),
        ])
        self.stub = audit_pb2_grpc.AuditServiceStub(self.channel)
        self.metadata = [("authorization", "Bearer " + key)]

    def export(self, batch_id: str, cols: audit_pb2.EventColumns,
               timeout: float = 10.0) -> audit_pb2.ExportResponse:
        """Send one batch; raises grpc.RpcError on a non-OK status."""
        request = audit_pb2.ExportRequest(batch_id=batch_id, columns=cols)
        return self.stub.Export(request, metadata=self.metadata, timeout=timeout)

    def close(self) -> None:
        self.channel.close()


def stream(endpoint: str, key: str, out: str, seconds: float, seed: int) -> None:
    """Send batches for ``seconds``, retrying each (same batch id) until it
    is acknowledged, as the SDK does; append each acknowledged batch's ids
    to ``out`` (one per line, flushed) and the ids of the batch in flight at
    the end to ``out + '.unacked'``."""
    import random

    rnd = random.Random(seed)
    client = Client(endpoint, key)
    deadline = time.monotonic() + seconds
    with open(out, "a") as acked_file:
        while time.monotonic() < deadline:
            ids = new_ids(rnd.randint(1, 400))
            batch_id = str(uuid.uuid4())
            cols = columns(ids)
            while True:
                try:
                    client.export(batch_id, cols, timeout=5)
                    break
                except grpc.RpcError:
                    if time.monotonic() > deadline + 60:
                        with open(out + ".unacked", "a") as f:
                            f.write("".join(i + "\n" for i in ids))
                        return
                    time.sleep(0.05)
            acked_file.write("".join(i + "\n" for i in ids))
            acked_file.flush()
    client.close()


if __name__ == "__main__":
    import sys

    stream(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5]))


def ingest_key(data: Path, *tenants: str) -> str:
    """A new ingest key for ``tenants``, made in this process (the CLI's
    `keys create` costs a Python start-up per call)."""
    from auditlake.collector.ingest.keys import IngestKeyStore
    from auditlake.collector.storage.datadir import DataDir

    return IngestKeyStore(DataDir(data).keys).create(list(tenants or ("acme",)))


def sealed_count(data: Path) -> int:
    """Events in the lake's published files (Parquet footers)."""
    import pyarrow.parquet as pq

    n = 0
    for p in (data / "lake" / "events").glob("date=*/*.parquet"):
        try:
            n += pq.ParquetFile(p).metadata.num_rows
        except OSError:  # replaced by compaction meanwhile
            continue
    return n


def wait_sealed(data: Path, expected: int, timeout: float = 30.0) -> int:
    """Poll until at least ``expected`` events are sealed; returns the count."""
    deadline = time.monotonic() + timeout
    n = sealed_count(data)
    while n < expected and time.monotonic() < deadline:
        time.sleep(0.05)
        n = sealed_count(data)
    return n
