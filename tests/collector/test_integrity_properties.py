"""Properties of the canonical encoding and the chain verifier (hypothesis).

- The encoding is injective on the field tuple: it can be decoded back into
  exactly the fields it came from (so two different events never share an
  encoding), whatever the strings hold: commas, digits, unicode, nothing.
- DuckDB's SQL form (integrity.canonical_sql, what docs/integrity.md gives
  auditors) is byte-for-byte the reference encoding.
- The verifier finds any single change, deletion or swap in a random chain.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from auditlake.collector.integrity.chain import (
    CANONICAL_FIELDS,
    GENESIS,
    canonical_rows,
    canonical_sql,
    chain_hashes,
    chain_link,
)
from auditlake.collector.integrity.verify import verify_lake
from auditlake.collector.schema import EVENT_SCHEMA
from auditlake.collector.storage.datadir import DataDir
from tests.collector.synthetic_lake import SyntheticWriter, event_rows

text = st.text(alphabet=st.sampled_from(list(",0123456789aZ é😀\n\\\"'")) | st.characters(blacklist_categories=("Cs",)),
               max_size=12)
timestamps = st.integers(min_value=-(2**50), max_value=2**52).map(
    lambda us: dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=us))


def field_strategy(name: str) -> st.SearchStrategy[Any]:
    t = EVENT_SCHEMA.field(name).type
    if pa.types.is_timestamp(t):
        return timestamps
    if pa.types.is_boolean(t):
        return st.booleans()
    if pa.types.is_integer(t):
        return st.integers(min_value=-(2**63), max_value=2**63 - 1)
    return text


events = st.fixed_dictionaries({name: field_strategy(name) for name in CANONICAL_FIELDS}).map(
    lambda d: {**d, "chain_hash": ""})


def field_text(name: str, value: Any) -> str:
    t = EVENT_SCHEMA.field(name).type
    if pa.types.is_timestamp(t):
        delta = value - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
        return str((delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds)
    if pa.types.is_boolean(t):
        return "1" if value else "0"
    return str(value)


def decode(encoded: bytes) -> list[bytes]:
    """Parse ``len,value,len,value,...`` back into the values (docs/integrity.md)."""
    out, i = [], 0
    while i < len(encoded):
        comma = encoded.index(b",", i)
        n = int(encoded[i:comma])
        start = comma + 1
        out.append(encoded[start:start + n])
        i = start + n
        if i < len(encoded):
            assert encoded[i:i + 1] == b",", "a separator must follow each value"
            i += 1
    return out


def table_of(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=EVENT_SCHEMA)


@settings(max_examples=100, deadline=None)
@given(events)
def test_encoding_decodes_to_exactly_the_fields(event: dict[str, Any]) -> None:
    [encoded] = canonical_rows(table_of([event]))
    assert decode(encoded) == [field_text(n, event[n]).encode() for n in CANONICAL_FIELDS]


@settings(max_examples=100, deadline=None)
@given(events, events)
def test_different_events_have_different_encodings(a: dict[str, Any], b: dict[str, Any]) -> None:
    ta, tb = ([field_text(n, e[n]) for n in CANONICAL_FIELDS] for e in (a, b))
    assume(ta != tb)
    assert canonical_rows(table_of([a])) != canonical_rows(table_of([b]))


@settings(max_examples=100, deadline=None)
@given(events, st.sampled_from([n for n in CANONICAL_FIELDS
                                if pa.types.is_string(EVENT_SCHEMA.field(n).type)]), text)
def test_moving_a_comma_between_fields_changes_the_encoding(
        event: dict[str, Any], name: str, extra: str) -> None:
    # The classic ambiguity of joined strings: ("a,", "b") vs ("a", ",b").
    i = CANONICAL_FIELDS.index(name)
    assume(i + 1 < len(CANONICAL_FIELDS))
    nxt = CANONICAL_FIELDS[i + 1]
    assume(pa.types.is_string(EVENT_SCHEMA.field(nxt).type))
    a = {**event, name: event[name] + "," + extra, nxt: event[nxt]}
    b = {**event, name: event[name], nxt: "," + extra + event[nxt]}
    assert canonical_rows(table_of([a])) != canonical_rows(table_of([b]))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(events, min_size=1, max_size=8))
def test_duckdb_sql_encoding_equals_the_reference(rows: list[dict[str, Any]]) -> None:
    table = table_of(rows)
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.register("t", table)
        got = [r[0] for r in con.execute(f"SELECT {canonical_sql()} FROM t").fetchall()]
    finally:
        con.close()
    assert got == canonical_rows(table)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=40), min_size=1, max_size=30))
def test_chain_links_are_sha256_of_previous_and_row(rows: list[bytes]) -> None:
    hashes = chain_hashes(GENESIS, rows)
    prev = GENESIS.hex()
    for row, h in zip(rows, hashes, strict=True):
        assert chain_link(prev, row) == h.hex()
        prev = h.hex()


# -- the verifier on random chains ----------------------------------------------------------

MUTATIONS = ("edit", "delete", "swap_seq", "swap_content", "edit_hash")
EDITABLE = ("tenant_id", "user_id", "action", "resource_id", "changes", "metadata", "reason",
            "ip_address", "request_id", "imported", "created_at", "received_at")


def build(root: Path, n: int, seals: int) -> SyntheticWriter:
    w = SyntheticWriter(DataDir(root))
    per = max(1, n // seals)
    made = 0
    while made < n:
        k = min(per, n - made)
        w.seal(event_rows(k, start=made, days=2))
        made += k
    return w


def mutate(w: SyntheticWriter, how: str, i: int, j: int, column: str, value: str) -> set[int]:
    """Apply one mutation to the lake; returns the seqs it touched."""
    files = sorted(w.data.events.glob("date=*/*.parquet"))
    table = pa.concat_tables([
        pq.read_table(f).append_column("_f", pa.array([str(f)] * pq.read_metadata(f).num_rows))
        for f in files]).sort_by("seq")
    rows = table.to_pylist()
    i %= len(rows)
    j %= len(rows)
    touched = {rows[i]["seq"]}
    if how == "edit":
        old = rows[i][column]
        if isinstance(old, bool):
            rows[i][column] = not old
        elif isinstance(old, dt.datetime):
            rows[i][column] = old + dt.timedelta(microseconds=1)
        else:
            rows[i][column] = old + value if value else old + "x"
    elif how == "delete":
        del rows[i]
    elif how == "edit_hash":
        rows[i]["chain_hash"] = chain_link(rows[i]["chain_hash"], b"forged")
    else:
        assume(i != j)
        touched.add(rows[j]["seq"])
        if how == "swap_seq":
            rows[i]["seq"], rows[j]["seq"] = rows[j]["seq"], rows[i]["seq"]
        else:  # the contents of two events change places (seq and hash stay)
            keep = ("seq", "chain_hash", "writer_id", "_f")
            a = {k: v for k, v in rows[i].items() if k not in keep}
            b = {k: v for k, v in rows[j].items() if k not in keep}
            assume(a != b)
            rows[i].update(b)
            rows[j].update(a)
    by_file: dict[str, list[dict[str, Any]]] = {str(f): [] for f in files}
    for r in rows:
        by_file[r.pop("_f")].append(r)
    for f, part in by_file.items():
        pq.write_table(pa.Table.from_pylist(part, schema=EVENT_SCHEMA), f)
    return touched


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(n=st.integers(min_value=2, max_value=30), seals=st.integers(min_value=1, max_value=3),
       how=st.sampled_from(MUTATIONS), i=st.integers(min_value=0, max_value=10_000),
       j=st.integers(min_value=0, max_value=10_000), column=st.sampled_from(EDITABLE),
       value=text)
@example(n=2, seals=1, how="swap_seq", i=0, j=1, column="user_id", value="")  # neighbours
def test_verifier_finds_any_single_mutation(n: int, seals: int, how: str, i: int, j: int,
                                            column: str, value: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        w = build(Path(tmp) / "data", n, seals)
        assert verify_lake(w.data).ok
        touched = mutate(w, how, i, j, column, value)
        report = verify_lake(w.data)
        assert not report.ok
        event_kinds = {"changed_event", "changed_hash", "reordered_events", "missing_events",
                       "truncated", "wrong_partition", "misplaced_event"}
        named = {p.seq for p in report.problems if p.kind in event_kinds}
        # The event (or one of the events) that was touched is named by its seq.
        assert named & touched, report.to_text()
        if how == "swap_seq":
            assert {p.seq for p in report.problems if p.kind == "reordered_events"} == touched
