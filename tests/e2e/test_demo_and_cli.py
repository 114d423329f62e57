"""The README's first command (`make demo`) in its non-interactive form, and
the query command's formats and errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import run_cli
from tests.wire_client import WireClient, make_event

ROOT = Path(__file__).resolve().parents[2]


def test_demo_runs_end_to_end_and_answers_the_compliance_questions(tmp_path) -> None:  # noqa: ANN001
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "demo.py"), "--no-serve",
                          "--data", str(tmp_path / "demo"), "--rounds", "40"],
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    recorded = int(text.split("recorded ")[1].split()[0])
    assert f"queryable in the lake: {recorded} of {recorded} events" in text
    for question in ("Who viewed patient acme-p001", "Failed logins by IP", "Permission changes"):
        assert question in text
    assert "203.0.113.66" in text  # the failed-login source the app uses
    assert "permission_grant" in text
    assert "== Integrity: auditlake verify" in text and "signed head" in text


def test_query_formats_and_bad_sql(collector) -> None:  # noqa: ANN001
    client = WireClient(collector.endpoint)
    try:
        client.export([make_event(i, user_agent='agent, "quoted"') for i in range(3)], key=collector.api_key("acme"))
    finally:
        client.close()
    collector.wait_for_count(3)
    sql = "SELECT resource_id, user_agent FROM events ORDER BY resource_id"
    csv_out = run_cli("query", "--format", "csv", sql, data=collector.data).stdout
    assert csv_out.splitlines()[0] == "resource_id,user_agent"
    assert csv_out.splitlines()[1] == 'p-0,"agent, ""quoted"""'
    lines = run_cli("query", "--format", "jsonl", sql, data=collector.data).stdout.splitlines()
    assert [json.loads(x)["resource_id"] for x in lines] == ["p-0", "p-1", "p-2"]
    document = run_cli("query", "--format", "json", sql, data=collector.data).stdout
    assert json.loads(document) == [{"resource_id": f"p-{i}", "user_agent": 'agent, "quoted"'} for i in range(3)]
    assert [json.loads(x) for x in lines] == json.loads(document)  # the same rows, two framings
    table = run_cli("query", sql, data=collector.data).stdout
    assert "(3 rows)" in table and "resource_id" in table.splitlines()[0]
    bad = run_cli("query", "SELECT nope FROM events", data=collector.data, check=False)
    assert bad.returncode == 2
    assert "nope" in bad.stderr and "Traceback" not in bad.stderr


def test_query_on_an_empty_lake_sees_an_empty_events_view(tmp_path) -> None:  # noqa: ANN001
    out = run_cli("query", "--format", "json", "SELECT count(*) AS n, max(created_at) AS m FROM events",
                  data=tmp_path / "empty")
    assert json.loads(out.stdout) == [{"n": 0, "m": None}]
    # No rows: json is still one document, jsonl prints nothing.
    none = "SELECT id FROM events WHERE false"
    assert json.loads(run_cli("query", "--format", "json", none, data=tmp_path / "empty").stdout) == []
    assert run_cli("query", "--format", "jsonl", none, data=tmp_path / "empty").stdout == ""


def test_query_help_names_every_format() -> None:
    out = run_cli("query", "--help").stdout
    for name, says in (("json", "one JSON document"), ("jsonl", "JSON Lines"), ("csv", "RFC 4180")):
        assert f"{name}: {says}" in " ".join(out.split()), out
