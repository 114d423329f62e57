"""Compaction: merge the many small sealed files of a closed UTC day into a
few large ones (row groups of >= 100k rows), without re-hashing anything.

A seal writes one small file per second per day touched; DuckDB pays about
0.35 ms per file per query and skips row groups by statistics only when
they are large and sorted.  Compaction keeps every row, its ``seq`` and its
``chain_hash`` as they are (it never re-hashes) and only re-packs them,
sorted by (tenant_id, created_at, seq).

The files are read, staged, published and set aside through the hot lake's
store (the sealer's), the checkpoints read through its checkpoint store.

Steps, each safe to crash after (``state/compact.json`` records the job):

1. read the day's live files of this writer, write the merged rows to the
   hidden ``.compact-<writer>-<stamp>-<k>.parquet.tmp`` (fsynced; no reader
   of the folder and no ``*.parquet`` glob reads it, see lake/files.py);
   record the job ("staged");
2. publish the new files (rename); record "published";
3. the signed "compact" checkpoint (files = new, removed = old) through
   ``Sealer.append_checkpoint``;
4. move each old file out of ``events/`` to
   ``_superseded/events/date=D/<name>.parquet.superseded`` (see
   :func:`superseded_key`); they are deleted after a grace period (default
   10 min), kept in state.

Why outside ``events/``: engines that read the folder rather than a
``*.parquet`` glob (``pyarrow.dataset`` with Hive partitioning, Spark, Dask)
read every file in it whose name does not start with ``_`` or ``.``,
whatever its suffix, and DuckDB's ``events/**/*.parquet`` descends into
``_``-named folders: only a sibling of ``events/`` is out of every reader's
way.  What any reader finds under ``events/`` is exactly the live files, and
``auditlake verify`` fails on a replaced file found there again.  On an
object store the move is a copy and a delete (``Store.rename``).

Recovery: a job not yet checkpointed is rolled back (new files deleted, old
files kept); a checkpointed one is finished (old files superseded); staged
files of this writer no job names are deleted (also the visible
``compact-<writer>-...parquet.tmp`` an older version staged under).  So after
any crash either the old files or the new ones are live and present, never
neither; both are visible to a new query only between steps 2 and 4 (a few
milliseconds, or until restart if the process dies exactly there).
Superseded files an older version left in ``events/``
(``<name>.parquet.superseded`` beside the live files) are moved out at
recovery.

In-flight queries: a query that already opened an old file keeps reading it
(Linux keeps renamed and unlinked files open).  A query that listed the old
files and opens one after step 4 fails with "file not found" and must be
re-run: compaction prefers a rare loud failure to a silently double-counted
answer.  Run only on closed days (default: an hour after UTC midnight), when
few queries target the day and no seal adds to it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from auditlake.collector.errors import StorageError
from auditlake.collector.integrity.checkpoint import FileEntry
from auditlake.collector.lake.files import (
    day_of,
    partition_files,
    partition_key,
    sort_for_queries,
    stage_table,
    stale_stages,
)
from auditlake.collector.schema import EVENT_SCHEMA, INGEST_KEY_COLUMN, LEGACY_EVENT_SCHEMA
from auditlake.collector.storage.datadir import DataDir, try_lock
from auditlake.collector.storage.local import replace_file
from auditlake.collector.storage.store import LocalStore, Store

if TYPE_CHECKING:
    from auditlake.collector.lake.seal import Sealer

log = logging.getLogger(__name__)

SUPERSEDED_SUFFIX = ".superseded"
#: The lake folder, beside ``events/``, where replaced files wait for deletion.
SUPERSEDED_AREA = "_superseded"


def superseded_key(key: str) -> str:
    """Where the replaced lake file ``key`` (``events/date=D/<name>.parquet``)
    waits out its grace period: ``_superseded/events/date=D/<name>.parquet.superseded``
    (outside ``events/``, and matching no ``*.parquet`` glob)."""
    return f"{SUPERSEDED_AREA}/{key}{SUPERSEDED_SUFFIX}"


@dataclass(frozen=True)
class CompactionPolicy:
    """Which days to compact and how.

    A UTC day is closed ``close_grace_s`` after its end; a closed day with at
    least ``min_files`` live files of this writer is merged into files of at
    most ``max_rows_per_file`` rows (memory use is about 400 bytes per row
    of one output file); replaced files are deleted ``superseded_grace_s``
    after the swap."""

    close_grace_s: float = 3600.0
    min_files: int = 2
    max_rows_per_file: int = 2_000_000
    superseded_grace_s: float = 600.0

    def __post_init__(self) -> None:
        if self.close_grace_s < 0 or self.superseded_grace_s < 0:
            raise ValueError("CompactionPolicy grace periods must be >= 0")
        if self.min_files < 1:
            raise ValueError("CompactionPolicy.min_files must be >= 1")
        if self.max_rows_per_file < 100_000:
            raise ValueError("CompactionPolicy.max_rows_per_file must be >= 100000")


@dataclass(frozen=True)
class CompactionResult:
    """What one day's compaction did."""

    day: dt.date
    files_before: int
    files_after: int
    rows: int
    seal: int


