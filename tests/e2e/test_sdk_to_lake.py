"""The whole path: an application process records through the SDK, a real
collector stores, `auditlake query` answers — every field intact."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

HERE = Path(__file__).parent


def _record_in_child(collector, n: int, tmp_path: Path) -> dict:  # noqa: ANN001
    env = {
        **os.environ,
        "AUDITLAKE_ENDPOINT": collector.endpoint,
        "AUDITLAKE_API_KEY": collector.api_key("acme", "globex"),
        "AUDITLAKE_SPOOL_DIR": str(tmp_path / "spool"),
    }
    env.pop("AUDITLAKE_SERVICE_NAME", None)
    out = subprocess.run([sys.executable, str(HERE / "sdk_child.py"), str(n)], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_thousand_events_from_another_process_arrive_exactly_and_intact(collector, tmp_path) -> None:  # noqa: ANN001
    result = _record_in_child(collector, 1000, tmp_path)
    assert result["ok"] is True
    assert collector.wait_for_count(1000) == 1000
    rows = collector.query("SELECT *, CAST(created_at AS VARCHAR) AS created_text FROM events ORDER BY resource_id")
    assert len(rows) == 1000
    assert len({r["id"] for r in rows}) == 1000
    by_resource = {r["resource_id"]: r for r in rows}
    for sent in result["events"]:
        got = by_resource[sent["resource_id"]]
        for field in ("action", "resource_type", "user_id", "tenant_id", "ip_address", "user_agent",
                      "outcome", "reason", "request_id"):
            assert got[field] == sent[field], (field, got, sent)
        assert json.loads(got["changes"]) == {
            "total": {"before": sent["changes"]["total"]["before"], "after": sent["changes"]["total"]["after"]},
            "note": {"before": None, "after": sent["changes"]["note"]["after"]},
        }
        assert json.loads(got["metadata"]) == sent["metadata"]
        assert got["service"] == "billing-api"  # from the OpenTelemetry Resource
        assert got["trace_id"] == result["trace_id"] and got["span_id"] == result["span_id"]
        ident = uuid.UUID(got["id"])
        assert ident.version == 7
        created = dt.datetime.fromisoformat(got["created_at"])
        assert result["t0"] - 1 <= created.timestamp() <= result["t1"] + 1
        # The Hive partition is the UTC date of created_at.
        assert got["date"] == created.astimezone(dt.UTC).date().isoformat()
        assert got["writer_id"] and got["seq"] >= 1 and len(got["chain_hash"]) == 64
        assert got["imported"] is False
    # UUIDv7 ids sort in creation order within one process.
    ordered = collector.query("SELECT id FROM events ORDER BY created_at, id")
    assert [r["id"] for r in ordered] == sorted(r["id"] for r in ordered)
    files = list((collector.data / "lake" / "events").glob("date=*/*.parquet"))
    assert files and all(f.parent.name.startswith("date=") for f in files)


def test_events_dated_on_other_days_land_in_their_own_partitions(collector) -> None:  # noqa: ANN001
    from tests.wire_client import WireClient, make_event

    key = collector.api_key("acme")
    day_us = 86_400 * 1_000_000
    now = make_event()["created_at_us"]
    events = [make_event(i, created_at_us=now - (i % 3) * day_us) for i in range(9)]
    client = WireClient(collector.endpoint)
    try:
        client.export(events, key=key)
    finally:
        client.close()
    collector.wait_for_count(9)
    rows = collector.query(
        "SELECT date, count(*) AS n, bool_and(date = CAST(created_at AS DATE)) AS same"
        " FROM events GROUP BY date ORDER BY date"
    )
    assert [r["n"] for r in rows] == [3, 3, 3]
    assert all(r["same"] for r in rows)
    dirs = sorted(p.name for p in (collector.data / "lake" / "events").iterdir())
    assert dirs == [f"date={r['date']}" for r in rows]
