"""`auditlake import`: history from CSV / JSON lines keeps its timestamps,
lands in the right partitions chained and signed, marked imported."""

from __future__ import annotations

import csv
import uuid
from pathlib import Path

from tests.conftest import run_cli
from tests.retention.conftest import assert_verify_clean, system_events


def _query(data: Path, sql: str) -> list[tuple[object, ...]]:
    from auditlake.collector.lake.query import connect
    from auditlake.collector.storage.datadir import DataDir

    con = connect(DataDir(data))
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_import_csv_keeps_timestamps_marks_imported_and_reports_bad_lines(tmp_path: Path) -> None:
    data = tmp_path / "data"
    src = tmp_path / "auditlog.csv"
    with open(src, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["timestamp", "actor", "action", "object_type", "object_pk", "remote_addr", "legacy"])
        w.writerow(["2021-03-04T05:06:07.123456Z", "alice", "update", "invoice", "17", "10.0.0.1", "x1"])
        w.writerow(["2021-03-05 23:59:59", "bob", "delete", "invoice", "18", "", ""])
        w.writerow(["not a date", "carol", "read", "invoice", "19", "", ""])  # line 4
        w.writerow(["2021-03-06T00:00:00+02:00", "dave", "", "invoice", "20", "", ""])  # line 5: no action
        w.writerow(["2021-03-06T10:00:00Z", "erin", "login", "session", "multi\nline", "", ""])  # lines 6-7
        w.writerow(["2021-03-07T10:00:00Z", "frank", "read", "invoice", "21", "", ""])  # line 8
    proc = run_cli("import", "--tenant", "acme", "--format", "csv", str(src),
                   "--map", "timestamp=created_at", "--map", "actor=user_id", "--map", "object_type=resource_type",
                   "--map", "object_pk=resource_id", "--map", "remote_addr=ip_address", data=data, check=False)
    assert proc.returncode == 3, proc.stderr
    assert "line 4: field 'created_at'" in proc.stderr
    assert "line 5: field 'action' is required" in proc.stderr
    assert "import auditlog.csv [" in proc.stderr  # the progress bar
    assert "imported 4 of 6 rows" in proc.stdout

    rows = _query(data, "SELECT user_id, CAST(date AS VARCHAR), created_at, imported, clock_skew, id, metadata, "
                        "resource_id FROM events WHERE tenant_id = 'acme' ORDER BY created_at")
    assert [(r[0], r[1]) for r in rows] == [
        ("alice", "2021-03-04"), ("bob", "2021-03-05"), ("erin", "2021-03-06"), ("frank", "2021-03-07")]
    assert rows[0][2].isoformat() == "2021-03-04T05:06:07.123456+00:00"
    assert all(r[3] is True and r[4] is False for r in rows)
    assert all(uuid.UUID(r[5]).version == 7 for r in rows)
    assert '"legacy": "x1"' in rows[0][6]  # unknown columns are kept in metadata
    assert rows[2][7] == "multi\nline"
    meta = system_events(data, "import")
    assert len(meta) == 1 and '"rejected": 2' in meta[0]["metadata"] and '"tenant": "acme"' in meta[0]["metadata"]
    assert_verify_clean(data)
    # an imported event has its Merkle proof like any other (docs/integrity.md section 8)
    out = data.parent / "proof.json"
    run_cli("proof", rows[0][5], "--output", str(out), data=data)
    checked = run_cli("proof", "verify", str(out), "--public-key", str(data / "keys" / "signing.pub.pem"))
    assert f"OK: event {rows[0][5]}" in checked.stdout


def test_reimporting_the_same_file_stores_each_event_once(tmp_path: Path) -> None:
    data = tmp_path / "data"
    src = tmp_path / "h.jsonl"
    src.write_text("".join(
        f'{{"created_at": "2020-01-0{d}T12:00:00Z", "action": "read", "resource_type": "doc", "user_id": "u"}}\n'
        for d in range(1, 8)
    ) + '{"created_at": "2020-01-09T12:00:00Z", "tenant_id": "other", "action": "read", "resource_type": "doc"}\n')
    first = run_cli("import", "--tenant", "acme", str(src), "--chunk-rows", "3", data=data, check=False)
    assert first.returncode == 3 and "line 8: field 'tenant_id'" in first.stderr
    run_cli("import", "--tenant", "acme", str(src), "--chunk-rows", "3", data=data, check=False)
    n, distinct, days = _query(data, "SELECT count(*), count(DISTINCT id), count(DISTINCT date) FROM events "
                                     "WHERE tenant_id = 'acme'")[0]
    assert (n, distinct, days) == (7, 7, 7)
    assert len(system_events(data, "import")) == 1
    assert_verify_clean(data)
