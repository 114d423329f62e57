"""The seal's chain step: from queued batches to stored rows, each with its
``seq`` and ``chain_hash`` (docs/integrity.md specifies the encoding).

The hash input is split so most of the work happens before the seal: the
receiving thread computes each row's canonical encoding up to ``seq``
(:func:`canonical_prefix`, Arrow, outside the GIL); the sealer adds each
row's seq and the tail, and hashes the chain (:func:`chain_rows`).
:func:`stored_table` builds a seal's rows: the collector columns, event-id
dedupe, seq numbers and hashes; a :class:`PreparedSeal` holds the result
until it is committed.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from auditlake.collector.integrity.chain import CANONICAL_FIELDS
from auditlake.collector.integrity.merkle import CompactTree
from auditlake.collector.lake.batch import AcceptedBatch
from auditlake.collector.lake.seal_dedupe import IdKeys, RecentEventIds, uuid_keys
from auditlake.collector.lake.wal import LogPosition
from auditlake.collector.schema import EVENT_SCHEMA, TIMESTAMP

log = logging.getLogger(__name__)

_SEQ_AT = CANONICAL_FIELDS.index("seq")
#: Canonical fields before ``seq``: the wire fields plus received_at,
#: writer_id and ingest_key_id (one value per batch: a constant tail).
PREFIX_FIELDS = CANONICAL_FIELDS[:_SEQ_AT]
#: Canonical fields after ``seq``: booleans, so each row's tail is one of four strings.
SUFFIX_FIELDS = CANONICAL_FIELDS[_SEQ_AT + 1 :]
#: The prefix fields whose value is the same for every row of a batch.
_BATCH_FIELDS = ("received_at", "writer_id", "ingest_key_id")
if SUFFIX_FIELDS != ("imported", "clock_skew") or PREFIX_FIELDS[-3:] != _BATCH_FIELDS:
    raise ImportError("seal_chain.canonical_prefix assumes the canonical field order of integrity/chain.py")


#: "0", "1", ... as an Arrow array: a value's length in decimal is a take()
#: from it, cheaper than casting each length to a string.
_DECIMALS = pa.array([str(i) for i in range(1 << 17)], pa.string())


def decimal_lengths(col: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Each value's UTF-8 length in bytes, as decimal text."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if col.null_count or col.type != pa.string():
        return pc.cast(pc.binary_length(col), pa.string())
    offsets = np.frombuffer(col.buffers()[1], np.int32)[col.offset : col.offset + len(col) + 1]
    lengths = np.diff(offsets)
    if len(lengths) and int(lengths.max()) >= len(_DECIMALS):
        return pc.cast(pc.binary_length(col), pa.string())
    return _DECIMALS.take(pa.array(lengths))


def canonical_prefix(table: pa.Table, received_at_us: int, writer_id: str, ingest_key_id: str = "") -> pa.Array:
    """Each row's canonical encoding (integrity.canonical_column) up to and
    excluding the ``,`` before ``len(seq)``: the part known before sealing.
    ``table`` holds the wire columns (WIRE_SCHEMA); ``ingest_key_id`` is the
    key that delivered the batch ("" for the collector's own events)."""
    parts: list[Any] = []
    for name in PREFIX_FIELDS[: -len(_BATCH_FIELDS)]:
        col = table.column(name)
        if pa.types.is_timestamp(col.type):
            col = pc.cast(pc.cast(col, pa.int64()), pa.string())
        parts.append(decimal_lengths(col))
        parts.append(col)
    received = str(received_at_us)
    parts.append(pa.scalar(f"{len(received)},{received},{len(writer_id.encode())},{writer_id},"
                           f"{len(ingest_key_id.encode())},{ingest_key_id}"))
    joined = pc.binary_join_element_wise(*parts, ",")
    if isinstance(joined, pa.ChunkedArray):
        joined = joined.combine_chunks()
    return joined


def chain_rows(
    previous: bytes, prefix: pa.Array, table: pa.Table, tree: CompactTree | None = None
) -> list[bytes]:
    """The chain hashes of ``table``'s rows (stored columns) from their
    canonical ``prefix``: the same values as integrity.chain_table.  The
    rows' leaf hashes are appended to ``tree`` (the writer's Merkle tree)."""
    seq = pc.cast(table.column("seq"), pa.string())
    suffix = pc.if_else(
        table.column("imported"),
        pc.if_else(table.column("clock_skew"), "1,1,1,1", "1,1,1,0"),
        pc.if_else(table.column("clock_skew"), "1,0,1,1", "1,0,1,0"),
    )
    joined = pc.binary_join_element_wise(prefix, pc.cast(pc.binary_length(seq), pa.string()), seq, suffix, ",")
    if isinstance(joined, pa.ChunkedArray):
        joined = joined.combine_chunks()
    rows = pc.cast(joined, pa.binary()).to_pylist()
    sha256 = hashlib.sha256
    out: list[bytes] = []
    append = out.append
    h = previous
    for row in rows:
        h = sha256(h + row).digest()
        append(h)
    if tree is not None:
        tree.extend([sha256(b"\x00" + row).digest() for row in rows])
    return out


#: The canonical prefix travels with the rows as this column until hashed.
PREFIX_COLUMN = "_canonical_prefix"


@dataclass
class PreparedSeal:
    """A seal hashed but not yet committed: its batches, its rows chained
    after the previous prepared seal (or the committed head), and the chain
    head after it."""

    items: list[tuple[AcceptedBatch, LogPosition]]
    seal_no: int
    table: pa.Table
    seq: int
    chain_hash: str
    ids: IdKeys | None
    chain_s: float
    #: The writer's Merkle tree after this seal (None: a chain without one).
    tree: CompactTree | None = None

    @property
    def next_seal(self) -> int:
        """The seal number of the seal after this one (an empty seal takes none)."""
        return self.seal_no + 1 if self.table.num_rows else self.seal_no


@dataclass(frozen=True)
class StoredRows:
    """What :func:`stored_table` made of a seal's batches: the stored rows,
    the ids kept (to join the dedupe window once committed), and how many
    rows were dropped as duplicates."""

    table: pa.Table
    ids: IdKeys | None
    duplicates: int


def drop_duplicate_ids(
    table: pa.Table, recent_ids: RecentEventIds, prior: IdKeys | None
) -> tuple[pa.Table, IdKeys | None, int]:
    """``table`` without rows whose id is in the recent window, in
    ``prior`` (a prepared seal's ids) or repeats; the kept ids, to join the
    window once the seal is committed; and how many rows were dropped."""
    if recent_ids.capacity == 0:
        return table, None, 0
    rows, hi, lo, key = uuid_keys(table.column("id"), table.column("tenant_id"))
    dup = recent_ids.duplicate_mask(hi, lo, key, prior)
    if not dup.any():
        return table, (hi, lo, key), 0
    kept = ~dup
    keep = np.ones(table.num_rows, bool)
    keep[rows[dup]] = False
    dropped = int(dup.sum())
    log.info("dropped %d events whose id was stored before", dropped)
    return table.filter(pa.array(keep)), (hi[kept], lo[kept], key[kept]), dropped


def stored_table(
    batches: list[AcceptedBatch],
    seq: int,
    chain_hash: str,
    *,
    writer_id: str,
    skew_flag_us: int,
    recent_ids: RecentEventIds,
    prior_ids: IdKeys | None,
    tree: CompactTree | None = None,
) -> StoredRows:
    """The batches as stored rows, chained after (``seq``, ``chain_hash``):
    collector columns added, duplicates of recent event ids dropped; and
    the ids kept.  The rows' leaves are appended to ``tree``."""
    parts = []
    for b in batches:
        t = b.table
        m = t.num_rows
        if m == 0:
            continue
        received = pa.repeat(pa.scalar(b.received_at_us, TIMESTAMP), m)
        if b.imported:
            skew = pa.repeat(pa.scalar(False), m)
        else:
            created = pc.cast(t.column("created_at"), pa.int64())
            skew = pc.greater(pc.abs(pc.subtract(created, b.received_at_us)), skew_flag_us)
        prefix = b.canonical_prefix
        if prefix is None:  # replayed from the WAL or the inbox
            prefix = canonical_prefix(t, b.received_at_us, writer_id, b.ingest_key_id)
        parts.append(
            t.append_column("received_at", received)
            .append_column("ingest_key_id", pa.repeat(pa.scalar(b.ingest_key_id), m))
            .append_column("imported", pa.repeat(pa.scalar(b.imported), m))
            .append_column("clock_skew", skew)
            .append_column(PREFIX_COLUMN, prefix)
        )
    if not parts:
        return StoredRows(EVENT_SCHEMA.empty_table(), None, 0)
    table = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
    table, ids, dropped = drop_duplicate_ids(table, recent_ids, prior_ids)
    n = table.num_rows
    if n == 0:
        return StoredRows(EVENT_SCHEMA.empty_table(), ids, dropped)
    first = seq + 1
    table = (
        table.append_column("writer_id", pa.repeat(pa.scalar(writer_id), n))
        .append_column("seq", pa.array(np.arange(first, first + n, dtype=np.int64)))
        .append_column("chain_hash", pa.repeat(pa.scalar(""), n))
    )
    prefix = table.column(PREFIX_COLUMN)
    # one chunk: the canonical join and the sort run faster on contiguous columns
    table = table.select(EVENT_SCHEMA.names).cast(EVENT_SCHEMA).combine_chunks()
    hashes = chain_rows(bytes.fromhex(chain_hash), prefix, table, tree)
    table = table.set_column(
        table.schema.get_field_index("chain_hash"),
        EVENT_SCHEMA.field("chain_hash"),
        pa.array(map(bytes.hex, hashes), pa.string(), size=n),
    )
    return StoredRows(table, ids, dropped)
