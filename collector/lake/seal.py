"""Seal: turn durable WAL batches into chained, signed Parquet in the lake.

Each seal assigns sequence numbers and chain hashes, writes one file per
day touched, records its progress atomically, publishes the files, signs a
checkpoint, and only then lets the WAL drop what it covered.  Under a backlog,
seals overlap: a stager thread writes one seal's files while the sealer
hashes the next (see Sealer._seal_round); they still commit one at a time,
in WAL order, so the crash points below hold for each seal.  Recovery after
a crash finishes or repeats the last seal so that every acknowledged event
is in the lake exactly once.

Crash points of a seal and what recovery does (state/seal.json is the commit
point; ``last`` in it names the files and checkpoint of the latest commit):

1. staging the Parquet temps, appending batch ids to state/batches.log:
   not committed; the temps are deleted, the WAL replays the batches;
2. state saved: committed; recovery renames the temps still staged and
   rewrites the signed checkpoint (both idempotent);
3. WAL segments dropped: only segments wholly before the committed position.

Sealed files keep rows in seq order, unsorted: a seal writes one row group
(at most ``max_rows`` = 100k rows), whose statistics span every tenant in it
however the rows are ordered, so sorting would cost ~10% of the sealer for no
skipping.  Compaction (compact.py) sorts by (tenant_id, created_at) when it
merges a closed day into large files of many row groups, where it pays.

Event-id dedupe: the sealer remembers the ids of the newest
``dedupe_window_events`` events it sealed (128-bit UUID values, 24 bytes
each) and drops a row whose id it sealed before, or that repeats within the
seal; after a restart the window is rebuilt from the newest sealed files.

The parts, one module each; this one holds the :class:`Sealer` (its queue,
thread and seal rounds) and its policy:

    seal_progress.py   state/seal.json (the commit point), state/batches.log
    seal_chain.py      the chain step: stored rows, seq numbers, chain hashes
    seal_dedupe.py     the window of recent event ids
    seal_stage.py      staging a seal's Parquet files (the stager thread)
    seal_commit.py     the commit point, then publish, checkpoint, WAL drop
    seal_recovery.py   on start: the event-id window, the WAL replay

Lake files go through the hot lake's store (``storage.tiers.hot_tier``),
checkpoints through a store per checkpoint folder (DIR/checkpoints, mirrors).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from auditlake.collector.integrity.checkpoint import ChainCheckpoint, FileEntry
from auditlake.collector.integrity.merkle import CompactTree
from auditlake.collector.integrity.signing import SigningKey
from auditlake.collector.lake.batch import AcceptedBatch
from auditlake.collector.lake.files import StagedFile, remove_stale_temps
from auditlake.collector.lake.seal_chain import PreparedSeal, canonical_prefix, chain_rows, stored_table
from auditlake.collector.lake.seal_commit import Committer
from auditlake.collector.lake.seal_dedupe import IdKeys, RecentEventIds, uuid_keys
from auditlake.collector.lake.seal_progress import SealProgress, SealState
from auditlake.collector.lake.seal_recovery import rebuild_recent_ids, replay
from auditlake.collector.lake.seal_stage import Stager
from auditlake.collector.lake.wal import LogPosition, WriteAheadLog
from auditlake.collector.storage.datadir import DataDir
from auditlake.collector.storage.store import LocalStore, Store
from auditlake.collector.storage.tiers import checkpoint_tier, hot_tier

__all__ = [
    "RecentEventIds",
    "SealPolicy",
    "SealState",
    "Sealer",
    "canonical_prefix",
    "chain_rows",
    "uuid_keys",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SealPolicy:
    """When to seal: every ``interval_s`` seconds, or sooner once
    ``max_rows`` events wait.  ``interval_s`` bounds freshness.
    ``dedupe_batches`` batch ids and ``dedupe_window_events`` event ids are
    remembered for idempotent retries."""

    interval_s: float = 1.0
    max_rows: int = 100_000
    skew_flag_us: int = 15 * 60 * 1_000_000
    dedupe_batches: int = 200_000
    dedupe_window_events: int = 2_000_000

    def __post_init__(self) -> None:
        if not 0 < self.interval_s <= 3600:
            raise ValueError("SealPolicy.interval_s must be in (0, 3600] seconds")
        if self.max_rows <= 0:
            raise ValueError("SealPolicy.max_rows must be positive")
        if self.dedupe_batches <= 0:
            raise ValueError("SealPolicy.dedupe_batches must be positive")
        if self.dedupe_window_events < 0:
            raise ValueError("SealPolicy.dedupe_window_events must be >= 0")



class Sealer:
    """Owns the chain of one writer; runs on its own thread."""

    def __init__(
        self,
        data: DataDir,
        wal_dir: Path,
        key: SigningKey,
        *,
        policy: SealPolicy | None = None,
        checkpoint_mirrors: tuple[Path, ...] = (),
    ) -> None:
        self.data = data
        self.writer_id = data.writer_id()
        self.key = key
        self.policy = policy or SealPolicy()
        #: The hot lake, where seals write their files.
        self.lake: Store = hot_tier(data)
        #: Where checkpoints are written: the primary (DIR/checkpoints, or
        #: the lake's checkpoints/ folder), then each mirror folder.
        self.checkpoint_stores: tuple[Store, ...] = (
            checkpoint_tier(data),
            *(LocalStore(m, "checkpoint mirror") for m in checkpoint_mirrors),
        )
        self.progress = SealProgress(data.state)
        self._lock = threading.Condition()
        #: Held while a seal or another checkpoint changes the chain state.
        self._chain_lock = threading.RLock()
        self._pending: list[tuple[AcceptedBatch, LogPosition]] = []
        self._pending_rows = 0
        #: Of those, the rows taken by a seal not yet committed.
        self._inflight_rows = 0
        self._stop = False
        self._thread: threading.Thread | None = None
        #: Called (on the sealing thread) after seals committed new events:
        #: readers of the lake that would otherwise poll (streams).
        self.on_sealed: list[Callable[[], None]] = []
        self.recent_ids = RecentEventIds(self.policy.dedupe_window_events)
        #: Writes each seal's files while the next seal is hashed.
        self.stager = Stager(self.lake, self.writer_id)
        self.committer = Committer(self.progress, self.lake, self.checkpoint_stores, key, self.writer_id)
        #: append_checkpoint calls waiting for the chain lock.
        self._checkpoints_waiting = 0
        self.sealed_events = 0
        self.duplicate_events = 0
        self.last_seal_time = 0.0
        self.last_error: str | None = None
        #: Called before a maintenance checkpoint commits, in a shared lake:
        #: raises when this collector lost the maintenance lease; returns what
        #: to record in the checkpoint (the fencing token).
        self.fence: Callable[[], dict[str, Any]] | None = None

    # -- state -----------------------------------------------------------------

    @property
    def checkpoints(self) -> Store:
        """The primary checkpoint store (DIR/checkpoints)."""
        return self.checkpoint_stores[0]

    @property
    def state(self) -> SealState:
        """What has been sealed (state/seal.json)."""
        return self.progress.state

    @state.setter
    def state(self, value: SealState) -> None:
        self.progress.state = value

    def _save_state(self) -> None:
        self.progress.save()

    def known_batches(self, keep: int | None = None) -> dict[str, int]:
        """Batch ids sealed before (the newest ``keep``, default the policy's
        ``dedupe_batches``), for idempotent retries: each one's accepted
        count, a ``BatchOutcome`` (with its refused rows) for a batch stored
        in part.  Also compacts state/batches.log down to those ids, so it
        never grows without bound."""
        return self.progress.known_batches(keep or self.policy.dedupe_batches)

    # -- recovery ----------------------------------------------------------------

    def recover(self, wal: WriteAheadLog) -> list[AcceptedBatch]:
        """Finish the last seal if a crash interrupted it, then queue every
        WAL batch after the sealed position.  Returns the replayed batches."""
        self.committer.wal = wal
        self.committer.finish_last()
        removed = remove_stale_temps(self.lake, self.writer_id)
        if removed:
            log.info("removed %d temporary files left by an interrupted seal", removed)
        rebuild_recent_ids(self.recent_ids, self.checkpoints, self.lake, self.writer_id)
        wal.drop_through(self.state.position)  # a crash may have kept sealed segments
        return replay(wal, self.state.position, self.add)

    # -- sealing -----------------------------------------------------------------

    def add(self, batch: AcceptedBatch, position: LogPosition) -> None:
        """Queue a durable batch for the next seal (called in WAL order)."""
        with self._lock:
            self._pending.append((batch, position))
            self._pending_rows += batch.table.num_rows
            if self._pending_rows >= self.policy.max_rows:
                self._lock.notify()

    def oldest_pending_us(self) -> int | None:
        """When the oldest queued (not yet taken) batch was received, in
        microseconds since the epoch; None when nothing waits."""
        with self._lock:
            return self._pending[0][0].received_at_us if self._pending else None

    @property
    def pending_rows(self) -> int:
        """Events acknowledged (in the WAL) and not yet sealed."""
        return self._pending_rows

    def start(self) -> None:
        """Start the sealing thread."""
        self._thread = threading.Thread(target=self._run, name="auditlake-sealer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Seal what is pending, then stop the thread."""
        with self._lock:
            self._stop = True
            self._lock.notify()
        if self._thread:
            self._thread.join()
        try:
            self.seal_pending()
        finally:
            self.stager.shutdown()

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._stop and self._pending_rows < self.policy.max_rows:
                    self._lock.wait(self.policy.interval_s)
                if self._stop:
                    return
            try:
                self.seal_pending()
                self.last_error = None
            except Exception as exc:  # noqa: BLE001 - keep sealing; the WAL holds the data
                self.last_error = str(exc)
                log.exception("seal failed; the batches stay in the write-ahead log")
                time.sleep(min(5.0, self.policy.interval_s))

    def seal_pending(self) -> int:
        """Seal every queued batch now, at most ``policy.max_rows`` events a
        seal (bounding memory); returns the number of events sealed."""
        total = 0
        while True:
            n = self._seal_round()
            if n < 0:
                break
            total += n
        if total:
            for listener in self.on_sealed:
                try:
                    listener()
                except Exception:  # noqa: BLE001 - a reader's wake-up must never stop sealing
                    log.exception("a listener of new seals failed")
        return total

    def _seal_round(self) -> int:
        """Seal the queued batches, one seal after another, overlapping each
        seal's Parquet writing (on the stager thread, outside the GIL) with
        the next seal's dedupe and hashing (here).  Seals still commit one at
        a time, in order.  Returns -1 when nothing was queued.

        The chain lock is held throughout, so a compaction or retention
        checkpoint (append_checkpoint) asks the round to end early and
        waits for it."""
        inflight: list[PreparedSeal] = []
        future: Future[list[StagedFile]] | None = None
        with self._chain_lock:
            self.committer.finish()  # a seal committed before an error is finished first
            try:
                current = self._prepare(self.state.seal + 1, self.state.seq, self.state.chain_hash, None,
                                        tree=self._committed_tree())
                if current is None:
                    return -1
                inflight.append(current)
                future = self.stager.submit(current)
                total = 0
                while True:
                    nxt = None
                    if not self._checkpoints_waiting:  # else end the round: a checkpoint waits
                        # Only a backlog is worth a seal now; a trickle waits
                        # for the seal interval, so files stay large.
                        nxt = self._prepare(current.next_seal, current.seq, current.chain_hash, current.ids,
                                            min_rows=self.policy.max_rows // 2, tree=current.tree)
                    if nxt is not None:
                        inflight.append(nxt)
                    total += self._commit(current, future.result())
                    inflight.pop(0)  # committed: never queued again, whatever happens next
                    self.committer.finish()
                    if nxt is None:
                        return total
                    current, future = nxt, self.stager.submit(nxt)
            except BaseException:
                if future is not None:  # let it finish: a retry writes the same temporary files
                    futures_wait([future])
                # Put every batch not yet committed back, in order, for the
                # next attempt (rebuilt from the committed chain head).
                self._untake([item for p in inflight for item in p.items])
                raise

    def _take_pending(self, min_rows: int) -> list[tuple[AcceptedBatch, LogPosition]]:
        """The oldest queued batches, up to ``max_rows`` events (at least one
        batch); none unless ``min_rows`` events are queued."""
        with self._lock:
            # pending_rows keeps counting these until they are sealed
            queued = self._pending_rows - self._inflight_rows
            if queued < min_rows or not self._pending:
                return []
            take, rows = 0, 0
            while take < len(self._pending) and (take == 0 or rows < self.policy.max_rows):
                rows += self._pending[take][0].table.num_rows
                take += 1
            items, self._pending = self._pending[:take], self._pending[take:]
            self._inflight_rows += rows
        return items

    def _committed_tree(self) -> CompactTree | None:
        """The Merkle tree of the committed chain head (None: a chain begun
        before trees existed)."""
        tree = self.state.tree
        return None if tree is None else CompactTree.from_json(tree)

    def _prepare(
        self, seal_no: int, seq: int, chain_hash: str, prior_ids: IdKeys | None, min_rows: int = 1,
        *, tree: CompactTree | None = None,
    ) -> PreparedSeal | None:
        """Take the oldest queued batches (up to ``max_rows`` events; none
        unless ``min_rows`` wait) and chain them after (``seq``,
        ``chain_hash``, whose Merkle tree is ``tree``, left unchanged),
        dropping ids seen before (``prior_ids``: those of a prepared seal not
        yet committed)."""
        items = self._take_pending(min_rows)
        if not items:
            return None
        try:
            t0 = time.monotonic()
            tree = None if tree is None else tree.copy()
            rows = stored_table([b for b, _ in items], seq, chain_hash, writer_id=self.writer_id,
                                skew_flag_us=self.policy.skew_flag_us, recent_ids=self.recent_ids,
                                prior_ids=prior_ids, tree=tree)
            self.duplicate_events += rows.duplicates
            table = rows.table
            n = table.num_rows
            return PreparedSeal(
                items=items,
                seal_no=seal_no,
                table=table,
                seq=seq + n,
                chain_hash=table.column("chain_hash")[n - 1].as_py() if n else chain_hash,
                ids=rows.ids,
                chain_s=time.monotonic() - t0,
                tree=tree,
            )
        except BaseException:
            self._untake(items)
            raise

    def _untake(self, items: list[tuple[AcceptedBatch, LogPosition]]) -> None:
        """Put taken batches back at the head of the queue, in order."""
        with self._lock:
            self._pending = items + self._pending
            self._inflight_rows -= sum(b.table.num_rows for b, _ in items)

    def append_checkpoint(
        self,
        kind: str,
        files: Iterable[FileEntry] = (),
        removed: Iterable[FileEntry] = (),
        extra: dict[str, Any] | None = None,
    ) -> ChainCheckpoint:
        """Sign and write a checkpoint of ``kind`` ("compact", "move",
        "expire") that adds ``files`` and removes ``removed``: it takes the
        next seal number, links ``previous``, leaves the chain head as is,
        commits the state, then writes the signed file (primary + mirrors).
        The caller publishes ``files`` before and deletes ``removed`` after."""
        if kind == "seal":
            raise ValueError("seal checkpoints are written by the sealer itself")
        with self._lock:
            self._checkpoints_waiting += 1  # a running seal round ends early
        try:
            self._chain_lock.acquire()
        finally:
            with self._lock:
                self._checkpoints_waiting -= 1
        try:
            if self.fence is not None:  # still the lake's maintenance holder? (LeaseLost if not)
                extra = {**(extra or {}), **self.fence()}
            return self.committer.commit_checkpoint(kind, files, removed, extra)
        finally:
            self._chain_lock.release()

    def _commit(self, prepared: PreparedSeal, staged: list[StagedFile]) -> int:
        """Commit a prepared seal whose files are staged: the seal record is
        the commit point; then publish, sign the checkpoint, drop the WAL."""
        t0 = time.monotonic()
        batches = [b for b, _ in prepared.items]
        table = prepared.table
        n: int = table.num_rows
        # The batch ids first: if we crash after this, the WAL replays the
        # batches (their ids are then known, which is harmless).
        self.progress.log_batches(batches, keep=self.policy.dedupe_batches)
        if n == 0:
            # Every event was a duplicate: nothing to write, but the WAL
            # position moves on (no checkpoint: the chain did not change).
            self.committer.commit_position(prepared.items[-1][1])
            self._sealed(prepared)
            self.committer.unfinished = True  # the WAL to drop (the last checkpoint is rewritten: harmless)
            return 0
        self.committer.commit_seal(prepared, staged)  # the commit point of the seal
        # From here on the seal is committed: its batches leave the queue
        # now, and what remains (publish, checkpoint, WAL) is
        # Committer.finish, which repeats until it succeeds, like recovery.
        if prepared.ids is not None:
            self.recent_ids.remember_keys(*prepared.ids)
        self.sealed_events += n
        self.last_seal_time = time.time()
        self._sealed(prepared)
        del table, staged
        pa.default_memory_pool().release_unused()  # keep RSS near what is in use
        took = time.monotonic() - t0
        (log.info if prepared.chain_s + took > 2 * self.policy.interval_s else log.debug)(
            "sealed %d events from %d batches (chain %.2f s, commit %.2f s)",
            n, len(batches), prepared.chain_s, took,
        )
        return n

    def _sealed(self, prepared: PreparedSeal) -> None:
        rows = sum(b.table.num_rows for b, _ in prepared.items)
        with self._lock:
            self._pending_rows -= rows
            self._inflight_rows -= rows
