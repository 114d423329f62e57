"""Verify: re-read the lake and its signed checkpoints, recompute every hash,
and name each problem (changed, removed, inserted, reordered or misplaced
events and files, truncation, bad signatures, a broken checkpoint chain).

The checks are specified in docs/integrity.md.  DuckDB reads the files and
computes each event's link ``sha256(stored chain_hash of seq-1 || canonical)``
in SQL, in parallel; every link holding, together with the signed heads in the
checkpoints, is the same statement as the whole chain holding from genesis.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import importlib
import json
import re
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from auditlake.collector.checkpoint import (
    ChainCheckpoint,
    FileEntry,
    SignedCheckpoint,
    canonical_json,
)
from auditlake.collector.config import load_toml
from auditlake.collector.datadir import DataDir
from auditlake.collector.errors import ConfigError, StorageError
from auditlake.collector.integrity import (
    CANONICAL_FIELDS,
    GENESIS,
    canonical_rows,
    canonical_sql,
    chain_link,
    null_check_sql,
)
from auditlake.collector.keys import load_public_key
from auditlake.collector.schema import EVENT_SCHEMA, MAX_BYTES, OUTCOMES, REQUIRED_FIELDS
from auditlake.collector.tiers import COLD_PREFIX, Tier, hot_tier

#: Checkpoint kinds of the contract (docs/integrity.md, "Checkpoint kinds").
KINDS = ("seal", "compact", "move", "expire")

#: Problem kinds, and what each means (printed by ``--format json`` consumers
#: and documented in docs/integrity.md).
PROBLEM_KINDS: dict[str, str] = {
    "changed_event": "an event's content no longer hashes to its stored chain_hash",
    "changed_hash": "an event's stored chain_hash was altered",
    "reordered_events": "events were moved to other positions of the chain",
    "missing_events": "sequence numbers are missing (and no expire checkpoint explains them)",
    "truncated": "the lake ends before the newest signed chain head",
    "duplicate_seq": "two stored events carry the same writer and sequence number",
    "unsigned_events": "events after the newest signed chain head",
    "unknown_writer": "events of a writer that has no signed checkpoint",
    "head_mismatch": "the stored chain_hash at a checkpoint's seq differs from the signed one",
    "changed_file": "a file's bytes differ from the sha256 its checkpoint signed",
    "missing_file": "a file a checkpoint lists (and none removes) is not in the lake",
    "unlisted_file": "a file in the lake that no checkpoint lists",
    "moved_file": "a listed file is at another path than its checkpoint says",
    "misplaced_event": "an event is in another file than the one its checkpoint lists",
    "file_rows": "a file holds other rows than its checkpoint lists",
    "wrong_partition": "an event's created_at date differs from its date= partition",
    "unreadable_file": "a lake file cannot be read as Parquet",
    "bad_signature": "a checkpoint's Ed25519 signature does not match its content",
    "broken_checkpoint_chain": "a checkpoint's previous link or seal number does not follow",
    "missing_checkpoint": "a checkpoint is missing from the primary folder",
    "checkpoints_truncated": "a mirror holds newer checkpoints than the primary folder",
    "mirror_mismatch": "a checkpoint differs between the primary folder and a mirror",
    "unreadable_checkpoint": "a checkpoint file cannot be parsed",
    "bad_checkpoint": "a checkpoint contradicts the contract (kind, head, removed files)",
    "no_public_key": "no public key to check signatures with",
}

ProgressFn = Callable[[str, int, int], None]

_DATE_RE = re.compile(r"(?:^|/)date=(\d{4}-\d{2}-\d{2})/")
_PART_RE = re.compile(r"^part-(?P<writer>.+)-(?P<seal>\d{10})(?:-.*)?\.parquet$")
_UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_HEX_RE = {"trace_id": re.compile(r"^([0-9a-f]{32})?$"), "span_id": re.compile(r"^([0-9a-f]{16})?$")}
#: Attempts at a consistent snapshot of checkpoints and files on a live lake.
_SNAPSHOT_TRIES = 5
#: Restarts when a file vanishes mid-verification (a compaction or move ran).
_RESTARTS = 3
#: Failing events examined one by one (column, swap, edited hash); the rest are counted.
_DETAIL_LIMIT = 500


@dataclass(frozen=True)
class Problem:
    """One finding: what kind, in words, and where (file, seq, column) when known."""

    kind: str
    message: str
    file: str | None = None
    seq: int | None = None
    column: str | None = None
    writer_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


@dataclass
class WriterSummary:
    """What was verified of one writer's chain."""

    writer_id: str
    events: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    head_seq: int = 0
    head_hash: str = ""
    head_time: str = ""
    checkpoints: int = 0
    expired_events: int = 0


@dataclass
class VerifyReport:
    """The result of verify_lake: problems (empty when clean) and a summary."""

    data: str
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    writers: list[WriterSummary] = field(default_factory=list)
    events: int = 0
    events_hashed: int = 0
    files: int = 0
    files_digested: int = 0
    bytes_digested: int = 0
    checkpoints: int = 0
    mirrors: list[str] = field(default_factory=list)
    public_key: str = ""
    date_from: str | None = None
    date_to: str | None = None
    started: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        """The report as JSON-ready data (``auditlake verify --format json``)."""
        return {
            "ok": self.ok,
            "data": self.data,
            "started": self.started,
            "seconds": round(self.seconds, 3),
            "events": self.events,
            "events_hashed": self.events_hashed,
            "events_per_second": round(self.events_hashed / self.seconds) if self.seconds else 0,
            "files": self.files,
            "files_digested": self.files_digested,
            "bytes_digested": self.bytes_digested,
            "checkpoints": self.checkpoints,
            "mirrors": self.mirrors,
            "public_key": self.public_key,
            "range": {"from": self.date_from, "to": self.date_to},
            "writers": [w.__dict__ for w in self.writers],
            "problems": [p.to_json() for p in self.problems],
            "warnings": self.warnings,
        }

    def to_text(self) -> str:
        """A summary an auditor can keep, then every problem."""
        lines = [
            f"auditlake verify: {'OK' if self.ok else 'PROBLEMS FOUND'}",
            f"data:          {self.data}",
            f"started:       {self.started} ({self.seconds:.2f} s)",
            f"range:         {self.date_from or 'all'} .. {self.date_to or 'all'}",
            f"public key:    {self.public_key}",
            f"events:        {self.events:,} stored, {self.events_hashed:,} re-hashed",
            f"files:         {self.files:,} ({self.files_digested:,} digested, "
            f"{self.bytes_digested:,} bytes)",
            f"checkpoints:   {self.checkpoints:,}"
            + (f" (mirrors: {', '.join(self.mirrors)})" if self.mirrors else ""),
        ]
        for w in self.writers:
            seqs = f"{w.first_seq}..{w.last_seq}" if w.first_seq is not None else "none"
            lines.append(
                f"writer {w.writer_id}: {w.events:,} events, seq {seqs}, signed head seq "
                f"{w.head_seq} {w.head_hash} at {w.head_time}, {w.checkpoints} checkpoints"
                + (f", {w.expired_events:,} expired by policy" if w.expired_events else "")
            )
        for warning in self.warnings:
            lines.append(f"warning: {warning}")
        if self.problems:
            lines.append(f"{len(self.problems)} problem(s):")
            lines += [f"  {p}" for p in self.problems]
        return "\n".join(lines) + "\n"


# -- checkpoints -----------------------------------------------------------------


