"""JSON lines and OCSF exports: DuckDB writes each line during the scan
(collector/lake/encode.py).  Any stored value comes back exactly, each OCSF
line is the documented mapping of its event (tests/ocsf_reference.py), the
file leaves in bounded chunks that advance the progress counters, and the
manifest hashes exactly what was sent.  Goes through the real path: a
Parquet file in the lake layout, DuckDB, the streaming exporter."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auditlake.collector.admin.export import _OCSF_BATCH_ROWS, ExportRun
from auditlake.collector.admin.search import Filter, LakeReader
from auditlake.collector.schema import EVENT_SCHEMA
from auditlake.collector.storage.datadir import DataDir
from tests.ocsf_reference import ocsf_event

DAY = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
ACTIONS = ["create", "read", "update", "delete", "login", "login_failed", "logout", "export"]
OUTCOMES = ["success", "failure", "denied"]
ODD = ['quote "q"', "bracket ]", "back\\slash", "naïve ✓ 日本 😀", "line\nbreak\r", "", "tab\tnul\x00",
       "\u2028sep", "=1+1", "</script>"]

# Any Unicode text; lone surrogates are not UTF-8 and cannot be stored.
texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
# changes and metadata: ingest stores JSON objects only.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=8,
)
json_objects = st.dictionaries(texts, json_values, max_size=4).map(json.dumps)


def stored_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Rows (any subset of the stored columns) filled in to full stored events."""
    cols: dict[str, list[Any]] = {f.name: [] for f in EVENT_SCHEMA}
    for i, given_row in enumerate(rows):
        row = {
            "id": f"id-{i}", "tenant_id": "acme", "user_id": ODD[i % len(ODD)] or "u",
            "action": ACTIONS[i % len(ACTIONS)], "resource_type": "doc", "resource_id": ODD[(i + 1) % len(ODD)],
            "changes": json.dumps({"x": {"before": i, "after": ODD[i % len(ODD)]}}) if i % 2 else "{}",
            "ip_address": "" if i % 4 == 0 else f"10.0.0.{i % 250}", "user_agent": ODD[(i + 2) % len(ODD)],
            "created_at": DAY + dt.timedelta(microseconds=997 * i), "outcome": OUTCOMES[i % 3],
            "reason": "" if i % 3 == 0 else ODD[i % len(ODD)], "service": "svc",
            "trace_id": "" if i % 2 else "ab" * 16, "span_id": "" if i % 2 else "cd" * 8,
            "request_id": "" if i % 5 == 0 else f"r{i}", "metadata": json.dumps({"k": ODD[i % len(ODD)]}),
            "received_at": DAY + dt.timedelta(microseconds=997 * i + 5), "writer_id": "w1",
            "ingest_key_id": "k1", "seq": i + 1, "imported": i % 7 == 0, "clock_skew": i % 11 == 0,
            "chain_hash": f"{i:064x}",
            **given_row,
        }
        for k, v in row.items():
            cols[k].append(v)
    return pa.Table.from_arrays([pa.array(cols[f.name], f.type) for f in EVENT_SCHEMA], schema=EVENT_SCHEMA)


class Exported:
    """An export's chunks, the row counter after each one, and its manifest."""

    def __init__(self, chunks: list[bytes], rows_after: list[int], run: ExportRun) -> None:
        self.chunks, self.rows_after, self.run = chunks, rows_after, run
        self.data = b"".join(chunks)

    def lines(self) -> list[Any]:
        assert self.data.endswith(b"\n") or not self.data
        return [json.loads(line) for line in self.data.split(b"\n")[:-1]]


def export(table: pa.Table, fmt: str) -> Exported:
    """Store ``table`` as one Parquet file of the lake and export it in ``fmt``."""
    root = Path(tempfile.mkdtemp())
    try:
        folder = root / "lake" / "events" / f"date={DAY.date()}"
        folder.mkdir(parents=True)
        pq.write_table(table, folder / "part-test.parquet")
        reader = LakeReader(DataDir(root))
        try:
            run = ExportRun(reader, Filter(), None, fmt, f"t.{fmt}")
            chunks: list[bytes] = []
            rows_after: list[int] = []
            for chunk in run.chunks():
                chunks.append(chunk)
                rows_after.append(run.rows)
        finally:
            reader.close()
    finally:
        shutil.rmtree(root)
    return Exported(chunks, rows_after, run)


@pytest.fixture(scope="module")
def awkward() -> pa.Table:
    return stored_table([{} for _ in range(240)])


