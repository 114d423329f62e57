"""Digesting the files: each listed file in the date range read once through
its Store (sha256, and the bytes of non-local files for DuckDB), its Parquet
footer read, and the digests compared with what the checkpoints signed:
changed, moved, missing and unlisted files, and files a checkpoint removed
that are back where readers read them."""

from __future__ import annotations

import hashlib
import time
from collections import defaultdict
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from auditlake.collector.integrity.chain import canonical_fields
from auditlake.collector.integrity.verify.listing import (
    STAGE_SUFFIX,
    DateRange,
    DiskFile,
    ExpectedFiles,
    LakeChanged,
)
from auditlake.collector.integrity.verify.report import ProgressFn, VerifyReport

#: What compaction of older versions appended to a replaced file's name,
#: leaving it beside the live files (lake.compact now moves it out of events/).
SUPERSEDED_SUFFIX = ".superseded"


@dataclass
class FileReads:
    """What reading the files learned, beyond each file's digest and row count."""

    #: The bytes of non-local files, read once (DuckDB reads local files itself).
    buffers: dict[str, bytes] = field(default_factory=dict)
    #: Files that cannot be read as Parquet.
    unreadable: set[str] = field(default_factory=set)
    #: Files whose statistics admit a NULL in a hashed column.
    maybe_null: set[str] = field(default_factory=set)
    #: Files a checkpoint removed that are back in the lake (reported, not read further).
    leftovers: set[str] = field(default_factory=set)

    def readable(self, keys: Iterable[str]) -> list[str]:
        """``keys`` whose rows count: readable, and not removed by a checkpoint; sorted."""
        return sorted(k for k in keys if k not in self.unreadable and k not in self.leftovers)


def _fields(meta: pq.FileMetaData) -> tuple[str, ...]:
    """The hashed fields of a file, by its columns (chain.canonical_fields)."""
    return canonical_fields(meta.schema.column(i).name for i in range(meta.num_columns))


def _may_hold_nulls(meta: pq.FileMetaData, fields: tuple[str, ...]) -> bool:
    """False when the Parquet statistics prove no hashed column holds a NULL."""
    names = set(fields)
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


def _digest(f: DiskFile) -> bytes | None:
    """Read the whole file once: sha256, and the bytes for non-local tiers."""
    h = hashlib.sha256()
    keep = not f.tier.is_local
    chunks = []
    for block in f.tier.iter_chunks(f.rel):
        h.update(block)
        if keep:
            chunks.append(block)
    f.sha256 = h.hexdigest()
    return b"".join(chunks) if keep else None


def _footer(f: DiskFile, buf: bytes | None) -> pq.FileMetaData:
    if buf is not None:
        return pq.read_metadata(pa.BufferReader(buf))
    with f.tier.open_input(f.rel) as src:
        return pq.read_metadata(src)


def _unreadable(f: DiskFile, exc: Exception, reads: FileReads, report: VerifyReport) -> None:
    if not f.still_there():
        raise LakeChanged(f"{f.key} disappeared while verifying") from exc
    reads.unreadable.add(f.key)
    report.add("unreadable_file", f"{f.key} cannot be read as Parquet: {exc}", file=f.key)


def _digest_in_range(todo: list[DiskFile], reads: FileReads, progress: ProgressFn, report: VerifyReport) -> None:
    total = sum(f.size for f in todo)
    done = 0
    last = time.monotonic()
    for f in todo:
        try:
            buf = _digest(f)
            meta = _footer(f, buf)
            f.rows = meta.num_rows
            f.fields = _fields(meta)
        except (OSError, pa.ArrowException) as exc:
            _unreadable(f, exc, reads, report)
            continue
        if _may_hold_nulls(meta, f.fields):
            reads.maybe_null.add(f.key)
        if buf is not None:
            reads.buffers[f.key] = buf
        done += f.size
        report.files_digested += 1
        report.bytes_digested += f.size
        if time.monotonic() - last > 1:
            progress("digest", done, total)
            last = time.monotonic()
    progress("digest", total, total)


def _count_rows(files: Iterable[DiskFile], reads: FileReads, report: VerifyReport) -> None:
    """Files out of range: only their footers, so their rows can be counted."""
    for f in files:
        if f.sha256 or f.key in reads.unreadable:
            continue
        try:
            meta = _footer(f, None)
            f.rows = meta.num_rows
            f.fields = _fields(meta)
        except (OSError, pa.ArrowException) as exc:
            _unreadable(f, exc, reads, report)


def digest_files(disk: dict[str, DiskFile], expected: ExpectedFiles, dates: DateRange,
                 progress: ProgressFn, report: VerifyReport) -> FileReads:
    """Digest the files in range and compare them with the checkpoints."""
    reads = FileReads()
    _digest_in_range([f for f in disk.values() if dates.contains(f.key)], reads, progress, report)
    _count_rows(disk.values(), reads, report)
    reads.leftovers = compare_files(disk, expected, report, reads.unreadable)
    return reads


# -- digests against the checkpoints -----------------------------------------------------


