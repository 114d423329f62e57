"""The verifier's per-event loop in C (integrity._chainhash) against the
reference encoding and hashlib: for any events, the C loop confirms exactly
what the Python loop confirms (the same first encoding, the same subtree
roots), and refuses a changed field, a changed or malformed stored hash, and
rows out of order, wherever they are; dictionary-read columns, several row
groups and unsorted files included."""

from __future__ import annotations

import hashlib
import io
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auditlake.collector.integrity import merkle
from auditlake.collector.integrity.chain import GENESIS, canonical_rows, chain_table
from auditlake.collector.integrity.verify import parallel
from auditlake.collector.integrity.verify.report import VerifyReport
from auditlake.collector.schema import EVENT_SCHEMA, LEGACY_EVENT_SCHEMA


def test_the_extension_is_built() -> None:
    """`make install` builds it (gcc and OpenSSL's headers are on every
    machine the Makefile prepares): without it verify is several times slower."""
    assert parallel.NATIVE, "auditlake.collector.integrity._chainhash did not build: see the pip install log"


TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
TIMES = st.integers(min_value=-(2**62), max_value=2**62)
ROW = st.fixed_dictionaries({
    "user_id": TEXT, "reason": TEXT, "metadata": TEXT, "changes": TEXT,
    "created_at": TIMES, "received_at": TIMES, "imported": st.booleans(), "clock_skew": st.booleans(),
})


def _table(rows: list[dict[str, object]], writer: str = "w1", first_seq: int = 1,
           schema: pa.Schema = EVENT_SCHEMA) -> pa.Table:
    """A chained table of ``rows`` (other fields filled in), hashes made by
    the reference chain_table."""
    n = len(rows)
    cols: dict[str, list[object]] = {}
    for f in schema:
        if f.name == "chain_hash":
            continue
        if f.name in ("created_at", "received_at", "imported", "clock_skew"):
            cols[f.name] = [r[f.name] for r in rows]
        elif f.name == "seq":
            cols[f.name] = list(range(first_seq, first_seq + n))
        elif f.name == "writer_id":
            cols[f.name] = [writer] * n
        elif f.name in rows[0]:
            cols[f.name] = [r[f.name] for r in rows]
        else:
            cols[f.name] = [f"{f.name}-{i % 3}" for i in range(n)]
    arrays = [pa.array(cols[f.name], f.type) for f in schema if f.name != "chain_hash"]
    plain = pa.Table.from_arrays(arrays, schema=pa.schema([f for f in schema if f.name != "chain_hash"]))
    hashes = [h.hex() for h in chain_table(GENESIS, plain)]
    return plain.append_column(schema.field("chain_hash"), pa.array(hashes, pa.string()))


def _file(table: pa.Table, **write: object) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, **write)  # type: ignore[arg-type]
    return sink.getvalue()


def _both(data: bytes, heads: dict[str, tuple[int, ...]], monkeypatch: pytest.MonkeyPatch
          ) -> tuple[parallel.FileResult, parallel.FileResult]:
    task = parallel.FileTask(path=None, data=data, heads=heads)
    native = parallel.hash_file(task)
    with monkeypatch.context() as m:
        m.setattr(parallel, "NATIVE", False)
        python = parallel.hash_file(task)
    return native, python


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(ROW, min_size=1, max_size=40), cut=st.integers(min_value=0, max_value=45))
def test_c_loop_confirms_what_python_confirms(rows: list[dict[str, object]], cut: int,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    table = _table(rows)
    heads = {"w1": tuple(sorted({len(rows), max(1, min(cut, len(rows)))}))}
    native, python = _both(_file(table), heads, monkeypatch)
    assert native == python
    assert native.links_ok and native.rows == len(rows)
    assert native.first_canon == canonical_rows(table.slice(0, 1))[0]
    # The subtree roots are those of the reference tree over the same leaves.
    leaves = merkle.hash_leaves(canonical_rows(table))
    assert native.pieces is not None
    for start, size, root in native.pieces:
        assert root == merkle.MerkleLevels(leaves[start:start + size]).root()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(ROW, min_size=2, max_size=30), data=st.data())
