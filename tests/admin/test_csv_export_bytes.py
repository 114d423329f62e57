"""CSV export bytes are a contract (auditors keep the file and its signed
SHA-256): both CSV paths, DuckDB's file writer (``auditlake export``) and
the streamed encoder (the admin API), must give byte for byte the files
recorded in ``data/`` over values that exercise every neutralisation rule,
quoting, separators, line breaks and Unicode.  The golden files were written
by the exporter before its neutralisation SQL got a fast path; a change to
either path that moves a single byte fails here."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from auditlake.collector.admin.export import CSV_BLANKS, ExportRun, export_to_file, neutralize, neutralize_sql
from auditlake.collector.admin.search import Filter, LakeReader
from auditlake.collector.schema import EVENT_SCHEMA
from auditlake.collector.storage.datadir import DataDir

DATA = Path(__file__).parent / "data"
TEXT = [f.name for f in EVENT_SCHEMA if pa.types.is_string(f.type)]
#: Regenerate the golden files with this set (only after a deliberate, documented format change).
REGENERATE = os.environ.get("AUDITLAKE_REGENERATE_CSV_GOLDEN") == "1"


def tricky_values() -> list[str]:
    """Every first character that matters, alone and in front of a trigger
    or a letter: the ASCII range, the blanks, the boundaries of the fast
    path (``0``, ``<``, ``=``, ``>``, ``@``, ``A``, U+007F, U+0080), and
    values a CSV writer must quote."""
    firsts = [chr(c) for c in range(1, 128)]
    firsts += list(CSV_BLANKS) + ["\u0080", "\u00a1", "\u00e9", "\u200c", "\u2030", "\ufffd", "\U0001f600"]
    values = ["", "'", "''", '"', '""', ",", "\r\n", "\n", "\r", "a,b", 'say "hi"', "line1\nline2", "x\r\ny",
              "=1+1", "+1", "-1", "@SUM(A1)", "\t=x", "'=x", " =x", "=\u0301x", "\ufeff=x", "=cmd|' /C calc'!A0",
              "  \u3000@SUM(A1)", ' " -2+3', "\u00a0\u00a0", "   ", "\u00e9t\u00e9", "\u65e5\u672c", "a\x00b",
              '{"k": "=v"}', "[1,2]", "é" * 300 + '"\n,']
    for f in dict.fromkeys(firsts):
        values += [f, f + "=1", f + "x", f + " -1", f + f + "@a"]
    return list(dict.fromkeys(values))


def _lake(root: Path, values: list[str]) -> DataDir:
    """A lake of one day file: row k holds values[(k + i) % n] in the i-th
    text column, so each value visits every column."""
    n = len(values)
    cols: dict[str, pa.Array] = {}
    for f in EVENT_SCHEMA:
        if pa.types.is_string(f.type):
            i = TEXT.index(f.name)
            cols[f.name] = pa.array([values[(k + i) % n] for k in range(n)], pa.string())
        elif pa.types.is_timestamp(f.type):
            cols[f.name] = pa.array([dt.datetime(2026, 1, 2, 3, 4, 5, k * 7, tzinfo=dt.UTC) for k in range(n)],
                                    f.type)
        elif f.type == pa.int64():
            cols[f.name] = pa.array(range(1, n + 1), pa.int64())
        else:
            cols[f.name] = pa.array([k % 3 == 0 for k in range(n)])
    folder = root / "lake" / "events" / "date=2026-01-02"
    folder.mkdir(parents=True)
    pq.write_table(pa.table(cols, schema=EVENT_SCHEMA), folder / "part-test.parquet")
    return DataDir(root)


#: The golden files' SHA-256: a golden file changed on disk (or by a line-ending
#: conversion in git) fails here rather than silently moving the contract.
GOLDEN_SHA256 = {
    "csv_export_file.csv": "d6e0dd7834e3b025eeefbdfab6e33f2b6213dd1121b1f43c7074e90eefb8e2f9",
    "csv_export_stream.csv": "d4f5d60ee77b1785b055fccbbfe03a08352a184b78b19d468f4d7b4112edd308",
}


def _check(got: bytes, name: str) -> None:
    golden = DATA / name
    if REGENERATE:
        golden.write_bytes(got)
    want = golden.read_bytes()
    if not REGENERATE:
        assert hashlib.sha256(want).hexdigest() == GOLDEN_SHA256[name], f"{name} is not the recorded golden file"
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(want).hexdigest(), name
    assert got == want


def test_the_file_export_is_byte_for_byte_the_golden_file(tmp_path: Path) -> None:
    data = _lake(tmp_path / "dir", tricky_values())
    out = tmp_path / "out.csv"
    run = export_to_file(data, Filter(), None, "csv", out, signing_key=None)
    got = out.read_bytes()
    assert run.manifest is not None
    assert run.manifest["sha256"] == hashlib.sha256(got).hexdigest()
    assert run.manifest["bytes"] == len(got)
    assert run.rows == len(tricky_values())
    _check(got, "csv_export_file.csv")


def test_the_streamed_export_is_byte_for_byte_the_golden_file(tmp_path: Path) -> None:
    data = _lake(tmp_path / "dir", tricky_values())
    reader = LakeReader(data)
    try:
        run = ExportRun(reader, Filter(), None, "csv", "t.csv")
        got = b"".join(run.chunks())
    finally:
        reader.close()
    assert run.manifest is not None and run.manifest["sha256"] == hashlib.sha256(got).hexdigest()
    _check(got, "csv_export_stream.csv")


def test_the_sql_rule_is_the_python_rule() -> None:
    values = tricky_values()
    con = duckdb.connect()
    try:
        con.register("cells", pa.table({"v": pa.array(values, pa.string()), "k": pa.array(range(len(values)))}))
        got = [r[0] for r in con.execute(f"SELECT {neutralize_sql('v')} FROM cells ORDER BY k").fetchall()]
    finally:
        con.close()
    assert got == [neutralize(v) for v in values]


def test_release_runs_once_the_file_is_written_and_the_hash_is_of_the_whole_file(tmp_path: Path) -> None:
    data = _lake(tmp_path / "dir", tricky_values())
    reader = LakeReader(data)
    out = tmp_path / "out.csv"
    seen: list[int] = []

    def release() -> None:  # what export_to_file does with its own reader, and what it finds on disk
        seen.append(out.stat().st_size)
        reader.close()

    try:
        run = ExportRun(reader, Filter(), None, "csv", "out.csv")
        run.copy_csv(out, release=release)
    finally:
        reader.close()
    got = out.read_bytes()
    assert seen == [len(got)]
    assert run.manifest is not None and run.manifest["sha256"] == hashlib.sha256(got).hexdigest()
    assert run.nbytes == len(got)
    _check(got, "csv_export_file.csv")
