"""Retention to S3 (a real moto S3-API server process on loopback): move,
query, verify, expire; a last-week query while S3 is down; an S3 outage in
the middle of a run."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import S3Server
from tests.retention.conftest import (
    assert_verify_clean,
    counts_by_date,
    hot_dates,
    run_retention,
    today,
    write_policy,
)


def _day(n: int) -> str:
    return (today() - dt.timedelta(days=n)).isoformat()


def _s3_keys(s3: S3Server, root: str) -> set[str]:
    import pyarrow.fs as pafs

    infos = s3.filesystem().get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    return {i.path for i in infos if i.type == pafs.FileType.File}


def test_move_query_verify_expire_on_s3(small_history, s3_server: S3Server) -> None:
    data, expected = small_history
    bucket = s3_server.bucket("cold-move")
    write_policy(data, hot_days=30, delete_after_days=40, minimum_days=0, cold=f"s3://{bucket}/lake",
                 endpoint_url=s3_server.endpoint)
    proc = run_retention(data)
    assert "moved 14 partitions" in proc.stdout and "expired 4 partitions" in proc.stdout, proc.stdout
    survivors = {d: n for d, n in expected.items() if d >= _day(40)}
    assert counts_by_date(data) == survivors
    keys = _s3_keys(s3_server, f"{bucket}/lake")
    assert {k.split("/")[3][5:] for k in keys} == {d for d in survivors if d < _day(30)}
    assert not {d for d in expected if d < _day(30)} & hot_dates(data)
    assert_verify_clean(data)


def test_last_week_query_succeeds_while_s3_is_down(small_history, s3_server: S3Server) -> None:
    data, expected = small_history
    bucket = s3_server.bucket("cold-down")
    write_policy(data, hot_days=30, cold=f"s3://{bucket}/lake", endpoint_url=s3_server.endpoint, timeout_s=1)
    run_retention(data)
    week = _day(7)
    s3_server.pause()
    try:
        out = subprocess.run(
            [sys.executable, "-m", "auditlake.collector", "query", "--data", str(data), "--format", "jsonl",
             f"SELECT count(*) AS n FROM events WHERE date >= DATE '{week}' AND tenant_id <> '_auditlake'"],
            capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["n"] == sum(n for d, n in expected.items() if d >= week)
    finally:
        s3_server.resume()
    assert counts_by_date(data) == expected


def test_s3_outage_mid_run_keeps_each_event_once_and_rerun_finishes(small_history, s3_server: S3Server,
                                                                    tmp_path: Path) -> None:
    data, expected = small_history
    bucket = s3_server.bucket("cold-outage")
    write_policy(data, hot_days=38, cold=f"s3://{bucket}/lake", endpoint_url=s3_server.endpoint, timeout_s=1)
    index = data / "state" / "cold-index.json"
    log = open(tmp_path / "run.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "auditlake.collector", "retention", "run", "--data", str(data)],
        stdout=log, stderr=subprocess.STDOUT, env={**__import__("os").environ, "AUDITLAKE_RETENTION_PAUSE_S": "0.8",
                                             "AUDITLAKE_RETENTION_GROUP_DAYS": "2"})
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (index.exists() and json.loads(index.read_text())["files"]):
            time.sleep(0.05)
        assert index.exists(), (tmp_path / "run.log").read_text()
        s3_server.pause()  # the network to the cold store fails in the middle of the run
        code = proc.wait(120)
    finally:
        s3_server.resume()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    text = (tmp_path / "run.log").read_text()
    assert code == 1 and "the next run continues" in text, text
    moved = len(json.loads(index.read_text())["files"])
    assert 0 < moved < 2 * 6, "the outage hit in the middle"
    assert counts_by_date(data) == expected  # every event readable, exactly once
    proc2 = run_retention(data)
    assert "moved" in proc2.stdout
    assert not {d for d in expected if d < _day(38)} & hot_dates(data)
    assert counts_by_date(data) == expected
    assert_verify_clean(data)
