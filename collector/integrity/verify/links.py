"""Re-hashing the chain: each event's link ``sha256(stored chain_hash of
seq-1 || canonical) == stored chain_hash``.  DuckDB computes the canonical
encodings and streams the events in (writer, seq) order; hashlib (OpenSSL's
SHA-256, faster than DuckDB's) checks each link.  Every link holding,
together with the signed heads, is the same statement as the whole chain
holding from genesis.

A regular lake (one writer's consecutive seqs per file, no seq stored
twice) is first re-hashed file by file on worker processes
(verify.parallel: no sort, both cores); that path only confirms, and
whatever it cannot confirm is re-hashed by the stream, which names it."""

from __future__ import annotations

import hashlib
import re
import time
from collections import deque
from dataclasses import dataclass, field

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from auditlake.collector.integrity.chain import GENESIS, canonical_sql, null_check_sql
from auditlake.collector.integrity.checkpoint import KeptSubtrees
from auditlake.collector.integrity.merkle import CompactTree
from auditlake.collector.integrity.verify.index import LakeScan
from auditlake.collector.integrity.verify.listing import ExpectedFiles
from auditlake.collector.integrity.verify.parallel import FileTask, Piece, Rehash
from auditlake.collector.integrity.verify.report import ProgressFn

#: A stored chain_hash as docs/integrity.md defines it: 64 lowercase hex digits.
_HEX64 = re.compile("[0-9a-f]{64}")

#: (writer, seq, previous hash) of an event whose link fails.
Failure = tuple[str, int, str | None]
#: A signed tree head: size, root (32 bytes), the checkpoint's file name.
TreeHead = tuple[int, bytes, str]
#: The last event streamed: writer, seq, stored hash.
_Carry = tuple[str | None, int, bytes | None]


@dataclass
class Links:
    """The re-hash's outcome."""

    #: Events whose content was hashed.
    hashed: int = 0
    failing: list[Failure] = field(default_factory=list)
    #: The previous hash each failing event was checked against.
    prev: dict[tuple[str, int], str] = field(default_factory=dict)
    #: Signed tree heads whose root is not the tree of the stored events:
    #: (writer, size, checkpoint file name, the root of the stored events).
    tree_mismatches: list[tuple[str, int, str, str]] = field(default_factory=list)
    #: Signed tree heads checked against the events.
    tree_heads_checked: int = 0
    #: Writers whose tree could not be rebuilt (a gap, a duplicate, a partial verify), and why.
    trees_unchecked: dict[str, str] = field(default_factory=dict)