def test_each_ocsf_line_is_the_documented_mapping_of_its_event(awkward: pa.Table) -> None:
    out = export(awkward, "ocsf")
    assert out.lines() == [ocsf_event(r) for r in awkward.to_pylist()]
    assert out.run.rows == awkward.num_rows


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(st.fixed_dictionaries({
    "user_id": texts, "action": st.sampled_from(ACTIONS) | texts, "outcome": st.sampled_from(OUTCOMES) | texts,
    "reason": texts, "resource_id": texts, "ip_address": texts, "user_agent": texts, "trace_id": texts,
    "request_id": texts, "changes": json_objects, "metadata": json_objects,
    "created_at": st.datetimes(dt.datetime(1970, 1, 1), dt.datetime(9999, 1, 1), timezones=st.just(dt.UTC)),
}), min_size=1, max_size=8))
def test_any_stored_text_gives_valid_ocsf_and_jsonl_that_keep_every_value(rows: list[dict[str, Any]]) -> None:
    table = stored_table(rows)
    stored = table.to_pylist()
    assert export(table, "ocsf").lines() == [ocsf_event(r) for r in stored]
    for line, row in zip(export(table, "jsonl").lines(), stored, strict=True):
        assert line == {k: v.strftime("%Y-%m-%dT%H:%M:%S.%fZ") if isinstance(v, dt.datetime) else v
                        for k, v in row.items()}


def test_a_line_is_compact_json_with_values_as_stored() -> None:
    # The bytes of one line of each format, pinned: readers may compare files.
    table = stored_table([{"action": "update", "outcome": "success", "user_id": "ünï \"q\"",
                           "changes": '{"a": 1}', "metadata": "{}", "ip_address": "10.0.0.1",
                           "user_agent": "", "trace_id": "", "span_id": "", "request_id": "r1", "imported": False,
                           "clock_skew": False, "created_at": DAY, "received_at": DAY}])
    ocsf = export(table, "ocsf").data
    assert ocsf == (
        '{"class_uid":6003,"class_name":"API Activity","category_uid":6,"category_name":"Application Activity",'
        '"activity_id":3,"activity_name":"Update","type_uid":600303,"severity_id":1,"severity":"Informational",'
        '"time":1767312000000,"status_id":1,"status":"Success","metadata":{"version":"1.3.0","uid":"id-0",'
        '"tenant_uid":"acme","logged_time":1767312000000,"product":{"name":"auditlake","vendor_name":"auditlake"},'
        '"log_name":"audit"},"actor":{"user":{"uid":"ünï \\"q\\"","type_id":0}},"src_endpoint":{"ip":"10.0.0.1"},'
        '"unmapped":{"action":"update","outcome":"success","changes":{"a": 1},"metadata":{},"writer_id":"w1",'
        '"seq":1,"chain_hash":"' + "0" * 64 + '","imported":false,"clock_skew":false},'
        '"api":{"operation":"update","service":{"name":"svc"},"request":{"uid":"r1"}},'
        '"resources":[{"type":"doc","uid":"bracket ]"}]}\n').encode()
    jsonl = export(table, "jsonl").data
    assert jsonl == (
        '{"id":"id-0","tenant_id":"acme","user_id":"ünï \\"q\\"","action":"update","resource_type":"doc",'
        '"resource_id":"bracket ]","changes":"{\\"a\\": 1}","ip_address":"10.0.0.1","user_agent":"",'
        '"created_at":"2026-01-02T00:00:00.000000Z","outcome":"success","reason":"","service":"svc",'
        '"trace_id":"","span_id":"","request_id":"r1","metadata":"{}",'
        '"received_at":"2026-01-02T00:00:00.000000Z","writer_id":"w1","ingest_key_id":"k1","seq":1,'
        '"imported":false,"clock_skew":false,"chain_hash":"' + "0" * 64 + '"}\n').encode()


@pytest.mark.parametrize("fmt", ["ocsf", "jsonl"])
def test_a_long_export_leaves_in_bounded_chunks_that_advance_progress(fmt: str) -> None:
    n = 3 * _OCSF_BATCH_ROWS + 123
    table = stored_table([{} for _ in range(n)])
    out = export(table, fmt)
    if fmt == "ocsf":  # a hung-up download stops within a chunk of a few thousand events
        assert len(out.chunks) >= 4
        assert all(b - a <= 2 * _OCSF_BATCH_ROWS for a, b in zip([0, *out.rows_after], out.rows_after, strict=False))
    assert out.rows_after == sorted(out.rows_after) and out.rows_after[-1] == n
    assert all(c.endswith(b"\n") for c in out.chunks)  # a chunk never cuts a line
    assert [line["seq"] if fmt == "jsonl" else line["unmapped"]["seq"] for line in out.lines()] == list(
        range(1, n + 1))
    manifest = out.run.manifest
    assert manifest is not None
    assert manifest["sha256"] == hashlib.sha256(out.data).hexdigest()
    assert (manifest["rows"], manifest["bytes"], manifest["format"]) == (n, len(out.data), fmt)