class _JobState:
    """``state/compact.json``: the job in progress and the superseded files
    waiting for their deletion time."""

    def __init__(self, data: DataDir) -> None:
        self.path = data.state / "compact.json"
        self.data = data
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            raw = {}
        self.job: dict[str, Any] | None = raw.get("job")
        self.superseded: list[dict[str, Any]] = list(raw.get("superseded", []))

    def save(self) -> None:
        """Replace state/compact.json (atomic, durable)."""
        replace_file(self.path, json.dumps({"job": self.job, "superseded": self.superseded}).encode())


def _entry(lake: Store, key: str) -> tuple[FileEntry, pa.Table]:
    """A file's checkpoint entry and rows (read once)."""
    raw = lake.read(key)
    table = pq.read_table(pa.BufferReader(raw))
    seqs = table.column("seq")
    entry = FileEntry(
        path=key,
        sha256=hashlib.sha256(raw).hexdigest(),
        bytes=len(raw),
        rows=table.num_rows,
        first_seq=int(pc.min(seqs).as_py()) if table.num_rows else 0,
        last_seq=int(pc.max(seqs).as_py()) if table.num_rows else 0,
    )
    return entry, table


def _is_live(key: str, writer_id: str) -> bool:
    name = key.rpartition("/")[2]
    return name.endswith(".parquet") and name.startswith((f"part-{writer_id}-", f"compact-{writer_id}-"))


def live_files(lake: Store, writer_id: str, day: dt.date) -> list[str]:
    """Keys of this writer's published files of ``day`` (sealed and compacted)."""
    return [o.key for o in lake.list(partition_key(day), recursive=False) if _is_live(o.key, writer_id)]


def closed_days(lake: Store, writer_id: str, policy: CompactionPolicy, now: float | None = None) -> list[dt.date]:
    """Closed days holding at least ``policy.min_files`` live files of this writer."""
    now_dt = dt.datetime.fromtimestamp(time.time() if now is None else now, dt.UTC)
    live: dict[dt.date, int] = defaultdict(int)
    for key in partition_files(lake, ".parquet"):
        day = day_of(key)
        if day is not None and _is_live(key, writer_id):
            live[day] += 1
    out = []
    for day, files in sorted(live.items()):
        end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), dt.UTC)
        if now_dt < end + dt.timedelta(seconds=policy.close_grace_s):
            continue
        if files >= policy.min_files:
            out.append(day)
    return out