class _Trees:
    """Each writer's Merkle tree rebuilt from its events in seq order, and
    each signed tree head checked when the tree reaches its size.  A writer
    whose events do not run 1, 2, 3, … without a gap (an expired range, a
    missing or duplicated event: the sequence check names those) is not
    rebuilt."""

    def __init__(self, heads: dict[str, list[TreeHead]], links: Links, kept: KeptSubtrees | None = None) -> None:
        self.heads = {w: sorted(h) for w, h in heads.items() if h}
        self.links = links
        self.trees: dict[str, CompactTree] = {}
        #: Subtree roots expire checkpoints kept in place of expired events.
        self.kept = kept or {}

    def stop(self, writer: str, why: str) -> None:
        self.links.trees_unchecked.setdefault(writer, why)
        self.trees.pop(writer, None)
        self.heads.pop(writer, None)

    def _tree_at(self, writer: str, first_seq: int) -> tuple[CompactTree, list[TreeHead]] | None:
        """``writer``'s tree, grown through kept subtrees up to ``first_seq``,
        and its heads still to check; None when the writer's tree is not
        rebuilt (no heads, or events that do not follow without a gap)."""
        heads = self.heads.get(writer)
        if not heads:
            return None
        tree = self.trees.setdefault(writer, CompactTree())
        self._fill(writer, tree, first_seq - 1)
        if writer not in self.heads:
            return None
        if first_seq != tree.size + 1:
            self.stop(writer, f"its events do not run without a gap from seq 1 (seq {first_seq} follows "
                               f"{tree.size})")
            return None
        return tree, heads

    def add(self, writer: str, first_seq: int, leaves: list[bytes]) -> None:
        """Append ``writer``'s leaves for seqs ``first_seq``, ``first_seq + 1``, …"""
        found = self._tree_at(writer, first_seq)
        if found is None:
            return
        tree, heads = found
        start = tree.size
        at = 0
        while heads and heads[0][0] <= start + len(leaves):
            size, root, name = heads.pop(0)
            tree.extend(leaves[at:size - start])
            at = max(at, size - start)
            self._check(writer, tree, size, root, name)
        tree.extend(leaves[at:])

    def add_pieces(self, writer: str, first_seq: int, count: int, pieces: list[Piece]) -> None:
        """Append ``writer``'s ``count`` leaves for seqs ``first_seq``, … known
        by the roots of the aligned subtrees they form, in order (a signed
        tree size inside them falls between two pieces): the same as
        :meth:`add` with their leaf hashes."""
        found = self._tree_at(writer, first_seq)
        if found is None:
            return
        tree, heads = found
        end = tree.size + count
        todo = deque(pieces)
        while heads and heads[0][0] <= end:
            size, root, name = heads.pop(0)
            while todo and todo[0][0] < size:
                _, leaves, subtree = todo.popleft()
                tree.append_subtree(leaves, subtree)
            self._check(writer, tree, size, root, name)
        for _, leaves, subtree in todo:
            tree.append_subtree(leaves, subtree)

    def _fill(self, writer: str, tree: CompactTree, upto: int) -> None:
        """Fold in the kept subtrees that start where the tree ends, up to
        leaf ``upto``: events retention expired, known by their subtree's
        signed root.  A head that ends inside a kept subtree cannot be
        rebuilt (its leaves are gone) and is passed over; one at its edge is
        checked."""
        kept = self.kept.get(writer)
        heads = self.heads.get(writer)
        while kept and heads is not None and tree.size < upto and tree.size in kept:
            size, root = kept[tree.size]
            if tree.size + size > upto:
                self.stop(writer, f"a kept subtree of leaves {tree.size}..{tree.size + size - 1} overlaps "
                                  f"stored events (seq {upto + 1})")
                return
            try:
                tree.append_subtree(size, root)
            except ValueError as exc:
                self.stop(writer, f"a kept subtree does not fit: {exc}")
                return
            while heads and heads[0][0] < tree.size:
                inside = heads.pop(0)
                if inside[0] == tree.size - size:
                    continue  # checked at its size before this subtree
            while heads and heads[0][0] == tree.size:
                self._check(writer, tree, *heads.pop(0))

    def _check(self, writer: str, tree: CompactTree, size: int, root: bytes, name: str) -> None:
        self.links.tree_heads_checked += 1
        if tree.size != size or tree.root() != root:
            self.links.tree_mismatches.append((writer, size, name, tree.root().hex()))

    def finish(self) -> None:
        """Check the heads of writers without events (size 0); heads beyond
        the stored events (a truncated lake) are left to the sequence check."""
        for writer, heads in self.heads.items():
            while heads and heads[0][0] == 0 and writer not in self.trees:
                self._check(writer, CompactTree(), 0, heads[0][1], heads[0][2])
                heads.pop(0)


def chain_starts(writers: set[str], expected: ExpectedFiles) -> dict[tuple[str, int], str]:
    """Where a chain (re)starts without a stored predecessor: genesis at seq 1,
    and after each expired range the hash the range ended with."""
    starts = {(w, 1): GENESIS.hex() for w in writers}
    for w, ranges in expected.expired.items():
        for _, b, h in ranges:
            starts[(w, b + 1)] = h
    return starts


def _null_events(con: duckdb.DuckDBPyConnection, scan: LakeScan, suspects: list[str]) -> list[Failure]:
    """Events with a NULL field (the encoding would silently skip it), in
    the files whose Parquet statistics admit NULLs."""
    out: list[Failure] = []
    for fields, keys in scan.by_fields(suspects):
        out += [(w, int(s_), p) for w, s_, p in con.execute(
            f"SELECT r.writer_id, r.seq, p.chain_hash FROM ({scan.sql(keys, '*')}) r "
            "LEFT JOIN idx p ON p.writer_id = r.writer_id AND p.seq = r.seq - 1 "
            f"WHERE {null_check_sql('r.', fields)}").fetchall()]
    return out


