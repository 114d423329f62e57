"""Row checks on the index, against the checkpoints: events of unknown
writers, gaps, duplicates, a truncated or unsigned tail, files holding other
rows than their checkpoint lists or events of another day, and stored hashes
that differ from the signed chain heads."""

from __future__ import annotations

from collections import defaultdict

import duckdb

from auditlake.collector.integrity.checkpoint import ChainCheckpoint
from auditlake.collector.integrity.verify.checkpoints import ByWriter
from auditlake.collector.integrity.verify.listing import (
    DiskFile,
    ExpectedFiles,
    LiveFile,
    partition_date,
    rows_writer,
)
from auditlake.collector.integrity.verify.report import VerifyReport

#: Misplaced events named one by one per file; the rest are counted.
_MISPLACED_SHOWN = 5


#: A file's events whose ``writer_id`` names a writer without checkpoints
#: although a known writer wrote the file: (file, stored writer_id, the file's writer).
ChangedWriterId = tuple[str, str, str]


def check_writers(con: duckdb.DuckDBPyConnection, known: set[str], expected: ExpectedFiles,
                  report: VerifyReport) -> list[ChangedWriterId]:
    """Events of a writer without any signed checkpoint.  In a file a known
    writer wrote (its name, its checkpoint) they are that writer's events
    with their ``writer_id`` column changed: returned, for
    explain.explain_writer_ids to name, rather than reported here."""
    changed: list[ChangedWriterId] = []
    for writer, file, n, lo, hi in con.execute(
            "SELECT writer_id, _file, count(*), min(seq), max(seq) FROM idx "
            "GROUP BY ALL ORDER BY ALL").fetchall():
        if writer in known:
            continue
        lf = expected.live.get(file)
        owner = lf.writer_id if lf is not None else rows_writer(file, "")
        if owner in known:
            changed.append((file, writer, owner))
            continue
        report.add(
            "unknown_writer",
            f"{file} holds {n} events (seq {lo}..{hi}) of writer {writer!r}, which has no "
            "signed checkpoint: forged or inserted events", file=file, seq=lo,
            writer_id=writer)
    return changed


# -- sequences ---------------------------------------------------------------------------


def check_sequences(con: duckdb.DuckDBPyConnection, writers: ByWriter, expected: ExpectedFiles,
                    report: VerifyReport) -> None:
    """Per writer: duplicate seqs, gaps no expiry explains, and the tail
    against the newest signed head."""
    heads = {w: max(s) for w, s in writers.items() if s}
    for writer, seal in heads.items():
        # One sort of the writer's seqs finds both gaps and duplicates.
        breaks = con.execute(
            "SELECT prev, seq FROM (SELECT seq, lag(seq, 1, 0) OVER (ORDER BY seq) AS prev "
            "FROM idx WHERE writer_id = ?) WHERE seq <> prev + 1 ORDER BY seq",
            [writer]).fetchall()
        _duplicates(con, writer, sorted({int(seq) for prev, seq in breaks if seq == prev}), report)
        for prev, seq in breaks:
            if seq <= prev:
                continue
            for a, b in expected.unexpired(writer, int(prev) + 1, int(seq) - 1):
                report.add(
                    "missing_events",
                    f"writer {writer}: events seq {a}..{b} ({b - a + 1}) are missing and no "
                    "expire checkpoint records their removal",
                    seq=a, writer_id=writer)
        _tail(con, writer, seal, writers[writer][seal].checkpoint, expected, report)


def _duplicates(con: duckdb.DuckDBPyConnection, writer: str, dups: list[int], report: VerifyReport) -> None:
    if not dups:
        return
    con.execute("CREATE OR REPLACE TEMP TABLE dups (seq BIGINT)")
    con.executemany("INSERT INTO dups VALUES (?)", [(d,) for d in dups[:1000]])
    for seq, files in con.execute(
            "SELECT seq, list(_file ORDER BY _file) FROM idx JOIN dups USING (seq) "
            "WHERE writer_id = ? GROUP BY seq ORDER BY seq", [writer]).fetchall():
        report.add(
            "duplicate_seq",
            f"writer {writer} seq {seq} is stored {len(files)} times "
            f"({', '.join(files)}): an inserted event (the copy in a changed or "
            "unlisted file is the forgery)", file=files[-1], seq=seq, writer_id=writer)


