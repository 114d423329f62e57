"""Lake: the day-partitioned Parquet files, ``events/date=YYYY-MM-DD/*.parquet``
in a :class:`~auditlake.collector.storage.store.Store` (the hot lake is
``LocalStore(DIR/lake)``).  Files are staged under a hidden temporary name
in their folder (``.<name>.parquet.tmp``, fsynced), published (renamed into
place, the folder fsynced), and never rewritten in place.

Whatever a reader of ``events/`` reads must be exactly the live files, even
while a seal or compaction is staging and after a crash until recovery: the
leading ``.`` hides a stage from engines that read the folder itself
(``pyarrow.dataset`` with Hive partitioning, Spark, Dask, Hive and Trino
skip ``.``- and ``_``-named files, and read every other one whatever its
suffix), and the ``.tmp`` suffix keeps it off every ``*.parquet`` glob
(DuckDB's matches hidden names).  In the same folder as the final name,
publishing stays one atomic rename and one folder fsync.  Collectors before
this one staged under the visible ``<name>.parquet.tmp``; recovery still
publishes a committed stage of that name (its record names the path) and
deletes an uncommitted one.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from auditlake.collector.integrity.checkpoint import FileEntry
from auditlake.collector.schema import EVENT_SCHEMA
from auditlake.collector.storage.store import LocalStore, Staged, Store, stage_key

#: Parquet settings for sealed files: zstd, big row groups, statistics on.
#: zstd level 1 measured both faster (~1.7x) and smaller (~5%) than level 3
#: on audit rows (hex ids and hashes dominate; bench/ingest_bench.py); seq and
#: the timestamps are delta-encoded (seq then costs ~0 bytes); ids are
#: UUIDv7, whose leading digits are the time: delta strings store each id's
#: shared prefix once (-1.9 B per event, and a faster write).
PARQUET_OPTIONS: dict[str, object] = {
    "compression": "zstd",
    "compression_level": 1,
    "column_encoding": {
        "seq": "DELTA_BINARY_PACKED",
        "created_at": "DELTA_BINARY_PACKED",
        "received_at": "DELTA_BINARY_PACKED",
        "id": "DELTA_BYTE_ARRAY",
    },
    "row_group_size": 256 * 1024,
    "write_statistics": True,
    "use_dictionary": ["tenant_id", "user_id", "action", "resource_type", "outcome",
                       "service", "writer_id", "ip_address", "user_agent", "reason"],
}

#: The suffix of a staged lake file's name (``.<name>.parquet.tmp``; older
#: versions: ``<name>.parquet.tmp``).
TMP_SUFFIX = ".parquet.tmp"

#: The folder of the hot lake's events, relative to its store's root.
EVENTS = "events"


@dataclass(frozen=True)
class StagedFile:
    """A Parquet file staged in ``store`` (durable under its temporary key,
    not yet visible), with what its checkpoint entry records."""

    store: Store
    staged: Staged
    sha256: str
    bytes: int
    rows: int
    first_seq: int
    last_seq: int

    @property
    def key(self) -> str:
        """Its key once published (``events/date=.../<name>.parquet``)."""
        return self.staged.key

    @property
    def temp_key(self) -> str:
        """Where it waits until published."""
        return self.staged.temp_key

    @property
    def tmp(self) -> Path:
        """The temporary file's path (a local store's)."""
        return Path(self.store.path(self.staged.temp_key))

    @property
    def final(self) -> Path:
        """The published file's path (a local store's)."""
        return Path(self.store.path(self.staged.key))

    def entry(self) -> FileEntry:
        """Its checkpoint entry (the path is its key: relative to the lake root)."""
        return FileEntry(path=self.key, sha256=self.sha256, bytes=self.bytes, rows=self.rows,
                         first_seq=self.first_seq, last_seq=self.last_seq)


def partition_key(day: dt.date) -> str:
    """``events/date=YYYY-MM-DD``: a day's folder in the lake store."""
    return f"{EVENTS}/date={day.isoformat()}"


def day_of(path: Path | str) -> dt.date | None:
    """The partition date of a file (a path or a key) under ``date=YYYY-MM-DD/``."""
    name = PurePosixPath(path).parent.name if isinstance(path, str) else path.parent.name
    if not name.startswith("date="):
        return None
    try:
        return dt.date.fromisoformat(name[5:])
    except ValueError:
        return None


def partition_files(lake: Store, suffix: str) -> list[str]:
    """Keys of the files ``events/date=*/<name><suffix>`` (names not hidden), sorted."""
    out = []
    for obj in lake.list(EVENTS):
        parts = obj.key.split("/")
        if len(parts) == 3 and parts[1].startswith("date=") and parts[2].endswith(suffix) \
                and not parts[2].startswith("."):
            out.append(obj.key)
    return out


#: What a reader of the lake sees: every event column and the ``date`` partition.
DATED_SCHEMA = EVENT_SCHEMA.append(pa.field("date", pa.date32()))


