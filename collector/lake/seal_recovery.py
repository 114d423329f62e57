"""What a sealer does on start, besides finishing the last commit
(seal_commit.py): refill the event-id window from the newest sealed files,
and queue every WAL batch after the sealed position again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import pyarrow as pa
import pyarrow.parquet as pq

from auditlake.collector.lake.batch import AcceptedBatch
from auditlake.collector.lake.seal_dedupe import RecentEventIds
from auditlake.collector.lake.wal import LogPosition, WriteAheadLog
from auditlake.collector.storage.store import Store

log = logging.getLogger(__name__)


def rebuild_recent_ids(
    recent_ids: RecentEventIds, checkpoints: Store, lake: Store, writer_id: str, max_files: int = 1000
) -> None:
    """Refill the event-id window from the newest sealed files still in
    place, found through the writer's newest seal checkpoints."""
    want = recent_ids.capacity
    if want == 0:
        return
    names = sorted((o.key for o in checkpoints.list(writer_id, recursive=False)
                    if o.key.endswith("-seal.json")), reverse=True)
    chunks: list[pa.Table] = []
    have = 0
    files = 0
    for name in names:
        if have >= want or files >= max_files:
            break
        try:
            body = json.loads(checkpoints.read(name))
        except (OSError, ValueError):
            continue
        for entry in body.get("files", []):
            files += 1
            try:
                with lake.open_input(entry["path"]) as f:
                    ids = pq.read_table(f, columns=["id", "tenant_id"])
            except (OSError, pa.ArrowException):
                continue  # moved or compacted away: older than the window anyway
            chunks.append(ids)
            have += ids.num_rows
    for ids in reversed(chunks):
        recent_ids.remember(ids.column("id"), ids.column("tenant_id"))
    if have:
        log.info("event-id dedupe window: %d ids from %d recent files", len(recent_ids), files)


def replay(
    wal: WriteAheadLog, position: LogPosition, add: Callable[[AcceptedBatch, LogPosition], None]
) -> list[AcceptedBatch]:
    """Hand every WAL batch after ``position`` to ``add``, in order; returns them."""
    replayed = []
    for payload, pos in wal.read_from(position):
        batch = AcceptedBatch.decode(payload)
        replayed.append(batch)
        add(batch, pos)
    if replayed:
        log.info("recovering %d batches from the write-ahead log", len(replayed))
    return replayed
