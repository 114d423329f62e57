"""Expiring cold day partitions past the policy: sign one ``expire``
tombstone for the group (what is deleted, under which policy and holds, and
the seq ranges of the chain it removes, so verify accepts the gap), record it
in the cold index, then delete the cold files and announce the expiry.

A crash after the tombstone leaves files the index lists as pending delete;
the next run finishes deleting them (``finish``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from auditlake.collector.integrity.checkpoint import FileEntry
from auditlake.collector.lake.cold import ColdIndex, partition_day
from auditlake.collector.retention.checkpoints import CheckpointAppender
from auditlake.collector.retention.interrupts import Cancelled, fail_point
from auditlake.collector.retention.plan import DayPlan
from auditlake.collector.retention.policy import RetentionPolicy
from auditlake.collector.retention.report import RetentionReport
from auditlake.collector.storage.store import Store
from auditlake.collector.storage.tiers import COLD_PREFIX


def _seq_ranges(table: pa.Table) -> list[list[Any]]:
    """Contiguous runs of ``seq`` with the chain hash of each run's last seq."""
    t = table.sort_by("seq")
    seqs = t.column("seq").to_pylist()
    hashes = t.column("chain_hash").to_pylist()
    out: list[list[Any]] = []
    for s, h in zip(seqs, hashes, strict=True):
        if out and s == out[-1][1] + 1:
            out[-1][1], out[-1][2] = s, h
        else:
            out.append([s, s, h])
    return out


@dataclass
class Expirer:
    """Deletes groups of cold day partitions from ``tier``, each group under
    one signed expire tombstone."""

    tier: Store
    index: ColdIndex
    append_checkpoint: CheckpointAppender
    #: Stores the meta-audit of checkpoints not announced yet.
    announce: Callable[[], None]
    policy: RetentionPolicy
    cancel: threading.Event

    def expire(self, plans: list[DayPlan], report: RetentionReport) -> None:
        """Delete a group of cold day partitions under one signed tombstone."""
        files = [f for p in plans for f in self.index.day_files(p.day)]
        if not files:
            return
        removed = []
        ranges = []
        for rel, e in files:
            if self.cancel.is_set():
                raise Cancelled
            with self.tier.open_input(rel) as f:
                t = pq.read_table(f, columns=["seq", "chain_hash"])
            removed.append(FileEntry(COLD_PREFIX + rel, e["sha256"], int(e["bytes"]), int(e["rows"]),
                                     int(e["first_seq"]), int(e["last_seq"])))
            ranges.append({"path": COLD_PREFIX + rel, "seq_ranges": _seq_ranges(t)})
        days = sorted({partition_day(rel).isoformat() for rel, _ in files})
        extra = {
            "days": days,
            "policy": self.policy.as_json(),
            "legal_holds": [h.as_json() for h in self.policy.legal_holds],
            "ranges": ranges,
        }
        cp = self.append_checkpoint("expire", [], removed, extra)
        fail_point("expire_checkpointed")
        self.index.apply(cp, announced=False)
        self.index.save()
        fail_point("expire_indexed")
        self._delete_cold([rel for rel, _ in files])
        self.announce()
        report.expired_days += len(days)
        report.expired_files += len(removed)
        report.expired_rows += sum(e.rows for e in removed)

    def finish(self, plans: list[DayPlan], report: RetentionReport) -> None:
        """Delete the cold files of expiries a crash interrupted after signing."""
        self._delete_cold([f for p in plans for f in p.files])

    def _delete_cold(self, rels: list[str]) -> None:
        for i, rel in enumerate(rels):
            self.tier.delete(rel)
            if i == 0:
                fail_point("cold_removed_partly")
            if rel in self.index.pending_delete:
                self.index.pending_delete.remove(rel)
        self.index.save()