def _tail(con: duckdb.DuckDBPyConnection, writer: str, seal: int, head: ChainCheckpoint,
          expected: ExpectedFiles, report: VerifyReport) -> None:
    top = con.execute("SELECT max(seq) FROM idx WHERE writer_id = ?", [writer]).fetchone()
    last = int(top[0]) if top and top[0] is not None else 0
    if last < head.seq:
        for a, b in expected.unexpired(writer, last + 1, head.seq):
            report.add(
                "truncated",
                f"writer {writer}: the lake ends at seq {a - 1} but checkpoint "
                f"seal {seal} ({head.time}) signed the head at seq {head.seq}: the "
                f"newest events seq {a}..{b} were removed (truncated tail)",
                seq=a, writer_id=writer)
    elif last > head.seq:
        for file, n, lo, hi in con.execute(
                "SELECT _file, count(*), min(seq), max(seq) FROM idx WHERE writer_id = ? "
                "AND seq > ? GROUP BY ALL ORDER BY ALL", [writer, head.seq]).fetchall():
            report.add(
                "unsigned_events",
                f"{file}: {n} events of writer {writer} (seq {lo}..{hi}) come after the "
                f"newest signed head (seq {head.seq}): inserted events, or a seal still "
                "in progress (verify again)", file=file, seq=lo, writer_id=writer)


# -- files' rows -------------------------------------------------------------------------


def check_file_rows(con: duckdb.DuckDBPyConnection, disk: dict[str, DiskFile], expected: ExpectedFiles,
                    known: set[str], report: VerifyReport) -> None:
    """Each file's events against its partition and its checkpoint entry
    (``known``: the writers with checkpoints; an event naming another one is
    a changed writer_id or an unknown writer, reported as such)."""
    moved = {p.file for p in report.problems if p.kind == "moved_file"}
    _file_info_table(con, disk, expected, moved)
    con.execute("CREATE OR REPLACE TEMP TABLE known_writers (writer_id VARCHAR)")
    if known:
        con.executemany("INSERT INTO known_writers VALUES (?)", [(w,) for w in sorted(known)])
    stats = {r[0]: r[1:] for r in con.execute(
        "SELECT _file, count(*), min(seq), max(seq), "
        "count(*) FILTER (WHERE created_date IS DISTINCT FROM f.day), "
        "min(seq) FILTER (WHERE created_date IS DISTINCT FROM f.day) "
        "FROM idx JOIN fileinfo f USING (_file) GROUP BY ALL").fetchall()}
    outside, counts = _outside_events(con)
    for key, (n, lo, hi, wrong_day, wrong_seq) in sorted(stats.items()):
        if wrong_day and key not in moved:
            report.add(
                "wrong_partition",
                f"{key}: {wrong_day} event(s) (first seq {wrong_seq}) have a created_at date "
                f"other than the file's partition {partition_date(key)}: events were "
                "moved to another day or their created_at was changed", file=key,
                seq=wrong_seq, column="created_at" if wrong_day < n else None)
        lf = expected.live.get(key)
        if lf is None or key in moved:
            continue
        _misplaced(key, lf, outside.get(key, []), counts.get(key, 0), expected, report)
        e = lf.entry
        if n != e.rows or lo != e.first_seq or hi != e.last_seq:
            report.add(
                "file_rows",
                f"{key} holds {n} events seq {lo}..{hi}; checkpoint seal {lf.seal} lists "
                f"{e.rows} events seq {e.first_seq}..{e.last_seq}", file=key,
                writer_id=lf.writer_id)


def _file_info_table(con: duckdb.DuckDBPyConnection, disk: dict[str, DiskFile], expected: ExpectedFiles,
                     moved: set[str | None]) -> None:
    """``fileinfo``: each file's partition day and, when listed, its seq span and writer."""
    con.execute("CREATE OR REPLACE TEMP TABLE fileinfo (_file VARCHAR, day DATE, "
                "first_seq BIGINT, last_seq BIGINT, writer VARCHAR)")
    rows = []
    for key in disk:
        lf = None if key in moved else expected.live.get(key)
        rows.append((key, partition_date(key), lf.entry.first_seq if lf else None,
                     lf.entry.last_seq if lf else None, lf.writer_id if lf else None))
    if rows:
        con.executemany("INSERT INTO fileinfo VALUES (?, ?, ?, ?, ?)", rows)


