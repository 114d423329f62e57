"""Naming failed links: which stored event changed and, when a cross-check
can tell, which column; a stored chain_hash edited on its own; events swapped
in the chain; a predecessor rewritten together with a recomputed hash."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import duckdb
import pyarrow as pa

from auditlake.collector.integrity.chain import GENESIS, canonical_fields, canonical_rows, canonical_sql, chain_link
from auditlake.collector.integrity.verify.index import LakeScan
from auditlake.collector.integrity.verify.links import Links
from auditlake.collector.integrity.verify.listing import partition_date
from auditlake.collector.integrity.verify.report import VerifyReport
from auditlake.collector.integrity.verify.rows import ChangedWriterId
from auditlake.collector.schema import (
    EVENT_SCHEMA,
    INGEST_KEY_COLUMN,
    LEGACY_EVENT_SCHEMA,
    MAX_BYTES,
    OUTCOMES,
    REQUIRED_FIELDS,
)

#: Failing events examined one by one (column, swap, edited hash); the rest are counted.
_DETAIL_LIMIT = 500
#: Failing positions (and disturbed hashes) tried when looking for where a moved event belongs.
_SWAP_CANDIDATES = 64

#: The writer a lake file's name carries (sealed and compacted files; a moved file keeps its name).
_FILE_WRITER_RE = re.compile(r"^(?:part|compact)-(?P<writer>w[^-/]+)-[^/]*\.parquet$")
_UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_HEX_RE = {"trace_id": re.compile(r"^([0-9a-f]{32})?$"), "span_id": re.compile(r"^([0-9a-f]{16})?$")}
_HASH_RE = re.compile(r"[0-9a-f]{64}")

#: A stored event's full row (with ``_file`` and ``_canon``).
Row = dict[str, Any]
#: A stored copy whose link fails: file, seq, writer, stored hash, the hash its content computes to.
_Copy = tuple[str, int, str, str, str | None]


def explain_failures(con: duckdb.DuckDBPyConnection, scan: LakeScan, links: Links, writers: set[str],
                     anchored: dict[tuple[str, int], str], report: VerifyReport) -> None:
    """Turn failed links into named problems: which event, which column when
    that can be told, an edited hash, or events swapped in the chain."""
    keys = sorted({(w, s) for w, s, _ in links.failing})
    detail_keys, rest = keys[:_DETAIL_LIMIT], keys[_DETAIL_LIMIT:]
    rows = _rows_around(con, scan, detail_keys)
    by_seq: dict[tuple[str, int], list[Row]] = defaultdict(list)
    for (w, s, _), row in rows.items():
        by_seq[(w, s)].append(row)
    copies = _failing_copies(detail_keys, links.prev, by_seq)
    alt_prevs = {c[3] for c in copies} | {c[4] for c in copies if c[4] is not None}
    story = _Story(rows, by_seq, set(keys), links.prev, {a for a in alt_prevs if _HASH_RE.fullmatch(a)},
                   anchored, writers, report)
    for copy in copies:
        story.tell(*copy)
    if rest:
        w, s = rest[0]
        report.add(
            "changed_event",
            f"{len(rest)} further events do not hash to their stored chain_hash (first: "
            f"writer {w} seq {s}); not examined one by one", seq=s, writer_id=w)


def explain_writer_ids(con: duckdb.DuckDBPyConnection, scan: LakeScan, changed: list[ChangedWriterId],
                       starts: dict[tuple[str, int], str], report: VerifyReport) -> None:
    """Name the events whose ``writer_id`` column was changed to a writer
    without checkpoints (rows.check_writers found them in a file a known
    writer wrote), one problem per event with its seq and the column; and
    when the event, given back the file's writer, hashes to its stored
    chain_hash, say that this column alone was changed."""
    shown = 0
    for file, stored, owner in changed:
        if file not in scan.disk:
            continue
        fields = scan.disk[file].fields
        cur = con.execute(
            f"SELECT r.seq, r.id, r.chain_hash, {canonical_sql('r.', fields)} AS _canon, p.chain_hash "
            f"FROM (SELECT * REPLACE (? AS writer_id) FROM (SELECT * FROM ({scan.sql([file], '*')}) "
            "WHERE writer_id = ?)) r "
            "LEFT JOIN idx p ON p.writer_id = ? AND p.seq = r.seq - 1 ORDER BY r.seq",
            [owner, stored, owner])
        rows = cur.fetchall()
        detailed = rows[:max(_DETAIL_LIMIT - shown, 0)]
        shown += len(detailed)
        for seq, event_id, chain_hash, canon, prev in detailed:
            prev = prev if prev is not None else starts.get((owner, seq))
            alone = (prev is not None and canon is not None and _HASH_RE.fullmatch(str(prev)) is not None
                     and chain_link(prev, canon) == chain_hash)
            report.add(
                "changed_event",
                f"{file}: writer {owner} seq {seq} (id {event_id}) was changed after sealing; "
                f"column writer_id: it reads {stored!r}, a writer without any signed checkpoint, "
                f"but the file is writer {owner}'s (its name and its checkpoint)"
                + (f"; with writer_id {owner!r} the event hashes to its stored chain_hash: "
                   "writer_id is the only column changed" if alone else
                   "; other columns may have changed too (the event does not hash to its stored "
                   f"chain_hash with writer_id {owner!r} either)"),
                file=file, seq=seq, column="writer_id", writer_id=owner)
        if len(rows) > len(detailed):
            report.add(
                "changed_event",
                f"{file}: {len(rows) - len(detailed)} further events of writer {owner} have their "
                f"writer_id changed to {stored!r}; not listed one by one",
                file=file, column="writer_id", writer_id=owner)


def _rows_around(con: duckdb.DuckDBPyConnection, scan: LakeScan,
                 keys: list[tuple[str, int]]) -> dict[tuple[str, int, str], Row]:
    """Full rows of the failing events and their neighbours, with their
    canonical bytes, by (writer, seq, file)."""
    wanted = sorted({(w, s + d) for w, s in keys for d in (-1, 0, 1)})
    con.execute("CREATE OR REPLACE TEMP TABLE wanted (writer_id VARCHAR, seq BIGINT)")
    con.executemany("INSERT INTO wanted VALUES (?, ?)", wanted)
    files = sorted({r[0] for r in con.execute(
        "SELECT DISTINCT _file FROM idx JOIN wanted USING (writer_id, seq)").fetchall()}
        & set(scan.disk))
    rows: dict[tuple[str, int, str], Row] = {}
    for fields, group in scan.by_fields(files):
        cur = con.execute(
            f"SELECT r.*, {canonical_sql('r.', fields)} AS _canon FROM ({scan.sql(group, '*')}) r "
            "JOIN wanted w ON w.writer_id = r.writer_id AND w.seq = r.seq")
        names = [d[0] for d in cur.description]
        for values in cur.fetchall():
            row = dict(zip(names, values, strict=True))
            rows[(row["writer_id"], row["seq"], row["_file"])] = row
    return rows


def _failing_copies(keys: list[tuple[str, int]], prev: dict[tuple[str, int], str],
                    by_seq: dict[tuple[str, int], list[Row]]) -> list[_Copy]:
    """Which stored copy of each failing (writer, seq) fails, and what it hashes to."""
    out: list[_Copy] = []
    for w, s in keys:
        p = prev.get((w, s))
        for row in by_seq.get((w, s), []):
            has_null = any(row.get(c) is None for c in canonical_fields(row))
            computed = chain_link(p, row["_canon"]) if p and not has_null else None
            if has_null or (computed is not None and computed != row["chain_hash"]):
                out.append((row["_file"], s, w, str(row["chain_hash"]), computed))
    return out


@dataclass
class _Story:
    """What the failing links around one another say happened, told as problems."""

    rows: dict[tuple[str, int, str], Row]
    by_seq: dict[tuple[str, int], list[Row]]
    #: Every failing (writer, seq).
    fail_at: set[tuple[str, int]]
    #: The previous hash each failing event was checked against.
    prev: dict[tuple[str, int], str]
    #: Hashes disturbed by the tampering (stored or recomputed at a failing event).
    alt_prevs: set[str]
    anchored: dict[tuple[str, int], str]
    writers: set[str]
    report: VerifyReport
    #: Stored copies already accounted for by a neighbour's explanation.
    explained: set[tuple[str, int, str]] = field(default_factory=set)

    def tell(self, file: str, seq: int, writer: str, stored: str, computed: str | None) -> None:
        """Name the problem with one failing stored copy (the first explanation that fits)."""
        if (writer, seq, file) in self.explained:
            return
        row = self.rows.get((writer, seq, file))
        if row is None or writer not in self.writers:
            return  # an unknown writer is reported as such
        anchored = self.anchored.get((writer, seq))
        if (self._hash_edited(row, stored, computed, anchored)
                or self._reordered(row)
                or self._disturbed_by_neighbour(row, stored)
                or self._predecessor_rewritten(row, stored, anchored)):
            return
        self._content_changed(row, stored, anchored)

    def _hash_edited(self, row: Row, stored: str, computed: str | None, anchored: str | None) -> bool:
        """Only the stored chain_hash was edited: the content still hashes to
        what the checkpoint signed or the next event links to."""
        file, writer, seq = row["_file"], row["writer_id"], row["seq"]
        nxt = self.by_seq.get((writer, seq + 1), [])
        if computed is None or not (anchored == computed or any(
                n["_canon"] is not None and chain_link(computed, n["_canon"]) == n["chain_hash"] for n in nxt)):
            return False
        self.report.add(
            "changed_hash",
            f"{file}: writer {writer} seq {seq}: the stored chain_hash {stored[:16]}… was "
            f"changed; the event's content still hashes to {computed[:16]}…, which "
            + ("the checkpoint signed" if anchored == computed else f"seq {seq + 1} links to"),
            file=file, seq=seq, column="chain_hash", writer_id=writer)
        for n in nxt:
            self.explained.add((writer, seq + 1, n["_file"]))
        return True

    def _reordered(self, row: Row) -> bool:
        """This content belongs at another failing position."""
        file, writer, seq = row["_file"], row["writer_id"], row["seq"]
        moved_to = self._find_position(row)
        if moved_to is None:
            return False
        self.report.add(
            "reordered_events",
            f"{file}: the event stored as writer {writer} seq {seq} (id {row.get('id')}) "
            f"hashes correctly only at seq {moved_to}: events were reordered (their "
            "sequence numbers swapped)", file=file, seq=seq, column="seq", writer_id=writer)
        return True

    def _disturbed_by_neighbour(self, row: Row, stored: str) -> bool:
        """Intact, but its predecessor was moved or its hash edited: the link
        holds from one of the disturbed hashes (that event is reported itself)."""
        canon = row.get("_canon")
        return canon is not None and any(chain_link(a, canon) == stored for a in self.alt_prevs)

    def _predecessor_rewritten(self, row: Row, stored: str, anchored: str | None) -> bool:
        """The predecessor was rewritten with a recomputed hash: it links fine,
        this event no longer does, and only the predecessor's file changed."""
        file, writer, seq = row["_file"], row["writer_id"], row["seq"]
        changed_files = {p.file for p in self.report.problems if p.kind in ("changed_file", "unlisted_file")}
        pred = self.by_seq.get((writer, seq - 1), [])
        if not (anchored != stored and file not in changed_files and pred
                and all(r["_file"] in changed_files for r in pred)):
            return False
        p0 = pred[0]
        column, why = guess_column(p0, p0["_file"])
        self.report.add(
            "changed_event",
            f"{p0['_file']}: writer {writer} seq {seq - 1} (id {p0.get('id')}) was "
            "rewritten together with a recomputed chain_hash: it hashes consistently, "
            f"but seq {seq} (in an unchanged file) no longer links to it"
            + (f"; column {column}: {why}" if column else
               "; which column changed cannot be determined from the lake"),
            file=p0["_file"], seq=seq - 1, column=column, writer_id=writer)
        return True

    def _content_changed(self, row: Row, stored: str, anchored: str | None) -> None:
        """Content changed: name the column when a cross-check can tell it."""
        file, writer, seq = row["_file"], row["writer_id"], row["seq"]
        column, why = guess_column(row, file)
        nxt = self.by_seq.get((writer, seq + 1), [])
        nxt_ok = bool(nxt) and all((n["writer_id"], n["seq"]) not in self.fail_at for n in nxt)
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
        self.report.add("changed_event", msg, file=file, seq=seq, column=column, writer_id=writer)

    def _find_position(self, row: Row) -> int | None:
        """The failing position where this event's content hashes correctly
        (from the previous hash there, or from any disturbed neighbour's hash:
        swapped neighbours disturb each other's previous hash)."""
        writer, seq = row["writer_id"], row["seq"]
        candidates = sorted(s for w, s in self.fail_at if w == writer and s != seq)
        if not candidates or len(candidates) > _SWAP_CANDIDATES:
            return None
        table = _row_table(row)
        if table is None:
            return None
        extra = sorted(self.alt_prevs)[:_SWAP_CANDIDATES]
        for pos in candidates:
            moved = table.set_column(table.schema.get_field_index("seq"), "seq", pa.array([pos], pa.int64()))
            canon = canonical_rows(moved)[0]
            targets = {r["chain_hash"] for r in self.by_seq.get((writer, pos), [])} | {row["chain_hash"]}
            p = self.prev.get((writer, pos))
            for start in ([p] if p else []) + extra + ([GENESIS.hex()] if pos == 1 else []):
                if chain_link(start, canon) in targets:
                    return pos
        return None