def test_c_loop_refuses_any_changed_field(rows: list[dict[str, object]], data: st.DataObject,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    table = _table(rows)
    at = data.draw(st.integers(min_value=1, max_value=len(rows) - 1), label="row")
    name = data.draw(st.sampled_from([f.name for f in EVENT_SCHEMA if f.name not in ("seq", "writer_id",
                                                                                       "chain_hash")]), label="field")
    typ = table.schema.field(name).type
    column = table.column(name)
    values = (column.cast(pa.int64()) if pa.types.is_timestamp(typ) else column).to_pylist()
    old = values[at]
    values[at] = (not old) if isinstance(old, bool) else old + "x" if isinstance(old, str) else old + 1
    new = pa.array(values, pa.int64()).cast(typ) if pa.types.is_timestamp(typ) else pa.array(values, typ)
    changed = table.set_column(table.schema.get_field_index(name), name, new)
    native, python = _both(_file(changed), {"w1": (len(rows),)}, monkeypatch)
    assert not native.links_ok and not python.links_ok


def test_first_row_is_left_to_the_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    """Row 0's link needs the hash before the file: the result hands over its
    encoding and stored hash, which a change to row 0 shows."""
    table = _table([{"user_id": "a", "reason": "", "metadata": "{}", "changes": "", "created_at": 1,
                     "received_at": 2, "imported": False, "clock_skew": True}] * 3)
    users = table.column("user_id").to_pylist()
    users[0] = "mallory"
    changed = table.set_column(table.schema.get_field_index("user_id"), "user_id", pa.array(users, pa.string()))
    native, python = _both(_file(changed), {}, monkeypatch)
    assert native == python and native.links_ok
    assert b"mallory" in native.first_canon
    assert hashlib.sha256(GENESIS + native.first_canon).digest() != native.first_hash


@pytest.mark.parametrize("bad", ["upper", "short", "not-hex"])
def test_c_loop_refuses_malformed_stored_hashes(bad: str, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [{"user_id": f"u{i}", "reason": "", "metadata": "{}", "changes": "", "created_at": i,
             "received_at": i, "imported": False, "clock_skew": False} for i in range(10)]
    table = _table(rows)
    hashes = table.column("chain_hash").to_pylist()
    hashes[5] = {"upper": hashes[5].upper(), "short": hashes[5][:62], "not-hex": "g" + hashes[5][1:]}[bad]
    changed = table.set_column(table.schema.get_field_index("chain_hash"), "chain_hash", pa.array(hashes))
    native, python = _both(_file(changed), {}, monkeypatch)
    assert native.regular and not native.links_ok
    assert not python.links_ok or not python.regular


def test_dictionary_columns_row_groups_and_unsorted_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """Several row groups (a dictionary per group), rows stored out of seq
    order (the loop takes them in seq order), both encoding versions."""
    rows = [{"user_id": f"user-{i % 7}", "reason": "", "metadata": "{}", "changes": "ü" * (i % 4),
             "created_at": 10**15 + i, "received_at": 10**15 + 2 * i, "imported": i % 2 == 0,
             "clock_skew": False} for i in range(1_000)]
    for schema in (EVENT_SCHEMA, LEGACY_EVENT_SCHEMA):
        table = _table(rows, first_seq=41, schema=schema)
        shuffled = table.take(pa.array(list(range(1, 1_000, 2)) + list(range(0, 1_000, 2))))
        for t in (table, shuffled):
            data = _file(t, row_group_size=128)
            assert pq.ParquetFile(io.BytesIO(data)).metadata.num_row_groups == 8
            table = parallel._read(parallel.FileTask(path=None, data=data, heads={}))
            assert table is not None and pa.types.is_dictionary(table.schema.field("user_id").type)
            assert parallel._native_check(table, None, False) is not None  # the C loop read it, no fallback
            native, python = _both(data, {"w1": (100, 1_040)}, monkeypatch)
            assert native == python
            assert native.links_ok and native.first_seq == 41 and native.rows == 1_000
            assert len(native.pieces or []) > 2


def test_a_seq_out_of_place_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two rows' seqs swapped: each now chains onto the wrong hash."""
    rows = [{"user_id": f"u{i}", "reason": "", "metadata": "", "changes": "", "created_at": i,
             "received_at": i, "imported": False, "clock_skew": False} for i in range(20)]
    table = _table(rows)
    seqs = table.column("seq").to_pylist()
    seqs[3], seqs[4] = seqs[4], seqs[3]
    swapped = table.set_column(table.schema.get_field_index("seq"), "seq", pa.array(seqs, pa.int64()))
    native, python = _both(_file(swapped), {}, monkeypatch)
    assert not native.links_ok and not python.links_ok


def test_complete_root_matches_the_reference_tree() -> None:
    from auditlake.collector.integrity import _chainhash  # noqa: PLC0415 - only where built

    leaves = merkle.hash_leaves([str(i).encode() for i in range(64)])
    joined = b"".join(leaves)
    for start, size in [(0, 1), (0, 64), (32, 32), (8, 8), (5, 1)]:
        assert _chainhash.complete_root(joined, start, size) == merkle.MerkleLevels(leaves[start:start + size]).root()
    for start, size in [(0, 3), (60, 8), (-1, 1), (0, 0)]:
        with pytest.raises(ValueError, match="power of two"):
            _chainhash.complete_root(joined, start, size)


def test_verify_reports_the_same_with_either_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A whole verify, in this process, with the C loop and with the Python
    loop it falls back to: the same verdict and counts on a clean lake, the
    same findings on a tampered one."""
    sys.path.insert(0, str(Path(__file__).parent))
    from test_seal import _queue, _sealer  # noqa: PLC0415 - the seal tests' lake builder

    from auditlake.collector.integrity.verify import verify_lake  # noqa: PLC0415

    data = tmp_path / "data"
    sealer = _sealer(data, max_rows=250)
    _queue(sealer, 6)
    sealer.seal_pending()
    sealer.stop()
    monkeypatch.setenv("AUDITLAKE_VERIFY_PARALLEL_MIN_EVENTS", "0")

    def both() -> tuple[VerifyReport, VerifyReport]:
        c_loop = verify_lake(data)
        with monkeypatch.context() as m:
            m.setattr(parallel, "NATIVE", False)
            python_loop = verify_lake(data)
        assert (c_loop.hash_loop, python_loop.hash_loop) == ("C", "Python")
        return c_loop, python_loop

    c_loop, python_loop = both()
    assert c_loop.ok and python_loop.ok
    assert c_loop.events_hashed == python_loop.events_hashed == 1_500
    assert c_loop.tree_heads == python_loop.tree_heads > 0

    victim = sorted(data.glob("lake/events/*/*.parquet"))[1]
    table = pq.read_table(victim)
    users = table.column("user_id").to_pylist()
    users[9] = "mallory"
    pq.write_table(table.set_column(table.schema.get_field_index("user_id"), "user_id", pa.array(users)), victim)
    c_loop, python_loop = both()
    assert not c_loop.ok
    assert [p.to_json() for p in c_loop.problems] == [p.to_json() for p in python_loop.problems]
    assert {p.kind for p in c_loop.problems} >= {"changed_event", "changed_file"}