def _outside_events(con: duckdb.DuckDBPyConnection) -> tuple[dict[str, list[tuple[int, str]]], dict[str, int]]:
    """The first few events per listed file outside its checkpoint's seq span
    or writer (seq, day), and how many there are per file."""
    outside: dict[str, list[tuple[int, str]]] = defaultdict(list)
    counts: dict[str, int] = {}
    for key, seq, day, total in con.execute(
            "SELECT _file, seq, strftime(created_date, '%Y-%m-%d'), n FROM ("
            "SELECT _file, seq, created_date, row_number() OVER (PARTITION BY _file ORDER BY seq) "
            "AS k, count(*) OVER (PARTITION BY _file) AS n FROM idx JOIN fileinfo f USING (_file) "
            "WHERE f.writer IS NOT NULL AND (seq < f.first_seq OR seq > f.last_seq "
            "OR writer_id <> f.writer) AND writer_id IN (SELECT writer_id FROM known_writers)"
            f") WHERE k <= {_MISPLACED_SHOWN} ORDER BY ALL").fetchall():
        outside[key].append((seq, day))
        counts[key] = total
    return outside, counts


def _misplaced(key: str, lf: LiveFile, outside: list[tuple[int, str]], count: int,
               expected: ExpectedFiles, report: VerifyReport) -> None:
    e = lf.entry
    for seq, day in outside:
        home = [p for p, o in expected.live.items() if o.writer_id == lf.writer_id
                and o.entry.first_seq <= seq <= o.entry.last_seq and p != key
                and partition_date(p) in (day, None)]
        report.add(
            "misplaced_event",
            f"{key} holds seq {seq}, outside the seq {e.first_seq}..{e.last_seq} its "
            f"checkpoint lists; the event belongs in "
            f"{' or '.join(home) if home else 'no listed file'}: events were moved "
            "between files", file=key, seq=seq, writer_id=lf.writer_id)
    if count > _MISPLACED_SHOWN:
        report.add(
            "misplaced_event",
            f"{key} holds {count - _MISPLACED_SHOWN} further events outside its checkpoint's "
            f"seq {e.first_seq}..{e.last_seq}", file=key, writer_id=lf.writer_id)


# -- signed heads ------------------------------------------------------------------------


def check_anchors(con: duckdb.DuckDBPyConnection, expected: ExpectedFiles, report: VerifyReport) -> None:
    """The stored chain_hash at every signed head, and the hash each expire
    range ends with, against what the checkpoints signed."""
    if not expected.anchors:
        return
    con.execute("CREATE TEMP TABLE anchors (writer_id VARCHAR, seq BIGINT, chain_hash VARCHAR, cp VARCHAR)")
    con.executemany("INSERT INTO anchors VALUES (?, ?, ?, ?)", expected.anchors)
    for writer, seq, signed, cp, stored, file in con.execute(
            "SELECT a.writer_id, a.seq, a.chain_hash, a.cp, i.chain_hash, i._file FROM anchors a "
            "JOIN idx i USING (writer_id, seq) WHERE i.chain_hash <> a.chain_hash "
            "ORDER BY ALL").fetchall():
        report.add(
            "head_mismatch",
            f"{file}: writer {writer} seq {seq} stores chain_hash {stored[:16]}… but "
            f"checkpoint {cp} signed {signed[:16]}…: the chain was rewritten from this "
            "event or an earlier one", file=file, seq=seq, writer_id=writer,
            column="chain_hash")
    anchored = expected.anchored
    for writer, ranges in expected.expired.items():
        for _a, b, h in ranges:
            at = anchored.get((writer, b))
            if at is not None and at != h:
                report.add("bad_checkpoint",
                           f"writer {writer}: an expire range ends at seq {b} with hash "
                           f"{h[:16]}… but a checkpoint signed {at[:16]}… there",
                           seq=b, writer_id=writer)
