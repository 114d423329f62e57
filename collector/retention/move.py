"""Moving day partitions to the cold tier: copy each hot file, read the copy
back and compare digests, sign one ``move`` checkpoint for the group, record
it in the cold index, then remove the hot copies and announce the move.

Until the checkpoint is signed the hot files are the lake and a cold copy
is an orphan the next run removes; after it, the cold files are the lake and
a hot copy left by a crash is removed before anything else (see
``finish`` and ``job.finish_interrupted_moves``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow.compute as pc
import pyarrow.parquet as pq

from auditlake.collector.errors import StorageError
from auditlake.collector.integrity.checkpoint import FileEntry
from auditlake.collector.lake.cold import ColdIndex, partition_day
from auditlake.collector.retention.checkpoints import CheckpointAppender
from auditlake.collector.retention.interrupts import Cancelled, fail_point, pause_before_copy
from auditlake.collector.retention.plan import DayPlan
from auditlake.collector.retention.report import RetentionReport
from auditlake.collector.storage.local import fsync_dir
from auditlake.collector.storage.store import LocalStore, ObjectStore, Store
from auditlake.collector.storage.tiers import COLD_PREFIX

log = logging.getLogger(__name__)

#: Files copied (and read back) at once within a group.
COPY_THREADS = 4


def hot_file_entry(hot: Store, rel: str) -> FileEntry:
    """The checkpoint entry of a hot file: digest, size, rows, seq range."""
    with hot.open_input(rel) as f:
        parquet = pq.ParquetFile(f)
        md = parquet.metadata
        idx = md.schema.to_arrow_schema().get_field_index("seq")
        lo: int | None = None
        hi: int | None = None
        for g in range(md.num_row_groups):
            st = md.row_group(g).column(idx).statistics
            if st is None or not st.has_min_max:
                lo = hi = None
                break
            lo = st.min if lo is None else min(lo, st.min)
            hi = st.max if hi is None else max(hi, st.max)
        if lo is None or hi is None:
            seqs = parquet.read(columns=["seq"]).column("seq")
            lo, hi = int(pc.min(seqs).as_py()), int(pc.max(seqs).as_py())
    sha, size = hot.sha256(rel)
    return FileEntry(rel, sha, size, md.num_rows, int(lo), int(hi))


def _crash_after_first(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """``chunks``, with the ``mid_copy`` fault point once the first is written."""
    for i, block in enumerate(chunks):
        yield block
        if i == 0:
            fail_point("mid_copy")


def copy_to_tier(hot: Store, rel: str, tier: Store) -> tuple[str, int]:
    """Copy ``rel`` from ``hot`` to the same key in ``tier`` (local: temp file,
    fsync, rename, directory fsync); returns (sha256, bytes) of what was sent."""
    if isinstance(tier, ObjectStore):
        return tier.copy_in(rel, _crash_after_first(hot.iter_chunks(rel)))
    if not isinstance(tier, LocalStore):
        raise TypeError(f"cannot copy into a {type(tier).__name__}")
    h = hashlib.sha256()
    size = 0
    with tier.open_write(rel) as out:
        for i, block in enumerate(hot.iter_chunks(rel)):
            out.write(block)
            h.update(block)
            size += len(block)
            if i == 0:
                out.flush()  # so a crash here leaves a partial file, as a real one would
                fail_point("mid_copy")
        tier.commit_write(out, rel)
    return h.hexdigest(), size


def remove_hot(hot: Store, rels: list[str]) -> None:
    """Remove hot copies whose move is signed, and day folders left empty."""
    for i, rel in enumerate(rels):
        hot.delete(rel)
        if i == 0:
            fail_point("hot_removed_partly")
    if isinstance(hot, LocalStore):
        # No fsync per day directory: the move is already signed, and a hot
        # copy that reappears after a power loss is removed by the next run.
        # Empty folders are a local-disk notion; an object store has none.
        for folder in {hot.local_path(r).parent for r in rels}:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty (late events may have arrived)
        fsync_dir(hot.local_path("events"))


@dataclass
class Mover:
    """Moves groups of day partitions from ``hot`` to ``tier``, each group
    under one signed move checkpoint."""

    hot: Store
    tier: Store
    index: ColdIndex
    append_checkpoint: CheckpointAppender
    #: Stores the meta-audit of checkpoints not announced yet.
    announce: Callable[[], None]
    #: The policy's cold location, recorded in each move checkpoint.
    cold: str
    cancel: threading.Event

    def move(self, plans: list[DayPlan], report: RetentionReport) -> None:
        """Move a group of day partitions under one signed move checkpoint."""
        rels: list[str] = []
        for p in plans:
            self._remove_orphans(p.day.isoformat())
            rels.extend(p.files)
        hot_entries = self._copy_and_verify(rels)
        if not hot_entries:
            return
        cold_entries = [FileEntry(COLD_PREFIX + e.path, e.sha256, e.bytes, e.rows, e.first_seq, e.last_seq)
                        for e in hot_entries]
        days = sorted({partition_day(e.path).isoformat() for e in hot_entries})
        cp = self.append_checkpoint("move", cold_entries, hot_entries, {"days": days, "cold": self.cold})
        fail_point("move_checkpointed")
        self.index.apply(cp, announced=False)
        self.index.save()
        fail_point("indexed")
        remove_hot(self.hot, [e.path for e in hot_entries])
        fail_point("moved")
        self.announce()
        report.moved_days += len(days)
        report.moved_files += len(hot_entries)
        report.moved_bytes += sum(e.bytes for e in hot_entries)
        report.moved_rows += sum(e.rows for e in hot_entries)

    def finish(self, plans: list[DayPlan], report: RetentionReport) -> None:
        """Remove the hot copies of moves a crash interrupted after signing."""
        for p in plans:
            remove_hot(self.hot, p.files)

    def _copy_and_verify(self, rels: list[str]) -> list[FileEntry]:
        """Copy the hot files to the tier and check each copy; returns the
        entries of the files that still exist (compaction may have replaced some)."""
        # Files are copied and read back a few at a time: the waits (fsync,
        # object-store round trips) overlap; hashing releases the GIL.
        with ThreadPoolExecutor(COPY_THREADS, thread_name_prefix="auditlake-retention") as pool:
            entries = [e for e in pool.map(self._describe, rels) if e is not None]
            if not entries:
                return []
            pause_before_copy()
            sent = list(pool.map(self._copy, entries))
            fail_point("copied")
            list(pool.map(self._check, entries, sent))
        fail_point("verified")
        return entries

    def _describe(self, rel: str) -> FileEntry | None:
        try:
            return hot_file_entry(self.hot, rel)
        except FileNotFoundError:
            log.info("%s vanished before its move (compacted?); the next run sees the new file", rel)
            return None

    def _copy(self, e: FileEntry) -> tuple[str, int]:
        if self.cancel.is_set():
            raise Cancelled
        return copy_to_tier(self.hot, e.path, self.tier)

    def _check(self, e: FileEntry, sent: tuple[str, int]) -> None:
        """Raise StorageError unless what was sent and what the tier holds
        (read back in full) both match the hot file."""
        sha, size = self.tier.sha256(e.path)
        stored = self.tier.size(e.path)
        if sent != (e.sha256, e.bytes) or (sha, size) != (e.sha256, e.bytes) or stored != e.bytes:
            raise StorageError(
                f"cold copy of {e.path} does not match the hot file (sha256 {sha[:12]}… vs "
                f"{e.sha256[:12]}…, {size} vs {e.bytes} B): hot copy kept"
            )

    def _remove_orphans(self, day: str) -> None:
        """Delete cold files of the day no move checkpoint committed (left by
        an interrupted copy): they were never part of the lake."""
        for obj in self.tier.list(f"events/date={day}", recursive=False):
            if obj.key not in self.index.files and obj.key not in self.index.pending_delete:
                log.info("removing %s from cold storage: left by an interrupted copy", obj.key)
                self.tier.delete(obj.key)
