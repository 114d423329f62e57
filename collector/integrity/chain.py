"""Hash chain over stored events: canonical encoding and chain hashing.

Specified in docs/integrity.md so that an auditor can recompute every hash
with DuckDB and hashlib alone; this module is the reference implementation.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import pyarrow as pa
import pyarrow.compute as pc

from auditlake.collector.schema import COLUMNS, INGEST_KEY_COLUMN

#: Version of the canonical encoding, as documented in docs/integrity.md.
#: Version 2 added ``ingest_key_id``; files sealed under version 1 lack that
#: column and keep their version-1 hashes (hashes are never recomputed).
CANONICAL_VERSION = 2

#: The fields covered by each event's hash, in this order: every stored column
#: but the hash itself.
CANONICAL_FIELDS: tuple[str, ...] = tuple(c for c in COLUMNS if c != "chain_hash")

#: The fields of encoding version 1: the same without ``ingest_key_id``.
LEGACY_CANONICAL_FIELDS: tuple[str, ...] = tuple(c for c in CANONICAL_FIELDS if c != INGEST_KEY_COLUMN)


def canonical_fields(columns: Iterable[str]) -> tuple[str, ...]:
    """The hashed fields of a file with these ``columns``: version 2 when it
    has ``ingest_key_id``, else version 1.  A file cannot be moved from one
    version to the other unnoticed: its sha256 is signed in a checkpoint."""
    return CANONICAL_FIELDS if INGEST_KEY_COLUMN in set(columns) else LEGACY_CANONICAL_FIELDS

#: The "previous hash" of a writer's first event (sequence 1).
GENESIS = bytes(32)


def _field_text(column: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """The field's canonical text: strings as stored, integers and
    timestamps (microseconds since the epoch) in decimal, booleans 1/0."""
    t = column.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return column
    if pa.types.is_timestamp(t):
        return pc.cast(pc.cast(column, pa.int64()), pa.string())
    if pa.types.is_boolean(t):
        return pc.if_else(column, "1", "0")
    if pa.types.is_integer(t):
        return pc.cast(column, pa.string())
    raise TypeError(f"no canonical encoding for column type {t}")


def canonical_column(table: pa.Table) -> pa.Array:
    """Each row's canonical encoding, as one binary array.

    For every field of canonical_fields(table's columns) in order, its UTF-8 byte length in
    decimal and its text, all joined with ``,``:
    ``len(f1),f1,len(f2),f2,...,len(fN),fN``.  In DuckDB:
    ``concat_ws(',', strlen(id), id, strlen(tenant_id), tenant_id, ...)``.
    """
    parts: list[pa.ChunkedArray | pa.Array] = []
    for name in canonical_fields(table.column_names):
        text = _field_text(table.column(name))
        parts.append(pc.cast(pc.binary_length(text), pa.string()))
        parts.append(text)
    joined = pc.binary_join_element_wise(*parts, ",")
    if isinstance(joined, pa.ChunkedArray):
        joined = joined.combine_chunks()
    return pc.cast(joined, pa.large_binary())


def _length_text(text: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array | pa.Scalar:
    """The decimal byte length of each value of ``text``: one scalar when
    they are all as long (ids, timestamps, flags mostly are), which spares
    writing a number per row."""
    lengths = pc.binary_length(text)
    bounds = pc.min_max(lengths)
    if len(lengths) and bounds["min"].as_py() == bounds["max"].as_py():
        return pa.scalar(str(bounds["min"].as_py()), pa.string())
    return pc.cast(lengths, pa.string())


def canonical_column_bulk(table: pa.Table) -> pa.Array:
    """canonical_column, byte for byte, with fewer numbers formatted: the
    re-hash of a whole lake encodes every event and takes this one.  Its
    output is only ever compared with stored hashes, so an encoding that
    differed would fail every link, never pass a changed event."""
    parts: list[pa.ChunkedArray | pa.Array | pa.Scalar] = []
    for name in canonical_fields(table.column_names):
        text = _field_text(table.column(name))
        parts.append(_length_text(text))
        parts.append(text)
    joined = pc.binary_join_element_wise(*parts, ",")
    if isinstance(joined, pa.ChunkedArray):
        joined = joined.combine_chunks()
    return pc.cast(joined, pa.large_binary())


def canonical_rows(table: pa.Table) -> list[bytes]:
    """Each row's canonical encoding as bytes (see canonical_column)."""
    return canonical_column(table).to_pylist()  # type: ignore[no-any-return]


def chain_table(previous: bytes, table: pa.Table) -> list[bytes]:
    """The chain hashes of ``table``'s rows, in row order, after ``previous``."""
    if table.num_rows == 0:
        return []
    joined = canonical_column(table)
    offsets = memoryview(joined.buffers()[1]).cast("q")[
        joined.offset : joined.offset + len(joined) + 1
    ].tolist()
    data = memoryview(joined.buffers()[2])
    sha256 = hashlib.sha256
    out: list[bytes] = []
    h = previous
    for start, end in zip(offsets, offsets[1:]):  # noqa: B905 - n+1 offsets
        h = sha256(h + data[start:end]).digest()
        out.append(h)
    return out


def chain_hashes(previous: bytes, canonical: Iterable[bytes]) -> list[bytes]:
    """The chain: ``h[i] = sha256(h[i-1] || canonical[i])`` from ``previous``."""
    sha256 = hashlib.sha256
    out: list[bytes] = []
    h = previous
    for row in canonical:
        h = sha256(h + row).digest()
        out.append(h)
    return out


def _sql_field_text(name: str, type_: pa.DataType, alias: str) -> str:
    """DuckDB SQL for one field's canonical text (see _field_text)."""
    col = f'{alias}"{name}"'
    if pa.types.is_timestamp(type_):
        return f"CAST(epoch_us({col}) AS VARCHAR)"
    if pa.types.is_boolean(type_):
        return f"(CASE WHEN {col} THEN '1' ELSE '0' END)"
    if pa.types.is_integer(type_):
        return f"CAST({col} AS VARCHAR)"
    return col


def canonical_sql(alias: str = "", fields: tuple[str, ...] = CANONICAL_FIELDS) -> str:
    """The canonical encoding as a DuckDB expression of type BLOB, over the
    stored columns (optionally qualified: ``alias="r."``).  Equal, byte for
    byte, to canonical_column; docs/integrity.md prints it for auditors.
    ``fields``: LEGACY_CANONICAL_FIELDS for files sealed under version 1.

    Every stored column is non-nullable; ``concat_ws`` would silently skip a
    NULL, so a verifier must treat a NULL in any field as a failure
    (null_check_sql).
    """
    from auditlake.collector.schema import EVENT_SCHEMA  # noqa: PLC0415 - schema is tiny

    parts = []
    for name in fields:
        text = _sql_field_text(name, EVENT_SCHEMA.field(name).type, alias)
        parts.append(f"CAST(strlen({text}) AS VARCHAR)")
        parts.append(text)
    return f"encode(concat_ws(',', {', '.join(parts)}))"


def null_check_sql(alias: str = "", fields: tuple[str, ...] = CANONICAL_FIELDS) -> str:
    """DuckDB condition: true when any hashed field is NULL (never in a sealed file)."""
    return "(" + " OR ".join(f'{alias}"{n}" IS NULL' for n in fields) + ")"


def chain_link(previous_hex: str, canonical: bytes) -> str:
    """One link of the chain, hex: ``sha256(bytes.fromhex(previous_hex) || canonical)``."""
    return hashlib.sha256(bytes.fromhex(previous_hex) + canonical).hexdigest()
