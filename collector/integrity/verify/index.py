"""The DuckDB index of the lake's rows: SQL that reads lake files (local
files by path, non-local ones from the bytes digesting kept), and the
``idx`` table of (writer_id, seq, chain_hash, created_date, _file) that the
row checks and the re-hash join against."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from auditlake.collector.integrity.verify.listing import DiskFile, ExpectedFiles
from auditlake.collector.integrity.verify.report import VerifyReport


def sql_str(s: str) -> str:
    """``s`` as a SQL string literal."""
    return "'" + s.replace("'", "''") + "'"


class LakeScan:
    """Builds SQL reading lake files on one DuckDB connection."""

    def __init__(self, con: duckdb.DuckDBPyConnection, disk: dict[str, DiskFile], buffers: dict[str, bytes]) -> None:
        self.con = con
        self.disk = disk
        self.buffers = buffers
        self._filemap = False

    def sql(self, keys: Sequence[str], columns: str, *, raw: bool = False) -> str:
        """SQL reading ``columns`` plus ``_file`` (the checkpoint path; with
        ``raw`` the full path, cheaper to carry through a sort) from ``keys``."""
        local = [k for k in keys if k not in self.buffers]
        parts = []
        if local:
            parts.append(self._local_sql(local, columns, raw=raw))
        for k in keys:
            if k in self.buffers:
                name = "buf_" + hashlib.sha256(k.encode()).hexdigest()[:16]
                self.con.register(name, pq.read_table(pa.BufferReader(self.buffers[k])))
                label = self.disk[k].full if raw else k
                parts.append(f"SELECT {columns}, {sql_str(label)} AS _file FROM {name}")
        return " UNION ALL BY NAME ".join(parts)

    def by_fields(self, keys: Sequence[str]) -> list[tuple[tuple[str, ...], list[str]]]:
        """``keys`` grouped by the fields their events are hashed over (files
        of both canonical encoding versions are never hashed in one scan:
        a version-1 file would read its missing ingest_key_id as NULL)."""
        groups: dict[tuple[str, ...], list[str]] = {}
        for k in keys:
            groups.setdefault(self.disk[k].fields, []).append(k)
        return sorted(groups.items(), key=lambda g: len(g[0]))

    def _local_sql(self, keys: list[str], columns: str, *, raw: bool) -> str:
        files = "[" + ", ".join(sql_str(self.disk[k].full) for k in keys) + "]"
        scan = f"read_parquet({files}, filename = true, union_by_name = true, hive_partitioning = false)"
        if raw:
            return f"SELECT {columns}, filename AS _file FROM {scan}"
        if not self._filemap:
            # DuckDB reports full paths; this table maps them back to checkpoint paths.
            self.con.execute("CREATE OR REPLACE TEMP TABLE filemap (full_path VARCHAR, k VARCHAR)")
            self.con.executemany("INSERT INTO filemap VALUES (?, ?)", [(f.full, k) for k, f in self.disk.items()])
            self._filemap = True
        return f"SELECT {columns}, m.k AS _file FROM {scan} JOIN filemap m ON m.full_path = filename"


def build_index(scan: LakeScan, keys: list[str]) -> None:
    """The ``idx`` table: every stored event's writer, seq, hash, date and file."""
    narrow = "writer_id, seq, chain_hash, CAST(created_at AS DATE) AS created_date"
    if keys:
        scan.con.execute(f"CREATE TEMP TABLE idx AS {scan.sql(keys, narrow)}")
    else:
        scan.con.execute("CREATE TEMP TABLE idx (writer_id VARCHAR, seq BIGINT, chain_hash VARCHAR, "
                         "created_date DATE, _file VARCHAR)")


def summarize(con: duckdb.DuckDBPyConnection, expected: ExpectedFiles, report: VerifyReport) -> None:
    """Each writer's stored events and seq range, and the lake's event count."""
    for w in report.writers:
        r = con.execute("SELECT count(*), min(seq), max(seq) FROM idx WHERE writer_id = ?",
                        [w.writer_id]).fetchone()
        assert r is not None
        w.events, w.first_seq, w.last_seq = int(r[0]), r[1], r[2]
        w.expired_events = expected.expired_events(w.writer_id)
    report.events = int(con.execute("SELECT count(*) FROM idx").fetchone()[0])  # type: ignore[index]
