"""The lake as a feed: each writer's sealed events in seq order after a
position, read from the hot tier's Parquet files.

A writer's seq numbers run 1, 2, 3, … without gaps (docs/integrity.md), so
"after seq N" is a range, and which files hold it is known from their
footers alone: each file's writer and seq range (min/max statistics) are
read once, when the file first appears in a listing, and kept (files are
never rewritten in place; a compacted file replaces its sources under new
names).  A read opens only the files overlapping the range, and returns the
events from N+1 on *without a hole*: a seal writes one file per UTC day and
renames them one by one, so for a moment a later seq can be visible while
an earlier one is not; the feed stops before the hole rather than step over
an event.  A hole that stays (history expired, or retention moved the day
to the cold tier before the stream read it) is reported by
:meth:`LakeFeed.read_after` so the stream can step over it after a grace.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from auditlake.collector.lake.erasure import reader_for
from auditlake.collector.lake.files import partition_files
from auditlake.collector.schema import EVENT_SCHEMA
from auditlake.collector.storage.datadir import DataDir
from auditlake.collector.storage.tiers import hot_tier

#: Seqs read from the files per read at most: one read of a large compacted
#: file (sorted by tenant, not seq, so its row groups cannot be skipped by
#: seq) serves many requests.
READ_WINDOW = 100_000


@dataclass(frozen=True)
class FileSpan:
    """One lake file's writer and seq range (from its footer)."""

    key: str
    writer_id: str
    first_seq: int
    last_seq: int


@dataclass(frozen=True)
class FeedRead:
    """What :meth:`LakeFeed.read_after` found: ``rows`` (seq ascending, the
    next seqs after the position without a hole) and, when there is a hole
    right after the position, the next seq the lake holds (``resumes_at``)."""

    rows: pa.Table
    resumes_at: int | None = None


def _span(key: str, meta: pq.FileMetaData) -> FileSpan | None:
    """The span of a file from its row groups' statistics (None when empty)."""
    names = meta.schema.names
    if "seq" not in names or "writer_id" not in names or meta.num_rows == 0:
        return None
    seq_at, writer_at = names.index("seq"), names.index("writer_id")
    lo, hi, writer = None, None, None
    for i in range(meta.num_row_groups):
        rg = meta.row_group(i)
        seq_stats = rg.column(seq_at).statistics
        writer_stats = rg.column(writer_at).statistics
        if seq_stats is None or not seq_stats.has_min_max or writer_stats is None or not writer_stats.has_min_max:
            return None
        lo = seq_stats.min if lo is None else min(lo, seq_stats.min)
        hi = seq_stats.max if hi is None else max(hi, seq_stats.max)
        writer = writer_stats.min
    if lo is None or hi is None or writer is None:
        return None
    return FileSpan(key, str(writer), int(lo), int(hi))


