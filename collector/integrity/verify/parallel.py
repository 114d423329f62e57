"""The re-hash of a regular lake, file by file and on every core.

A link needs only the event's canonical encoding and the STORED hash of the
event before it, and a leaf only the encoding, so each file can be checked
on its own once the stored hash before its first event is known: a worker
reads the file (pyarrow, not DuckDB: no sort of wide rows), encodes it
(chain.canonical_column_bulk), orders it by seq (argsort of the seq column:
the encodings are taken by offset, never sorted), checks every link against
the stored hashes and, when its writer's tree is rebuilt, returns the roots
of the complete aligned subtrees its leaves form (cut at every signed tree
size inside the file), which the caller folds into the writer's tree
(``links._Trees.add_pieces``) in a few hashes per file: a few hundred bytes
back per file instead of 32 per event.

This is the fast path for what a lake almost always is: one writer per
file, consecutive seqs in each file, no seq stored twice, every field and
hash well formed.  A file that is not like that, or whose links fail,
makes the caller (``links._rehash_regular``) give up and run the streaming
re-hash, which names every failure exactly.  So this path only ever
confirms; what it finds wrong is reported by the same code as before.

The per-event loop (encoding, link, leaf) runs in C when the optional
extension ``integrity._chainhash`` is built (OpenSSL's SHA-256 with the GIL
released, as pyarrow's reads are): then one thread per core runs it.
Without it the same checks run in Python (``canonical_column_bulk`` and
hashlib) on worker processes, since hashlib holds the GIL for inputs under
2 KiB.  Either runs for lakes large enough to pay its start-up
(:func:`_workers`).
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import re
import threading
import types
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from auditlake.collector.integrity.chain import canonical_column_bulk, canonical_fields
from auditlake.collector.integrity.merkle import aligned_subtrees
from auditlake.collector.schema import EVENT_SCHEMA

_chainhash: types.ModuleType | None
try:
    from auditlake.collector.integrity import _chainhash
except ImportError:  # built without a C compiler or OpenSSL's headers: the Python loop runs
    _chainhash = None

#: True when the per-event loop runs in C (reported by verify as ``native``).
NATIVE = _chainhash is not None

#: Events below which the re-hash stays in this process: forking workers
#: and shipping them work costs more than it saves on a small lake.
PARALLEL_MIN_EVENTS = 100_000

#: A complete aligned subtree of a writer's tree: first leaf index, leaves, root.
Piece = tuple[int, int, bytes]

_LEAF = b"\x00"
#: Stored chain hashes, all of a file's run together: lowercase hex digits only.
_LOWER_HEX = re.compile(rb"[0-9a-f]*")
_NODE = b"\x01"
_HASH = 32


@dataclass(frozen=True)
class FileTask:
    """One file to re-hash."""

    #: A local path pyarrow reads, or None when ``data`` holds the file.
    path: str | None
    data: bytes | None
    #: Each writer whose tree is rebuilt, and its signed tree sizes: where
    #: the file's subtrees must be cut.
    heads: dict[str, tuple[int, ...]]


@dataclass
class FileResult:
    """What a worker found in one file: its events by the file alone; the
    caller checks them against the index and checks the first link, whose
    previous hash is in another file."""

    #: False when the file is not regular (the streaming re-hash must run).
    regular: bool
    writer: str = ""
    first_seq: int = 0
    rows: int = 0
    #: The first event's canonical encoding and stored hash.
    first_canon: bytes = b""
    first_hash: bytes = b""
    #: True when every link after the first held.
    links_ok: bool = False
    #: The subtree roots, when its writer's tree is rebuilt.
    pieces: list[Piece] | None = None


def _dictionary_columns(parquet: pq.ParquetFile, names: list[str]) -> list[str]:
    """String columns every row group stores dictionary-encoded: the C loop
    reads them as dictionary arrays, sparing pyarrow a string per row."""
    meta = parquet.metadata
    if meta.num_row_groups == 0:
        return []
    out = []
    for name in names:
        if EVENT_SCHEMA.field(name).type != pa.string():
            continue
        i = parquet.schema_arrow.get_field_index(name)
        if all("RLE_DICTIONARY" in meta.row_group(g).column(i).encodings
               and meta.row_group(g).column(i).has_dictionary_page for g in range(meta.num_row_groups)):
            out.append(name)
    return out


def _read(task: FileTask) -> pa.Table | None:
    """The file's hashed columns plus seq and chain_hash, or None when a
    column's type differs from the schema or holds a NULL (the streaming
    re-hash, through DuckDB, decides what such a file means)."""
    source = task.path if task.path is not None else pa.BufferReader(task.data)
    parquet = pq.ParquetFile(source)
    names = parquet.schema_arrow.names
    wanted = [*canonical_fields(names), "chain_hash"]
    if not set(wanted) <= set(names):
        return None
    dictionary = _dictionary_columns(parquet, wanted) if NATIVE else []
    if dictionary:
        # the footer already read serves again: no second parse
        parquet = pq.ParquetFile(source, metadata=parquet.metadata, read_dictionary=dictionary)
    table = parquet.read(columns=wanted, use_threads=False)
    for name in wanted:
        col = table.column(name)
        typ = col.type.value_type if pa.types.is_dictionary(col.type) else col.type
        if typ != EVENT_SCHEMA.field(name).type or col.null_count:
            return None
    return table


def _stored_hashes(column: pa.ChunkedArray) -> bytes | None:
    """The stored hex hashes as one run of 32-byte digests, or None when
    any is not 64 hex digits."""
    text = column.combine_chunks()
    n = len(text)
    offsets = np.frombuffer(text.buffers()[1], dtype=np.int32, count=n + 1, offset=text.offset * 4)
    if n and not bool(np.all(np.diff(offsets) == 2 * _HASH)):
        return None
    raw = text.buffers()[2]
    body = b"" if raw is None else raw.to_pybytes()[offsets[0]:offsets[-1]]
    if not _LOWER_HEX.fullmatch(body):
        return None  # upper case too: bytes.fromhex would take it, docs/integrity.md does not
    digests = bytes.fromhex(body.decode("ascii"))
    return digests if len(digests) == n * _HASH else None


def _leaf_hashes(canon: pa.Array) -> bytes:
    """The leaf hash SHA-256(0x00 || encoding) of each of ``canon``
    (large_binary), concatenated.  The prefix is hashed once and its state
    copied: cheaper than joining it to every encoding."""
    offsets = np.frombuffer(canon.buffers()[1], dtype=np.int64, count=len(canon) + 1,
                            offset=canon.offset * 8).tolist()
    data = memoryview(canon.buffers()[2] or b"")
    copy = hashlib.sha256(_LEAF).copy
    out: list[bytes] = []
    append = out.append
    for a, b in zip(offsets, offsets[1:]):  # noqa: B905 - n+1 offsets
        h = copy()
        h.update(data[a:b])
        append(h.digest())
    return b"".join(out)


def _subtree_root(leaves: bytes) -> bytes:
    """The root of a complete subtree (a power of two leaves) from its leaf
    hashes, level by level (the 0x01 prefix hashed once, as for leaves)."""
    copy = hashlib.sha256(_NODE).copy
    level = leaves
    while len(level) > _HASH:
        out: list[bytes] = []
        append = out.append
        for k in range(0, len(level), 2 * _HASH):
            h = copy()
            h.update(level[k:k + 2 * _HASH])
            append(h.digest())
        level = b"".join(out)
    return level


def _python_root(leaves: bytes, at: int, size: int) -> bytes:
    return _subtree_root(leaves[at * _HASH:(at + size) * _HASH])


def _pieces(leaves: bytes, first: int, cuts: tuple[int, ...],
            root: Callable[[bytes, int, int], bytes] = _python_root) -> list[Piece]:
    """The aligned subtrees covering leaves ``first``.. (``leaves`` their
    hashes), none crossing a cut, with their roots: ``root(leaves, at,
    size)`` of the ``size`` leaf hashes from the ``at``-th."""
    end = first + len(leaves) // _HASH
    bounds = [first, *cuts, end]
    out: list[Piece] = []
    for a, b in zip(bounds, bounds[1:]):  # noqa: B905 - bounds has one more
        for start, size in aligned_subtrees(a, b):
            out.append((start, size, root(leaves, start - first, size)))
    return out


def _hashes(values: pa.Array) -> bytes:
    """SHA-256 of each value of a large_binary array, concatenated."""
    n = len(values)
    offsets = np.frombuffer(values.buffers()[1], dtype=np.int64, count=n + 1, offset=values.offset * 8).tolist()
    data = memoryview(values.buffers()[2] or b"")
    sha256 = hashlib.sha256
    return b"".join([sha256(data[a:b]).digest() for a, b in zip(offsets, offsets[1:])])  # noqa: B905 - n+1


def _prefixed(prefix: pa.Array, canon: pa.Array) -> pa.Array:
    """``prefix || canon`` row by row, joined in Arrow (one copy, no object per row)."""
    joined = pc.binary_join_element_wise(prefix, canon, pa.scalar(b"", pa.large_binary()))
    return pc.cast(joined, pa.large_binary())


#: The C loop's field kinds (see _chainhash.c).
_STRING, _INT64, _BOOL, _INT32, _DICT_STRING = 0, 2, 3, 4, 5


def _native_field(col: pa.Array) -> tuple[int, int, object, object, object, int, int] | None:
    """One column as the C loop reads it: (kind, offset, buffers..., the
    dictionary's offset and length); None for a type it does not read."""
    t = col.type
    bufs = col.buffers()
    if t == pa.string():
        return (_STRING, col.offset, bufs[1], bufs[2] or b"", None, 0, 0)
    if (pa.types.is_timestamp(t) and t.unit == "us") or t == pa.int64():
        return (_INT64, col.offset, bufs[1], None, None, 0, 0)
    if t == pa.int32():
        return (_INT32, col.offset, bufs[1], None, None, 0, 0)
    if t == pa.bool_():
        return (_BOOL, col.offset, bufs[1], None, None, 0, 0)
    if pa.types.is_dictionary(t) and t.index_type == pa.int32() and t.value_type == pa.string():
        values = col.dictionary
        vbufs = values.buffers()
        return (_DICT_STRING, col.offset, bufs[1], vbufs[1], vbufs[2] or b"", values.offset, len(values))
    return None


def _native_check(table: pa.Table, order: np.ndarray | None,
                  leaves: bool) -> tuple[bool, bytes, bytes, bytes | None] | None:
    """The C loop over ``table`` (rows taken in ``order``): links after the
    first held, the first encoding and stored hash, the leaf hashes; None
    when a column is of a type it does not read."""
    assert _chainhash is not None
    columns = [table.column(name).combine_chunks() for name in canonical_fields(table.column_names)]
    fields = [f for f in map(_native_field, columns) if f is not None]
    if len(fields) != len(columns):
        return None
    hashes = table.column("chain_hash").combine_chunks()
    if hashes.type != pa.string():
        hashes = hashes.cast(pa.string())
    hbufs = hashes.buffers()
    indices = None if order is None else np.ascontiguousarray(order, dtype=np.int64)
    ok, first_canon, first_hash, leaf_hashes = _chainhash.check_file(
        fields, (hashes.offset, hbufs[1], hbufs[2] or b""), table.num_rows, indices, leaves)
    return bool(ok), first_canon or b"", first_hash or b"", leaf_hashes


def hash_file(task: FileTask) -> FileResult:
    """Check one file's links after its first and, when its writer's tree is
    rebuilt, compute its subtree roots."""
    try:
        table = _read(task)
    except (OSError, pa.ArrowException):
        return FileResult(False)  # gone or broken: the stream reports it
    if table is None:
        return FileResult(False)
    if not table.num_rows:
        return FileResult(True, links_ok=True)
    n_rows = table.num_rows
    writer_col = table.column("writer_id")
    if pa.types.is_dictionary(writer_col.type):
        writer_col = writer_col.cast(pa.string())
    writers = pc.unique(writer_col)
    # The buffer itself: pyarrow's to_numpy imports pandas (0.2 s of a verify).
    seq_col = table.column("seq").combine_chunks()
    seqs = np.frombuffer(seq_col.buffers()[1], dtype=np.int64, count=n_rows, offset=seq_col.offset * 8)
    order = np.argsort(seqs, kind="stable")
    n, first_seq = n_rows, int(seqs[order[0]])
    if len(writers) != 1 or not bool(np.array_equal(seqs[order], np.arange(first_seq, first_seq + n))):
        return FileResult(False)
    writer = str(writers[0].as_py())
    sizes = task.heads.get(writer)
    if NATIVE and _chainhash is not None:
        sorted_already = bool(np.all(order[:-1] < order[1:]))
        try:
            native = _native_check(table, None if sorted_already else order, bool(sizes))
        except (pa.ArrowException, ValueError):
            native = None
        if native is not None:
            ok, first_canon, first_hash, leaves = native
            result = FileResult(True, writer, first_seq, n, first_canon, first_hash, links_ok=ok)
            if ok and sizes and leaves is not None:
                cuts = tuple(s for s in sizes if first_seq - 1 < s < first_seq - 1 + n)
                result.pieces = _pieces(leaves, first_seq - 1, cuts, _chainhash.complete_root)
            return result
        if any(pa.types.is_dictionary(f.type) for f in table.schema):
            table = pa.table({name: (col.cast(col.type.value_type) if pa.types.is_dictionary(col.type) else col)
                              for name, col in zip(table.column_names, table.columns, strict=True)})
    stored = _stored_hashes(table.column("chain_hash"))
    if stored is None:
        return FileResult(False)
    canon = canonical_column_bulk(table)
    if not bool(np.all(order[:-1] < order[1:])):
        # Ordered by their offsets: the encodings themselves stay where they are.
        canon = canon.take(pa.array(order))
        stored = np.frombuffer(stored, dtype=f"S{_HASH}")[order].tobytes()
    result = FileResult(True, writer, first_seq, n, canon[0].as_py(), stored[:_HASH])
    # Each link hashes the stored hash before it: the file's own, shifted by one.
    prevs = pa.FixedSizeBinaryArray.from_buffers(pa.binary(_HASH), n - 1, [None, pa.py_buffer(stored[:-_HASH])])
    links = _hashes(_prefixed(prevs.cast(pa.large_binary()), canon.slice(1)))
    result.links_ok = links == stored[_HASH:]
    if result.links_ok and sizes:
        leaves = _leaf_hashes(canon)
        cuts = tuple(s for s in sizes if first_seq - 1 < s < first_seq - 1 + n)
        result.pieces = _pieces(leaves, first_seq - 1, cuts)
    return result


def _min_events() -> int:
    """The smallest lake worth worker processes: PARALLEL_MIN_EVENTS, or
    ``AUDITLAKE_VERIFY_PARALLEL_MIN_EVENTS`` (tests set 0 to run the
    workers on small lakes)."""
    text = os.environ.get("AUDITLAKE_VERIFY_PARALLEL_MIN_EVENTS", "")
    return int(text) if text.strip().isdigit() else PARALLEL_MIN_EVENTS


def _workers(total: int, tasks: int) -> int:
    """Workers for ``total`` events in ``tasks`` files: one per core (at
    most two) on a lake large enough to pay for them, when this process runs
    no other Python thread; else none (the work stays here).

    With the C loop the workers are threads.  Otherwise they are processes,
    forked: they need nothing but this module, already
    imported, and start in milliseconds (a spawned interpreter costs
    ~0.4 s and re-imports the caller's main module).  In a single-threaded
    process no lock can be held across the fork by a thread that is not
    there (DuckDB's own threads hold none a worker takes).  A server
    verifying from a thread (the admin UI's monitor, beside gRPC's) keeps
    the re-hash on that thread: a fork there could copy a held lock, and a
    background check should leave the other core to ingest anyway."""
    if total < _min_events() or threading.active_count() > 1:
        return 0
    if not NATIVE and "fork" not in multiprocessing.get_all_start_methods():
        return 0
    return min(os.cpu_count() or 1, 2, tasks) if (os.cpu_count() or 1) > 1 else 0


class Rehash:
    """Files being re-hashed: on worker processes from the moment it is
    made (while the caller builds its index and checks rows) when
    :func:`_workers` says so, else here when the results are asked for."""

    def __init__(self, tasks: list[FileTask], events: int) -> None:
        self.tasks = tasks
        self._pool: Executor | None = None
        self._futures: list[Future[FileResult]] = []
        workers = _workers(events, len(tasks))
        #: Workers started (0: the files are re-hashed here).
        self.workers = 0
        #: Where the per-event loop runs: "C" or "Python".
        self.loop = "C" if NATIVE else "Python"
        if workers > 1:
            try:
                self._pool = (ThreadPoolExecutor(workers, thread_name_prefix="auditlake-verify") if NATIVE else
                              ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")))
                # Largest first, so that no worker is left with a big file at the end.
                by_size = sorted(range(len(tasks)), key=lambda i: -_size(tasks[i]))
                submitted = {i: self._pool.submit(hash_file, tasks[i]) for i in by_size}
                self._futures = [submitted[i] for i in range(len(tasks))]
                self.workers = workers
            except (BrokenProcessPool, OSError):
                self.close()  # no processes to be had (limits, memory): the same work, here

    def results(self, progress: Callable[[int], None]) -> list[FileResult]:
        """Each task's result, in order, up to the first that is not regular
        or whose links fail; ``progress(rows)`` after each."""
        out: list[FileResult] = []
        for i, task in enumerate(self.tasks):
            result = self._result(i, task)
            out.append(result)
            progress(result.rows)
            if not result.links_ok:
                break
        self.close()
        return out

    def _result(self, i: int, task: FileTask) -> FileResult:
        if self._futures:
            try:
                return self._futures[i].result()
            except (BrokenProcessPool, OSError):
                self.close()
        return hash_file(task)

    def close(self) -> None:
        """Stop the workers (idempotent; pending files are dropped)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool = None
        self._futures = []


def _size(task: FileTask) -> int:
    return len(task.data) if task.data is not None else os.path.getsize(task.path) if task.path else 0
