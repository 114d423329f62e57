"""Retention to a local cold directory: move, query across tiers, expire
with tombstones, legal holds, policy refusal, dry run, late events, serve."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import CollectorProcess, run_cli
from tests.retention.conftest import (
    assert_verify_clean,
    counts_by_date,
    hot_dates,
    run_retention,
    system_events,
    today,
    write_policy,
)


def _day(n: int) -> str:
    return (today() - dt.timedelta(days=n)).isoformat()


def _checkpoints(data: Path, kind: str) -> list[dict[str, object]]:
    return [json.loads(p.read_text()) for p in sorted(data.glob(f"checkpoints/*/*-{kind}.json"))]


def test_move_to_cold_keeps_each_event_queryable_once_and_verify_clean(small_history, tmp_path: Path) -> None:
    data, expected = small_history
    cold = tmp_path / "cold"
    write_policy(data, hot_days=30, cold=cold.as_uri())
    proc = run_retention(data)
    assert "moved 14 partitions" in proc.stdout, proc.stdout
    assert counts_by_date(data) == expected
    old = {d for d in expected if d < _day(30)}
    assert not old & hot_dates(data), "moved partitions are gone from the hot lake"
    assert {p.name[5:] for p in (cold / "events").glob("date=*")} == old
    moves = _checkpoints(data, "move")
    assert moves and all(f["path"].startswith("cold:events/") for m in moves for f in m["files"])
    for m in moves:  # the same files, same digests, now in cold
        assert [(f["sha256"], f["rows"], f["first_seq"]) for f in m["files"]] == \
               [(f["sha256"], f["rows"], f["first_seq"]) for f in m["removed"]]
    assert {e["resource_id"] for e in system_events(data, "retention_move")} == old
    assert_verify_clean(data)
    again = run_retention(data)  # idempotent
    assert "nothing to do" in again.stdout
    assert counts_by_date(data) == expected
    # The same through the command line query, which also reads both tiers.
    out = run_cli("query", "--format", "jsonl",
                  "SELECT count(*) AS n FROM events WHERE tenant_id <> '_auditlake'", data=data).stdout
    assert json.loads(out)["n"] == sum(expected.values())


def test_last_week_query_never_touches_cold(small_history, tmp_path: Path) -> None:
    data, expected = small_history
    cold = tmp_path / "cold"
    write_policy(data, hot_days=30, cold=cold.as_uri())
    run_retention(data)
    cold.rename(tmp_path / "cold-unreachable")  # the cold store is gone
    week = _day(7)
    out = run_cli("query", "--format", "jsonl",
                  f"SELECT count(*) AS n FROM events WHERE date >= DATE '{week}' AND tenant_id <> '_auditlake'",
                  data=data).stdout
    assert json.loads(out)["n"] == sum(n for d, n in expected.items() if d >= week)
    full = run_cli("query", "SELECT count(*) FROM events", data=data, check=False)
    assert full.returncode != 0, "a query over old dates must need the cold store (proves cold is really read)"


def test_expire_writes_tombstones_and_legal_holds_keep_partitions(small_history, tmp_path: Path) -> None:
    data, expected = small_history
    cold = tmp_path / "cold"
    held_range = (_day(30), _day(28))  # three days, every tenant
    write_policy(data, hot_days=10, delete_after_days=20, minimum_days=15, cold=cold.as_uri(), holds=(
        {"from": held_range[0], "to": held_range[1], "reason": "litigation 42"},
        {"tenant": "globex", "from": _day(44), "to": _day(41), "reason": "regulator request"},
        {"tenant": "nobody", "reason": "holds nothing"},
    ))
    proc = run_retention(data)
    assert "7 held" in proc.stdout, proc.stdout  # globex has events every day: 3 + 4 days held
    kept = {d for d in expected if held_range[0] <= d <= held_range[1]} | \
           {d for d in expected if _day(44) <= d <= _day(41)}
    gone = {d for d in expected if d < _day(20)} - kept
    assert len(gone) == 24 - 7
    after = counts_by_date(data)
    assert after == {d: n for d, n in expected.items() if d not in gone}
    tombstones = _checkpoints(data, "expire")
    assert tombstones
    removed = {f["path"] for t in tombstones for f in t["removed"]}
    assert {p.split("/")[1][5:] for p in removed} == gone
    for t in tombstones:
        extra = t["extra"]
        assert extra["policy"]["delete_after_days"] == 20
        assert {h["reason"] for h in extra["legal_holds"]} == {"litigation 42", "regulator request", "holds nothing"}
        for r in extra["ranges"]:
            entry = next(f for f in t["removed"] if f["path"] == r["path"])
            assert sum(last - first + 1 for first, last, _ in r["seq_ranges"]) == entry["rows"]
            assert all(len(h) == 64 for _, _, h in r["seq_ranges"])
    assert {e["resource_id"] for e in system_events(data, "retention_expire")} == gone
    assert not [p for d in gone for p in (cold / "events" / f"date={d}").glob("*.parquet")]
    report = assert_verify_clean(data)
    assert "expired by policy" in report.to_text()


def test_too_short_policy_is_refused_by_run_and_by_serve(small_history, tmp_path: Path) -> None:
    data, _ = small_history
    write_policy(data, hot_days=30, delete_after_days=90, cold=(tmp_path / "cold").as_uri())
    proc = run_retention(data, check=False)
    assert proc.returncode == 2
    assert "delete_after_days = 90" in proc.stderr and "minimum_days = 365" in proc.stderr
    serve = subprocess.run([sys.executable, "-m", "auditlake.collector", "serve", "--data", str(data),
                            "--grpc-listen", "127.0.0.1:0", "--http-listen", ""],
                           capture_output=True, text=True, timeout=60)
    assert serve.returncode == 2 and "minimum_days = 365" in serve.stderr
    write_policy(data, hot_days=30, delete_after_days=20, minimum_days=0, cold=(tmp_path / "cold").as_uri())
    proc = run_retention(data, check=False)
    assert proc.returncode == 2 and "shorter than hot_days = 30" in proc.stderr
    assert not (tmp_path / "cold").exists()


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file() and p.name != ".lock"}


def test_dry_run_prints_the_plan_and_changes_nothing(small_history, tmp_path: Path) -> None:
    data, _ = small_history
    write_policy(data, hot_days=30, delete_after_days=40, minimum_days=0, cold=(tmp_path / "cold").as_uri(),
                 holds=({"from": _day(42), "to": _day(42), "reason": "case 7"},))
    before = _tree(data)
    proc = run_retention(data, "--dry-run")
    assert "dry run: nothing changed" in proc.stdout
    assert f"{_day(35)}  move to cold" in proc.stdout
    assert f"{_day(44)}  expire (delete)" in proc.stdout
    assert f"{_day(42)}  keep (legal hold)" in proc.stdout and "case 7" in proc.stdout
    assert _tree(data) == before
    assert not (tmp_path / "cold").exists()


def test_late_event_for_a_moved_day_moves_on_the_next_run(small_history, tmp_path: Path) -> None:
    data, expected = small_history
    write_policy(data, hot_days=30, cold=(tmp_path / "cold").as_uri())
    run_retention(data)
    late_day = _day(35)
    cold_day = tmp_path / "cold" / "events" / f"date={late_day}"
    files_before = len(list(cold_day.glob("*.parquet")))
    src = tmp_path / "late.jsonl"
    src.write_text(json.dumps({"created_at": f"{late_day}T08:00:00Z", "action": "read",
                               "resource_type": "document", "user_id": "late"}) + "\n")
    run_cli("import", "--quiet", "--tenant", "acme", str(src), data=data)
    expected[late_day] += 1
    assert late_day in hot_dates(data)
    assert counts_by_date(data) == expected
    run_retention(data)
    assert late_day not in hot_dates(data)
    assert len(list(cold_day.glob("*.parquet"))) == files_before + 1
    assert counts_by_date(data) == expected
    assert_verify_clean(data)


def test_serve_runs_the_policy_on_schedule_and_takes_cli_runs(small_history, tmp_path: Path) -> None:
    data, expected = small_history
    write_policy(data, hot_days=30, cold=(tmp_path / "cold").as_uri(), schedule=1)
    collector = CollectorProcess(data).start()
    try:
        deadline = time.monotonic() + 60
        while any(d < _day(30) for d in hot_dates(data)) and time.monotonic() < deadline:
            time.sleep(0.3)
        assert not any(d < _day(30) for d in hot_dates(data)), collector.log()
        # A command-line run while the collector holds the data dir is handed to it.
        proc = run_retention(data, "--wait", "60")
        assert "retention run" in proc.stdout and "error" not in proc.stdout, proc.stdout
        assert counts_by_date(data) == expected
    finally:
        assert collector.stop() == 0
    assert len(system_events(data, "retention_move")) == 14
    assert_verify_clean(data)


@pytest.mark.parametrize("setting,value,message", [
    ("hot_days", 0, "hot_days must be at least 1"),
    ("schedule", "'sometimes'", "schedule"),
])
def test_bad_settings_name_the_setting(small_history, tmp_path: Path, setting: str, value: object,
                                       message: str) -> None:
    data, _ = small_history
    (data / "auditlake.toml").write_text(
        f"[retention]\ncold = '{(tmp_path / 'c').as_uri()}'\n{setting} = {value}\n")
    proc = run_retention(data, check=False)
    assert proc.returncode == 2 and message in proc.stderr