class Compactor:
    """Compacts one writer's closed days through its Sealer's checkpoints."""

    def __init__(self, data: DataDir, sealer: Sealer, policy: CompactionPolicy | None = None) -> None:
        self.data = data
        self.sealer = sealer
        self.writer_id = sealer.writer_id
        #: The hot lake and the primary checkpoint store: the sealer's.
        self.lake = sealer.lake
        self.checkpoints = sealer.checkpoints
        self.policy = policy or CompactionPolicy()
        self.state = _JobState(data)

    # -- recovery and cleanup ----------------------------------------------------

    def recover(self) -> None:
        """Finish or roll back a job a crash interrupted; remove leftovers."""
        job = self.state.job
        if job is not None:
            new = [f["final"] for f in job["new"]]
            if self._checkpointed(new):
                log.info("compaction of %s was checkpointed before a crash: finishing it", job["day"])
                self._supersede(list(job["old"]))
            else:
                log.info("compaction of %s was interrupted before its checkpoint: rolling back", job["day"])
                for f in job["new"]:
                    self.lake.discard(f["tmp"])
                for key in new:
                    self.lake.delete(key)
                for folder in {_folder(key) for key in new}:
                    self.lake.sync(folder)
            self.state.job = None
            self.state.save()
        self._move_legacy_superseded()
        listed = {s["path"] for s in self.state.superseded}
        for obj in self.lake.list(SUPERSEDED_AREA):
            if obj.key.endswith(SUPERSEDED_SUFFIX) and obj.key not in listed:
                # A crash between the move and the state save.
                deadline = time.time() + self.policy.superseded_grace_s
                self.state.superseded.append({"path": obj.key, "delete_after": deadline})
        stale = stale_stages(self.lake, f"compact-{self.writer_id}-")
        for key in stale:
            self.lake.discard(key)
        if self.lake.staging is None:
            for folder in sorted({_folder(key) for key in stale}):
                self.lake.sync(folder)
        self.state.save()
        self.delete_expired()

    def _checkpointed(self, new_paths: list[str], scan: int = 1000) -> bool:
        """Whether a "compact" checkpoint of this writer lists ``new_paths``."""
        names = sorted((o.key for o in self.checkpoints.list(self.writer_id, recursive=False)
                        if o.key.endswith("-compact.json")), reverse=True)
        wanted = set(new_paths)
        for name in names[:scan]:
            try:
                body = json.loads(self.checkpoints.read(name))
            except (OSError, ValueError):
                continue
            if wanted <= {f["path"] for f in body.get("files", [])}:
                return True
        return False

    def _move_legacy_superseded(self) -> None:
        """Move superseded files an older version left in ``events/`` (as
        ``<name>.parquet.superseded`` beside the live files) out of it,
        keeping their deletion time."""
        legacy = set(partition_files(self.lake, SUPERSEDED_SUFFIX))
        if not legacy:
            return
        due = {s["path"]: s["delete_after"] for s in self.state.superseded}
        self.state.superseded = [s for s in self.state.superseded if s["path"] not in legacy]
        moved = []
        for key in sorted(legacy):
            target = superseded_key(key.removesuffix(SUPERSEDED_SUFFIX))
            self._set_aside(key, target)
            moved.append((key, target))
            deadline = due.get(key, time.time() + self.policy.superseded_grace_s)
            self.state.superseded.append({"path": target, "delete_after": deadline})
        self._sync(moved)
        self.state.save()
        log.info("moved %d superseded files an older version left in events/ to %s/",
                 len(legacy), SUPERSEDED_AREA)

    def _supersede(self, old: list[str]) -> None:
        """Set the replaced files aside (:func:`superseded_key`: out of
        ``events/``, where every reader looks) and list them for deletion
        after the grace period."""
        deadline = time.time() + self.policy.superseded_grace_s
        moved = []
        for key in old:
            target = superseded_key(key)
            if self.lake.exists(key):  # not when a recovery repeats this step
                self._set_aside(key, target)
                moved.append((key, target))
            self.state.superseded.append({"path": target, "delete_after": deadline})
        self._sync(moved)
        self.state.save()

    def _set_aside(self, key: str, target: str) -> None:
        """Move ``key`` to ``target`` (a rename on local disk, a copy and a
        delete on an object store)."""
        if isinstance(self.lake, LocalStore):
            # A rename needs its target folder; object stores have none.
            self.lake.local_path(target).parent.mkdir(parents=True, exist_ok=True)
        self.lake.rename(key, target)

    def _sync(self, moved: list[tuple[str, str]]) -> None:
        """Make the moves (from, to) durable: the folders they left and entered."""
        for folder in sorted({_folder(k) for pair in moved for k in pair}):
            self.lake.sync(folder)

    def delete_expired(self, now: float | None = None) -> int:
        """Delete superseded files whose grace period is over; returns how many."""
        now = time.time() if now is None else now
        keep, gone = [], []
        for s in self.state.superseded:
            if s["delete_after"] <= now:
                self.lake.delete(s["path"])
                gone.append(s["path"])
            else:
                keep.append(s)
        if gone:
            self.state.superseded = keep
            self.state.save()
            if isinstance(self.lake, LocalStore):
                # Day folders of the superseded area left empty (an object
                # store has no folders).
                for folder in sorted({_folder(p) for p in gone if p.startswith(f"{SUPERSEDED_AREA}/")}):
                    with contextlib.suppress(OSError):
                        self.lake.local_path(folder).rmdir()  # only when empty
        return len(gone)

    # -- compaction ------------------------------------------------------------------

    def run(self, now: float | None = None) -> list[CompactionResult]:
        """Compact every closed day that needs it; delete expired superseded files."""
        results = []
        for day in closed_days(self.lake, self.writer_id, self.policy, now):
            result = self.compact_day(day)
            if result is not None:
                results.append(result)
        self.delete_expired(now)
        return results

    def compact_day(self, day: dt.date) -> CompactionResult | None:
        """Merge ``day``'s live files of this writer; None when nothing to do.

        Files are grouped in seal order into runs of at most
        ``policy.max_rows_per_file`` rows (bounding memory) and of one schema
        (files sealed before ``ingest_key_id`` existed are merged only with
        each other, see _file_schema); each run of two or more files becomes
        one file sorted by (tenant_id, created_at, seq).
        """
        candidates = live_files(self.lake, self.writer_id, day)
        if len(candidates) < max(2, self.policy.min_files):
            return None
        runs: list[tuple[list[str], pa.Schema]] = []
        rows_in_group = 0
        for key in candidates:
            with self.lake.open_input(key) as f:
                meta = pq.ParquetFile(f).metadata
            n = meta.num_rows
            schema = _file_schema(meta)
            if not runs or rows_in_group + n > self.policy.max_rows_per_file or schema != runs[-1][1]:
                runs.append(([], schema))
                rows_in_group = 0
            runs[-1][0].append(key)
            rows_in_group += n
        kept = [(g, schema) for g, schema in runs if len(g) >= 2]
        if not kept:
            return None
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%f")
        old: list[str] = []
        entries: list[FileEntry] = []
        staged = []
        rows = 0
        for k, (group, schema) in enumerate(kept):
            tables = []
            for key in group:
                entry, table = _entry(self.lake, key)
                entries.append(entry)
                old.append(key)
                tables.append(table.select(schema.names).cast(schema))
            merged = sort_for_queries(pa.concat_tables(tables))
            del tables
            rows += merged.num_rows
            final = f"{partition_key(day)}/compact-{self.writer_id}-{stamp}-{k:03d}.parquet"
            staged.append(stage_table(self.lake, final, merged))
            del merged
        self.state.job = {
            "day": day.isoformat(),
            "new": [{"tmp": s.temp_key, "final": s.key} for s in staged],
            "old": [e.path for e in entries],
        }
        self.state.save()
        _fail_point("staged")
        for s in staged:
            self.lake.publish(s.staged)
        _fail_point("published")
        new_entries = [s.entry() for s in staged]
        checkpoint = self.sealer.append_checkpoint("compact", new_entries, entries)
        _fail_point("checkpointed")
        self._supersede(old)
        self.state.job = None
        self.state.save()
        log.info("compacted %s: %d files -> %d (%d rows), checkpoint %d",
                 day, len(old), len(staged), rows, checkpoint.seal)
        return CompactionResult(day, len(old), len(staged), rows, checkpoint.seal)


