"""CSV export encoding: any text stored in the lake round-trips through
Python's csv module unchanged, except that cells a spreadsheet would run as
a formula get one leading single quote.  Goes through the real path: a
Parquet file in the lake layout, DuckDB, the streaming exporter."""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import shutil
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auditlake.collector.admin.export import CSV_BLANKS, ExportRun
from auditlake.collector.admin.search import Filter, LakeReader
from auditlake.collector.schema import EVENT_SCHEMA
from auditlake.collector.storage.datadir import DataDir

DANGEROUS = ("=", "+", "-", "@", "\t", "\r")
TEXT = [f.name for f in EVENT_SCHEMA if pa.types.is_string(f.type)]

# Any Unicode text (quotes, commas, CR/LF, NUL, combining marks, formula starts).
cells = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",)),  # lone surrogates are not UTF-8
    max_size=200,
) | st.sampled_from(["=1+1", "+1", "-1", "@SUM(A1)", "\t=x", "\r\n", '"', '""', ",", "'=x", " =x",
                     "=\u0301x", "\ufeff=x"])


def export_csv(rows: list[list[str]], via: str = "stream") -> list[list[str]]:
    """Store rows (text columns cycled from each row) in a lake, export CSV
    (``via`` the HTTP stream encoder or DuckDB's file writer), parse it."""
    n = len(rows)
    cols: dict[str, pa.Array] = {}
    for f in EVENT_SCHEMA:
        if pa.types.is_string(f.type):
            i = TEXT.index(f.name)
            cols[f.name] = pa.array([r[i % len(r)] for r in rows], pa.string())
        elif pa.types.is_timestamp(f.type):
            cols[f.name] = pa.array([dt.datetime(2026, 1, 2, 3, 4, 5, k, tzinfo=dt.UTC) for k in range(n)], f.type)
        elif f.type == pa.int64():
            cols[f.name] = pa.array(range(1, n + 1), pa.int64())
        else:
            cols[f.name] = pa.array([False] * n)
    root = Path(tempfile.mkdtemp())
    try:
        folder = root / "lake" / "events" / "date=2026-01-02"
        folder.mkdir(parents=True)
        pq.write_table(pa.table(cols, schema=EVENT_SCHEMA), folder / "part-test.parquet")
        reader = LakeReader(DataDir(root))
        try:
            run = ExportRun(reader, Filter(), None, "csv", "t.csv")
            if via == "stream":
                data = b"".join(run.chunks())
            else:
                run.copy_csv(root / "t.csv")
                data = (root / "t.csv").read_bytes()
            assert hashlib.sha256(data).hexdigest() == run.manifest["sha256"] if run.manifest else False
        finally:
            reader.close()
    finally:
        shutil.rmtree(root)
    parsed = list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))
    header, body = parsed[0], parsed[1:]
    out = [dict(zip(header, r, strict=True)) for r in body]
    out.sort(key=lambda d: int(d["seq"]))
    return [[d[c] for c in TEXT] for d in out]


def expected(cell: str) -> str:
    # Written from the documented rule (docs/admin.md), not from the code's.
    after_blanks = cell.lstrip(CSV_BLANKS)
    if cell.startswith((*DANGEROUS, "'")) or after_blanks.startswith(("=", "+", "-", "@")):
        return "'" + cell
    return cell


@pytest.mark.parametrize("via", ["stream", "file"])
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(st.lists(cells, min_size=1, max_size=4), min_size=1, max_size=6))
def test_any_text_round_trips_except_the_neutralised_prefix(via: str, rows: list[list[str]]) -> None:
    got = export_csv(rows, via)
    assert len(got) == len(rows)
    for row, out in zip(rows, got, strict=True):
        assert out == [expected(row[i % len(row)]) for i in range(len(TEXT))]


@pytest.mark.parametrize("via", ["stream", "file"])
def test_formula_cells_are_prefixed_and_nothing_else_changes(via: str) -> None:
    values = ["=cmd|' /C calc'!A0", "+1", "-1", "@x", "\tx", "\rx", "a=b", "", "1-2", " hello"]
    got = [r[TEXT.index("resource_id")] for r in export_csv([[v] for v in values], via)]
    assert got == ["'=cmd|' /C calc'!A0", "'+1", "'-1", "'@x", "'\tx", "'\rx", "a=b", "", "1-2", " hello"]


@pytest.mark.parametrize("via", ["stream", "file"])
def test_a_formula_behind_blanks_or_a_quote_is_neutralised(via: str) -> None:
    values = [" =1+1", "\u00a0=1+1", "\n=1+1", "\ufeff=1+1", '"=1+1', "  \u3000@SUM(A1)", ' " -2+3']
    got = [r[TEXT.index("resource_id")] for r in export_csv([[v] for v in values], via)]
    assert got == ["'" + v for v in values]


@pytest.mark.parametrize("via", ["stream", "file"])
def test_a_stored_leading_quote_is_escaped_so_the_reversal_is_unambiguous(via: str) -> None:
    # '=1+1 stored and =1+1 stored must not export to the same cell.
    stored = ["'=1+1", "=1+1", "'", "it's"]
    got = [r[TEXT.index("resource_id")] for r in export_csv([[v] for v in stored], via)]
    assert got == ["''=1+1", "'=1+1", "''", "it's"]
    assert [g[1:] if g.startswith("'") else g for g in got] == stored


@pytest.mark.parametrize("via", ["stream", "file"])
def test_very_long_fields_survive(via: str) -> None:
    big = "é" * 70_000 + '"\n,'
    assert export_csv([[big]], via)[0][0] == big
