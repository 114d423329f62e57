"""Inbox: how commands that are not the collector (import, export, retention
runs) add events to the lake through the same validation, WAL, chain and
signing as live traffic.

A command writes an Arrow IPC file into ``DIR/inbox/`` (atomically).  The
running collector ingests the inbox at every seal interval; when no collector
holds the data dir, the command ingests it itself (``submit``), so an event
is never lost and the chain keeps one writer.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from auditlake.collector.lake.batch import AcceptedBatch
from auditlake.collector.lake.writer import LakeWriter
from auditlake.collector.storage.datadir import DataDir, try_lock
from auditlake.collector.storage.local import fsync_dir

log = logging.getLogger(__name__)



def inbox_dir(data: DataDir) -> Path:
    return data.root / "inbox"


@dataclass(frozen=True)
class InboxItem:
    """One file in the inbox."""

    path: Path

    def load(self) -> AcceptedBatch:
        """The batch held in the file (its name carries the batch id)."""
        return AcceptedBatch.decode(self.path.read_bytes())


def write_item(data: DataDir, batch: AcceptedBatch) -> Path:
    """Durably drop ``batch`` into the inbox; returns its path."""
    folder = inbox_dir(data)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{time.time_ns():020d}-{batch.batch_id}.batch"
    tmp = final.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(batch.encode())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    fsync_dir(folder)
    return final


def pending_items(data: DataDir) -> list[InboxItem]:
    """Inbox files in arrival order."""
    folder = inbox_dir(data)
    if not folder.exists():
        return []
    return [InboxItem(p) for p in sorted(folder.glob("*.batch"))]


def submit(data: DataDir, table: pa.Table, *, imported: bool = False,
           batch_id: str | None = None, wait_s: float = 30.0) -> str:
    """Add ``table`` (WIRE columns, already validated by the caller) to the
    lake.  If a collector is running on ``data`` it picks the batch up; else
    this process ingests and seals it now.  Returns the batch id."""
    batch = AcceptedBatch(
        batch_id or f"inbox-{uuid.uuid4()}", int(time.time() * 1_000_000), table, imported
    )
    path = write_item(data, batch)
    lock = try_lock(data)
    if lock is None:
        # A collector runs: it ingests the file within a seal interval.
        deadline = time.monotonic() + wait_s
        while path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if path.exists():
            log.warning("the running collector has not taken %s yet; it will", path.name)
        return batch.batch_id
    lock.close()
    writer = LakeWriter.offline(data)
    try:
        drain(writer)
    finally:
        writer.close()
    return batch.batch_id


def drain(writer: LakeWriter) -> int:
    """Store the batches other commands dropped into DIR/inbox/ through
    ``writer`` (each batch id once); returns the events taken."""
    taken = 0
    for item in pending_items(writer.data):
        batch = item.load()
        owned, _ = writer.batches.claim(batch.batch_id)
        if owned:
            try:
                writer.store(batch).result()
            except BaseException:
                writer.batches.finish(batch.batch_id, None)
                raise
            writer.batches.finish(batch.batch_id, batch.table.num_rows)
            taken += batch.table.num_rows
        item.path.unlink()
    return taken