#: Test hook: when set to ``staged`` (the merged files written under their
#: hidden temporary names, the job recorded), ``published`` (the merged files
#: are in place, no checkpoint yet) or ``checkpointed`` (signed, the old
#: files still there), a compaction ``os._exit(137)``s there, as kill -9 would.
FAIL_ENV = "AUDITLAKE_COMPACT_FAIL_AT"


def _fail_point(step: str) -> None:
    if os.environ.get(FAIL_ENV) == step:
        log.error("%s=%s: exiting now (fault-injection test hook)", FAIL_ENV, step)
        logging.shutdown()
        os._exit(137)


def _file_schema(meta: pq.FileMetaData) -> pa.Schema:
    """The schema a sealed file is merged under: EVENT_SCHEMA, or
    LEGACY_EVENT_SCHEMA for a file sealed before ``ingest_key_id`` existed.
    Files of the two are never merged into one: their rows are hashed over
    different fields (integrity.chain.canonical_fields), hashes are never
    recomputed, and verify tells a file's encoding by its columns."""
    names = {meta.schema.column(i).name for i in range(meta.num_columns)}
    return EVENT_SCHEMA if INGEST_KEY_COLUMN in names else LEGACY_EVENT_SCHEMA


def _folder(key: str) -> str:
    """The folder key of ``key``."""
    return key.rpartition("/")[0]


