"""Listing the files: which lake files exist (the hot tier and the cold
tier, listed through their Stores), and which must exist by the checkpoints
(the live files, the removed ones, the expired seq ranges and the signed
chain heads that anchor the re-hash)."""

from __future__ import annotations

import datetime as dt
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from auditlake.collector.errors import ConfigError
from auditlake.collector.integrity.chain import CANONICAL_FIELDS
from auditlake.collector.integrity.checkpoint import FileEntry, SignedCheckpoint
from auditlake.collector.integrity.verify.checkpoints import ByWriter
from auditlake.collector.integrity.verify.report import VerifyReport
from auditlake.collector.storage.datadir import DataDir
from auditlake.collector.storage.tiers import COLD_PREFIX, Tier, cold_tier_at, hot_tier, recorded_cold_location

_DATE_RE = re.compile(r"(?:^|/)date=(\d{4}-\d{2}-\d{2})/")


class LakeChanged(Exception):
    """A file vanished while being verified (compaction or retention ran): start over."""


def partition_date(key: str) -> str | None:
    """The ``date=`` partition of a lake path, or None outside partitions."""
    m = _DATE_RE.search(key)
    return m.group(1) if m else None


def _parse_date(value: str | dt.date | None, name: str) -> dt.date | None:
    if value is None or isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(value)
    except ValueError as exc:
        raise ConfigError(f"{name} must be YYYY-MM-DD, got {value!r}") from exc


@dataclass(frozen=True)
class DateRange:
    """The partitions to digest and re-hash (``--from``/``--to``; both open by default)."""

    first: dt.date | None = None
    last: dt.date | None = None

    @classmethod
    def parse(cls, date_from: str | dt.date | None, date_to: str | dt.date | None) -> DateRange:
        """The range of two YYYY-MM-DD arguments; ConfigError names the bad one."""
        first, last = _parse_date(date_from, "--from"), _parse_date(date_to, "--to")
        if first and last and first > last:
            raise ConfigError("--from is after --to")
        return cls(first, last)

    def contains(self, key: str) -> bool:
        """True when the file ``key`` is in range (files outside partitions always are)."""
        if self.first is None and self.last is None:
            return True
        d = partition_date(key)
        if d is None:
            return True
        day = dt.date.fromisoformat(d)
        return not ((self.first and day < self.first) or (self.last and day > self.last))


# -- what the checkpoints say ------------------------------------------------------------


@dataclass
class LiveFile:
    """A file the checkpoints list and none removes, with the checkpoint that listed it."""

    entry: FileEntry
    #: The writer whose events it holds (rows_writer).
    writer_id: str
    #: The seal of the checkpoint that listed it, and that checkpoint's writer.
    seal: int
    listed_by: str = ""


#: An expired seq range: first seq, last seq, chain_hash of the last.
ExpiredRange = tuple[int, int, str]


@dataclass
class ExpectedFiles:
    """What the checkpoints say the lake holds."""

    #: The files that must exist, by checkpoint path.
    live: dict[str, LiveFile] = field(default_factory=dict)
    #: Every removed entry, by path.
    history: dict[str, FileEntry] = field(default_factory=dict)
    #: The checkpoint that removed each of them: writer, seal, kind.
    removed_by: dict[str, tuple[str, int, str]] = field(default_factory=dict)
    #: Seq ranges an expire checkpoint removed, by writer.
    expired: dict[str, list[ExpiredRange]] = field(default_factory=lambda: defaultdict(list))
    #: Signed chain heads: writer, seq, chain_hash, checkpoint file name.
    anchors: list[tuple[str, int, str, str]] = field(default_factory=list)

    @property
    def anchored(self) -> dict[tuple[str, int], str]:
        """The signed chain_hash at (writer, seq)."""
        return {(w, s): h for w, s, h, _ in self.anchors}

    def unexpired(self, writer: str, lo: int, hi: int) -> list[tuple[int, int]]:
        """Sub-ranges of lo..hi NOT covered by the writer's expired ranges."""
        gaps = [(lo, hi)]
        for a, b, _ in sorted(self.expired.get(writer, [])):
            nxt = []
            for x, y in gaps:
                if b < x or a > y:
                    nxt.append((x, y))
                    continue
                if x < a:
                    nxt.append((x, a - 1))
                if b < y:
                    nxt.append((b + 1, y))
            gaps = nxt
        return gaps

    def expired_events(self, writer: str) -> int:
        """How many events of ``writer`` expire checkpoints removed."""
        return sum(b - a + 1 for a, b, _ in self.expired.get(writer, []))


