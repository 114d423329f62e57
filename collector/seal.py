"""Seal: turn durable WAL batches into chained, signed Parquet in the lake.

Each seal assigns sequence numbers and chain hashes, writes one file per
day touched, records its progress atomically, publishes the files, signs a
checkpoint, and only then lets the WAL drop what it covered.  Recovery after
a crash finishes or repeats the last seal so that every acknowledged event
is in the lake exactly once.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from auditlake.collector.checkpoint import ChainCheckpoint, FileEntry, write_checkpoint
from auditlake.collector.datadir import DataDir
from auditlake.collector.integrity import GENESIS, chain_table
from auditlake.collector.keys import SigningKey
from auditlake.collector.lake import (
    partition_dir,
    publish,
    remove_stale_temps,
    sort_for_queries,
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
    ``max_rows`` events wait.  ``interval_s`` bounds freshness."""

    interval_s: float = 1.0
    max_rows: int = 200_000
    skew_flag_us: int = 15 * 60 * 1_000_000

    def __post_init__(self) -> None:
        if not 0 < self.interval_s <= 3600:
            raise ValueError("SealPolicy.interval_s must be in (0, 3600] seconds")
        if self.max_rows <= 0:
            raise ValueError("SealPolicy.max_rows must be positive")


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
        self.state = self._load_state()
        self._lock = threading.Condition()
        self._pending: list[tuple[AcceptedBatch, LogPosition]] = []
        self._pending_rows = 0
        self._stop = False
        self._thread: threading.Thread | None = None
        self.wal: WriteAheadLog | None = None
        self.sealed_events = 0
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

    def known_batches(self, keep: int = 1_000_000) -> dict[str, int]:
        """Batch ids sealed before (newest ``keep``), for idempotent retries."""
        out: dict[str, int] = {}
        try:
            with open(self._batches_log) as f:
                for line in f:
                    bid, _, count = line.rstrip("\n").rpartition(" ")
                    if bid:
                        out[bid] = int(count)
        except FileNotFoundError:
            return out
        if len(out) > keep:
            out = dict(list(out.items())[-keep:])
        return out

    # -- recovery ----------------------------------------------------------------

    def recover(self, wal: WriteAheadLog) -> list[AcceptedBatch]:
        """Finish the last seal if a crash interrupted it, then queue every
        WAL batch after the sealed position.  Returns the replayed batches."""
        self.wal = wal
        last = self.state.last
        keep: set[Path] = set()
        if last:
            for f in last["files"]:
                tmp, final = Path(f["tmp"]), Path(f["final"])
                if not final.exists() and not tmp.exists():
                    log.error("sealed file %s is missing after a crash", final)
                publish(tmp, final)
            cp = ChainCheckpoint.from_body(last["checkpoint"])
            write_checkpoint(cp, self.key, self.checkpoint_dirs)
        removed = remove_stale_temps(self.data.events, keep)
        if removed:
            log.info("removed %d temporary files left by an interrupted seal", removed)
        replayed = []
        for payload, pos in wal.read_from(self.state.position):
            batch = AcceptedBatch.decode(payload)
            replayed.append(batch)
            self.add(batch, pos)
        if replayed:
            log.info("recovering %d batches from the write-ahead log", len(replayed))
        return replayed

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
        return self._pending_rows

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="auditlake-sealer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Seal what is pending, then stop the thread."""
        with self._lock:
            self._stop = True
            self._lock.notify()
        if self._thread:
            self._thread.join()
        self.seal_pending()

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
        """Seal every queued batch now; returns the number of events sealed."""
        with self._lock:
            items, self._pending = self._pending, []
            self._pending_rows = 0
        if not items:
            return 0
        try:
            return self._seal([b for b, _ in items], items[-1][1])
        except BaseException:
            with self._lock:  # put them back, in order, for the next attempt
                self._pending = items + self._pending
                self._pending_rows += sum(b.table.num_rows for b, _ in items)
            raise

    def _seal(self, batches: list[AcceptedBatch], position: LogPosition) -> int:
        table = self._stored_table(batches)
        n = table.num_rows
        seal_no = self.state.seal + 1
        staged = []
        for day, rows in sorted(split_by_day(table).items()):
            name = f"part-{self.writer_id}-{seal_no:010d}.parquet"
            staged.append(stage_file(sort_for_queries(rows), partition_dir(self.data.events, day) / name))
        # The batch ids first: if we crash after this, the WAL replays the
        # batches (their ids are then known, which is harmless).
        with open(self._batches_log, "a") as f:
            f.write("".join(f"{b.batch_id} {b.table.num_rows}\n" for b in batches))
            f.flush()
            os.fsync(f.fileno())
        last_hash = table.column("chain_hash")[n - 1].as_py()
        checkpoint = ChainCheckpoint(
            writer_id=self.writer_id,
            seal=seal_no,
            seq=self.state.seq + n,
            chain_hash=last_hash,
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
            seal=seal_no,
            seq=checkpoint.seq,
            chain_hash=last_hash,
            wal_segment=position.segment,
            wal_offset=position.offset,
            checkpoint_digest=checkpoint.digest(),
            last={
                "files": [{"tmp": str(s.tmp), "final": str(s.final)} for s in staged],
                "checkpoint": checkpoint.body(),
            },
        )
        self._save_state()  # the commit point of the seal
        for s in staged:
            publish(s.tmp, s.final)
        write_checkpoint(checkpoint, self.key, self.checkpoint_dirs)
        if self.wal is not None:
            self.wal.drop_through(position)
        self.sealed_events += n
        self.last_seal_time = time.time()
        return n

    def _stored_table(self, batches: list[AcceptedBatch]) -> pa.Table:
        """The batches as stored rows: collector columns added, chained."""
        parts = []
        for b in batches:
            t = b.table
            m = t.num_rows
            received = pa.array([b.received_at_us] * m, pa.int64()).cast(TIMESTAMP)
            created = pc.cast(t.column("created_at"), pa.int64())
            skew = pc.greater(pc.abs(pc.subtract(created, b.received_at_us)), self.policy.skew_flag_us)
            if b.imported:
                skew = pa.array([False] * m)
            parts.append(
                t.append_column("received_at", received)
                .append_column("imported", pa.array([b.imported] * m, pa.bool_()))
                .append_column("clock_skew", skew)
            )
        table = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
        n = table.num_rows
        first = self.state.seq + 1
        table = (
            table.append_column("writer_id", pa.array([self.writer_id] * n, pa.string()))
            .append_column("seq", pa.array(range(first, first + n), pa.int64()))
            .append_column("chain_hash", pa.array([""] * n, pa.string()))
        )
        table = table.select(EVENT_SCHEMA.names).cast(EVENT_SCHEMA)
        hashes = chain_table(bytes.fromhex(self.state.chain_hash), table)
        return table.set_column(
            table.schema.get_field_index("chain_hash"),
            EVENT_SCHEMA.field("chain_hash"),
            pa.array([h.hex() for h in hashes], pa.string()),
        )