def _events_sql(con: duckdb.DuckDBPyConnection, scan: LakeScan, keys: list[str], context: list[str]) -> str | None:
    """Events in (writer, seq) order with their canonical encoding; the
    ``context`` files (outside --from/--to) come from the index without
    content: they only provide the previous hash."""
    parts = [
        f"SELECT writer_id, seq, chain_hash, {canonical_sql('', fields)} AS canon "
        f"FROM ({scan.sql(group, '*', raw=True)})"
        for fields, group in scan.by_fields(keys)
    ]
    if context:
        con.execute("CREATE OR REPLACE TEMP TABLE context_files (f VARCHAR)")
        con.executemany("INSERT INTO context_files VALUES (?)", [(k,) for k in context])
        parts.append("SELECT writer_id, seq, chain_hash, NULL::BLOB AS canon "
                     "FROM idx WHERE _file IN (SELECT f FROM context_files)")
    if not parts:
        return None
    # Only what the loop needs goes through the sort: the file of a failing
    # event and its stored hex hash are looked up afterwards.
    return ("SELECT writer_id, seq, canon, "
            "CASE WHEN regexp_full_match(chain_hash, '[0-9a-f]{64}') THEN unhex(chain_hash) END AS h FROM ("
            + " UNION ALL ".join(parts) + ") ORDER BY writer_id, seq")


def hash_links(con: duckdb.DuckDBPyConnection, scan: LakeScan, keys: list[str], context: list[str],
               starts: dict[tuple[str, int], str], maybe_null: set[str], total: int,
               progress: ProgressFn, tree_heads: dict[str, list[TreeHead]] | None = None,
               kept: KeptSubtrees | None = None, rehash: Rehash | None = None) -> Links:
    """Check the link of every event of ``keys`` (``context`` files supply
    previous hashes only); ``total`` events are expected, for progress.
    With ``tree_heads`` (a whole-lake verify), also rebuild each writer's
    Merkle tree from the same encodings and check each signed tree head.
    ``rehash``: the file-by-file re-hash of ``keys`` already started
    (start_rehash, with the same ``tree_heads``); by default started here."""
    if rehash is None:
        rehash = start_rehash(scan, keys, maybe_null, tree_heads, total)
    if rehash is not None:
        regular = _rehash_regular(con, rehash, keys, context, starts, total, progress, tree_heads, kept)
        if regular is not None:
            return regular
    failing = _null_events(con, scan, [k for k in keys if k in maybe_null])
    query = _events_sql(con, scan, keys, context)
    if query is None:
        return Links()
    links = Links()
    trees = _Trees(tree_heads, links, kept) if tree_heads else None
    walk = _LinkWalk(starts, failing, trees)
    last_report = time.monotonic()
    for batch in con.sql(query).to_arrow_reader(100_000):
        walk.batch(batch)
        if time.monotonic() - last_report > 1:
            progress("hash", walk.done, total)
            last_report = time.monotonic()
    progress("hash", walk.done, total)
    if trees is not None:
        trees.finish()
    links.hashed, links.failing = walk.done, failing
    for w, s_, p in failing:
        if p is not None:
            links.prev.setdefault((w, s_), p)
    return links


#: A file's events by the index: writer, first seq, last seq, count.
_Span = tuple[str, int, int, int]


def _spans(con: duckdb.DuckDBPyConnection, files: list[str]) -> dict[str, _Span] | None:
    """Each file's writer and seq span, when every file holds one writer's
    consecutive seqs and no seq is in two files; else None."""
    if not files:
        return {}
    con.execute("CREATE OR REPLACE TEMP TABLE rehash_files (f VARCHAR)")
    con.executemany("INSERT INTO rehash_files VALUES (?)", [(k,) for k in files])
    spans: dict[str, _Span] = {}
    for file, w_lo, w_hi, lo, hi, n in con.execute(
            "SELECT _file, min(writer_id), max(writer_id), min(seq), max(seq), count(*) FROM idx "
            "WHERE _file IN (SELECT f FROM rehash_files) GROUP BY _file").fetchall():
        if w_lo is None or w_lo != w_hi or n != hi - lo + 1:
            return None
        spans[file] = (w_lo, int(lo), int(hi), int(n))
    by_writer = sorted(spans.values())
    for (w, _, hi, _), (w2, lo2, _, _) in zip(by_writer, by_writer[1:]):  # noqa: B905 - pairs
        if w == w2 and lo2 <= hi:
            return None
    return spans


