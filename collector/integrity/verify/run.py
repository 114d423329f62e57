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
from auditlake.collector.integrity.checkpoint import KeptSubtrees, read_kept_subtrees
from auditlake.collector.integrity.verify.checkpoints import (
    ByWriter,
    PublicKeys,
    check_own_writer,
    checkpoint_listing,
    load_key,
    read_checkpoints,
    sealed_without_checkpoints,
)
from auditlake.collector.integrity.verify.digest import FileReads, check_strays, digest_files
from auditlake.collector.integrity.verify.expect import ExpectedHead, check_expected_heads, read_expected_heads
from auditlake.collector.integrity.verify.explain import explain_failures, explain_writer_ids
from auditlake.collector.integrity.verify.index import LakeScan, build_index, summarize
from auditlake.collector.integrity.verify.links import Links, TreeHead, chain_starts, hash_links, start_rehash
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

#: Marks an expected head (--expect-head) among the signed tree heads.
_EXPECTED = "expected:"

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
    expect_heads: Iterable[Path | str] = (),
) -> VerifyReport:
    """Verify the lake of ``data`` against its signed checkpoints.

    ``expect_heads``: files holding heads recorded earlier (a checkpoint, an
    ``auditlake monitor`` state file, a ``verify --format json`` report) the
    lake must still pass through (verify.expect).

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
        verification.expect_heads = read_expected_heads(list(expect_heads))
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
    #: The ``*.parquet`` files of the tiers' events/ folders.
    disk: dict[str, DiskFile]
    #: Other files there that folder readers (pyarrow.dataset) read.
    strays: dict[str, DiskFile]


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
        self.expect_heads: list[ExpectedHead] = []
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

    def _tree_heads(self, snap: _Snapshot) -> dict[str, list[TreeHead]]:
        """Each writer's signed tree heads (version-2 checkpoints); a head
        whose size is not its chain head's seq breaks the contract."""
        heads: dict[str, list[TreeHead]] = {}
        for writer, seals in snap.writers.items():
            for seal in sorted(seals):
                cp = seals[seal].checkpoint
                if cp.tree_size is None:
                    continue
                name = seals[seal].path.name
                if cp.tree_size != cp.seq:
                    self.report.add("bad_checkpoint", f"{name}: tree_size {cp.tree_size} is not its seq {cp.seq}",
                                    file=name, writer_id=writer)
                    continue
                try:
                    root = bytes.fromhex(cp.tree_root)
                except ValueError:
                    root = b""
                if len(root) != 32:
                    self.report.add("bad_checkpoint", f"{name}: tree_root {cp.tree_root!r:.80} is not 64 hex digits",
                                    file=name, writer_id=writer)
                    continue
                heads.setdefault(writer, []).append((cp.tree_size, root, name))
        for head in self.expect_heads:
            if head.tree_size is not None and len(head.tree_root) == 64:
                heads.setdefault(head.writer_id, []).append(
                    (head.tree_size, bytes.fromhex(head.tree_root), f"{_EXPECTED}{head.source}"))
        return heads

    def _kept_subtrees(self, snap: _Snapshot) -> KeptSubtrees:
        """The subtree roots expire checkpoints kept of expired events; a
        malformed list is a broken contract."""
        kept: KeptSubtrees = {}
        for writer, seals in snap.writers.items():
            for seal in sorted(seals):
                signed = seals[seal]
                if signed.checkpoint.kind != "expire":
                    continue
                try:
                    read_kept_subtrees(signed.checkpoint, kept)
                except ValueError as exc:
                    self.report.add("bad_checkpoint", f"{signed.path.name}: malformed extra.subtrees ({exc})",
                                    file=signed.path.name, writer_id=writer)
        return kept

    def _report_trees(self, links: Links, snap: _Snapshot) -> None:
        self.report.tree_heads = links.tree_heads_checked
        # An event whose link fails is named already (changed_event and its
        # kin); the tree heads above it follow from that and add nothing.
        first_failure: dict[str, int] = {}
        for w, seq, _ in links.failing:
            first_failure[w] = min(seq, first_failure.get(w, seq))
        for writer, size, name, actual in links.tree_mismatches:
            if writer in first_failure and first_failure[writer] <= size and not name.startswith(_EXPECTED):
                continue
            if name.startswith(_EXPECTED):
                self.report.add("expected_head", f"the tree head recorded in {name[len(_EXPECTED):]} "
                                f"(writer {writer}, {size} events) is not the tree of the stored events "
                                f"1..{size} (root {actual}): history up to it was rewritten",
                                seq=size or None, writer_id=writer)
                continue
            self.report.add("tree_head", f"{name}: the signed tree of {size} events is not the tree of "
                            f"writer {writer}'s stored events 1..{size} (root {actual})",
                            file=name, seq=size or None, writer_id=writer)
        for writer, why in sorted(links.trees_unchecked.items()):
            if snap.expected.expired.get(writer) and "kept subtree" not in why:
                why = ("retention expired some of its events and no expire checkpoint kept their subtree "
                       "roots (expired by an older version)")
            self.report.warnings.append(f"writer {writer}'s Merkle tree was not rebuilt: {why}")

    def run(self) -> VerifyReport:
        """Every phase; the report with its problems sorted."""
        t0 = time.monotonic()
        snap = self._snapshot()
        if self.key is None:
            self.report.add("no_public_key",
                            "no public key: the data dir has no keys/signing.pub.pem and none was "
                            "given (--public-key FILE); checkpoint signatures were not checked")
        check_own_writer(self.data, snap.writers, self.report)
        reads = digest_files(snap.disk, snap.expected, self.dates, self.progress, self.report)
        check_strays(snap.strays, snap.expected, self.report)
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
        folders must not change while the lake is listed, and what only a
        step in progress explains gets a moment to settle: files no
        checkpoint lists (a seal publishes its files just before signing),
        files a checkpoint just removed (compaction and retention set them
        aside right after signing), a first seal committed but not yet
        signed."""
        folders: list[Store] = [checkpoint_tier(self.data),
                                *(LocalStore(m, "mirror") for m in self.mirrors)]
        snap: _Snapshot | None = None
        for attempt in range(_SNAPSHOT_TRIES):
            before = checkpoint_listing(folders)
            snap = self._read_lake(folders)
            if checkpoint_listing(folders) != before:
                continue
            unsettled = (any(k not in snap.expected.live for k in snap.disk)
                         or sealed_without_checkpoints(self.data, snap.writers) is not None)
            if not unsettled or attempt == _SNAPSHOT_TRIES - 1:
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
        listing = list_lake(lake_tiers(self.data, self.toml, writers, self.cold))
        self.report.files = len(listing.files)
        return _Snapshot(writers, expected, listing.files, listing.strays)

    def _check_rows(self, con: duckdb.DuckDBPyConnection, snap: _Snapshot, reads: FileReads) -> None:
        """Index the readable files, check their rows, then re-hash the chain."""
        scan = LakeScan(con, snap.disk, reads.buffers)
        readable = reads.readable(snap.disk)
        keys = [k for k in readable if self.dates.contains(k)]
        hashed = set(keys)
        whole = self.dates.first is None and self.dates.last is None
        heads = self._tree_heads(snap) if whole else None
        events = sum(max(snap.disk[k].rows, 0) for k in keys)
        # The re-hash starts first: worker processes hash while DuckDB indexes.
        rehash = start_rehash(scan, keys, reads.maybe_null, heads, events)
        try:
            build_index(scan, readable)
            self.progress("index", 1, 1)
            summarize(con, snap.expected, self.report)
            changed_writer_ids = check_writers(con, set(snap.writers), snap.expected, self.report)
            check_sequences(con, snap.writers, snap.expected, self.report)
            check_file_rows(con, snap.disk, snap.expected, set(snap.writers), self.report)
            check_anchors(con, snap.expected, self.report)
            check_expected_heads(con, self.expect_heads, snap.writers, snap.expected, self.report)
            links = hash_links(
                con, scan, keys, [k for k in readable if k not in hashed],
                chain_starts(set(snap.writers), snap.expected), reads.maybe_null, events, self.progress,
                tree_heads=heads, kept=self._kept_subtrees(snap), rehash=rehash)
        finally:
            if rehash is not None:
                self.report.hash_workers = rehash.workers
                self.report.hash_loop = rehash.loop
                rehash.close()
        self.report.events_hashed = links.hashed
        self._report_trees(links, snap)
        if links.failing:
            explain_failures(con, scan, links, set(snap.writers), snap.expected.anchored, self.report)
        explain_writer_ids(con, scan, changed_writer_ids, chain_starts(set(snap.writers), snap.expected),
                           self.report)
