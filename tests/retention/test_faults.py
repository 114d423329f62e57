"""Fault injection: the retention job killed (exit 137, like kill -9) at each
step, and the cold store failing mid-copy.  Afterwards every event is
queryable exactly once, a rerun finishes the job, and verify is clean."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from auditlake.collector.retention.interrupts import FAIL_ENV, FAIL_POINTS
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


def _assert_whole_days(counts: dict[str, int], expected: dict[str, int], expirable: set[str]) -> None:
    """Each day complete (or, only for days the policy deletes, entirely gone)."""
    for day, n in expected.items():
        if day in expirable:
            assert counts.get(day, 0) in (0, n), f"{day}: {counts.get(day)} of {n} events"
        else:
            assert counts.get(day) == n, f"{day}: {counts.get(day)} of {n} events"


@pytest.mark.parametrize("step", FAIL_POINTS)
def test_killed_at_each_step_then_rerun_finishes(small_history, tmp_path: Path, step: str) -> None:
    data, expected = small_history
    # Six days move (three groups of two), two of them then expire.
    write_policy(data, hot_days=38, delete_after_days=42, minimum_days=0, cold=(tmp_path / "cold").as_uri())
    expirable = {d for d in expected if d < _day(42)}
    crashed = run_retention(data, env={FAIL_ENV: step, "AUDITLAKE_RETENTION_GROUP_DAYS": "2"}, check=False)
    assert crashed.returncode == 137, f"the job never reached step {step}:\n{crashed.stdout}\n{crashed.stderr}"
    _assert_whole_days(counts_by_date(data), expected, expirable)
    rerun = run_retention(data)
    assert "error" not in rerun.stdout, rerun.stdout
    assert counts_by_date(data) == {d: n for d, n in expected.items() if d not in expirable}
    assert not {d for d in expected if d < _day(38)} & hot_dates(data)
    # Each move and expiry announced exactly once, even when the crash hit
    # between the signed checkpoint and its meta-audit event.
    moves = sorted(e["resource_id"] for e in system_events(data, "retention_move"))
    assert moves == sorted(d for d in expected if d < _day(38))
    assert sorted(e["resource_id"] for e in system_events(data, "retention_expire")) == sorted(expirable)
    assert_verify_clean(data)


def test_cold_dir_failing_mid_copy_keeps_hot_and_rerun_finishes(small_history, tmp_path: Path) -> None:
    data, expected = small_history
    cold = tmp_path / "cold"
    write_policy(data, hot_days=38, cold=cold.as_uri())
    blocker = cold / "events" / f"date={_day(40)}"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("not a directory: the store refuses this partition")
    failed = run_retention(data, env={"AUDITLAKE_RETENTION_GROUP_DAYS": "2"}, check=False)
    assert failed.returncode == 1 and "the next run continues" in failed.stdout, failed.stdout
    assert _day(40) in hot_dates(data) and _day(44) not in hot_dates(data)
    assert counts_by_date(data) == expected
    blocker.unlink()
    run_retention(data)
    assert counts_by_date(data) == expected
    assert not {d for d in expected if d < _day(38)} & hot_dates(data)
    assert_verify_clean(data)