def compare_files(disk: dict[str, DiskFile], expected: ExpectedFiles, report: VerifyReport,
                  unreadable: Collection[str] = ()) -> set[str]:
    """Name every file whose digest differs from its checkpoint, or that is
    unlisted, moved, missing, or removed by a checkpoint yet back in the
    lake; returns the removed ones (not read further: their events are in
    the files that replaced them)."""
    by_sha: dict[str, list[str]] = defaultdict(list)
    for path, live in expected.live.items():
        by_sha[live.entry.sha256].append(path)
    leftovers: set[str] = set()
    explained: set[str] = set()  # live paths whose content was found elsewhere
    for key, f in sorted(disk.items()):
        lf = expected.live.get(key)
        if not f.sha256:
            # Out of --from/--to (or unreadable): not digested, but a path no
            # checkpoint leaves live is wrong whatever its bytes.
            if key in unreadable or lf is not None:
                continue
            if key in expected.history:
                leftovers.add(key)
                _removed(f, expected, report, digested=False)
            else:
                _unlisted(f, report)
            continue
        if lf is not None and lf.entry.sha256 == f.sha256:
            continue
        others = [p for p in by_sha.get(f.sha256, []) if p != key]
        if others:
            explained.update(others)
            _moved(f, others[0], expected, report)
        elif lf is not None:
            report.add(
                "changed_file",
                f"{key}: sha256 {f.sha256[:16]}… differs from the {lf.entry.sha256[:16]}… "
                f"signed in checkpoint seal {lf.seal} of writer {lf.writer_id}: the file was "
                "rewritten after sealing", file=key, writer_id=lf.writer_id)
        elif key in expected.history and expected.history[key].sha256 == f.sha256:
            leftovers.add(key)
            _removed(f, expected, report, digested=True)
        else:
            _unlisted(f, report)
    _missing(disk, expected, explained, report)
    return leftovers


def _unlisted(f: DiskFile, report: VerifyReport) -> None:
    rows = f"{f.rows} rows" if f.rows >= 0 else "not read"
    report.add(
        "unlisted_file",
        f"{f.key} ({rows}) is not listed in any checkpoint, yet every reader of the lake "
        "reads it: a file added to the lake after sealing (inserted events)", file=f.key)


_REMOVAL = {"compact": "compaction replaced it", "move": "retention moved it to the cold tier",
            "expire": "retention expired it"}


def _removed(f: DiskFile, expected: ExpectedFiles, report: VerifyReport, *, digested: bool) -> None:
    """A file a checkpoint removed is in the lake again, where readers count it."""
    e = expected.history[f.key]
    writer, seal, kind = expected.removed_by[f.key]
    same = "with the bytes it removed" if digested else "(not digested: outside --from/--to)"
    report.add(
        "removed_file",
        f"{f.key} ({e.rows} events, seq {e.first_seq}..{e.last_seq}) is in the lake {same}, "
        f"but {kind} checkpoint seal {seal} of writer {writer} removed it "
        f"({_REMOVAL.get(kind, 'it is no longer part of the lake')}): every reader counts its "
        "events a second time.  A collector that stopped between that checkpoint and setting "
        "the file aside finishes the step when it starts again; otherwise the file was put "
        "back (for example a superseded copy renamed to .parquet)",
        file=f.key, writer_id=writer, seq=e.first_seq)


def check_strays(strays: dict[str, DiskFile], expected: ExpectedFiles, report: VerifyReport) -> None:
    """Files under ``events/`` that are not ``*.parquet`` but that engines
    reading the folder (pyarrow.dataset, Spark) read all the same."""
    for key, f in sorted(strays.items()):
        replaced = key.removesuffix(SUPERSEDED_SUFFIX)
        if replaced != key and replaced in expected.history:
            e = expected.history[replaced]
            writer, seal, kind = expected.removed_by[replaced]
            report.add(
                "removed_file",
                f"{key} is the copy of {replaced} ({e.rows} events) that {kind} checkpoint "
                f"seal {seal} of writer {writer} removed, left inside events/ by an older "
                "collector: engines that read the folder (pyarrow.dataset, Spark) count its "
                "events a second time.  A collector of this version moves it out of events/ "
                "when it starts; or delete it", file=key, writer_id=writer, seq=e.first_seq)
        elif key.endswith(STAGE_SUFFIX):
            # Collectors stage under a hidden name (never a stray); a visible
            # one is an older version's, left by a crash (or written by one
            # running now).
            report.add(
                "unlisted_file",
                f"{key} ({f.size} bytes) is a file an older collector's seal or compaction "
                "staged under a visible name and never published or deleted (a crash): "
                "engines that read the events/ folder (pyarrow.dataset, Spark) read it as part "
                "of the lake, counting its events a second time or failing on a partial file.  "
                "A collector of this version publishes or deletes it when it starts", file=key)
        else:
            report.add(
                "unlisted_file",
                f"{key} ({f.size} bytes) is not listed in any checkpoint, and although its "
                "name is not *.parquet, engines that read the events/ folder (pyarrow.dataset, "
                "Spark) read it as part of the lake: a file added after sealing", file=key)


def _moved(f: DiskFile, listed_at: str, expected: ExpectedFiles, report: VerifyReport) -> None:
    lf = expected.live.get(f.key)
    where = (f"the path of a file that checkpoint seal {lf.seal} lists with other "
             "content" if lf else "a path no checkpoint lists")
    report.add(
        "moved_file",
        f"{f.key} holds exactly the file a checkpoint lists at {listed_at} (same "
        f"sha256): the file was moved or swapped; {f.key} is {where}",
        file=f.key, writer_id=expected.live[listed_at].writer_id)


def _missing(disk: dict[str, DiskFile], expected: ExpectedFiles, explained: set[str], report: VerifyReport) -> None:
    for key, lf in sorted(expected.live.items()):
        if key in disk or key in explained:
            continue
        e = lf.entry
        report.add(
            "missing_file",
            f"{key} ({e.rows} events, seq {e.first_seq}..{e.last_seq}, listed in checkpoint "
            f"seal {lf.seal} of writer {lf.writer_id}) is not in the lake: the file was "
            "deleted", file=key, writer_id=lf.writer_id, seq=e.first_seq)
