"""Retention: move throughput (MB/s, events/s) hot → cold, to a local
directory and to an S3-API server (moto, on loopback), next to a plain copy
of the same bytes in the same run; and the latency of a last-week query
before and after the older data went cold (goal: unchanged within noise).

    .venv/bin/python bench/retention_bench.py [--quick]
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from common import free_port  # noqa: E402

HOT_DAYS = 7


def _history(data: Path, days: int, per_day: int) -> int:
    """``days`` days of events (``per_day`` each, 3 tenants) ending today, through
    the collector's own path (inbox → WAL → chain → seal); returns the count."""
    import pyarrow as pa

    from auditlake.collector.ingest.inbox import submit
    from auditlake.collector.ingest.receive import WIRE_SCHEMA, normalize
    from auditlake.collector.storage.datadir import DataDir

    d = DataDir(data)
    noon = dt.datetime.combine(dt.datetime.now(dt.UTC).date(), dt.time(0), tzinfo=dt.UTC)
    total = 0
    for day in range(days, -1, -1):
        base = int((noon - dt.timedelta(days=day)).timestamp() * 1_000_000)
        n = per_day
        step = 86_400_000_000 // n
        created = [base + i * step for i in range(n)]
        cols: dict[str, Any] = {
            "id": [str(uuid.UUID(int=(c // 1000) << 80 | 0x7000 << 64 | 0x8 << 60 | i)) for i, c in enumerate(created)],
            "tenant_id": [("acme", "globex", "initech")[i % 3] for i in range(n)],
            "user_id": [f"user-{i % 500}" for i in range(n)],
            "action": [("read", "update", "login")[i % 3] for i in range(n)],
            "resource_type": ["patient"] * n,
            "resource_id": [f"p-{i % 5000}" for i in range(n)],
            "changes": [json.dumps({"status": {"before": "open", "after": f"closed-{i % 7}"}}) for i in range(n)],
            "ip_address": [f"10.0.{i % 250}.{i % 200}" for i in range(n)],
            "user_agent": ["Mozilla/5.0 (bench)"] * n,
            "outcome": ["success"] * n,
            "reason": [""] * n,
            "service": ["bench"] * n,
            "trace_id": [""] * n,
            "span_id": [""] * n,
            "request_id": [""] * n,
            "metadata": ["{}"] * n,
        }
        arrays = [pa.array(created, pa.int64()).cast(f.type) if f.name == "created_at"
                  else pa.array(cols[f.name], pa.string()) for f in WIRE_SCHEMA]
        submit(d, normalize(pa.Table.from_arrays(arrays, schema=WIRE_SCHEMA)), imported=True)
        total += n
    return total


def _policy_toml(cold: str, endpoint: str = "") -> dict[str, Any]:
    table: dict[str, Any] = {"hot_days": HOT_DAYS, "cold": cold, "schedule": "off"}
    if endpoint:
        table["endpoint_url"] = endpoint
    return {"retention": table}


def _old_files(data: Path) -> list[Path]:
    cutoff = (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=HOT_DAYS)).isoformat()
    return [p for p in sorted((data / "lake" / "events").glob("date=*/*.parquet")) if p.parent.name[5:] < cutoff]


def _move(data: Path, toml: dict[str, Any]) -> tuple[float, int, int]:
    """(seconds, bytes, events) of one retention run moving the old days."""
    from auditlake.collector.config import CollectorConfig
    from auditlake.collector.retention.job import run_in_collector
    from auditlake.collector.retention.policy import load_policy
    from auditlake.collector.server import Collector
    from auditlake.collector.storage.datadir import DataDir

    policy = load_policy(toml)
    assert policy is not None
    collector = Collector(DataDir(data), CollectorConfig(http_listen=""))
    try:
        t0 = time.perf_counter()
        report = run_in_collector(collector, policy)
        seconds = time.perf_counter() - t0
    finally:
        collector.stop()
    assert not report.error, report.error
    return seconds, report.moved_bytes, report.moved_rows


def _plain_copy_local(files: list[Path], dest: Path) -> float:
    t0 = time.perf_counter()
    for f in files:
        target = dest / f.parent.name / f.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, target)
    return time.perf_counter() - t0


def _copy_fsync_local(files: list[Path], dest: Path) -> float:
    """The same copy, made durable (fsync each file and directory) as a move must."""
    t0 = time.perf_counter()
    for f in files:
        target = dest / f.parent.name / f.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, target)
        fd = os.open(target, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
        dfd = os.open(target.parent, os.O_RDONLY)
        os.fsync(dfd)
        os.close(dfd)
    return time.perf_counter() - t0


def _plain_copy_s3(files: list[Path], fs: Any, root: str) -> float:
    import pyarrow.fs as pafs

    local = pafs.LocalFileSystem()
    t0 = time.perf_counter()
    for f in files:
        pafs.copy_files(str(f), f"{root}/{f.parent.name}/{f.name}", source_filesystem=local,
                        destination_filesystem=fs)
    return time.perf_counter() - t0


def _last_week_ms(data: Path, toml: dict[str, Any], rounds: int) -> float:
    """Median ms of a last-week query, connecting each time as the CLI/UI does."""
    from auditlake.collector.lake.query import connect
    from auditlake.collector.storage.datadir import DataDir

    week = (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=HOT_DAYS - 1)).isoformat()
    sql = (f"SELECT action, count(*) FROM events WHERE date >= DATE '{week}' AND tenant_id = 'acme' "
           "GROUP BY action ORDER BY action")
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        con = connect(DataDir(data), toml=toml)
        con.execute(sql).fetchall()
        con.close()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


class _Moto:
    def __init__(self) -> None:
        self.port = free_port()
        exe = Path(sys.executable).with_name("moto_server")
        self.proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.05)

    def filesystem(self) -> Any:
        import pyarrow.fs as pafs

        return pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{self.port}", scheme="http",
                                 access_key="testing", secret_key="testing", region="us-east-1",
                                 allow_bucket_creation=True)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def bench_rows(quick: bool = False) -> list[tuple[str, str, str, str]]:
    days, per_day = (14, 5_000) if quick else (37, 20_000)
    rounds = 1 if quick else 3
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                      AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")
    tmp = Path(tempfile.mkdtemp(prefix="auditlake-retention-bench-"))
    moto = _Moto()
    try:
        template = tmp / "template"
        _history(template, days, per_day)
        old = _old_files(template)
        old_bytes = sum(f.stat().st_size for f in old)
        rows: list[tuple[str, str, str, str]] = []
        for target in ("local", "s3"):
            ours, plain, durable = [], [], []
            moved_bytes = moved_rows = 0
            for r in range(rounds):  # alternate so both see the same machine noise
                data = tmp / f"{target}-{r}"
                shutil.copytree(template, data)
                if target == "local":
                    toml = _policy_toml((tmp / f"cold-{target}-{r}").as_uri())
                    plain.append(_plain_copy_local(old, tmp / f"plain-{r}"))
                    durable.append(_copy_fsync_local(old, tmp / f"durable-{r}"))
                else:
                    fs = moto.filesystem()
                    fs.create_dir(f"bench{r}")
                    fs.create_dir(f"plain{r}")
                    toml = _policy_toml(f"s3://bench{r}/lake", f"http://127.0.0.1:{moto.port}")
                    plain.append(_plain_copy_s3(old, fs, f"plain{r}"))
                seconds, moved_bytes, moved_rows = _move(data, toml)
                ours.append(seconds)
                if r or target == "s3":
                    shutil.rmtree(data)
            a, b = statistics.median(ours), statistics.median(plain)
            assert moved_bytes == old_bytes, (moved_bytes, old_bytes)
            where = "local dir" if target == "local" else "S3 (moto, loopback)"
            rows.append((
                f"retention move → {where} ({len(old)} files, {old_bytes / 1e6:.1f} MB, {moved_rows:,} events)",
                f"{old_bytes / 1e6 / a:,.1f} MB/s, {moved_rows / a:,.0f} ev/s",
                f"plain copy: {old_bytes / 1e6 / b:,.1f} MB/s"
                + (f" (with fsync: {old_bytes / 1e6 / statistics.median(durable):,.1f} MB/s)" if durable else ""),
                f"{b / a:.2f}×",
            ))
        # Query latency: the same last-week query on the template (all hot) and
        # on the local run 0 (older days cold).
        before_toml: dict[str, Any] = {}
        after_toml = _policy_toml((tmp / "cold-local-0").as_uri())
        q_rounds = 7 if quick else 21
        before, after = [], []
        for _ in range(3):
            before.append(_last_week_ms(template, before_toml, q_rounds))
            after.append(_last_week_ms(tmp / "local-0", after_toml, q_rounds))
        a, b = statistics.median(after), statistics.median(before)
        rows.append((
            f"last-week query, older {len({f.parent.name for f in old})} days cold (median of {3 * q_rounds})",
            f"{a:.1f} ms after move",
            f"{b:.1f} ms all hot",
            f"{b / a:.2f}×",
        ))
        return rows
    finally:
        moto.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    from common import print_table

    print_table(bench_rows(quick="--quick" in sys.argv))