def _previous_hashes(con: duckdb.DuckDBPyConnection, spans: dict[str, _Span],
                     starts: dict[tuple[str, int], str]) -> dict[str, bytes | None]:
    """For each file, what its first event chains onto, as the streaming walk
    decides it: the stored hash of the event before (None when malformed),
    else where a chain starts there, else nothing (a gap)."""
    ends = {(w, hi) for w, _, hi, _ in spans.values()}
    wanted = sorted({(w, lo - 1) for w, lo, _, _ in spans.values() if (w, lo - 1) in ends})
    stored: dict[tuple[str, int], bytes | None] = {}
    if wanted:
        con.execute("CREATE OR REPLACE TEMP TABLE rehash_prev (w VARCHAR, s BIGINT)")
        con.executemany("INSERT INTO rehash_prev VALUES (?, ?)", wanted)
        for w, seq, h in con.execute("SELECT i.writer_id, i.seq, i.chain_hash FROM idx i JOIN rehash_prev p "
                                     "ON i.writer_id = p.w AND i.seq = p.s").fetchall():
            try:
                digest = bytes.fromhex(h) if h is not None and _HEX64.fullmatch(h) else None
            except ValueError:
                digest = None
            stored[(w, int(seq))] = digest if digest is not None and len(digest) == 32 else None
    out: dict[str, bytes | None] = {}
    for file, (w, lo, _, _) in spans.items():
        if (w, lo - 1) in ends:
            out[file] = stored.get((w, lo - 1))
        else:
            start = starts.get((w, lo))
            out[file] = bytes.fromhex(start) if start else None
    return out


def start_rehash(scan: LakeScan, keys: list[str], maybe_null: set[str],
                 tree_heads: dict[str, list[TreeHead]] | None, events: int) -> Rehash | None:
    """The file-by-file re-hash of ``keys`` (verify.parallel), started now so
    that worker processes hash while the index is built and checked; None
    when a file may hold a NULL (the stream handles those)."""
    if any(k in maybe_null for k in keys):
        return None
    sizes = {w: tuple(sorted({size for size, _, _ in heads})) for w, heads in (tree_heads or {}).items() if heads}
    return Rehash([FileTask(path=scan.disk[k].full if k not in scan.buffers else None,
                            data=scan.buffers.get(k), heads=sizes) for k in keys], events)


def _rehash_regular(con: duckdb.DuckDBPyConnection, rehash: Rehash, keys: list[str], context: list[str],
                    starts: dict[tuple[str, int], str], total: int, progress: ProgressFn,
                    tree_heads: dict[str, list[TreeHead]] | None, kept: KeptSubtrees | None) -> Links | None:
    """The re-hash of a regular lake file by file (``rehash``, over ``keys``),
    each file's events as the index has them, or None when the lake is not
    regular, or a link or tree head fails: the streaming walk then runs and
    names what is wrong."""
    spans = _spans(con, keys + context)
    if spans is None:
        return None
    done = 0
    last_report = time.monotonic()

    def advance(rows: int) -> None:
        nonlocal done, last_report
        done += rows
        if time.monotonic() - last_report > 1:
            progress("hash", done, total)
            last_report = time.monotonic()

    results = rehash.results(advance)
    progress("hash", done, total)
    if len(results) != len(keys):
        return None
    stored = [(key, r) for key, r in zip(keys, results, strict=True) if r.rows or key in spans]
    for key, r in stored:
        if not r.links_ok or spans.get(key) != (r.writer, r.first_seq, r.first_seq + r.rows - 1, r.rows):
            return None
    previous = _previous_hashes(con, spans, starts)
    for key, r in stored:
        prev = previous[key]
        if prev is not None and hashlib.sha256(prev + r.first_canon).digest() != r.first_hash:
            return None
    links = Links(hashed=done)
    if tree_heads:
        trees = _Trees(tree_heads, links, kept)
        for _, r in sorted(stored, key=lambda item: (item[1].writer, item[1].first_seq)):
            if any(r.first_seq - 1 < k < r.first_seq - 1 + r.rows for k in trees.kept.get(r.writer, {})):
                return None  # a kept subtree inside stored events: the walk says what that means
            if trees.heads.get(r.writer):
                if r.pieces is None:
                    return None
                trees.add_pieces(r.writer, r.first_seq, r.rows, r.pieces)
        trees.finish()
        if links.tree_mismatches:
            return None  # this path only confirms: the walk reports what does not hold
    return links