def day_dataset(store: Store, keys: Sequence[str]) -> pads.Dataset:
    """The files ``keys`` (``events/date=D/<name>``) of ``store`` as one
    pyarrow dataset with a ``date`` partition expression per file and the
    full event schema (a file sealed before a column existed reads it as
    NULL); no file is opened to build it.  pyarrow datasets read through the
    store's filesystem itself: the one place its filesystem and paths are
    handed out to a reader."""
    return pads.FileSystemDataset.from_paths(
        [store.path(k) for k in keys],
        schema=DATED_SCHEMA,
        format=pads.ParquetFileFormat(),
        filesystem=store.filesystem,
        partitions=[pads.field("date") == pa.scalar(day_of(k), pa.date32()) for k in keys],
    )


def split_by_day(table: pa.Table) -> dict[dt.date, pa.Table]:
    """Rows grouped by the UTC date of created_at."""
    days = pc.cast(pc.cast(table.column("created_at"), pa.timestamp("us")), pa.date32())
    unique = pc.unique(days).to_pylist()
    if len(unique) == 1:
        return {unique[0]: table}
    return {d: table.filter(pc.equal(days, pa.scalar(d, pa.date32()))) for d in unique}


def sort_for_queries(table: pa.Table) -> pa.Table:
    """Rows by (tenant_id, created_at) so row-group statistics skip other tenants."""
    return table.sort_by([("tenant_id", "ascending"), ("created_at", "ascending"), ("seq", "ascending")])


def temp_key_of(key: str) -> str:
    """The key a lake file ``.../<name>.parquet`` is staged under:
    ``.../.<name>.parquet.tmp`` (hidden, in the same folder)."""
    if not key.endswith(".parquet"):
        raise ValueError(f"not a Parquet key: {key!r}")
    return stage_key(key, ".tmp")


def staged_for(temp_key: str) -> str | None:
    """The key of the lake file a stage ``temp_key`` would publish: from
    ``.<name>.parquet.tmp`` (this version) or ``<name>.parquet.tmp`` (older
    versions) to ``<name>.parquet``; None for a key of another name."""
    folder, sep, name = temp_key.rpartition("/")
    if not name.endswith(TMP_SUFFIX):
        return None
    return f"{folder}{sep}{name.removeprefix('.').removesuffix('.tmp')}"


def stage_table(lake: Store, key: str, table: pa.Table) -> StagedFile:
    """Write ``table`` as Parquet under ``key``'s temporary name
    (:func:`temp_key_of`), fsynced; not yet visible to any reader."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, **PARQUET_OPTIONS)
    data = sink.getvalue()
    staged = lake.stage(key, data, temp_key=temp_key_of(key))
    seqs = table.column("seq")
    return StagedFile(
        store=lake,
        staged=staged,
        sha256=hashlib.sha256(data).hexdigest(),
        bytes=data.size,
        rows=table.num_rows,
        first_seq=int(pc.min(seqs).as_py()),
        last_seq=int(pc.max(seqs).as_py()),
    )


def stale_stages(lake: Store, name_prefix: str) -> list[str]:
    """Temporary keys of the lake files staged in ``lake`` (under either
    version's name, see :func:`staged_for`) whose published names would
    start with ``name_prefix``, sorted."""
    out = []
    for key in lake.stage_keys(TMP_SUFFIX):
        final = staged_for(key)
        if final is not None and _in_partition(final) and final.rpartition("/")[2].startswith(name_prefix):
            out.append(key)
    return out


def remove_stale_temps(lake: Store, writer_id: str) -> int:
    """Delete the seal files of ``writer_id`` a crash left staged (call after
    the last seal's own files were published: every one left then is stale),
    hidden ones and the visible ``<name>.parquet.tmp`` of older versions,
    which folder readers read until then.  Only this writer's: in a lake
    shared by several collectors the others' staged files are seals in
    progress."""
    stale = stale_stages(lake, f"part-{writer_id}-")
    for key in stale:
        lake.discard(key)
    if stale and lake.staging is None:
        for folder in sorted({key.rpartition("/")[0] for key in stale}):
            lake.sync(folder)  # the deletes: a visible leftover must not come back
    return len(stale)


def _in_partition(key: str) -> bool:
    parts = key.split("/")
    return len(parts) == 3 and parts[0] == EVENTS and parts[1].startswith("date=")


# -- by path: tools and tests that write a local lake without a Store of their own --


def stage_file(table: pa.Table, final: Path) -> StagedFile:
    """:func:`stage_table` to the local path ``final``."""
    return stage_table(LocalStore(final.parent), final.name, table)


def publish(tmp: Path, final: Path) -> None:
    """Make a file staged at ``tmp`` visible as ``final`` (idempotent: safe to
    repeat after a crash)."""
    root = Path(os.path.commonpath([tmp, final]))
    LocalStore(root).publish(Staged(final.relative_to(root).as_posix(), tmp.relative_to(root).as_posix()))


def sha256_file(path: Path) -> str:
    """SHA-256 of a local file's bytes, hex."""
    return LocalStore(path.parent).sha256(path.name)[0]