_FILE_WRITER_RE = re.compile(r"(?:^|/)(?:part|compact)-(w[0-9a-f]+)-[^/]*\.parquet$")


def rows_writer(path: str, listed_by: str) -> str:
    """The writer whose events a file holds: the one its name carries
    (``part-<writer>-...``, ``compact-<writer>-...``; a moved file keeps its
    name), else the writer whose checkpoint listed it.  In a shared lake the
    collector holding the maintenance lease may move or expire another
    writer's files, recording that in its own chain."""
    m = _FILE_WRITER_RE.search(path)
    return m.group(1) if m else listed_by


def expected_files(writers: ByWriter, report: VerifyReport) -> ExpectedFiles:
    """The files that must exist: every file a checkpoint lists and none
    removes (paths are never reused, so the order across writers does not
    matter: one writer's move may remove a file another writer's seal
    listed); the expired seq ranges; the signed anchors (seq → chain_hash)."""
    out = ExpectedFiles()
    listed: dict[str, LiveFile] = {}
    for writer, seals in sorted(writers.items()):
        for seal in sorted(seals):
            s = seals[seal]
            cp = s.checkpoint
            if cp.seq > 0:
                out.anchors.append((writer, cp.seq, cp.chain_hash, s.path.name))
            for f in cp.files:
                listed[f.path] = LiveFile(f, rows_writer(f.path, writer), seal, writer)
    for writer, seals in sorted(writers.items()):
        for seal in sorted(seals):
            _apply_removed(out, listed, writer, seals[seal], report)
            if seals[seal].checkpoint.kind == "expire":
                _expire_ranges(out, listed, writer, seals[seal], report)
    out.live = {p: f for p, f in listed.items() if p not in out.history}
    return out


def _apply_removed(out: ExpectedFiles, listed: dict[str, LiveFile], writer: str, s: SignedCheckpoint,
                   report: VerifyReport) -> None:
    cp = s.checkpoint
    for r in cp.removed:
        live = listed.get(r.path)
        if live is None or live.entry.sha256 != r.sha256 or (live.listed_by == writer and live.seal > cp.seal):
            report.add(
                "bad_checkpoint",
                f"{cp.kind} checkpoint {s.path.name} removes {r.path}, which no "
                "earlier checkpoint of this lake lists with that digest",
                file=r.path, writer_id=writer)
        out.history[r.path] = r
        out.removed_by[r.path] = (writer, cp.seal, cp.kind)


def _expire_ranges(out: ExpectedFiles, listed: dict[str, LiveFile], writer: str, s: SignedCheckpoint,
                   report: VerifyReport) -> None:
    cp = s.checkpoint
    removed = {r.path: r for r in cp.removed}
    ranges = cp.extra.get("ranges", []) if isinstance(cp.extra, dict) else []
    seen: set[str] = set()
    for item in ranges:
        try:
            path = str(item["path"])
            seq_ranges = [(int(a), int(b), str(h)) for a, b, h in item["seq_ranges"]]
        except (KeyError, TypeError, ValueError):
            report.add("bad_checkpoint", f"expire checkpoint {s.path.name}: malformed range {item!r}",
                       writer_id=writer, file=str(s.path))
            continue
        seen.add(path)
        entry = removed.get(path)
        count = sum(b - a + 1 for a, b, _ in seq_ranges)
        if entry is None or count != entry.rows or any(
                a < entry.first_seq or b > entry.last_seq or a > b for a, b, _ in seq_ranges):
            report.add("bad_checkpoint",
                       f"expire checkpoint {s.path.name}: the seq ranges of {path} do not "
                       "match the removed file's rows and seq span",
                       writer_id=writer, file=path)
        # The ranges are of the events' writer, whoever's checkpoint expired them.
        owner = listed[path].writer_id if path in listed else rows_writer(path, writer)
        out.expired[owner].extend(seq_ranges)
    for path in removed:
        if path not in seen:
            report.add("bad_checkpoint",
                       f"expire checkpoint {s.path.name} removes {path} without recording "
                       "its seq ranges", writer_id=writer, file=path)