def _read_checkpoint_dir(root: Path, problems: list[Problem]) -> dict[str, dict[int, SignedCheckpoint]]:
    out: dict[str, dict[int, SignedCheckpoint]] = defaultdict(dict)
    if not root.exists():
        return out
    for path in sorted(root.glob("*/*.json")):
        try:
            doc = json.loads(path.read_bytes())
            sig = base64.b64decode(doc.pop("signature"), validate=True)
            cp = ChainCheckpoint.from_body(doc)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            problems.append(Problem(
                "unreadable_checkpoint", f"checkpoint {path} cannot be parsed: {exc}",
                file=str(path), writer_id=path.parent.name))
            continue
        signed = SignedCheckpoint(cp, sig, path)
        if cp.writer_id != path.parent.name or path.name != cp.file_name():
            problems.append(Problem(
                "bad_checkpoint",
                f"checkpoint {path} says writer {cp.writer_id} seal {cp.seal} kind {cp.kind}, "
                f"which does not match its file name (renamed or copied)",
                file=str(path), writer_id=cp.writer_id))
        if cp.seal in out[cp.writer_id]:
            problems.append(Problem(
                "broken_checkpoint_chain",
                f"two checkpoints of writer {cp.writer_id} claim seal {cp.seal}: "
                f"{out[cp.writer_id][cp.seal].path.name} and {path.name}",
                file=str(path), writer_id=cp.writer_id))
            continue
        out[cp.writer_id][cp.seal] = signed
    return out


def _verify_signature(signed: SignedCheckpoint, key: Ed25519PublicKey | None) -> bool:
    if key is None:
        return False
    try:
        key.verify(signed.signature, _canonical_body(signed.checkpoint))
    except InvalidSignature:
        return False
    return True


def _canonical_body(cp: ChainCheckpoint) -> bytes:
    return canonical_json(cp.body())


def _merge_checkpoints(
    primary: dict[str, dict[int, SignedCheckpoint]],
    mirrors: Sequence[tuple[Path, dict[str, dict[int, SignedCheckpoint]]]],
    key: Ed25519PublicKey | None,
    report: VerifyReport,
) -> dict[str, dict[int, SignedCheckpoint]]:
    """Primary checkpoints, completed by mirrors; every difference is a problem."""
    merged: dict[str, dict[int, SignedCheckpoint]] = {w: dict(s) for w, s in primary.items()}
    for mirror_root, mirror in mirrors:
        for writer, seals in mirror.items():
            have = merged.setdefault(writer, {})
            primary_max = max(primary.get(writer, {}), default=0)
            for seal, m in sorted(seals.items()):
                p = primary.get(writer, {}).get(seal)
                if p is None:
                    good = _verify_signature(m, key)
                    if seal > primary_max:
                        report.problems.append(Problem(
                            "checkpoints_truncated",
                            f"mirror {mirror_root} holds checkpoint seal {seal} of writer "
                            f"{writer} (head seq {m.checkpoint.seq}, {m.checkpoint.time}) but "
                            f"the primary checkpoints stop at seal {primary_max}: newer "
                            "checkpoints were deleted from the data dir",
                            file=str(m.path), seq=m.checkpoint.seq, writer_id=writer))
                    else:
                        report.problems.append(Problem(
                            "missing_checkpoint",
                            f"checkpoint seal {seal} of writer {writer} is missing from the "
                            f"primary folder; mirror {mirror_root} has it",
                            file=str(m.path), writer_id=writer))
                    if good and seal not in have:
                        have[seal] = m
                elif m.checkpoint.digest() != p.checkpoint.digest() or m.signature != p.signature:
                    pm, mm = _verify_signature(p, key), _verify_signature(m, key)
                    which = ("the mirror's copy is validly signed, the primary's is not" if mm and not pm
                             else "the primary's copy is validly signed, the mirror's is not" if pm and not mm
                             else "both are validly signed: the signing key signed two versions"
                             if pm and mm else "neither is validly signed")
                    report.problems.append(Problem(
                        "mirror_mismatch",
                        f"checkpoint seal {seal} of writer {writer} differs between "
                        f"{p.path} and {m.path}: {which}",
                        file=str(p.path), writer_id=writer))
                    if mm and not pm:
                        have[seal] = m
        for writer, seals in primary.items():
            mirror_max = max(mirror.get(writer, {}), default=0)
            if seals and mirror_max < max(seals):
                report.warnings.append(
                    f"mirror {mirror_root} is behind for writer {writer}: it ends at seal "
                    f"{mirror_max}, the primary at {max(seals)} (a mirror added later, or it "
                    "lags a running collector)")
    return merged


def _check_checkpoint_chain(
    writer: str, seals: dict[int, SignedCheckpoint], key: Ed25519PublicKey | None,
    report: VerifyReport,
) -> None:
    prev: SignedCheckpoint | None = None
    for seal in sorted(seals):
        s = seals[seal]
        cp = s.checkpoint
        if key is not None and not _verify_signature(s, key):
            report.problems.append(Problem(
                "bad_signature",
                f"checkpoint {s.path} (writer {writer}, seal {seal}, kind {cp.kind}): the "
                "Ed25519 signature does not match its content: the checkpoint was edited or "
                "signed with another key",
                file=str(s.path), seq=cp.seq, writer_id=writer))
        if cp.kind not in KINDS:
            report.problems.append(Problem(
                "bad_checkpoint", f"checkpoint {s.path} has unknown kind {cp.kind!r}",
                file=str(s.path), writer_id=writer))
        expected_seal = prev.checkpoint.seal + 1 if prev else 1
        if seal != expected_seal:
            missing = f"{expected_seal}" if seal == expected_seal + 1 else f"{expected_seal}..{seal - 1}"
            report.problems.append(Problem(
                "broken_checkpoint_chain",
                f"writer {writer}: checkpoint seal(s) {missing} are missing before "
                f"{s.path.name} (deleted checkpoints)",
                file=str(s.path), writer_id=writer))
        if prev is None:
            if seal == 1 and cp.previous:
                report.problems.append(Problem(
                    "broken_checkpoint_chain",
                    f"checkpoint {s.path.name} is the first of writer {writer} but links to a "
                    f"previous checkpoint {cp.previous[:16]}…",
                    file=str(s.path), writer_id=writer))
        elif cp.previous != prev.checkpoint.digest():
            report.problems.append(Problem(
                "broken_checkpoint_chain",
                f"checkpoint {s.path.name} of writer {writer}: 'previous' is "
                f"{cp.previous[:16]}… but the checkpoint before it ({prev.path.name}) digests "
                f"to {prev.checkpoint.digest()[:16]}…: a checkpoint between them was deleted, "
                "replaced or edited",
                file=str(s.path), writer_id=writer))
        if prev is not None:
            p = prev.checkpoint
            if cp.seq < p.seq:
                report.problems.append(Problem(
                    "bad_checkpoint",
                    f"checkpoint {s.path.name} of writer {writer} moves the head back from seq "
                    f"{p.seq} to {cp.seq}", file=str(s.path), seq=cp.seq, writer_id=writer))
            if cp.kind != "seal" and (cp.seq, cp.chain_hash) != (p.seq, p.chain_hash):
                report.problems.append(Problem(
                    "bad_checkpoint",
                    f"{cp.kind} checkpoint {s.path.name} of writer {writer} changes the chain "
                    f"head (a {cp.kind} never adds events)",
                    file=str(s.path), seq=cp.seq, writer_id=writer))
        prev = s


# -- lake files --------------------------------------------------------------------


@dataclass
class _LiveFile:
    entry: FileEntry
    writer_id: str
    seal: int


@dataclass
class _DiskFile:
    key: str  # path as a checkpoint writes it
    tier: Tier
    full: str  # path inside tier.filesystem
    size: int
    sha256: str = ""
    rows: int = -1


def _partition_date(key: str) -> str | None:
    m = _DATE_RE.search(key)
    return m.group(1) if m else None


def _list_tier(tier: Tier, prefix: str) -> list[_DiskFile]:
    base = tier.path("events")
    try:
        infos = tier.filesystem.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    except (OSError, pa.ArrowException):
        return []
    out = []
    root = tier.root.rstrip("/") + "/"
    for info in infos:
        if info.type != pafs.FileType.File or not info.path.endswith(".parquet"):
            continue
        rel = info.path[len(root):] if info.path.startswith(root) else info.path
        out.append(_DiskFile(prefix + rel, tier, info.path, int(info.size or 0)))
    return out


