"""Expiring cold day partitions past the policy: sign one ``expire``
tombstone for the group (what is deleted, under which policy and holds, the
seq ranges of the chain it removes, so verify accepts the gap, and the roots
of the Merkle subtrees covering them, so proofs of the events that remain
still build), record it in the cold index, then delete the cold files and
announce the expiry.

Each file is read once, whole: its bytes are checked against the digest its
move checkpoint signed (a changed file must not be deleted under a
tombstone that would hide the change, nor leave wrong roots behind), then
its rows give both the seq ranges and the leaf hashes.

A crash after the tombstone leaves files the index lists as pending delete;
the next run finishes deleting them (``finish``).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from auditlake.collector.errors import IntegrityError
from auditlake.collector.integrity.chain import canonical_column
from auditlake.collector.integrity.checkpoint import SUBTREES_KEY, FileEntry
from auditlake.collector.integrity.merkle import HASH_SIZE, aligned_subtrees, hash_leaves, tree_root
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
    t = table.select(["seq", "chain_hash"]).sort_by("seq")
    seqs = t.column("seq").to_pylist()
    hashes = t.column("chain_hash").to_pylist()
    out: list[list[Any]] = []
    for s, h in zip(seqs, hashes, strict=True):
        if out and s == out[-1][1] + 1:
            out[-1][1], out[-1][2] = s, h
        else:
            out.append([s, s, h])
    return out


class ExpiredLeaves:
    """The leaf hashes of the events one expiry deletes, by writer, and
    the subtree roots the tombstone keeps of them."""

    def __init__(self) -> None:
        self._seqs: dict[str, list[np.ndarray]] = {}
        self._hashes: dict[str, list[bytes]] = {}

    def add(self, table: pa.Table) -> None:
        """Add a file's rows (its own columns: the leaf is their canonical encoding)."""
        writers = pc.unique(table.column("writer_id")).to_pylist()
        for writer in writers:
            rows = table if len(writers) == 1 else table.filter(pc.equal(table.column("writer_id"), writer))
            self._seqs.setdefault(writer, []).append(rows.column("seq").to_numpy())
            self._hashes.setdefault(writer, []).append(b"".join(hash_leaves(canonical_column(rows).to_pylist())))

    def subtrees(self) -> list[dict[str, Any]]:
        """``extra.subtrees`` of the tombstone: for each run of consecutive
        expired seqs of a writer, the maximal complete aligned subtrees
        covering its leaves (leaf index = seq - 1), as ``{"writer", "start",
        "size", "hash"}``, by writer and start.  Proofs of the events that
        remain need no other node of the run (merkle.aligned_subtrees says why)."""
        out: list[dict[str, Any]] = []
        for writer in sorted(self._seqs):
            seqs = np.concatenate(self._seqs[writer])
            hashes = np.frombuffer(b"".join(self._hashes[writer]), np.uint8).reshape(-1, HASH_SIZE)
            order = np.argsort(seqs, kind="stable")
            seqs, hashes = seqs[order], hashes[order]
            if len(seqs) > 1 and not (np.diff(seqs) > 0).all():
                raise IntegrityError(f"the files expired hold writer {writer}'s events twice")
            bounds = [0, *(np.flatnonzero(np.diff(seqs) != 1) + 1).tolist(), len(seqs)]
            for a, b in zip(bounds, bounds[1:], strict=False):
                first = int(seqs[a]) - 1  # the run's first leaf index
                for start, size in aligned_subtrees(first, first + (b - a)):
                    at = a + start - first
                    block = hashes[at:at + size].tobytes()
                    root = tree_root(block[i:i + HASH_SIZE] for i in range(0, len(block), HASH_SIZE))
                    out.append({"writer": writer, "start": start, "size": size, "hash": root.hex()})
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
        leaves = ExpiredLeaves()
        for rel, e in files:
            if self.cancel.is_set():
                raise Cancelled
            data = self.tier.read(rel)
            if hashlib.sha256(data).hexdigest() != e["sha256"]:
                raise IntegrityError(f"cold file {rel} no longer has the digest its move checkpoint signed: "
                                     "not expired (run `auditlake verify`)")
            t = pq.read_table(pa.BufferReader(data))
            removed.append(FileEntry(COLD_PREFIX + rel, e["sha256"], int(e["bytes"]), int(e["rows"]),
                                     int(e["first_seq"]), int(e["last_seq"])))
            ranges.append({"path": COLD_PREFIX + rel, "seq_ranges": _seq_ranges(t)})
            leaves.add(t)
        days = sorted({partition_day(rel).isoformat() for rel, _ in files})
        extra = {
            "days": days,
            "policy": self.policy.as_json(),
            "legal_holds": [h.as_json() for h in self.policy.legal_holds],
            "ranges": ranges,
            SUBTREES_KEY: leaves.subtrees(),
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