# -- what the tiers hold -----------------------------------------------------------------


@dataclass
class DiskFile:
    """A lake file found in a tier, and what digesting it learned."""

    #: The path as a checkpoint writes it (``cold:`` prefixed in the cold tier).
    key: str
    tier: Tier
    #: The key inside ``tier``.
    rel: str
    size: int
    sha256: str = ""
    rows: int = -1
    #: The fields its events are hashed over, from its footer's columns
    #: (chain.canonical_fields: files sealed before ingest_key_id use version 1).
    fields: tuple[str, ...] = CANONICAL_FIELDS

    @property
    def full(self) -> str:
        """The path inside ``tier.filesystem`` (what DuckDB and pyarrow read)."""
        return self.tier.path(self.rel)

    def still_there(self) -> bool:
        """True when the file exists (a read failing on a vanished file means the lake changed)."""
        try:
            return self.tier.exists(self.rel)
        except (OSError, pa.ArrowException):
            return False


#: The suffix of a file a seal or compaction stages before publishing it
#: (lake.files.TMP_SUFFIX, a layer above).  This version stages under a
#: hidden name (``.<name>.parquet.tmp``), which no reader reads and verify
#: need not check; a visible ``<name>.parquet.tmp`` (how older versions
#: staged, left by a crash until their recovery) is read by folder readers
#: like any other file, so it is a stray.
STAGE_SUFFIX = ".parquet.tmp"


def folder_reader_sees(key: str) -> bool:
    """True when engines that read the ``events/`` folder itself
    (``pyarrow.dataset`` with Hive partitioning, Spark, Dask) read the file
    ``key``: they skip any name, file or folder below ``events/``, that
    starts with ``_`` or ``.``, and read every other file whatever its suffix."""
    return not any(part.startswith(("_", ".")) for part in key.split("/")[1:])


@dataclass
class LakeListing:
    """What a tier's ``events/`` folder holds, as readers see it."""

    #: Every ``*.parquet`` file, at any depth and hidden or not (what
    #: ``read_parquet('events/**/*.parquet')`` globs), by checkpoint path.
    files: dict[str, DiskFile] = field(default_factory=dict)
    #: Every other file a folder reader reads (a visible ``*.parquet.tmp``
    #: included: a stage in flight is hidden).
    strays: dict[str, DiskFile] = field(default_factory=dict)


def _list_tier(tier: Tier, prefix: str, out: LakeListing) -> None:
    try:
        found = tier.list("events")
    except (OSError, pa.ArrowException):
        return
    for o in found:
        f = DiskFile(prefix + o.key, tier, o.key, o.size)
        if o.key.endswith(".parquet"):
            out.files[f.key] = f
        elif folder_reader_sees(o.key):
            out.strays[f.key] = f


def _moved_to(writers: ByWriter) -> str:
    """Where the move checkpoints put files: the newest recorded location."""
    location = ""
    for _, seals in sorted(writers.items()):
        for seal in sorted(seals):
            cp = seals[seal].checkpoint
            if cp.kind == "move" and isinstance(cp.extra, dict) and cp.extra.get("cold"):
                location = str(cp.extra["cold"])
    return location


def lake_tiers(data: DataDir, toml: dict[str, Any], writers: ByWriter, cold: Tier | None) -> dict[str, Tier]:
    """The hot tier, and the cold tier when there is one: ``cold`` when given,
    else where retention's index (or, before it exists, the move checkpoints)
    recorded it, else where the ``[retention]`` table says."""
    tiers = {"hot": hot_tier(data)}
    if cold is None:
        location = recorded_cold_location(data)
        cold = cold_tier_at(_moved_to(writers) if location is None else location, toml)
    if cold is not None:
        tiers["cold"] = cold
    return tiers


def list_lake(tiers: dict[str, Tier]) -> LakeListing:
    """Every file under ``events/`` of each tier that some reader reads, by
    checkpoint path: what a reader globs is what verify checks."""
    out = LakeListing()
    _list_tier(tiers["hot"], "", out)
    if "cold" in tiers:
        _list_tier(tiers["cold"], COLD_PREFIX, out)
    return out
