"""Each stored event names the ingest key that delivered it: ``ingest_key_id``
holds the key's id (never its secret), is covered by the hash chain, and is
empty for the collector's own events (read audit, imports), so a tenant's key
cannot pass its events off as the collector's (issue 17).  Lakes sealed before
the column existed keep verifying, querying and compacting."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.parquet as pq

from auditlake.collector.admin.export import ExportRun
from auditlake.collector.admin.search import Filter, LakeReader
from auditlake.collector.ingest.receive import WIRE_SCHEMA
from auditlake.collector.integrity.verify import verify_lake
from auditlake.collector.lake.batch import AcceptedBatch
from auditlake.collector.lake.files import PARQUET_OPTIONS
from auditlake.collector.schema import COLUMNS, EVENT_SCHEMA, LEGACY_EVENT_SCHEMA
from auditlake.collector.storage.datadir import DataDir
from tests.admin.conftest import add_users, wait_count
from tests.admin.conftest import lake_rows as rows
from tests.collector.synthetic_lake import BASE, SyntheticWriter, event_rows
from tests.conftest import CollectorProcess, run_cli
from tests.wire_client import WireClient, make_event

ROOT = Path(__file__).resolve().parents[2]
AUDITOR = ROOT / "docs" / "auditor_verify.py"
DAY_US = 86_400 * 1_000_000


def key_id(token: str) -> str:
    """The id part of an ingest key ``alk_<key_id>_<secret>``."""
    return token.removeprefix("alk_").split("_", 1)[0]


def auditor(data: Path) -> dict[str, object]:
    """docs/auditor_verify.py's verdict (it imports nothing from auditlake)."""
    proc = subprocess.run([sys.executable, str(AUDITOR), str(data), "--public-key",
                           str(data / "keys" / "signing.pub.pem")],
                          capture_output=True, text=True, timeout=120)
    assert proc.stdout, proc.stderr
    out: dict[str, object] = json.loads(proc.stdout)
    return out


