"""CSV export encoding: any text round-trips through Python's csv module
unchanged, except that cells a spreadsheet would run as a formula get one
leading single quote."""

from __future__ import annotations

import csv
import io

import pyarrow as pa
from auditlake.collector.export import CsvEncoder, neutralize
from auditlake.collector.schema import COLUMNS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

DANGEROUS = ("=", "+", "-", "@", "\t", "\r")

# Any Unicode text, including quotes, commas, CR/LF, NUL and formula starts.
cells = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",)),  # lone surrogates are not UTF-8
    max_size=300,
) | st.sampled_from(["=1+1", "+1", "-1", "@SUM(A1)", "\t=x", "\r\n", '"', '""', ",", "'=x", " =x"])


def encode(values: list[list[str]]) -> list[list[str]]:
    """Rows of text cells -> our CSV bytes -> Python's csv reader."""
    n = len(values)
    cols = {c: pa.array([row[i % len(row)] for row in values] if n else [], pa.string()) for i, c in enumerate(COLUMNS)}
    batch = pa.RecordBatch.from_pydict(cols)
    enc = CsvEncoder()
    data = enc.header() + (enc.encode(batch) if n else b"")
    return list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))


def expected(cell: str) -> str:
    return "'" + cell if cell.startswith(DANGEROUS) else cell


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(cells, min_size=1, max_size=4), min_size=1, max_size=8))
def test_any_text_round_trips_except_the_neutralised_prefix(rows: list[list[str]]) -> None:
    parsed = encode(rows)
    assert parsed[0] == list(COLUMNS)
    body = parsed[1:]
    assert len(body) == len(rows)
    for row, got in zip(rows, body, strict=True):
        want = [expected(row[i % len(row)]) for i in range(len(COLUMNS))]
        assert got == want


def test_formula_cells_are_prefixed_and_nothing_else_changes() -> None:
    col = pa.array(["=cmd|' /C calc'!A0", "+1", "-1", "@x", "\tx", "\rx", "a=b", "'=x", "", "1-2"])
    assert neutralize(col).to_pylist() == [
        "'=cmd|' /C calc'!A0", "'+1", "'-1", "'@x", "'\tx", "'\rx", "a=b", "'=x", "", "1-2"]


def test_very_long_fields_survive() -> None:
    big = "é" * 70_000 + '"\n,'
    assert encode([[big]])[1][0] == big
