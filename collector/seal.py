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
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from auditlake.collector.checkpoint import ChainCheckpoint, FileEntry, write_checkpoint
from auditlake.collector.datadir import DataDir
from auditlake.collector.integrity import CANONICAL_FIELDS, GENESIS
from auditlake.collector.keys import SigningKey
from auditlake.collector.lake import (
    StagedFile,
    partition_dir,
    publish,
    remove_stale_temps,
    split_by_day,
    stage_file,
)
from auditlake.collector.receive import AcceptedBatch
from auditlake.collector.schema import EVENT_SCHEMA, TIMESTAMP
from auditlake.collector.wal import LogPosition, WriteAheadLog, fsync_dir

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


@dataclass
class SealState:
    """What has been sealed: persisted in DIR/state/seal.json after each seal."""

    seal: int = 0
    seq: int = 0
    chain_hash: str = GENESIS.hex()
    wal_segment: int = 0
    wal_offset: int = 0
    checkpoint_digest: str = ""
    #: The last seal's files and checkpoint, so recovery can finish publishing.
    last: dict[str, Any] | None = None

    @property
    def position(self) -> LogPosition:
        return LogPosition(self.wal_segment, self.wal_offset)


# -- event-id dedupe -------------------------------------------------------------

_HEX = np.full(256, 255, np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _HEX[_c] = 10 + _i
#: Byte positions of the 32 hex digits in an 8-4-4-4-12 UUID string.
_UUID_DIGITS = np.array([i for i in range(36) if i not in (8, 13, 18, 23)], np.int64)
_MIX = np.uint64(0x9E3779B97F4A7C15)


def uuid_keys(ids: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(rows, hi, lo, key) of the ids that are UUID strings: their row
    indices, the UUID's two 64-bit halves, and a mixed 64-bit sort key.
    Other ids (not 36 characters of 8-4-4-4-12 hex) are left out."""
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    n = len(ids)
    empty = np.zeros(0, np.uint64)
    if n == 0:
        return np.zeros(0, np.int64), empty, empty, empty
    if ids.type != pa.string():
        ids = ids.cast(pa.string())
    offsets = np.frombuffer(ids.buffers()[1], np.int32)[ids.offset : ids.offset + n + 1]
    data_buf = ids.buffers()[2]
    if data_buf is None:
        return np.zeros(0, np.int64), empty, empty, empty
    data = np.frombuffer(data_buf, np.uint8)
    if not ids.null_count and int(offsets[-1]) - int(offsets[0]) == 36 * n and (np.diff(offsets) == 36).all():
        # the usual case: every id a 36-character UUID, packed back to back
        rows = np.arange(n, dtype=np.int64)
        chars = data[offsets[0] : offsets[0] + 36 * n].reshape(n, 36)[:, _UUID_DIGITS]
    else:
        rows = np.flatnonzero(np.diff(offsets) == 36)
        if ids.null_count:
            valid = np.asarray(pc.is_valid(ids).to_numpy(zero_copy_only=False))
            rows = rows[valid[rows]]
        chars = data[offsets[rows][:, None] + _UUID_DIGITS[None, :]]
    nib = _HEX[chars]
    if (nib == 255).any():
        ok = (nib != 255).all(axis=1)
        rows, nib = rows[ok], nib[ok]
    packed = (nib[:, 0::2] << 4) | nib[:, 1::2]
    halves = np.ascontiguousarray(packed).view(">u8").astype(np.uint64)
    hi, lo = halves[:, 0].copy(), halves[:, 1].copy()
    return rows, hi, lo, hi ^ (lo * _MIX)


class RecentEventIds:
    """The ids of the newest ``capacity`` sealed events, for event-id dedupe.

    Held as a few sorted generations of 128-bit UUID values (24 bytes per
    id with the sort key); a lookup is a binary search per generation.  A
    row counts as a duplicate only when its full 128-bit id matches, so a
    key collision can at worst store a duplicate, never drop an event.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._gen_cap = max(capacity // 8, 4096)
        self._gens: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return sum(len(g[0]) for g in self._gens)

    def duplicates(self, ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Row indices of ``ids`` that were seen before or repeat an earlier
        row of ``ids`` (the first occurrence is kept)."""
        rows, hi, lo, key = uuid_keys(ids)
        dup: np.ndarray = rows[self.duplicate_mask(hi, lo, key)]
        return dup

    def duplicate_mask(
        self, hi: np.ndarray, lo: np.ndarray, key: np.ndarray, prior: _IdKeys | None = None
    ) -> np.ndarray:
        """For keys from uuid_keys: which repeat an earlier one, a remembered
        id, or one of ``prior`` (keys of ids about to be remembered)."""
        dup = np.zeros(len(key), bool)
        if self.capacity == 0 or len(key) == 0:
            return dup
        order = np.argsort(key, kind="stable")
        ks, hs, ls = key[order], hi[order], lo[order]
        same = (ks[1:] == ks[:-1]) & (hs[1:] == hs[:-1]) & (ls[1:] == ls[:-1])
        dup[order[1:][same]] = True
        with self._lock:
            gens = list(self._gens)
        if prior is not None and len(prior[2]):
            phi, plo, pkey = prior
            porder = np.argsort(pkey, kind="stable")
            gens.append((pkey[porder], phi[porder], plo[porder]))
        for gk, ghi, glo in gens:
            pos = np.searchsorted(gk, key)
            np.minimum(pos, len(gk) - 1, out=pos)
            dup |= (gk[pos] == key) & (ghi[pos] == hi) & (glo[pos] == lo)
        return dup

    def remember(self, ids: pa.Array | pa.ChunkedArray) -> None:
        """Add ``ids`` (sealed now) as the newest; forget the oldest beyond capacity."""
        _, hi, lo, key = uuid_keys(ids)
        self.remember_keys(hi, lo, key)

    def remember_keys(self, hi: np.ndarray, lo: np.ndarray, key: np.ndarray) -> None:
        """remember() for keys already computed by uuid_keys."""
        if self.capacity == 0 or len(key) == 0:
            return
        with self._lock:
            if self._gens and len(self._gens[-1][0]) + len(key) <= self._gen_cap:
                gk, ghi, glo = self._gens.pop()
                key, hi, lo = np.concatenate([gk, key]), np.concatenate([ghi, hi]), np.concatenate([glo, lo])
            order = np.argsort(key, kind="stable")
            self._gens.append((key[order], hi[order], lo[order]))
            total = sum(len(g[0]) for g in self._gens)
            while len(self._gens) > 1 and total - len(self._gens[0][0]) >= self.capacity:
                total -= len(self._gens.pop(0)[0])


#: (hi, lo, key) of event ids, as uuid_keys returns them.
_IdKeys = tuple[np.ndarray, np.ndarray, np.ndarray]


# -- the chain, split so most of the work happens before the seal -----------------

_SEQ_AT = CANONICAL_FIELDS.index("seq")
#: Canonical fields before ``seq``: the wire fields plus received_at and writer_id.
PREFIX_FIELDS = CANONICAL_FIELDS[:_SEQ_AT]
#: Canonical fields after ``seq``: booleans, so each row's tail is one of four strings.
SUFFIX_FIELDS = CANONICAL_FIELDS[_SEQ_AT + 1 :]
if SUFFIX_FIELDS != ("imported", "clock_skew") or PREFIX_FIELDS[-2:] != ("received_at", "writer_id"):
    raise ImportError("seal.canonical_prefix assumes the canonical field order of integrity.py")


#: "0", "1", ... as an Arrow array: a value's length in decimal is a take()
#: from it, cheaper than casting each length to a string.
_DECIMALS = pa.array([str(i) for i in range(1 << 17)], pa.string())


def decimal_lengths(col: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Each value's UTF-8 length in bytes, as decimal text."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if col.null_count or col.type != pa.string():
        return pc.cast(pc.binary_length(col), pa.string())
    offsets = np.frombuffer(col.buffers()[1], np.int32)[col.offset : col.offset + len(col) + 1]
    lengths = np.diff(offsets)
    if len(lengths) and int(lengths.max()) >= len(_DECIMALS):
        return pc.cast(pc.binary_length(col), pa.string())
    return _DECIMALS.take(pa.array(lengths))


def canonical_prefix(table: pa.Table, received_at_us: int, writer_id: str) -> pa.Array:
    """Each row's canonical encoding (integrity.canonical_column) up to and
    excluding the ``,`` before ``len(seq)``: the part known before sealing.
    ``table`` holds the wire columns (WIRE_SCHEMA)."""
    parts: list[Any] = []
    for name in PREFIX_FIELDS[:-2]:
        col = table.column(name)
        if pa.types.is_timestamp(col.type):
            col = pc.cast(pc.cast(col, pa.int64()), pa.string())
        parts.append(decimal_lengths(col))
        parts.append(col)
    received = str(received_at_us)
    parts.append(pa.scalar(f"{len(received)},{received},{len(writer_id.encode())},{writer_id}"))
    joined = pc.binary_join_element_wise(*parts, ",")
    if isinstance(joined, pa.ChunkedArray):
        joined = joined.combine_chunks()
    return joined


def chain_rows(previous: bytes, prefix: pa.Array, table: pa.Table) -> list[bytes]:
    """The chain hashes of ``table``'s rows (stored columns) from their
    canonical ``prefix``: the same values as integrity.chain_table."""
    seq = pc.cast(table.column("seq"), pa.string())
    suffix = pc.if_else(
        table.column("imported"),
        pc.if_else(table.column("clock_skew"), "1,1,1,1", "1,1,1,0"),
        pc.if_else(table.column("clock_skew"), "1,0,1,1", "1,0,1,0"),
    )
    joined = pc.binary_join_element_wise(prefix, pc.cast(pc.binary_length(seq), pa.string()), seq, suffix, ",")
    if isinstance(joined, pa.ChunkedArray):
        joined = joined.combine_chunks()
    rows = pc.cast(joined, pa.binary()).to_pylist()
    sha256 = hashlib.sha256
    out: list[bytes] = []
    append = out.append
    h = previous
    for row in rows:
        h = sha256(h + row).digest()
        append(h)
    return out


# -- the sealer -------------------------------------------------------------------


_PREFIX_COLUMN = "_canonical_prefix"


@dataclass
class _Prepared:
    """A seal hashed but not yet committed: its batches, its rows chained
    after the previous prepared seal (or the committed head), and the chain
    head after it."""

    items: list[tuple[AcceptedBatch, LogPosition]]
    seal_no: int
    table: pa.Table
    seq: int
    chain_hash: str
    ids: _IdKeys | None
    chain_s: float

    @property
    def next_seal(self) -> int:
        """The seal number of the seal after this one (an empty seal takes none)."""
        return self.seal_no + 1 if self.table.num_rows else self.seal_no


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
        self.checkpoint_dirs = (data.checkpoints, *checkpoint_mirrors)
        self._state_path = data.state / "seal.json"
        self._batches_log = data.state / "batches.log"
        self._batches_lines = 0
        self.state = self._load_state()
        self._lock = threading.Condition()
        #: Held while a seal or another checkpoint changes the chain state.
        self._chain_lock = threading.RLock()
        self._pending: list[tuple[AcceptedBatch, LogPosition]] = []
        self._pending_rows = 0
        #: Of those, the rows taken by a seal not yet committed.
        self._inflight_rows = 0
        self._stop = False
        self._thread: threading.Thread | None = None
        self.wal: WriteAheadLog | None = None
        self.recent_ids = RecentEventIds(self.policy.dedupe_window_events)
        #: Writes each seal's files while the next seal is hashed (started on first use).
        self._stager: ThreadPoolExecutor | None = None
        #: append_checkpoint calls waiting for the chain lock.
        self._checkpoints_waiting = 0
        #: The last seal or checkpoint is committed in state/seal.json but an
        #: error kept it from being published, signed or dropped from the WAL.
        self._unfinished = False
        self.sealed_events = 0
        self.duplicate_events = 0
        self.last_seal_time = 0.0
        self.last_error: str | None = None

    # -- state -----------------------------------------------------------------

    def _load_state(self) -> SealState:
        try:
            raw = json.loads(self._state_path.read_text())
        except FileNotFoundError:
            return SealState()
        return SealState(**raw)

    def _save_state(self) -> None:
        self.data.state.mkdir(parents=True, exist_ok=True)
        tmp = self._state_path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump(self.state.__dict__, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._state_path)
        fsync_dir(self.data.state)

    def known_batches(self, keep: int | None = None) -> dict[str, int]:
        """Batch ids sealed before (the newest ``keep``, default the policy's
        ``dedupe_batches``), for idempotent retries.  Also compacts
        state/batches.log down to those ids, so it never grows without bound."""
        keep = keep or self.policy.dedupe_batches
        out: dict[str, int] = {}
        lines = 0
        try:
            with open(self._batches_log) as f:
                for line in f:
                    lines += 1
                    bid, _, count = line.rstrip("\n").rpartition(" ")
                    if bid and count.isdigit():
                        out.pop(bid, None)  # a re-sealed id moves to the newest end
                        out[bid] = int(count)
        except FileNotFoundError:
            return out
        if len(out) > keep:
            out = dict(list(out.items())[-keep:])
        if lines > len(out):
            self._rewrite_batches_log(out)
        self._batches_lines = len(out)
        return out

    def _rewrite_batches_log(self, ids: dict[str, int]) -> None:
        tmp = self._batches_log.with_suffix(".tmp")
        with open(tmp, "w") as f:
            f.write("".join(f"{b} {n}\n" for b, n in ids.items()))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._batches_log)
        fsync_dir(self.data.state)

    def _log_batches(self, batches: list[AcceptedBatch]) -> None:
        with open(self._batches_log, "a") as f:
            f.write("".join(f"{b.batch_id} {b.table.num_rows}\n" for b in batches))
            f.flush()
            os.fsync(f.fileno())
        self._batches_lines += len(batches)
        if self._batches_lines > 2 * self.policy.dedupe_batches:
            self.known_batches()  # compacts the file to the newest ids

    # -- recovery ----------------------------------------------------------------

    def recover(self, wal: WriteAheadLog) -> list[AcceptedBatch]:
        """Finish the last seal if a crash interrupted it, then queue every
        WAL batch after the sealed position.  Returns the replayed batches."""
        self.wal = wal
        self._finish_last()
        removed = remove_stale_temps(self.data.events)
        if removed:
            log.info("removed %d temporary files left by an interrupted seal", removed)
        self._rebuild_recent_ids()
        wal.drop_through(self.state.position)  # a crash may have kept sealed segments
        replayed = []
        for payload, pos in wal.read_from(self.state.position):
            batch = AcceptedBatch.decode(payload)
            replayed.append(batch)
            self.add(batch, pos)
        if replayed:
            log.info("recovering %d batches from the write-ahead log", len(replayed))
        return replayed

    def _rebuild_recent_ids(self, max_files: int = 1000) -> None:
        """Refill the event-id window from the newest sealed files still in place."""
        want = self.recent_ids.capacity
        folder = self.data.checkpoints / self.writer_id
        if want == 0 or not folder.is_dir():
            return
        names = sorted((n for n in os.listdir(folder) if n.endswith("-seal.json")), reverse=True)
        chunks: list[pa.ChunkedArray] = []
        have = 0
        files = 0
        for name in names:
            if have >= want or files >= max_files:
                break
            try:
                body = json.loads((folder / name).read_bytes())
            except (OSError, ValueError):
                continue
            for entry in body.get("files", []):
                path = self.data.lake / entry["path"]
                files += 1
                try:
                    ids = pq.read_table(path, columns=["id"]).column("id")
                except (OSError, pa.ArrowException):
                    continue  # moved or compacted away: older than the window anyway
                chunks.append(ids)
                have += len(ids)
        for ids in reversed(chunks):
            self.recent_ids.remember(ids)
        if have:
            log.info("event-id dedupe window: %d ids from %d recent files", len(self.recent_ids), files)

    # -- sealing -----------------------------------------------------------------

    def add(self, batch: AcceptedBatch, position: LogPosition) -> None:
        """Queue a durable batch for the next seal (called in WAL order)."""
        with self._lock:
            self._pending.append((batch, position))
            self._pending_rows += batch.table.num_rows
            if self._pending_rows >= self.policy.max_rows:
                self._lock.notify()

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
            if self._stager is not None:
                self._stager.shutdown()
                self._stager = None

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
                return total
            total += n

    def _seal_round(self) -> int:
        """Seal the queued batches, one seal after another, overlapping each
        seal's Parquet writing (on the stager thread, outside the GIL) with
        the next seal's dedupe and hashing (here).  Seals still commit one at
        a time, in order.  Returns -1 when nothing was queued.

        The chain lock is held throughout, so a compaction or retention
        checkpoint (append_checkpoint) asks the round to end early and
        waits for it."""
        inflight: list[_Prepared] = []
        future: Future[list[StagedFile]] | None = None
        with self._chain_lock:
            self._finish_committed()  # a seal committed before an error is finished first
            try:
                current = self._prepare(self.state.seal + 1, self.state.seq, self.state.chain_hash, None)
                if current is None:
                    return -1
                inflight.append(current)
                future = self._stage(current)
                total = 0
                while True:
                    nxt = None
                    if not self._checkpoints_waiting:  # else end the round: a checkpoint waits
                        # Only a backlog is worth a seal now; a trickle waits
                        # for the seal interval, so files stay large.
                        nxt = self._prepare(current.next_seal, current.seq, current.chain_hash, current.ids,
                                            min_rows=self.policy.max_rows // 2)
                    if nxt is not None:
                        inflight.append(nxt)
                    total += self._commit(current, future.result())
                    inflight.pop(0)  # committed: never queued again, whatever happens next
                    self._finish_committed()
                    if nxt is None:
                        return total
                    current, future = nxt, self._stage(nxt)
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

    def _prepare(
        self, seal_no: int, seq: int, chain_hash: str, prior_ids: _IdKeys | None, min_rows: int = 1
    ) -> _Prepared | None:
        """Take the oldest queued batches (up to ``max_rows`` events; none
        unless ``min_rows`` wait) and chain them after (``seq``,
        ``chain_hash``), dropping ids seen before (``prior_ids``: those of a
        prepared seal not yet committed)."""
        items = self._take_pending(min_rows)
        if not items:
            return None
        try:
            t0 = time.monotonic()
            table, ids = self._stored_table([b for b, _ in items], seq, chain_hash, prior_ids)
            n = table.num_rows
            return _Prepared(
                items=items,
                seal_no=seal_no,
                table=table,
                seq=seq + n,
                chain_hash=table.column("chain_hash")[n - 1].as_py() if n else chain_hash,
                ids=ids,
                chain_s=time.monotonic() - t0,
            )
        except BaseException:
            self._untake(items)
            raise

    def _untake(self, items: list[tuple[AcceptedBatch, LogPosition]]) -> None:
        """Put taken batches back at the head of the queue, in order."""
        with self._lock:
            self._pending = items + self._pending
            self._inflight_rows -= sum(b.table.num_rows for b, _ in items)

    def _stage(self, prepared: _Prepared) -> Future[list[StagedFile]]:
        """Write the prepared seal's files (temporary names, fsynced) on the stager thread."""
        table, seal_no = prepared.table, prepared.seal_no

        def stage() -> list[StagedFile]:
            staged = []
            if table.num_rows:
                for day, rows in sorted(split_by_day(table).items()):
                    name = f"part-{self.writer_id}-{seal_no:010d}.parquet"
                    staged.append(stage_file(rows, partition_dir(self.data.events, day) / name))
            return staged

        if self._stager is None:
            self._stager = ThreadPoolExecutor(1, thread_name_prefix="auditlake-stager")
        return self._stager.submit(stage)

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
            self._finish_committed()  # its checkpoint comes before this one
            checkpoint = ChainCheckpoint(
                writer_id=self.writer_id,
                seal=self.state.seal + 1,
                seq=self.state.seq,
                chain_hash=self.state.chain_hash,
                time=dt.datetime.now(dt.UTC).isoformat(timespec="microseconds"),
                kind=kind,
                files=tuple(files),
                removed=tuple(removed),
                previous=self.state.checkpoint_digest,
                extra=dict(extra or {}),
            )
            self.state = replace(
                self.state,
                seal=checkpoint.seal,
                checkpoint_digest=checkpoint.digest(),
                last={"files": [], "checkpoint": checkpoint.body()},
            )
            self._save_state()
            self._unfinished = True  # should writing it fail, the next seal or checkpoint repeats it
            write_checkpoint(checkpoint, self.key, self.checkpoint_dirs)
            self._unfinished = False
            return checkpoint
        finally:
            self._chain_lock.release()

    def _drop_duplicate_ids(self, table: pa.Table, prior: _IdKeys | None) -> tuple[pa.Table, _IdKeys | None]:
        """``table`` without rows whose id is in the recent window, in
        ``prior`` (a prepared seal's ids) or repeats; and the kept ids, to
        join the window once the seal is committed."""
        if self.recent_ids.capacity == 0:
            return table, None
        rows, hi, lo, key = uuid_keys(table.column("id"))
        dup = self.recent_ids.duplicate_mask(hi, lo, key, prior)
        if not dup.any():
            return table, (hi, lo, key)
        kept = ~dup
        keep = np.ones(table.num_rows, bool)
        keep[rows[dup]] = False
        self.duplicate_events += int(dup.sum())
        log.info("dropped %d events whose id was stored before", int(dup.sum()))
        return table.filter(pa.array(keep)), (hi[kept], lo[kept], key[kept])

    def _commit(self, prepared: _Prepared, staged: list[StagedFile]) -> int:
        """Commit a prepared seal whose files are staged: the seal record is
        the commit point; then publish, sign the checkpoint, drop the WAL."""
        t0 = time.monotonic()
        batches = [b for b, _ in prepared.items]
        position = prepared.items[-1][1]
        table = prepared.table
        n: int = table.num_rows
        # The batch ids first: if we crash after this, the WAL replays the
        # batches (their ids are then known, which is harmless).
        self._log_batches(batches)
        if n == 0:
            # Every event was a duplicate: nothing to write, but the WAL
            # position moves on (no checkpoint: the chain did not change).
            self.state = replace(self.state, wal_segment=position.segment, wal_offset=position.offset)
            self._save_state()
            self._sealed(prepared)
            self._unfinished = True  # the WAL to drop (the last checkpoint is rewritten: harmless)
            return 0
        if (prepared.seal_no, prepared.seq - n) != (self.state.seal + 1, self.state.seq):
            raise RuntimeError("internal error: a prepared seal does not follow the committed chain head")
        checkpoint = ChainCheckpoint(
            writer_id=self.writer_id,
            seal=prepared.seal_no,
            seq=prepared.seq,
            chain_hash=prepared.chain_hash,
            time=dt.datetime.now(dt.UTC).isoformat(timespec="microseconds"),
            files=tuple(
                FileEntry(
                    path=s.final.relative_to(self.data.lake).as_posix(),
                    sha256=s.sha256,
                    bytes=s.bytes,
                    rows=s.rows,
                    first_seq=s.first_seq,
                    last_seq=s.last_seq,
                )
                for s in staged
            ),
            previous=self.state.checkpoint_digest,
        )
        self.state = SealState(
            seal=prepared.seal_no,
            seq=checkpoint.seq,
            chain_hash=prepared.chain_hash,
            wal_segment=position.segment,
            wal_offset=position.offset,
            checkpoint_digest=checkpoint.digest(),
            last={
                "files": [{"tmp": str(s.tmp), "final": str(s.final)} for s in staged],
                "checkpoint": checkpoint.body(),
            },
        )
        self._save_state()  # the commit point of the seal
        # From here on the seal is committed: its batches leave the queue
        # now, and what remains (publish, checkpoint, WAL) is
        # _finish_committed, which repeats until it succeeds, like recovery.
        self._unfinished = True
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

    def _finish_committed(self) -> None:
        """Finish the committed seal, if it is not finished: publish its
        files, write its signed checkpoint, drop the WAL it covers.  Each
        step is idempotent, so after an error (a full disk, an unreachable
        checkpoint mirror) the next round simply repeats it; the same steps
        finish an interrupted seal on start (recover)."""
        if not self._unfinished:
            return
        self._finish_last()
        if self.wal is not None:
            self.wal.drop_through(self.state.position)
        self._unfinished = False

    def _finish_last(self) -> None:
        """Publish the last seal's files and write its checkpoint (idempotent)."""
        last = self.state.last
        if not last:
            return
        for f in last["files"]:
            tmp, final = Path(f["tmp"]), Path(f["final"])
            if not final.exists() and not tmp.exists():
                log.error("sealed file %s is missing after a crash", final)
            publish(tmp, final)
        write_checkpoint(ChainCheckpoint.from_body(last["checkpoint"]), self.key, self.checkpoint_dirs)

    def _sealed(self, prepared: _Prepared) -> None:
        rows = sum(b.table.num_rows for b, _ in prepared.items)
        with self._lock:
            self._pending_rows -= rows
            self._inflight_rows -= rows

    def _stored_table(
        self, batches: list[AcceptedBatch], seq: int, chain_hash: str, prior_ids: _IdKeys | None
    ) -> tuple[pa.Table, _IdKeys | None]:
        """The batches as stored rows, chained after (``seq``, ``chain_hash``):
        collector columns added, duplicates of recent event ids dropped; and
        the ids kept."""
        parts = []
        for b in batches:
            t = b.table
            m = t.num_rows
            if m == 0:
                continue
            received = pa.repeat(pa.scalar(b.received_at_us, TIMESTAMP), m)
            if b.imported:
                skew = pa.repeat(pa.scalar(False), m)
            else:
                created = pc.cast(t.column("created_at"), pa.int64())
                skew = pc.greater(pc.abs(pc.subtract(created, b.received_at_us)), self.policy.skew_flag_us)
            prefix = b.canonical_prefix
            if prefix is None:  # replayed from the WAL or the inbox
                prefix = canonical_prefix(t, b.received_at_us, self.writer_id)
            parts.append(
                t.append_column("received_at", received)
                .append_column("imported", pa.repeat(pa.scalar(b.imported), m))
                .append_column("clock_skew", skew)
                .append_column(_PREFIX_COLUMN, prefix)
            )
        if not parts:
            return EVENT_SCHEMA.empty_table(), None
        table = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
        table, ids = self._drop_duplicate_ids(table, prior_ids)
        n = table.num_rows
        if n == 0:
            return EVENT_SCHEMA.empty_table(), ids
        first = seq + 1
        table = (
            table.append_column("writer_id", pa.repeat(pa.scalar(self.writer_id), n))
            .append_column("seq", pa.array(np.arange(first, first + n, dtype=np.int64)))
            .append_column("chain_hash", pa.repeat(pa.scalar(""), n))
        )
        prefix = table.column(_PREFIX_COLUMN)
        # one chunk: the canonical join and the sort run faster on contiguous columns
        table = table.select(EVENT_SCHEMA.names).cast(EVENT_SCHEMA).combine_chunks()
        hashes = chain_rows(bytes.fromhex(chain_hash), prefix, table)
        table = table.set_column(
            table.schema.get_field_index("chain_hash"),
            EVENT_SCHEMA.field("chain_hash"),
            pa.array(map(bytes.hex, hashes), pa.string(), size=n),
        )
        return table, ids