def test_each_event_names_its_ingest_key_in_the_chain_and_the_collectors_own_name_none(
        tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    tokens = add_users(data)
    collector = CollectorProcess(data, http=True)
    collector.start()
    try:
        key_a, key_b = collector.api_key("acme"), collector.api_key("globex")
        client = WireClient(collector.endpoint)
        now = int(time.time() * 1_000_000)
        try:
            assert client.export([make_event(i, tenant_id="acme", created_at_us=now - DAY_US + i)
                                  for i in range(5)], key_a).accepted == 5
            assert client.export([make_event(i, tenant_id="globex", created_at_us=now - DAY_US + i)
                                  for i in range(5, 8)], key_b).accepted == 3
        finally:
            client.close()
        assert collector.wait_for_count(8, "service = 'tests'") == 8
        with httpx.Client(base_url=collector.http_url, timeout=30,
                          headers={"Authorization": f"Bearer {tokens['alice']}"}) as api:
            assert api.get("/api/v1/events", params={"tenant": "acme"}).status_code == 200
        assert wait_count(data, "user_id = 'alice' AND resource_type = 'audit_log'", 1) == 1
    finally:
        assert collector.stop() == 0
    src = tmp_path / "history.jsonl"
    src.write_text('{"created_at": "2021-01-02T03:04:05Z", "action": "read", "resource_type": "doc"}\n')
    run_cli("import", "--quiet", "--tenant", "acme", str(src), data=data)

    # The CLI shows the key of each event; the secret is stored nowhere in the lake.
    out = run_cli("query", "--format", "jsonl", "SELECT tenant_id, ingest_key_id, count(*) AS n FROM events "
                  "WHERE service = 'tests' GROUP BY ALL ORDER BY tenant_id", data=data).stdout
    assert [json.loads(line) for line in out.splitlines()] == [
        {"tenant_id": "acme", "ingest_key_id": key_id(key_a), "n": 5},
        {"tenant_id": "globex", "ingest_key_id": key_id(key_b), "n": 3}]
    own = rows(data, "SELECT action, imported, ingest_key_id FROM events WHERE service <> 'tests' "
                     "OR imported ORDER BY action")
    assert {r["action"] for r in own} >= {"read", "import"} and any(r["imported"] for r in own)
    assert all(r["ingest_key_id"] == "" for r in own), own
    for path in (data / "lake" / "events").glob("date=*/*.parquet"):
        assert pq.read_schema(path).field("ingest_key_id") == EVENT_SCHEMA.field("ingest_key_id")
        assert key_a.split("_", 2)[2].encode() not in path.read_bytes()
    assert run_cli("verify", data=data).returncode == 0
    assert auditor(data)["ok"] is True

    # Claiming another key for one event breaks its link, and verify names it.
    tampered = tmp_path / "tampered"
    shutil.copytree(data, tampered, ignore=shutil.ignore_patterns(".lock"))
    target = next(p for p in sorted((tampered / "lake" / "events").glob("date=*/*.parquet"))
                  if key_id(key_a) in pq.read_table(p).column("ingest_key_id").to_pylist())
    t = pq.read_table(target)
    keys = t.column("ingest_key_id").to_pylist()
    row = keys.index(key_id(key_a))
    keys[row] = key_id(key_b)
    i = t.schema.get_field_index("ingest_key_id")
    pq.write_table(t.set_column(i, t.schema.field(i), pa.array(keys, pa.string())), target,
                   **PARQUET_OPTIONS)  # type: ignore[arg-type]
    seq = t.column("seq")[row].as_py()
    report = verify_lake(tampered)
    assert not report.ok
    named = [p for p in report.problems if p.kind == "changed_event"]
    assert [(p.seq, Path(p.file or "").name) for p in named] == [(seq, target.name)], report.to_text()
    assert run_cli("verify", data=tampered, check=False).returncode != 0
    assert auditor(tampered)["ok"] is False


def _wire(n: int, start_us: int) -> pa.Table:
    """``n`` valid events as wire columns (what ingest hands the lake)."""
    cols = {name: pa.array([""] * n, pa.string()) for name in WIRE_SCHEMA.names if name != "created_at"}
    cols["id"] = pa.array([f"00000000-0000-4000-8000-{i:012d}" for i in range(n)])
    cols["tenant_id"] = pa.array(["acme"] * n)
    cols["action"] = pa.array(["update"] * n)
    cols["resource_type"] = pa.array(["doc"] * n)
    cols["outcome"] = pa.array(["success"] * n)
    cols["changes"] = cols["metadata"] = pa.array(["{}"] * n)
    created = pa.array([start_us + i for i in range(n)], pa.int64()).cast(WIRE_SCHEMA.field("created_at").type)
    return pa.Table.from_arrays([created if f.name == "created_at" else cols[f.name] for f in WIRE_SCHEMA],
                                schema=WIRE_SCHEMA)


def test_a_lake_sealed_before_the_column_still_verifies_queries_and_compacts(tmp_path: Path) -> None:
    from auditlake.collector.ingest.inbox import submit

    data = DataDir(tmp_path / "data")
    # Two seals by the old code: files without ingest_key_id, hashed without it.
    old = SyntheticWriter(data, writer_id=data.writer_id(), schema=LEGACY_EVENT_SCHEMA)
    old.seal(event_rows(6, days=1))
    old.seal(event_rows(4, start=6, days=1))
    # ... and the old collector's seal state, which the new one carries on from.
    (data.state / "seal.json").write_text(json.dumps({
        "seal": old.seal_no, "seq": old.seq, "chain_hash": old.chain_hash, "wal_segment": 0,
        "wal_offset": 0, "checkpoint_digest": old.previous, "last": None}))
    files = sorted(data.events.glob("date=*/*.parquet"))
    assert files and all("ingest_key_id" not in pq.read_schema(p).names for p in files)
    assert verify_lake(data).ok
    assert rows(data.root, "SELECT count(*) AS n FROM events")[0]["n"] == 10
    # A lake of old files only (the first thing an upgraded collector reads):
    # the column reads as NULL everywhere, and every export format works.
    assert rows(data.root, "SELECT count(ingest_key_id) AS k FROM events") == [{"k": 0}]
    only_old = LakeReader(data)
    try:
        assert len(only_old.page(Filter(), None, limit=100, columns=COLUMNS).rows) == 10
        for fmt in ("csv", "jsonl", "ocsf"):
            run = ExportRun(only_old, Filter(), None, fmt, f"old.{fmt}")
            assert b"".join(run.chunks()) and run.rows == 10, fmt
        run = ExportRun(only_old, Filter(), None, "csv", "old.csv")
        run.copy_csv(tmp_path / "old.csv")
        assert run.rows == 10
    finally:
        only_old.close()

    # The new code continues the same chain, in the same day, with the column.
    base_us = int(BASE.timestamp() * 1_000_000)
    submit(data, _wire(5, base_us + 3_600_000_000), imported=True)
    submit(data, _wire(5, base_us + 7_200_000_000).set_column(
        0, "id", pa.array([f"00000000-0000-4000-8000-1{i:011d}" for i in range(5)])), imported=True)
    report = verify_lake(data)
    assert report.ok, report.to_text()
    assert report.events == report.events_hashed == 20
    assert auditor(data.root)["ok"] is True

    # Readers see every event; the old ones have no key (NULL), the new ones "".
    got = rows(data.root, "SELECT count(*) AS n, count(ingest_key_id) AS keyed, "
                          "count(*) FILTER (WHERE ingest_key_id = '') AS empty FROM events")
    assert got == [{"n": 20, "keyed": 10, "empty": 10}]
    out = run_cli("query", "--format", "jsonl", "SELECT count(*) AS n FROM events", data=data.root).stdout
    assert json.loads(out) == {"n": 20}
    reader = LakeReader(data)  # the admin UI's reader: its fast path assumes one schema
    try:
        page = reader.page(Filter(), None, limit=100, columns=COLUMNS)
        assert len(page.rows) == 20
        assert sorted(r["ingest_key_id"] is None for r in page.rows) == [False] * 10 + [True] * 10
        event = reader.event(page.rows[0]["id"], None)
        assert event is not None and "ingest_key_id" in event
    finally:
        reader.close()

    # Compaction merges old files only with old files, new with new: the
    # hashes stay verifiable under each file's own encoding.
    out = run_cli("compact", "--day", BASE.date().isoformat(), "--delete-now", data=data.root).stdout
    assert "4 files -> 2 (20 rows)" in out, out
    merged = sorted(data.events.glob("date=*/*.parquet"))
    assert sorted("ingest_key_id" in pq.read_schema(p).names for p in merged) == [False, True]
    report = verify_lake(data)
    assert report.ok, report.to_text()
    assert report.events_hashed == 20
    assert auditor(data.root)["ok"] is True
    assert sum(pq.read_metadata(p).num_rows for p in merged) == 20


def test_the_write_ahead_log_carries_the_key_and_still_reads_records_written_before() -> None:
    table = _wire(2, 0)
    batch = AcceptedBatch.decode(AcceptedBatch("k1/b", 7, table, ingest_key_id="k1").encode())
    assert (batch.batch_id, batch.received_at_us, batch.ingest_key_id, batch.imported) == ("k1/b", 7, "k1", False)
    assert batch.table.equals(table)
    # A record of the format before the key was stored: header, batch id, Arrow IPC.
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    old = struct.pack("<4sqBH", b"ALB1", 9, 1, 3) + b"imp" + sink.getvalue().to_pybytes()
    batch = AcceptedBatch.decode(old)
    assert (batch.batch_id, batch.received_at_us, batch.ingest_key_id, batch.imported) == ("imp", 9, "", True)
    assert batch.table.equals(table)