def _may_hold_nulls(meta: pq.FileMetaData) -> bool:
    """False when the Parquet statistics prove no hashed column holds a NULL."""
    names = set(CANONICAL_FIELDS)
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        for c in range(group.num_columns):
            col = group.column(c)
            if col.path_in_schema not in names:
                continue
            stats = col.statistics
            if stats is None or not stats.has_null_count or stats.null_count > 0:
                return True
    present = {meta.schema.column(i).name for i in range(meta.num_columns)}
    return not names <= present  # a missing column reads as NULL


class _LakeChanged(Exception):
    """A file vanished while being verified (compaction or retention ran): start over."""


def _exists(f: _DiskFile) -> bool:
    try:
        return bool(f.tier.filesystem.get_file_info(f.full).type == pafs.FileType.File)
    except (OSError, pa.ArrowException):
        return False


def _digest(f: _DiskFile) -> bytes | None:
    """Read the whole file once: sha256, and the bytes for non-local tiers."""
    h = hashlib.sha256()
    keep = not isinstance(f.tier.filesystem, pafs.LocalFileSystem)
    chunks = []
    with f.tier.filesystem.open_input_stream(f.full) as stream:
        while True:
            block = stream.read(1 << 20)
            if not block:
                break
            h.update(block)
            if keep:
                chunks.append(block)
    f.sha256 = h.hexdigest()
    return b"".join(chunks) if keep else None


def _cold_tier(data: DataDir, toml: dict[str, Any]) -> Tier | None:
    try:
        retention = importlib.import_module("auditlake.collector.retention")
    except ModuleNotFoundError as exc:
        if exc.name != "auditlake.collector.retention":
            raise
        return None
    fn = getattr(retention, "cold_tier", None)
    return fn(data, toml) if fn is not None else None


# -- the verifier ----------------------------------------------------------------------


def _load_key(data: DataDir, public_key: Ed25519PublicKey | Path | str | None) -> tuple[Ed25519PublicKey | None, str]:
    if isinstance(public_key, Ed25519PublicKey):
        return public_key, "given"
    if public_key is not None:
        path = Path(public_key)
        try:
            return load_public_key(path), str(path)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read public key {path}: {exc}") from exc
    pub = data.keys / "signing.pub.pem"
    if pub.exists():
        return load_public_key(pub), f"{pub} (from the data dir: pass --public-key to trust "\
            "a key obtained separately)"
    return None, "none"


def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _parse_date(value: str | dt.date | None, name: str) -> dt.date | None:
    if value is None or isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(value)
    except ValueError as exc:
        raise ConfigError(f"{name} must be YYYY-MM-DD, got {value!r}") from exc