# -- the command ------------------------------------------------------------------------


def cmd_compact(args: argparse.Namespace) -> int:
    """`auditlake compact`: compact closed days (or ``--day``) with no collector running."""
    from auditlake.collector.lake.writer import LakeWriter  # noqa: PLC0415 - writer imports this module

    data = DataDir.from_args(args)
    lock = try_lock(data)
    if lock is None:
        print(
            f"a collector is running on {data.root}: compaction runs inside it "
            "(at start and every compact_interval_s, default hourly); nothing done here",
            flush=True,
        )
        return 3
    lock.close()  # the Collector below takes it again, with recovery
    collector = LakeWriter.offline(data)
    try:
        compactor = collector.compactor
        policy = CompactionPolicy(
            close_grace_s=compactor.policy.close_grace_s,
            min_files=2,
            superseded_grace_s=0.0 if args.delete_now else compactor.policy.superseded_grace_s,
        )
        compactor.policy = policy
        try:
            # The lake's maintenance lock: in a shared lake, the fleet's lease.
            with collector.maintenance_lock:
                if args.day:
                    day = dt.date.fromisoformat(args.day)
                    result = compactor.compact_day(day)
                    results = [result] if result is not None else []
                else:
                    results = compactor.run()
                compactor.delete_expired()
        except StorageError as exc:  # MaintenanceBusy: another collector holds the lease
            print(f"auditlake compact: {exc}", file=sys.stderr)
            return 3
    finally:
        collector.stop()
    for r in results:
        print(f"{r.day}: {r.files_before} files -> {r.files_after} ({r.rows} rows), checkpoint {r.seal}")
    if not results:
        print("nothing to compact")
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``auditlake compact``."""
    from auditlake.collector.config import add_data_arg  # noqa: PLC0415

    p = subparsers.add_parser(
        "compact",
        help="merge a closed day's small sealed files into few large ones",
        description="Merge the small sealed files of closed UTC days (or --day) into few "
        "large sorted files, keeping every row, seq and chain hash; signed as a "
        "'compact' checkpoint.  A running collector does this itself hourly.",
    )
    add_data_arg(p)
    p.add_argument("--day", metavar="YYYY-MM-DD", help="compact this day only (even if not closed)")
    p.add_argument("--delete-now", action="store_true",
                   help="delete the replaced files now instead of after the grace period")
    p.set_defaults(func=cmd_compact)