class LakeFeed:
    """Sealed events of every writer of a lake's hot tier, by position."""

    def __init__(self, data: DataDir) -> None:
        self.hot = hot_tier(data)
        self._spans: dict[str, FileSpan | None] = {}
        self._lock = threading.Lock()
        self._cache: tuple[str, int, pa.Table] | None = None  # (writer, first seq, rows) of the last read
        #: With erasure enabled (DIR/auditlake.toml), a destination receives
        #: plaintext, or ``[erased]``, never the stored ciphertext.
        self._decryptor = reader_for(data)

    def refresh(self) -> None:
        """List the lake again; read the footer of each file not seen before."""
        keys = partition_files(self.hot, ".parquet")
        with self._lock:
            known = self._spans
        fresh: dict[str, FileSpan | None] = {}
        for key in keys:
            if key in known:
                fresh[key] = known[key]
                continue
            try:
                with self.hot.open_input(key) as f:
                    fresh[key] = _span(key, pq.ParquetFile(f).metadata)
            except (OSError, FileNotFoundError):
                continue  # moved away between the listing and the read: the next listing says
        with self._lock:
            self._spans = fresh

    def heads(self) -> dict[str, tuple[int, int]]:
        """Each writer's (lowest, highest) seq in the hot tier."""
        out: dict[str, tuple[int, int]] = {}
        with self._lock:
            spans = [s for s in self._spans.values() if s is not None]
        for s in spans:
            lo, hi = out.get(s.writer_id, (s.first_seq, s.last_seq))
            out[s.writer_id] = (min(lo, s.first_seq), max(hi, s.last_seq))
        return out

    def read_after(self, writer_id: str, after: int, limit: int) -> FeedRead:
        """Up to ``limit`` events of ``writer_id`` with seq ``after + 1``,
        ``after + 2``, … (stopping at the first seq the lake does not hold)."""
        rows = self._window(writer_id, after)
        if rows.num_rows == 0:
            return FeedRead(EVENT_SCHEMA.empty_table())
        seqs = rows.column("seq").to_numpy()
        first = int(seqs[0])
        if first != after + 1:
            return FeedRead(EVENT_SCHEMA.empty_table(), resumes_at=first)
        # the run without a hole: seq[i] == after + 1 + i
        breaks = np.nonzero(seqs != np.arange(first, first + len(seqs)))[0]
        run = int(breaks[0]) if len(breaks) else len(seqs)
        rows = rows.slice(0, min(run, limit))
        return FeedRead(rows if self._decryptor is None else self._decryptor.table(rows))

    def _window(self, writer_id: str, after: int) -> pa.Table:
        """The writer's rows with seq in (after, after + READ_WINDOW], seq
        ascending, one row per seq (a compacted file and its sources can be
        listed together for a moment)."""
        cached = self._cache
        if cached is not None and cached[0] == writer_id and cached[1] <= after + 1:
            table = cached[2]
            seqs = table.column("seq")
            if table.num_rows and int(seqs[-1].as_py()) > after:
                start = after + 1 - cached[1]
                if 0 <= start < table.num_rows and int(seqs[start].as_py()) == after + 1:
                    return table.slice(start)
        hi = after + READ_WINDOW
        with self._lock:
            spans = sorted((s for s in self._spans.values()
                            if s is not None and s.writer_id == writer_id and s.last_seq > after
                            and s.first_seq <= hi), key=lambda s: s.first_seq)
        parts = []
        for s in spans:
            try:
                with self.hot.open_input(s.key) as f:
                    t = pq.read_table(f, filters=[("seq", ">", after), ("seq", "<=", hi)])
            except (OSError, FileNotFoundError):
                continue  # compacted or moved since the listing: its rows are in the new file
            parts.append(t.select([n for n in EVENT_SCHEMA.names if n in t.column_names]))
        if not parts:
            return EVENT_SCHEMA.empty_table()
        table = pa.concat_tables(_conform(p) for p in parts)
        seqs = table.column("seq").to_numpy()
        if len(seqs) > 1 and not (seqs[1:] > seqs[:-1]).all():  # seal files are in seq order; compacted ones not
            table = table.take(pc.sort_indices(table, [("seq", "ascending")]))
            seqs = table.column("seq").to_numpy()
        if len(seqs) > 1:
            keep = np.concatenate(([True], seqs[1:] != seqs[:-1]))
            if not keep.all():
                table = table.filter(pa.array(keep))
        table = table.combine_chunks()
        if table.num_rows and int(table.column("seq")[0].as_py()) == after + 1:
            self._cache = (writer_id, after + 1, table)
        return table


def _conform(table: pa.Table) -> pa.Table:
    """A file's rows with every column of EVENT_SCHEMA (a file sealed before
    ``ingest_key_id`` existed reads it as "")."""
    for f in EVENT_SCHEMA:
        if f.name not in table.column_names:
            table = table.append_column(f.name, pa.repeat(pa.scalar("", f.type), table.num_rows))
    return table.select(EVENT_SCHEMA.names).cast(EVENT_SCHEMA)