def verify_lake(
    data: DataDir | str | Path,
    *,
    public_key: Ed25519PublicKey | Path | str | None = None,
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
        verifier = _Verifier(data, public_key, date_from, date_to, mirrors, progress, toml)
        verifier.cold = cold_tier
        try:
            return verifier.run()
        except _LakeChanged as exc:
            if attempt == _RESTARTS - 1:
                raise StorageError(f"the lake kept changing while being verified ({exc}); "
                                   "verify again") from exc
    raise AssertionError("unreachable")


class _Verifier:
    def __init__(
        self,
        data: DataDir | str | Path,
        public_key: Ed25519PublicKey | Path | str | None,
        date_from: str | dt.date | None,
        date_to: str | dt.date | None,
        mirrors: Iterable[Path | str],
        progress: ProgressFn | None,
        toml: dict[str, Any] | None,
    ) -> None:
        self.data = data if isinstance(data, DataDir) else DataDir.resolve(data)
        if not self.data.root.is_dir():
            raise ConfigError(f"data directory {self.data.root} does not exist")
        self.key, key_source = _load_key(self.data, public_key)
        self.date_from = _parse_date(date_from, "--from")
        self.date_to = _parse_date(date_to, "--to")
        if self.date_from and self.date_to and self.date_from > self.date_to:
            raise ConfigError("--from is after --to")
        self.mirrors = [Path(m) for m in mirrors]
        self.progress = progress or (lambda phase, done, total: None)
        self.toml = toml if toml is not None else load_toml(self.data.config_file)
        self.report = VerifyReport(
            data=str(self.data.root), public_key=key_source,
            mirrors=[str(m) for m in self.mirrors],
            date_from=self.date_from.isoformat() if self.date_from else None,
            date_to=self.date_to.isoformat() if self.date_to else None,
            started=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        )
        self.problems = self.report.problems
        self.cold: Tier | None = None
        self._filemap = False

    def problem(self, kind: str, message: str, **where: Any) -> None:
        self.problems.append(Problem(kind, message, **where))

    def in_range(self, key: str) -> bool:
        if self.date_from is None and self.date_to is None:
            return True
        d = _partition_date(key)
        if d is None:
            return True  # not in any partition: always checked
        day = dt.date.fromisoformat(d)
        return not ((self.date_from and day < self.date_from) or (self.date_to and day > self.date_to))

    # -- run -------------------------------------------------------------------------

    def run(self) -> VerifyReport:
        t0 = time.monotonic()
        self._snapshot()
        if self.key is None:
            self.problem("no_public_key",
                         "no public key: the data dir has no keys/signing.pub.pem and none was "
                         "given (--public-key FILE); checkpoint signatures were not checked")
        self._disk_files()
        con = duckdb.connect()
        try:
            con.execute("SET TimeZone = 'UTC'")
            self._rows(con)
        except duckdb.IOException as exc:
            if any(not _exists(f) for f in self.disk.values()):
                raise _LakeChanged(str(exc)) from exc
            raise
        finally:
            con.close()
        self.report.problems.sort(key=lambda p: (p.writer_id or "", p.kind, p.seq or 0, p.file or ""))
        self.report.seconds = time.monotonic() - t0
        return self.report

    def _checkpoint_listing(self) -> list[tuple[str, int, int]]:
        out = []
        for root in (self.data.checkpoints, *self.mirrors):
            for p in sorted(root.glob("*/*.json")):
                try:
                    st = p.stat()
                except FileNotFoundError:
                    continue
                out.append((str(p), st.st_size, st.st_mtime_ns))
        return out

    def _snapshot(self) -> None:
        """Checkpoints and file listing that belong together, on a lake that a
        running collector keeps sealing, compacting and moving: the checkpoint
        folders must not change while the lake is listed, and files no
        checkpoint accounts for get a moment for their checkpoint to appear
        (a seal publishes its files just before signing)."""
        for attempt in range(_SNAPSHOT_TRIES):
            self.report.problems.clear()
            self.report.warnings.clear()
            self.report.writers.clear()
            before = self._checkpoint_listing()
            self.writers = self._checkpoints()
            self._live_files()
            self._list_disk()
            if self._checkpoint_listing() != before:
                continue
            unaccounted = [k for k in self.disk if k not in self.live and k not in self.history]
            if not unaccounted or attempt == _SNAPSHOT_TRIES - 1:
                return
            time.sleep(0.25)

    def _checkpoints(self) -> dict[str, dict[int, SignedCheckpoint]]:
        primary = _read_checkpoint_dir(self.data.checkpoints, self.problems)
        mirrors = [(m, _read_checkpoint_dir(m, self.problems)) for m in self.mirrors]
        for m in self.mirrors:
            if not m.is_dir():
                raise ConfigError(f"checkpoint mirror {m} does not exist")
        merged = _merge_checkpoints(primary, mirrors, self.key, self.report)
        for writer, seals in sorted(merged.items()):
            _check_checkpoint_chain(writer, seals, self.key, self.report)
            if seals:
                head = seals[max(seals)].checkpoint
                self.report.writers.append(WriterSummary(
                    writer, head_seq=head.seq, head_hash=head.chain_hash, head_time=head.time,
                    checkpoints=len(seals)))
        self.report.checkpoints = sum(len(s) for s in merged.values())
        return merged

    def _live_files(self) -> None:
        """The files that must exist: union of ``files`` minus ``removed``, in seal
        order; the expired seq ranges; the signed anchors (seq → chain_hash)."""
        self.live: dict[str, _LiveFile] = {}
        self.history: dict[str, FileEntry] = {}  # every removed entry, by path
        self.expired: dict[str, list[tuple[int, int, str]]] = defaultdict(list)
        self.anchors: list[tuple[str, int, str, str]] = []  # writer, seq, hash, checkpoint file
        for writer, seals in sorted(self.writers.items()):
            for seal in sorted(seals):
                s = seals[seal]
                cp = s.checkpoint
                if cp.seq > 0:
                    self.anchors.append((writer, cp.seq, cp.chain_hash, s.path.name))
                for r in cp.removed:
                    live = self.live.get(r.path)
                    if live is None or live.entry.sha256 != r.sha256:
                        self.problem(
                            "bad_checkpoint",
                            f"{cp.kind} checkpoint {s.path.name} removes {r.path}, which no "
                            "earlier checkpoint of this lake lists with that digest",
                            file=r.path, writer_id=writer)
                    self.live.pop(r.path, None)
                    self.history[r.path] = r
                for f in cp.files:
                    self.live[f.path] = _LiveFile(f, writer, seal)
                if cp.kind == "expire":
                    self._expire_ranges(writer, s)

    def _expire_ranges(self, writer: str, s: SignedCheckpoint) -> None:
        cp = s.checkpoint
        removed = {r.path: r for r in cp.removed}
        ranges = cp.extra.get("ranges", []) if isinstance(cp.extra, dict) else []
        seen: set[str] = set()
        for item in ranges:
            try:
                path = str(item["path"])
                seq_ranges = [(int(a), int(b), str(h)) for a, b, h in item["seq_ranges"]]
            except (KeyError, TypeError, ValueError):
                self.problem("bad_checkpoint",
                             f"expire checkpoint {s.path.name}: malformed range {item!r}",
                             writer_id=writer, file=str(s.path))
                continue
            seen.add(path)
            entry = removed.get(path)
            count = sum(b - a + 1 for a, b, _ in seq_ranges)
            if entry is None or count != entry.rows or any(
                    a < entry.first_seq or b > entry.last_seq or a > b for a, b, _ in seq_ranges):
                self.problem("bad_checkpoint",
                             f"expire checkpoint {s.path.name}: the seq ranges of {path} do not "
                             "match the removed file's rows and seq span",
                             writer_id=writer, file=path)
            self.expired[writer].extend(seq_ranges)
        for path in removed:
            if path not in seen:
                self.problem("bad_checkpoint",
                             f"expire checkpoint {s.path.name} removes {path} without recording "
                             "its seq ranges", writer_id=writer, file=path)

    def _list_disk(self) -> None:
        """The files of the hot lake (and the cold tier)."""
        tiers = {"hot": hot_tier(self.data)}
        cold = self.cold if self.cold is not None else _cold_tier(self.data, self.toml)
        if cold is not None:
            tiers["cold"] = cold
        disk = _list_tier(tiers["hot"], "")
        if cold is not None:
            disk += _list_tier(cold, COLD_PREFIX)
        self.tiers = tiers
        self.disk = {f.key: f for f in disk}
        self.report.files = len(disk)

    def _disk_files(self) -> None:
        """Digest the files in range and compare them with the checkpoints."""
        disk = list(self.disk.values())
        self.buffers: dict[str, bytes] = {}  # non-local files, read once
        todo = [f for f in disk if self.in_range(f.key)]
        total = sum(f.size for f in todo)
        done = 0
        last = time.monotonic()
        self.unreadable: set[str] = set()
        self.maybe_null: set[str] = set()
        for f in todo:
            try:
                buf = _digest(f)
                meta = pq.read_metadata(pa.BufferReader(buf) if buf is not None else f.full)
                f.rows = meta.num_rows
            except (OSError, pa.ArrowException) as exc:
                if not _exists(f):
                    raise _LakeChanged(f"{f.key} disappeared while verifying") from exc
                self.unreadable.add(f.key)
                self.problem("unreadable_file", f"{f.key} cannot be read as Parquet: {exc}",
                             file=f.key)
                continue
            if _may_hold_nulls(meta):
                self.maybe_null.add(f.key)
            if buf is not None:
                self.buffers[f.key] = buf
            done += f.size
            self.report.files_digested += 1
            self.report.bytes_digested += f.size
            if time.monotonic() - last > 1:
                self.progress("digest", done, total)
                last = time.monotonic()
        self.progress("digest", total, total)
        for f in disk:  # files out of range: still read metadata so rows can be counted
            if not f.sha256 and f.key not in self.unreadable:
                try:
                    f.rows = pq.read_metadata(f.full, filesystem=f.tier.filesystem).num_rows
                except (OSError, pa.ArrowException) as exc:
                    if not _exists(f):
                        raise _LakeChanged(f"{f.key} disappeared while verifying") from exc
                    self.unreadable.add(f.key)
                    self.problem("unreadable_file", f"{f.key} cannot be read as Parquet: {exc}",
                                 file=f.key)
        self._compare_files()

    def _compare_files(self) -> None:
        by_sha: dict[str, list[str]] = defaultdict(list)
        for path, live in self.live.items():
            by_sha[live.entry.sha256].append(path)
        self.leftovers: set[str] = set()
        explained: set[str] = set()  # live paths whose content was found elsewhere
        for key, f in sorted(self.disk.items()):
            if not f.sha256:
                continue  # out of range or unreadable
            lf = self.live.get(key)
            if lf is not None and lf.entry.sha256 == f.sha256:
                continue
            others = [p for p in by_sha.get(f.sha256, []) if p != key]
            if others:
                explained.update(others)
                where = (f"the path of a file that checkpoint seal {lf.seal} lists with other "
                         "content" if lf else "a path no checkpoint lists")
                self.problem(
                    "moved_file",
                    f"{key} holds exactly the file a checkpoint lists at {others[0]} (same "
                    f"sha256): the file was moved or swapped; {key} is {where}",
                    file=key, writer_id=self.live[others[0]].writer_id)
            elif lf is not None:
                self.problem(
                    "changed_file",
                    f"{key}: sha256 {f.sha256[:16]}… differs from the {lf.entry.sha256[:16]}… "
                    f"signed in checkpoint seal {lf.seal} of writer {lf.writer_id}: the file was "
                    "rewritten after sealing", file=key, writer_id=lf.writer_id)
            elif key in self.history and self.history[key].sha256 == f.sha256:
                self.leftovers.add(key)
                self.report.warnings.append(
                    f"{key} was removed by a checkpoint (compaction or retention) but is still "
                    "on disk; it was not read (its events are in the files that replaced it)")
            else:
                self.problem(
                    "unlisted_file",
                    f"{key} ({f.rows} rows) is not listed in any checkpoint: a file added to "
                    "the lake after sealing (inserted events)", file=key)
        for key, lf in sorted(self.live.items()):
            if key in self.disk or key in explained:
                continue
            e = lf.entry
            self.problem(
                "missing_file",
                f"{key} ({e.rows} events, seq {e.first_seq}..{e.last_seq}, listed in checkpoint "
                f"seal {lf.seal} of writer {lf.writer_id}) is not in the lake: the file was "
                "deleted", file=key, writer_id=lf.writer_id, seq=e.first_seq)

    # -- rows ------------------------------------------------------------------------

    def _scan_sql(self, con: duckdb.DuckDBPyConnection, keys: Sequence[str], columns: str,
                  *, raw: bool = False) -> str:
        """SQL reading ``columns`` plus ``_file`` (the checkpoint path; with
        ``raw`` the full path, cheaper to carry through a sort) from ``keys``."""
        local = [k for k in keys if k not in self.buffers]
        parts = []
        if local:
            files = "[" + ", ".join(_sql_str(self.disk[k].full) for k in local) + "]"
            scan = (f"read_parquet({files}, filename = true, union_by_name = true, "
                    "hive_partitioning = false)")
            if raw:
                parts.append(f"SELECT {columns}, filename AS _file FROM {scan}")
            else:
                if not self._filemap:
                    con.execute("CREATE OR REPLACE TEMP TABLE filemap (full_path VARCHAR, k VARCHAR)")
                    con.executemany("INSERT INTO filemap VALUES (?, ?)",
                                    [(f.full, k) for k, f in self.disk.items()])
                    self._filemap = True
                parts.append(f"SELECT {columns}, m.k AS _file FROM {scan} "
                             "JOIN filemap m ON m.full_path = filename")
        for k in keys:
            if k in self.buffers:
                name = "buf_" + hashlib.sha256(k.encode()).hexdigest()[:16]
                con.register(name, pq.read_table(pa.BufferReader(self.buffers[k])))
                label = self.disk[k].full if raw else k
                parts.append(f"SELECT {columns}, {_sql_str(label)} AS _file FROM {name}")
        return " UNION ALL BY NAME ".join(parts)

    def _rows(self, con: duckdb.DuckDBPyConnection) -> None:
        readable = sorted(k for k in self.disk if k not in self.unreadable and k not in self.leftovers)
        narrow = "writer_id, seq, chain_hash, CAST(created_at AS DATE) AS created_date"
        if readable:
            con.execute(f"CREATE TEMP TABLE idx AS {self._scan_sql(con, readable, narrow)}")
        else:
            con.execute("CREATE TEMP TABLE idx (writer_id VARCHAR, seq BIGINT, chain_hash VARCHAR, "
                        "created_date DATE, _file VARCHAR)")
        self.progress("index", 1, 1)
        known = set(self.writers)
        for w in self.report.writers:
            r = con.execute("SELECT count(*), min(seq), max(seq) FROM idx WHERE writer_id = ?",
                            [w.writer_id]).fetchone()
            assert r is not None
            w.events, w.first_seq, w.last_seq = int(r[0]), r[1], r[2]
            w.expired_events = sum(b - a + 1 for a, b, _ in self.expired.get(w.writer_id, []))
        self.report.events = int(con.execute("SELECT count(*) FROM idx").fetchone()[0])  # type: ignore[index]
        self._check_writers(con, known)
        self._check_sequences(con)
        self._check_files(con)
        self._check_anchors(con)
        self._hash(con, [k for k in readable if self.in_range(k)])

    def _check_writers(self, con: duckdb.DuckDBPyConnection, known: set[str]) -> None:
        for writer, file, n, lo, hi in con.execute(
                "SELECT writer_id, _file, count(*), min(seq), max(seq) FROM idx "
                "GROUP BY ALL ORDER BY ALL").fetchall():
            if writer not in known:
                self.problem(
                    "unknown_writer",
                    f"{file} holds {n} events (seq {lo}..{hi}) of writer {writer!r}, which has no "
                    "signed checkpoint: forged or inserted events", file=file, seq=lo,
                    writer_id=writer)

    def _expired_contains(self, writer: str, lo: int, hi: int) -> list[tuple[int, int]]:
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

    def _check_sequences(self, con: duckdb.DuckDBPyConnection) -> None:
        heads = {w: max(s) for w, s in self.writers.items() if s}
        for writer, seal in heads.items():
            head = self.writers[writer][seal].checkpoint
            # One sort of the writer's seqs finds both gaps and duplicates.
            breaks = con.execute(
                "SELECT prev, seq FROM (SELECT seq, lag(seq, 1, 0) OVER (ORDER BY seq) AS prev "
                "FROM idx WHERE writer_id = ?) WHERE seq <> prev + 1 ORDER BY seq",
                [writer]).fetchall()
            dups = sorted({int(seq) for prev, seq in breaks if seq == prev})
            if dups:
                con.execute("CREATE OR REPLACE TEMP TABLE dups (seq BIGINT)")
                con.executemany("INSERT INTO dups VALUES (?)", [(d,) for d in dups[:1000]])
                for seq, files in con.execute(
                        "SELECT seq, list(_file ORDER BY _file) FROM idx JOIN dups USING (seq) "
                        "WHERE writer_id = ? GROUP BY seq ORDER BY seq", [writer]).fetchall():
                    self.problem(
                        "duplicate_seq",
                        f"writer {writer} seq {seq} is stored {len(files)} times "
                        f"({', '.join(files)}): an inserted event (the copy in a changed or "
                        "unlisted file is the forgery)", file=files[-1], seq=seq, writer_id=writer)
            for prev, seq in breaks:
                if seq <= prev:
                    continue
                for a, b in self._expired_contains(writer, int(prev) + 1, int(seq) - 1):
                    self.problem(
                        "missing_events",
                        f"writer {writer}: events seq {a}..{b} ({b - a + 1}) are missing and no "
                        "expire checkpoint records their removal",
                        seq=a, writer_id=writer)
            top = con.execute("SELECT max(seq) FROM idx WHERE writer_id = ?", [writer]).fetchone()
            last = int(top[0]) if top and top[0] is not None else 0
            if last < head.seq:
                for a, b in self._expired_contains(writer, last + 1, head.seq):
                    self.problem(
                        "truncated",
                        f"writer {writer}: the lake ends at seq {a - 1} but checkpoint "
                        f"seal {seal} ({head.time}) signed the head at seq {head.seq}: the "
                        f"newest events seq {a}..{b} were removed (truncated tail)",
                        seq=a, writer_id=writer)
            elif last > head.seq:
                for file, n, lo, hi in con.execute(
                        "SELECT _file, count(*), min(seq), max(seq) FROM idx WHERE writer_id = ? "
                        "AND seq > ? GROUP BY ALL ORDER BY ALL", [writer, head.seq]).fetchall():
                    self.problem(
                        "unsigned_events",
                        f"{file}: {n} events of writer {writer} (seq {lo}..{hi}) come after the "
                        f"newest signed head (seq {head.seq}): inserted events, or a seal still "
                        "in progress (verify again)", file=file, seq=lo, writer_id=writer)

    def _check_files(self, con: duckdb.DuckDBPyConnection) -> None:
        moved = {p.file for p in self.problems if p.kind == "moved_file"}
        con.execute("CREATE OR REPLACE TEMP TABLE fileinfo (_file VARCHAR, day DATE, "
                    "first_seq BIGINT, last_seq BIGINT, writer VARCHAR)")
        rows = []
        for key in self.disk:
            lf = None if key in moved else self.live.get(key)
            rows.append((key, _partition_date(key), lf.entry.first_seq if lf else None,
                         lf.entry.last_seq if lf else None, lf.writer_id if lf else None))
        if rows:
            con.executemany("INSERT INTO fileinfo VALUES (?, ?, ?, ?, ?)", rows)
        stats = {r[0]: r[1:] for r in con.execute(
            "SELECT _file, count(*), min(seq), max(seq), "
            "count(*) FILTER (WHERE created_date IS DISTINCT FROM f.day), "
            "min(seq) FILTER (WHERE created_date IS DISTINCT FROM f.day) "
            "FROM idx JOIN fileinfo f USING (_file) GROUP BY ALL").fetchall()}
        outside: dict[str, list[tuple[int, str]]] = defaultdict(list)
        counts: dict[str, int] = {}
        for key, seq, day, total in con.execute(
                "SELECT _file, seq, strftime(created_date, '%Y-%m-%d'), n FROM ("
                "SELECT _file, seq, created_date, row_number() OVER (PARTITION BY _file ORDER BY seq) "
                "AS k, count(*) OVER (PARTITION BY _file) AS n FROM idx JOIN fileinfo f USING (_file) "
                "WHERE f.writer IS NOT NULL AND (seq < f.first_seq OR seq > f.last_seq "
                "OR writer_id <> f.writer)) WHERE k <= 5 ORDER BY ALL").fetchall():
            outside[key].append((seq, day))
            counts[key] = total
        for key, (n, lo, hi, wrong_day, wrong_seq) in sorted(stats.items()):
            if wrong_day and key not in moved:
                self.problem(
                    "wrong_partition",
                    f"{key}: {wrong_day} event(s) (first seq {wrong_seq}) have a created_at date "
                    f"other than the file's partition {_partition_date(key)}: events were "
                    "moved to another day or their created_at was changed", file=key,
                    seq=wrong_seq, column="created_at" if wrong_day < n else None)
            lf = self.live.get(key)
            if lf is None or key in moved:
                continue
            e = lf.entry
            for seq, day in outside.get(key, []):
                home = [p for p, o in self.live.items() if o.writer_id == lf.writer_id
                        and o.entry.first_seq <= seq <= o.entry.last_seq and p != key
                        and _partition_date(p) in (day, None)]
                self.problem(
                    "misplaced_event",
                    f"{key} holds seq {seq}, outside the seq {e.first_seq}..{e.last_seq} its "
                    f"checkpoint lists; the event belongs in "
                    f"{' or '.join(home) if home else 'no listed file'}: events were moved "
                    "between files", file=key, seq=seq, writer_id=lf.writer_id)
            if counts.get(key, 0) > 5:
                self.problem(
                    "misplaced_event",
                    f"{key} holds {counts[key] - 5} further events outside its checkpoint's "
                    f"seq {e.first_seq}..{e.last_seq}", file=key, writer_id=lf.writer_id)
            if n != e.rows or lo != e.first_seq or hi != e.last_seq:
                self.problem(
                    "file_rows",
                    f"{key} holds {n} events seq {lo}..{hi}; checkpoint seal {lf.seal} lists "
                    f"{e.rows} events seq {e.first_seq}..{e.last_seq}", file=key,
                    writer_id=lf.writer_id)

    def _check_anchors(self, con: duckdb.DuckDBPyConnection) -> None:
        if not self.anchors:
            return
        con.execute("CREATE TEMP TABLE anchors (writer_id VARCHAR, seq BIGINT, chain_hash VARCHAR, cp VARCHAR)")
        con.executemany("INSERT INTO anchors VALUES (?, ?, ?, ?)", self.anchors)
        self.anchored = {(w, s): h for w, s, h, _ in self.anchors}
        for writer, seq, signed, cp, stored, file in con.execute(
                "SELECT a.writer_id, a.seq, a.chain_hash, a.cp, i.chain_hash, i._file FROM anchors a "
                "JOIN idx i USING (writer_id, seq) WHERE i.chain_hash <> a.chain_hash "
                "ORDER BY ALL").fetchall():
            self.problem(
                "head_mismatch",
                f"{file}: writer {writer} seq {seq} stores chain_hash {stored[:16]}… but "
                f"checkpoint {cp} signed {signed[:16]}…: the chain was rewritten from this "
                "event or an earlier one", file=file, seq=seq, writer_id=writer,
                column="chain_hash")
        for writer, ranges in self.expired.items():
            for _a, b, h in ranges:
                signed = self.anchored.get((writer, b))
                if signed is not None and signed != h:
                    self.problem("bad_checkpoint",
                                 f"writer {writer}: an expire range ends at seq {b} with hash "
                                 f"{h[:16]}… but a checkpoint signed {signed[:16]}… there",
                                 seq=b, writer_id=writer)

    # -- hashing ---------------------------------------------------------------------------

    def _hash(self, con: duckdb.DuckDBPyConnection, keys: list[str]) -> None:
        """Each event's link: sha256(stored hash of seq-1 || canonical) = stored hash?

        DuckDB computes the canonical encodings and streams the events in
        (writer, seq) order; hashlib (OpenSSL's SHA-256, faster than DuckDB's)
        checks each link.  Events of partitions outside --from/--to come from
        the index without their content: they only provide the previous hash.
        """
        starts = {(w, 1): GENESIS.hex() for w in self.writers}
        for w, ranges in self.expired.items():
            for _, b, h in ranges:
                starts[(w, b + 1)] = h
        total = sum(max(self.disk[k].rows, 0) for k in keys)
        hashed = set(keys)
        others = sorted(k for k in self.disk if k not in hashed and k not in self.unreadable
                        and k not in self.leftovers)
        parts = []
        if keys:
            parts.append(
                f"SELECT writer_id, seq, chain_hash, {canonical_sql()} AS canon "
                f"FROM ({self._scan_sql(con, keys, '*', raw=True)})")
        if others:
            con.execute("CREATE OR REPLACE TEMP TABLE context_files (f VARCHAR)")
            con.executemany("INSERT INTO context_files VALUES (?)", [(k,) for k in others])
            parts.append("SELECT writer_id, seq, chain_hash, NULL::BLOB AS canon "
                         "FROM idx WHERE _file IN (SELECT f FROM context_files)")
        self.link_prev: dict[tuple[str, int], str] = {}
        # (writer, seq, previous hash) of every event whose link fails.
        failing: list[tuple[str, int, str | None]] = self._null_events(con, keys)
        done = 0
        if not parts:
            self.report.events_hashed = 0
            return
        # Only what the loop needs goes through the sort: the file of a failing
        # event and its stored hex hash are looked up afterwards.
        query = (
            "SELECT writer_id, seq, canon, "
            "CASE WHEN strlen(chain_hash) = 64 THEN try(unhex(chain_hash)) END AS h FROM ("
            + " UNION ALL ".join(parts) + ") ORDER BY writer_id, seq")
        reader = con.sql(query).to_arrow_reader(100_000)
        carry: tuple[str | None, int, bytes | None] = (None, 0, None)  # last writer, seq, hash
        group_prev: bytes | None = None  # the previous hash for the current seq (duplicates)
        last_report = time.monotonic()
        sha256 = hashlib.sha256
        for batch in reader:
            n = batch.num_rows
            canon = batch.column(2)
            if canon.type != pa.large_binary():
                canon = canon.cast(pa.large_binary())
            seqs = batch.column(1)
            hashes = batch.column(3).to_pylist()
            w0 = batch.column(0)[0].as_py()
            s0 = seqs[0].as_py()
            regular = (
                canon.null_count == 0 and hashes.count(None) == 0
                and pc.all(pc.equal(batch.column(0), w0)).as_py()
                and seqs[n - 1].as_py() - s0 == n - 1
                and pc.all(pc.equal(pc.subtract(seqs.slice(1), seqs.slice(0, n - 1)), 1)).as_py()
                if n > 1 else False)
            if regular:
                # The common case: one writer, consecutive seqs.
                last_w, last_s, last_h = carry
                prev = last_h if (last_w == w0 and last_s == s0 - 1) else (
                    bytes.fromhex(starts[(w0, s0)]) if (w0, s0) in starts else None)
                offsets = memoryview(canon.buffers()[1]).cast("q")[
                    canon.offset:canon.offset + n + 1].tolist()
                data = memoryview(canon.buffers()[2])
                for i, h in enumerate(hashes):
                    if prev is not None and sha256(prev + data[offsets[i]:offsets[i + 1]]).digest() != h:
                        failing.append((w0, s0 + i, prev.hex()))
                    prev = h
                done += n
                carry = (w0, s0 + n - 1, hashes[-1])
                group_prev = hashes[-2] if n > 1 else carry[2]
            else:
                carry, group_prev, done = self._hash_rows(
                    batch, canon, hashes, starts, carry, group_prev, failing, done)
            if time.monotonic() - last_report > 1:
                self.progress("hash", done, total)
                last_report = time.monotonic()
        self.progress("hash", done, total)
        self.report.events_hashed = done
        if failing:
            for w, s_, p in failing:
                if p is not None:
                    self.link_prev.setdefault((w, s_), p)
            self._explain(con, failing)

    def _null_events(self, con: duckdb.DuckDBPyConnection, keys: list[str]) -> list[tuple[str, int, str | None]]:
        """Events with a NULL field (the encoding would silently skip it), in
        the files whose Parquet statistics admit NULLs."""
        suspects = [k for k in keys if k in self.maybe_null]
        if not suspects:
            return []
        return [(w, int(s_), p) for w, s_, p in con.execute(
            f"SELECT r.writer_id, r.seq, p.chain_hash FROM ({self._scan_sql(con, suspects, '*')}) r "
            "LEFT JOIN idx p ON p.writer_id = r.writer_id AND p.seq = r.seq - 1 "
            f"WHERE {null_check_sql('r.')}").fetchall()]

    def _hash_rows(
        self, batch: pa.RecordBatch, canon: pa.Array, hashes: list[bytes | None],
        starts: dict[tuple[str, int], str],
        carry: tuple[str | None, int, bytes | None], group_prev: bytes | None,
        failing: list[tuple[str, int, str | None]], done: int,
    ) -> tuple[tuple[str | None, int, bytes | None], bytes | None, int]:
        """Row by row: gaps, duplicates, context rows, malformed hashes."""
        writers = batch.column(0).to_pylist()
        seqs = batch.column(1).to_pylist()
        valid = canon.is_valid().to_pylist()
        offsets = memoryview(canon.buffers()[1]).cast("q")[
            canon.offset:canon.offset + len(canon) + 1].tolist()
        data = memoryview(canon.buffers()[2]) if canon.buffers()[2] is not None else memoryview(b"")
        last_w, last_s, last_h = carry
        for i, (writer, seq, h) in enumerate(zip(writers, seqs, hashes, strict=True)):
            if writer != last_w or seq != last_s:
                if writer == last_w and seq == last_s + 1:
                    group_prev = last_h
                else:
                    start = starts.get((writer, seq))
                    group_prev = bytes.fromhex(start) if start else None
                last_w, last_s, last_h = writer, seq, h
            if not valid[i]:
                continue  # context only (outside --from/--to)
            done += 1
            if group_prev is None:
                continue  # after a gap: reported as missing events
            if hashlib.sha256(group_prev + data[offsets[i]:offsets[i + 1]]).digest() != h:
                failing.append((writer, seq, group_prev.hex()))
        return (last_w, last_s, last_h), group_prev, done

    def _explain(self, con: duckdb.DuckDBPyConnection,
                 failing_keys: list[tuple[str, int, str | None]]) -> None:
        """Turn failed links into named problems: which event, which column when
        that can be told, an edited hash, or events swapped in the chain."""
        keys = sorted({(w, s) for w, s, _ in failing_keys})
        detail_keys, rest = keys[:_DETAIL_LIMIT], keys[_DETAIL_LIMIT:]
        fail_at = set(keys)
        # Full rows of the failing events and their neighbours, with their canonical bytes.
        wanted = sorted({(w, s + d) for w, s in detail_keys for d in (-1, 0, 1)})
        con.execute("CREATE OR REPLACE TEMP TABLE wanted (writer_id VARCHAR, seq BIGINT)")
        con.executemany("INSERT INTO wanted VALUES (?, ?)", wanted)
        files = sorted({r[0] for r in con.execute(
            "SELECT DISTINCT _file FROM idx JOIN wanted USING (writer_id, seq)").fetchall()}
            & set(self.disk))
        rows: dict[tuple[str, int, str], dict[str, Any]] = {}
        if files:
            cur = con.execute(
                f"SELECT r.*, {canonical_sql('r.')} AS _canon FROM ({self._scan_sql(con, files, '*')}) r "
                "JOIN wanted w ON w.writer_id = r.writer_id AND w.seq = r.seq")
            names = [d[0] for d in cur.description]
            for values in cur.fetchall():
                row = dict(zip(names, values, strict=True))
                rows[(row["writer_id"], row["seq"], row["_file"])] = row
        by_seq: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
        for (w, s, _), row in rows.items():
            by_seq[(w, s)].append(row)
        # Which stored copy of each failing (writer, seq) fails, and what it hashes to.
        detail: list[tuple[str, int, str, str, str | None]] = []
        for w, s in detail_keys:
            p = self.link_prev.get((w, s))
            for row in by_seq.get((w, s), []):
                has_null = any(row.get(c) is None for c in CANONICAL_FIELDS)
                computed = chain_link(p, row["_canon"]) if p and not has_null else None
                if has_null or (computed is not None and computed != row["chain_hash"]):
                    detail.append((row["_file"], s, w, str(row["chain_hash"]), computed))
        prev = self.link_prev
        explained: set[tuple[str, int, str]] = set()
        alt_prevs = {r[3] for r in detail} | {r[4] for r in detail if r[4] is not None}
        alt_prevs = {a for a in alt_prevs if re.fullmatch(r"[0-9a-f]{64}", a)}
        for file, seq, writer, stored, computed in detail:
            if (writer, seq, file) in explained:
                continue
            found = rows.get((writer, seq, file))
            nxt = by_seq.get((writer, seq + 1), [])
            anchored = getattr(self, "anchored", {}).get((writer, seq))
            if found is None:
                continue
            row = found
            if writer not in self.writers:
                continue  # reported as unknown_writer
            # 1. Only the stored chain_hash was edited: the content still hashes to what the
            #    next event links to.
            if computed is not None and (anchored == computed or any(
                    n["_canon"] is not None and chain_link(computed, n["_canon"]) == n["chain_hash"]
                    for n in nxt)):
                self.problem(
                    "changed_hash",
                    f"{file}: writer {writer} seq {seq}: the stored chain_hash {stored[:16]}… was "
                    f"changed; the event's content still hashes to {computed[:16]}…, which "
                    + ("the checkpoint signed" if anchored == computed else
                       f"seq {seq + 1} links to"),
                    file=file, seq=seq, column="chain_hash", writer_id=writer)
                for n in nxt:
                    explained.add((writer, seq + 1, n["_file"]))
                continue
            # 2. Reordered: this content belongs at another failing position.
            moved_to = self._find_position(row, writer, seq, fail_at, prev, by_seq, alt_prevs)
            if moved_to is not None:
                self.problem(
                    "reordered_events",
                    f"{file}: the event stored as writer {writer} seq {seq} (id {row.get('id')}) "
                    f"hashes correctly only at seq {moved_to}: events were reordered (their "
                    "sequence numbers swapped)", file=file, seq=seq, column="seq",
                    writer_id=writer)
                continue
            # 3. Intact, but its predecessor was moved or its hash edited: the link holds
            #    from one of the disturbed hashes (that event is reported itself).
            canon = row.get("_canon")
            if canon is not None and any(chain_link(a, canon) == stored for a in alt_prevs):
                continue
            # 4. The predecessor was rewritten with a recomputed hash: it links fine, this
            #    event no longer does, and only the predecessor's file changed.
            changed_files = {p.file for p in self.problems
                             if p.kind in ("changed_file", "unlisted_file")}
            pred = by_seq.get((writer, seq - 1), [])
            if (anchored != stored and file not in changed_files and pred
                    and all(r["_file"] in changed_files for r in pred)):
                p0 = pred[0]
                column, why = _guess_column(p0, p0["_file"])
                self.problem(
                    "changed_event",
                    f"{p0['_file']}: writer {writer} seq {seq - 1} (id {p0.get('id')}) was "
                    "rewritten together with a recomputed chain_hash: it hashes consistently, "
                    f"but seq {seq} (in an unchanged file) no longer links to it"
                    + (f"; column {column}: {why}" if column else
                       "; which column changed cannot be determined from the lake"),
                    file=p0["_file"], seq=seq - 1, column=column, writer_id=writer)
                continue
            # 5. Content changed: name the column when a cross-check can tell it.
            column, why = _guess_column(row, file)
            nxt_ok = bool(nxt) and all((n["writer_id"], n["seq"]) not in fail_at for n in nxt)
            if anchored == stored or nxt_ok:
                how = ("its stored chain_hash is the one the checkpoint signed" if anchored == stored
                       else f"seq {seq + 1} still links to its stored chain_hash")
                base = (f"{file}: writer {writer} seq {seq} (id {row.get('id')}) was changed after "
                        f"sealing: its content no longer hashes to its chain_hash, and {how}")
            else:
                base = (f"{file}: writer {writer} seq {seq} (id {row.get('id')}) does not hash to "
                        f"its stored chain_hash: the event was changed or replaced (if seq "
                        f"{seq - 1} was replaced together with a recomputed hash, seq {seq} is "
                        "where it shows)")
            if column:
                msg = f"{base}; column {column}: {why}"
            else:
                msg = (f"{base}; which column changed cannot be determined from the lake: "
                       "the hash covers all columns at once and the original values are not "
                       "kept anywhere else")
            self.problem("changed_event", msg, file=file, seq=seq, column=column, writer_id=writer)
        if rest:
            w, s = rest[0]
            self.problem(
                "changed_event",
                f"{len(rest)} further events do not hash to their stored chain_hash (first: "
                f"writer {w} seq {s}); not examined one by one", seq=s, writer_id=w)

    def _find_position(
        self, row: dict[str, Any], writer: str, seq: int, fail_at: set[tuple[str, int]],
        prev: dict[tuple[str, int], str], by_seq: dict[tuple[str, int], list[dict[str, Any]]],
        alt_prevs: set[str],
    ) -> int | None:
        """The failing position where this event's content hashes correctly
        (from the previous hash there, or from any disturbed neighbour's hash:
        swapped neighbours disturb each other's previous hash)."""
        candidates = sorted(s for w, s in fail_at if w == writer and s != seq)
        if not candidates or len(candidates) > 64:
            return None
        table = _row_table(row)
        if table is None:
            return None
        extra = sorted(alt_prevs)[:64]
        for pos in candidates:
            moved = table.set_column(table.schema.get_field_index("seq"), "seq",
                                     pa.array([pos], pa.int64()))
            canon = canonical_rows(moved)[0]
            stored_there = {r["chain_hash"] for r in by_seq.get((writer, pos), [])}
            targets = stored_there | {row["chain_hash"]}
            p = prev.get((writer, pos))
            for start in ([p] if p else []) + extra + ([GENESIS.hex()] if pos == 1 else []):
                if chain_link(start, canon) in targets:
                    return pos
        return None


def _row_table(row: dict[str, Any]) -> pa.Table | None:
    try:
        return pa.Table.from_pylist([{c: row[c] for c in EVENT_SCHEMA.names}], schema=EVENT_SCHEMA)
    except (KeyError, pa.ArrowException, TypeError, ValueError):
        return None


def _guess_column(row: dict[str, Any], file: str) -> tuple[str | None, str]:
    """The column of a changed event, when a cross-check can tell it: a value
    that ingest validation or the sealer could never have stored."""
    for name in CANONICAL_FIELDS:
        if row.get(name) is None:
            return name, "it is NULL (every stored column is non-nullable)"
    m = _PART_RE.match(file.rsplit("/", 1)[-1])
    if m and row["writer_id"] != m.group("writer"):
        return "writer_id", f"{row['writer_id']!r} differs from the writer {m.group('writer')!r} that wrote the file"
    day = _partition_date(file)
    created = row["created_at"]
    if day and isinstance(created, dt.datetime) and created.astimezone(dt.UTC).date().isoformat() != day:
        return "created_at", f"{created.isoformat()} is not in the file's partition {day}"
    for name in REQUIRED_FIELDS:
        if row[name] == "":
            return name, "it is empty, which ingest validation rejects"
    for name, limit in MAX_BYTES.items():
        if isinstance(row[name], str) and len(row[name].encode()) > limit:
            return name, f"it is longer than the {limit} bytes ingest accepts"
    if not _UUID_RE.match(str(row["id"])):
        return "id", f"{row['id']!r} is not a UUID, which ingest validation rejects"
    if row["outcome"] not in OUTCOMES:
        return "outcome", f"{row['outcome']!r} is not one of {sorted(OUTCOMES)}"
    for name, rx in _HEX_RE.items():
        if not rx.match(str(row[name])):
            return name, f"{row[name]!r} is not the hex form ingest validation requires"
    for name in ("changes", "metadata"):
        try:
            json.loads(row[name])
        except ValueError:
            return name, "it is not valid JSON, which ingest validation rejects"
    if row["imported"] and row["clock_skew"]:
        return "clock_skew", "imported events are never flagged for clock skew"
    return None, ""


# -- command line ---------------------------------------------------------------------------


class _StderrProgress:
    """Progress lines on stderr, at most one a second per phase (and each phase's end)."""

    def __init__(self, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self.last = 0.0
        self.t0 = time.monotonic()

    def __call__(self, phase: str, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self.last < self.interval_s:
            return
        self.last = now
        unit = {"digest": "bytes", "hash": "events"}.get(phase, "steps")
        pct = f" ({100 * done / total:.0f}%)" if total else ""
        print(f"verify: {phase} {done:,}/{total:,} {unit}{pct}, {now - self.t0:.1f} s",
              file=sys.stderr, flush=True)


def cmd_verify(args: argparse.Namespace) -> int:
    from auditlake.collector.config import collector_config  # noqa: PLC0415

    data = DataDir.resolve(args.data)
    toml = load_toml(Path(args.config) if args.config else data.config_file)
    mirrors = list(args.checkpoint_mirror or [])
    if not mirrors:
        configured = collector_config(toml).checkpoint_mirror
        if configured and Path(configured).is_dir():
            mirrors.append(configured)
    report = verify_lake(
        data, public_key=args.public_key, date_from=args.date_from, date_to=args.date_to,
        mirrors=mirrors, progress=None if args.quiet else _StderrProgress(), toml=toml,
    )
    if args.format == "json":
        sys.stdout.write(json.dumps(report.to_json(), indent=1) + "\n")
    else:
        sys.stdout.write(report.to_text())
    return 0 if report.ok else 1


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``auditlake verify``."""
    from auditlake.collector.cli import add_data_arg  # noqa: PLC0415

    p = subparsers.add_parser(
        "verify",
        help="re-hash the lake and check it against its signed checkpoints",
        description="Re-read every lake file, recompute every event's hash, check sequences, "
        "file digests, checkpoint signatures and links; name each problem.  Exit 0 when "
        "clean, 1 when problems were found, 2 on a usage error.",
    )
    add_data_arg(p)
    p.add_argument("--config", metavar="FILE", help=argparse.SUPPRESS)
    p.add_argument("--from", dest="date_from", metavar="YYYY-MM-DD",
                   help="first date partition to re-hash (weaker guarantee: docs/integrity.md)")
    p.add_argument("--to", dest="date_to", metavar="YYYY-MM-DD",
                   help="last date partition to re-hash")
    p.add_argument("--public-key", metavar="FILE",
                   help="Ed25519 public key (PEM, from `auditlake keys public`) to check "
                   "signatures with, instead of the one in the data dir")
    p.add_argument("--checkpoint-mirror", metavar="DIR", action="append",
                   help="a second checkpoint folder to compare (repeatable; default: the "
                   "configured mirror)")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(func=cmd_verify)