def _row_table(row: Row) -> pa.Table | None:
    # A row of a version-1 file has no ingest_key_id: its table neither,
    # so canonical_rows hashes it as it was sealed.
    schema = EVENT_SCHEMA if INGEST_KEY_COLUMN in row else LEGACY_EVENT_SCHEMA
    try:
        return pa.Table.from_pylist([{c: row[c] for c in schema.names}], schema=schema)
    except (KeyError, pa.ArrowException, TypeError, ValueError):
        return None


def guess_column(row: Row, file: str) -> tuple[str | None, str]:
    """The column of a changed event, when a cross-check can tell it: a value
    that ingest validation or the sealer could never have stored."""
    for name in canonical_fields(row):
        if row.get(name) is None:
            return name, "it is NULL (every stored column is non-nullable)"
    m = _FILE_WRITER_RE.match(file.rsplit("/", 1)[-1])
    if m and row["writer_id"] != m.group("writer"):
        return "writer_id", f"{row['writer_id']!r} differs from the writer {m.group('writer')!r} that wrote the file"
    day = partition_date(file)
    created = row["created_at"]
    if day and isinstance(created, dt.datetime) and created.astimezone(dt.UTC).date().isoformat() != day:
        return "created_at", f"{created.isoformat()} is not in the file's partition {day}"
    return _invalid_value(row)


def _invalid_value(row: Row) -> tuple[str | None, str]:
    """A column holding a value ingest validation rejects."""
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
