"""One verification, start to finish: a consistent snapshot of checkpoints
and files on a possibly live lake, the file digests, the DuckDB index and its
row checks, the re-hash and the naming of failed links; started over when a
compaction or move removes a file underneath."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from auditlake.collector.config import load_toml
from auditlake.collector.errors import ConfigError, StorageError
from auditlake.collector.integrity.verify.checkpoints import (
    ByWriter,
    PublicKeys,
    checkpoint_listing,
    load_key,
    read_checkpoints,
)
from auditlake.collector.integrity.verify.digest import FileReads, digest_files
from auditlake.collector.integrity.verify.explain import explain_failures
from auditlake.collector.integrity.verify.index import LakeScan, build_index, summarize
from auditlake.collector.integrity.verify.links import chain_starts, hash_links
from auditlake.collector.integrity.verify.listing import (
    DateRange,
    DiskFile,
    ExpectedFiles,
    LakeChanged,
    expected_files,
    lake_tiers,
    list_lake,
)
from auditlake.collector.integrity.verify.report import ProgressFn, VerifyReport
from auditlake.collector.integrity.verify.rows import check_anchors, check_file_rows, check_sequences, check_writers
from auditlake.collector.storage.datadir import DataDir
from auditlake.collector.storage.store import LocalStore, Store
from auditlake.collector.storage.tiers import Tier, checkpoint_tier

#: Attempts at a consistent snapshot of checkpoints and files on a live lake.
_SNAPSHOT_TRIES = 5
#: Restarts when a file vanishes mid-verification (a compaction or move ran).
_RESTARTS = 3


def verify_lake(
    data: DataDir | str | Path,
    *,
    public_key: PublicKeys | None = None,
    date_from: str | dt.date | None = None,
    date_to: str | dt.date | None = None,
    mirrors: Iterable[Path | str] = (),
    progress: ProgressFn | None = None,
    toml: dict[str, Any] | None = None,
    cold_tier: Tier | None = None,
) -> VerifyReport:
    """Verify the lake of ``data`` against its signed checkpoints.

    ``public_key``: the key (or a PEM file) to check signatures with; default
    the data dir's ``keys/signing.pub.pem``.  ``date_from``/``date_to`` limit
    which partitions are digested and re-hashed (docs/integrity.md: the
    weaker guarantee).  ``mirrors``: further checkpoint folders to compare
    (detects checkpoints deleted from the data dir together with the newest
    events).  ``progress(phase, done, total)`` is called as work advances.
    ``cold_tier``: where ``cold:`` files live; default the retention
    configuration's cold tier (none when retention is not set up).
    """
    mirrors = list(mirrors)
    for attempt in range(_RESTARTS):
        verification = _Verification(data, public_key, date_from, date_to, mirrors, progress, toml, cold_tier)
        try:
            return verification.run()
        except LakeChanged as exc:
            if attempt == _RESTARTS - 1:
                raise StorageError(f"the lake kept changing while being verified ({exc}); "
                                   "verify again") from exc
    raise AssertionError("unreachable")


@dataclass
class _Snapshot:
    """Checkpoints and file listing that belong together."""

    writers: ByWriter
    expected: ExpectedFiles
    disk: dict[str, DiskFile]


class _Verification:
    """One attempt: its settings, its report, and the phases in order."""

    def __init__(
        self,
        data: DataDir | str | Path,
        public_key: PublicKeys | None,
        date_from: str | dt.date | None,
        date_to: str | dt.date | None,
        mirrors: Iterable[Path | str],
        progress: ProgressFn | None,
        toml: dict[str, Any] | None,
        cold: Tier | None,
    ) -> None:
        self.data = data if isinstance(data, DataDir) else DataDir.resolve(data)
        if not self.data.shared_lake and not self.data.root.is_dir():
            raise ConfigError(f"data directory {self.data.root} does not exist")
        self.key, key_source = load_key(self.data, public_key)
        self.dates = DateRange.parse(date_from, date_to)
        self.mirrors = [Path(m) for m in mirrors]
        self.progress: ProgressFn = progress or (lambda phase, done, total: None)
        self.toml = toml if toml is not None else load_toml(self.data.config_file)
        self.cold = cold
        for m in self.mirrors:
            if not m.is_dir():
                raise ConfigError(f"checkpoint mirror {m} does not exist")
        self.report = VerifyReport(
            data=str(self.data.root), public_key=key_source,
            mirrors=[str(m) for m in self.mirrors],
            date_from=self.dates.first.isoformat() if self.dates.first else None,
            date_to=self.dates.last.isoformat() if self.dates.last else None,
            started=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        )

    def run(self) -> VerifyReport:
        """Every phase; the report with its problems sorted."""
        t0 = time.monotonic()
        snap = self._snapshot()
        if self.key is None:
            self.report.add("no_public_key",
                            "no public key: the data dir has no keys/signing.pub.pem and none was "
                            "given (--public-key FILE); checkpoint signatures were not checked")
        reads = digest_files(snap.disk, snap.expected, self.dates, self.progress, self.report)
        con = duckdb.connect()
        try:
            con.execute("SET TimeZone = 'UTC'")
            self._check_rows(con, snap, reads)
        except duckdb.IOException as exc:
            if any(not f.still_there() for f in snap.disk.values()):
                raise LakeChanged(str(exc)) from exc
            raise
        finally:
            con.close()
        self.report.sort_problems()
        self.report.seconds = time.monotonic() - t0
        return self.report

    def _snapshot(self) -> _Snapshot:
        """Checkpoints and file listing that belong together, on a lake that a
        running collector keeps sealing, compacting and moving: the checkpoint
        folders must not change while the lake is listed, and files no
        checkpoint accounts for get a moment for their checkpoint to appear
        (a seal publishes its files just before signing)."""
        folders: list[Store] = [checkpoint_tier(self.data),
                                *(LocalStore(m, "mirror") for m in self.mirrors)]
        snap: _Snapshot | None = None
        for attempt in range(_SNAPSHOT_TRIES):
            before = checkpoint_listing(folders)
            snap = self._read_lake(folders)
            if checkpoint_listing(folders) != before:
                continue
            live, removed = snap.expected.live, snap.expected.history
            unaccounted = [k for k in snap.disk if k not in live and k not in removed]
            if not unaccounted or attempt == _SNAPSHOT_TRIES - 1:
                break
            time.sleep(0.25)
        assert snap is not None
        return snap

    def _read_lake(self, folders: list[Store]) -> _Snapshot:
        """The checkpoints, what they say must exist, and what the tiers hold."""
        self.report.problems.clear()
        self.report.warnings.clear()
        self.report.writers.clear()
        writers = read_checkpoints(folders[0], folders[1:], self.key, self.report)
        expected = expected_files(writers, self.report)
        disk = list_lake(lake_tiers(self.data, self.toml, writers, self.cold))
        self.report.files = len(disk)
        return _Snapshot(writers, expected, disk)

    def _check_rows(self, con: duckdb.DuckDBPyConnection, snap: _Snapshot, reads: FileReads) -> None:
        """Index the readable files, check their rows, then re-hash the chain."""
        scan = LakeScan(con, snap.disk, reads.buffers)
        readable = reads.readable(snap.disk)
        build_index(scan, readable)
        self.progress("index", 1, 1)
        summarize(con, snap.expected, self.report)
        check_writers(con, set(snap.writers), self.report)
        check_sequences(con, snap.writers, snap.expected, self.report)
        check_file_rows(con, snap.disk, snap.expected, self.report)
        check_anchors(con, snap.expected, self.report)
        keys = [k for k in readable if self.dates.contains(k)]
        hashed = set(keys)
        links = hash_links(
            con, scan, keys, [k for k in readable if k not in hashed],
            chain_starts(set(snap.writers), snap.expected), reads.maybe_null,
            sum(max(snap.disk[k].rows, 0) for k in keys), self.progress)
        self.report.events_hashed = links.hashed
        if links.failing:
            explain_failures(con, scan, links, set(snap.writers), snap.expected.anchored, self.report)