class _LinkWalk:
    """The streaming check: carries the last event across batches."""

    def __init__(self, starts: dict[tuple[str, int], str], failing: list[Failure],
                 trees: _Trees | None = None) -> None:
        self.starts = starts
        self.failing = failing
        self.trees = trees
        self.done = 0
        self.carry: _Carry = (None, 0, None)
        #: The previous hash for the current seq (shared by duplicates).
        self.group_prev: bytes | None = None

    def batch(self, batch: pa.RecordBatch) -> None:
        """Check one batch of (writer_id, seq, canon, h) rows."""
        canon = batch.column(2)
        if canon.type != pa.large_binary():
            canon = canon.cast(pa.large_binary())
        hashes = batch.column(3).to_pylist()
        if self._regular(batch, canon, hashes):
            self._consecutive(batch, canon, hashes)
        else:
            self._row_by_row(batch, canon, hashes)

    @staticmethod
    def _regular(batch: pa.RecordBatch, canon: pa.Array, hashes: list[bytes | None]) -> bool:
        """True for the common case: one writer, consecutive seqs, all content and hashes present."""
        n = batch.num_rows
        if n <= 1:
            return False
        seqs = batch.column(1)
        w0 = batch.column(0)[0].as_py()
        return bool(
            canon.null_count == 0 and hashes.count(None) == 0
            and pc.all(pc.equal(batch.column(0), w0)).as_py()
            and seqs[n - 1].as_py() - seqs[0].as_py() == n - 1
            and pc.all(pc.equal(pc.subtract(seqs.slice(1), seqs.slice(0, n - 1)), 1)).as_py())

    def _consecutive(self, batch: pa.RecordBatch, canon: pa.Array, hashes: list[bytes | None]) -> None:
        n = batch.num_rows
        w0 = batch.column(0)[0].as_py()
        s0 = batch.column(1)[0].as_py()
        last_w, last_s, last_h = self.carry
        prev = last_h if (last_w == w0 and last_s == s0 - 1) else (
            bytes.fromhex(self.starts[(w0, s0)]) if (w0, s0) in self.starts else None)
        offsets = memoryview(canon.buffers()[1]).cast("q")[canon.offset:canon.offset + n + 1].tolist()
        data = memoryview(canon.buffers()[2])
        sha256 = hashlib.sha256
        failing = self.failing
        for i, h in enumerate(hashes):
            if prev is not None and sha256(prev + data[offsets[i]:offsets[i + 1]]).digest() != h:
                failing.append((w0, s0 + i, prev.hex()))
            prev = h
        if self.trees is not None:
            self.trees.add(w0, s0, [sha256(b"\x00" + data[offsets[i]:offsets[i + 1]]).digest()
                                    for i in range(n)])
        self.done += n
        self.carry = (w0, s0 + n - 1, hashes[-1])
        self.group_prev = hashes[-2] if n > 1 else self.carry[2]

    def _row_by_row(self, batch: pa.RecordBatch, canon: pa.Array, hashes: list[bytes | None]) -> None:
        """Gaps, duplicates, context rows, malformed hashes."""
        writers = batch.column(0).to_pylist()
        seqs = batch.column(1).to_pylist()
        valid = canon.is_valid().to_pylist()
        offsets = memoryview(canon.buffers()[1]).cast("q")[
            canon.offset:canon.offset + len(canon) + 1].tolist()
        data = memoryview(canon.buffers()[2]) if canon.buffers()[2] is not None else memoryview(b"")
        last_w, last_s, last_h = self.carry
        group_prev = self.group_prev
        trees = self.trees
        for i, (writer, seq, h) in enumerate(zip(writers, seqs, hashes, strict=True)):
            if writer != last_w or seq != last_s:
                if writer == last_w and seq == last_s + 1:
                    group_prev = last_h
                else:
                    start = self.starts.get((writer, seq))
                    group_prev = bytes.fromhex(start) if start else None
                last_w, last_s, last_h = writer, seq, h
            elif trees is not None:
                trees.stop(writer, f"seq {seq} is stored twice")
            if trees is not None:
                if valid[i]:
                    trees.add(writer, seq, [hashlib.sha256(b"\x00" + data[offsets[i]:offsets[i + 1]]).digest()])
                else:
                    trees.stop(writer, "a partial verify (--from/--to) does not rebuild trees")
            if not valid[i]:
                continue  # context only (outside --from/--to)
            self.done += 1
            if group_prev is None:
                continue  # after a gap: reported as missing events
            if hashlib.sha256(group_prev + data[offsets[i]:offsets[i + 1]]).digest() != h:
                self.failing.append((writer, seq, group_prev.hex()))
        self.carry = (last_w, last_s, last_h)
        self.group_prev = group_prev
