"""Several collectors, one lake in a bucket (a real moto S3 server on
loopback): each collector writes its own chain with no coordination, an
event stored by two collectors (an SDK retrying a batch elsewhere) is seen
once, every writer's chain verifies with the keys `keys public` prints, and
misconfigurations are refused at start with nothing written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CollectorProcess, S3Server, run_cli
from tests.wire_client import WireClient, make_event

HERE = Path(__file__).parent


@pytest.fixture
def lake_url(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket prefix; AWS_ENDPOINT_URL points every process at moto."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    bucket = s3_server.bucket(f"fleet-{uuid.uuid4().hex[:12]}")
    return f"s3://{bucket}/audit"


@pytest.fixture
def fleet(tmp_path: Path, lake_url: str) -> Iterator[Callable[..., CollectorProcess]]:
    """Start collectors on the shared lake, each with its own data directory."""
    started: list[CollectorProcess] = []

    def make(name: str, **kwargs: Any) -> CollectorProcess:
        c = CollectorProcess(tmp_path / name, extra_args=("--lake", lake_url), **kwargs)
        started.append(c)
        return c.start()

    yield make
    for c in started:
        c.stop()


def share_key(source: CollectorProcess, *others: CollectorProcess) -> str:
    """An ingest key valid at every collector given."""
    key = source.api_key("t1")
    local = source.data / "keys" / "ingest.json"
    if local.exists():  # keys kept per data directory: copy them (re-read at once)
        for c in others:
            shutil.copy(local, c.data / "keys" / "ingest.json")
    return key


def objects(s3_server: S3Server, lake_url: str) -> list[str]:
    import pyarrow.fs as pafs

    root = lake_url[len("s3://"):]
    infos = s3_server.filesystem().get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    return sorted(i.path for i in infos if i.type == pafs.FileType.File)


def count(c: CollectorProcess, where: str = "true") -> int:
    return int(c.query(f"SELECT count(*) AS n FROM events WHERE {where}")[0]["n"])


def wait_until(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.2)


def test_two_collectors_write_one_bucket_and_a_retried_batch_is_seen_once(
        fleet: Callable[..., CollectorProcess], s3_server: S3Server, lake_url: str, tmp_path: Path) -> None:
    a, b = fleet("a"), fleet("b")
    key = share_key(a, b)
    retried = [make_event(i, tenant_id="t1", resource_type="retried") for i in range(40)]
    batch_id = str(uuid.uuid4())
    for c, tag in ((a, "only-a"), (b, "only-b")):
        client = WireClient(c.endpoint)
        try:
            client.export([make_event(i, tenant_id="t1", resource_type=tag) for i in range(25)], key)
            # The same batch at both: an SDK that lost a's answer retried at b.
            client.export(retried, key, batch_id=batch_id)
        finally:
            client.close()
    wait_until(lambda: count(a) == 90)
    assert count(b) == 90  # any collector reads the whole lake
    rows = a.query("SELECT resource_type, count(*) AS n, count(DISTINCT id) AS ids FROM events GROUP BY ALL")
    assert {r["resource_type"]: (r["n"], r["ids"]) for r in rows} == {
        "only-a": (25, 25), "only-b": (25, 25), "retried": (40, 40)}
    # The files do hold both copies, one per writer's chain: the view keeps the first.
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    files = pads.dataset(f"{lake_url[5:]}/events", filesystem=s3_server.filesystem(), format="parquet",
                         partitioning="hive").to_table(columns=["resource_type", "writer_id"])
    retried_rows = files.filter(pc.equal(files["resource_type"], "retried"))
    assert retried_rows.num_rows == 80 and len(set(retried_rows["writer_id"].to_pylist())) == 2

    # Every writer's chain verifies with the keys `keys public` prints for the lake.
    a.stop()
    b.stop()
    keys = run_cli("keys", "public", "--lake", lake_url, data=tmp_path / "auditor")
    assert keys.stdout.count("BEGIN PUBLIC KEY") == 2 and keys.stdout.count("# auditlake writer ") == 2
    pem = tmp_path / "fleet-keys.pem"
    pem.write_text(keys.stdout)
    done = run_cli("verify", "--lake", lake_url, "--public-key", str(pem), "--format", "json", "--quiet",
                   data=tmp_path / "auditor")
    report = json.loads(done.stdout)
    assert report["ok"], report["problems"]
    assert sorted(w["writer_id"] for w in report["writers"]) == sorted(
        (a.data / "writer_id").read_text().split() + (b.data / "writer_id").read_text().split())
    # One writer's key for the other's checkpoints: refused (keys are bound to their writer).
    lines = keys.stdout.splitlines(keepends=True)
    first_block = "".join(lines[:lines.index("-----END PUBLIC KEY-----\n") + 1])
    other_writer = lines[lines.index("-----END PUBLIC KEY-----\n") + 1].split()[3]
    swapped = tmp_path / "swapped.pem"
    swapped.write_text(first_block.replace(first_block.split()[3], other_writer, 1))
    bad = run_cli("verify", "--lake", lake_url, "--public-key", str(swapped), "--format", "json", "--quiet",
                  data=tmp_path / "auditor", check=False)
    assert bad.returncode == 1
    assert {p["kind"] for p in json.loads(bad.stdout)["problems"]} == {"bad_signature"}


def test_a_second_collector_with_a_writer_id_in_use_is_refused_with_nothing_written(
        fleet: Callable[..., CollectorProcess], s3_server: S3Server, lake_url: str, tmp_path: Path) -> None:
    a = fleet("a")
    # (The running collector may take the maintenance lease meanwhile: that one is its.)
    before = [o for o in objects(s3_server, lake_url) if "/_auditlake/leases/" not in o]
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(a.data / "writer_id", copy / "writer_id")  # a copied data directory
    started = subprocess.run(
        [sys.executable, "-m", "auditlake.collector", "serve", "--data", str(copy), "--lake", lake_url,
         "--grpc-listen", "127.0.0.1:0", "--http-listen", ""],
        capture_output=True, text=True, timeout=60)
    assert started.returncode == 2
    wid = (a.data / "writer_id").read_text().strip()
    assert f"writer id {wid} is in use by another collector" in started.stderr
    assert str(a.data) in started.stderr  # names the holder
    assert [o for o in objects(s3_server, lake_url) if "/_auditlake/leases/" not in o] == before
    registered = json.loads(s3_server.filesystem().open_input_stream(
        f"{lake_url[5:]}/_auditlake/writers/{wid}/writer.json").read())
    assert registered["data_dir"] == str(a.data)  # still the first collector's


def test_a_collector_killed_and_restarted_takes_its_writer_id_back(
        fleet: Callable[..., CollectorProcess], lake_url: str) -> None:
    a = fleet("a")
    key = a.api_key("t1")
    client = WireClient(a.endpoint)
    try:
        client.export([make_event(i, tenant_id="t1") for i in range(30)], key)
    finally:
        client.close()
    a.kill()  # its lease is live for another 30 s; the same data dir may take it at once
    t0 = time.monotonic()
    a.start()
    assert time.monotonic() - t0 < 15
    wait_until(lambda: count(a) == 30)


@pytest.mark.parametrize("where, message", [
    ("s3://no-such-bucket-here/audit", "the bucket no-such-bucket-here does not exist"),
    ("/nonexistent/lake/folder", "does not exist"),
])
def test_a_lake_location_that_does_not_exist_is_refused_at_start(
        s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, where: str, message: str) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    started = subprocess.run(
        [sys.executable, "-m", "auditlake.collector", "serve", "--data", str(tmp_path / "d"), "--lake", where,
         "--grpc-listen", "127.0.0.1:0", "--http-listen", ""],
        capture_output=True, text=True, timeout=60)
    assert started.returncode == 2, started.stderr
    assert message in started.stderr
    assert not Path("/nonexistent").exists()


def test_credentials_the_bucket_refuses_are_a_clear_error_at_start(tmp_path: Path) -> None:
    """A second moto server that checks credentials (INITIAL_NO_AUTH_ACTION_COUNT=0):
    keys it does not know are refused, as a bucket without permissions would be."""
    from tests.conftest import free_port

    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"}
    moto = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        import socket

        wait_until(lambda: _listening(socket, port), timeout=30)
        started = subprocess.run(
            [sys.executable, "-m", "auditlake.collector", "serve", "--data", str(tmp_path / "d"),
             "--lake", "s3://locked/audit", "--grpc-listen", "127.0.0.1:0", "--http-listen", ""],
            capture_output=True, text=True, timeout=60,
            env={**os.environ, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
                 "AWS_ACCESS_KEY_ID": "AKIAUNKNOWN00000000", "AWS_SECRET_ACCESS_KEY": "wrong"})
        assert started.returncode == 2, started.stderr
        assert "access denied" in started.stderr
    finally:
        moto.terminate()
        moto.wait(10)


def _listening(socket: Any, port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 0.2).close()
        return True
    except OSError:
        return False


def test_three_collectors_three_clients_kill_nine_twice_every_event_once(
        fleet: Callable[..., CollectorProcess], s3_server: S3Server, lake_url: str, tmp_path: Path) -> None:
    """The fleet test of the issue: three collectors on one bucket, three
    application processes streaming through one multi-address target; one
    collector killed with -9 twice mid-stream and restarted, and the S3
    server frozen for a few seconds.  At the end each recorded event is in
    `events` exactly once and every chain verifies."""
    cs = [fleet(n) for n in ("a", "b", "c")]
    key = share_key(cs[0], *cs[1:])
    target = "ipv4:" + ",".join(c.endpoint for c in cs)
    n = 6000  # about 8 s of streaming per client: the kills and the freeze fall inside it
    clients = [subprocess.Popen([sys.executable, str(HERE / "fleet_client.py"), target, key, f"app{i}", str(n),
                                 str(tmp_path / f"spool{i}")],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
               for i in range(3)]
    try:
        for _ in range(2):
            time.sleep(1.0)
            cs[1].kill()
            time.sleep(1.0)
            cs[1].start()
        s3_server.pause()  # the bucket unreachable: acknowledged batches wait in the WALs
        time.sleep(3.0)
        s3_server.resume()
        outs = [c.communicate(timeout=180) for c in clients]
    finally:
        for c in clients:
            if c.poll() is None:
                c.kill()
                c.wait()
    for (out, err), proc in zip(outs, clients, strict=True):
        assert proc.returncode == 0, err[-3000:]
        result = json.loads(out.strip().splitlines()[-1])
        assert result["recorded"] == n
        # record() never waited for a collector (it only queues): not a speed
        # figure, a check that no call blocked on the network or a dead peer.
        assert result["worst_record_s"] < 1.0, result
    try:
        wait_until(lambda: count(cs[0], "resource_type LIKE 'app%'") >= 3 * n, timeout=60)
    except AssertionError:
        got = count(cs[0], "resource_type LIKE 'app%'")
        raise AssertionError(f"{got} of {3 * n} events; logs:\n" + "\n".join(c.log()[-4000:] for c in cs)) from None
    rows = cs[0].query("SELECT count(*) AS n, count(DISTINCT resource_id) AS ids, count(DISTINCT writer_id) AS w "
                       "FROM events WHERE resource_type LIKE 'app%'")
    assert rows[0]["n"] == rows[0]["ids"] == 3 * n
    assert rows[0]["w"] == 3  # round_robin spread the traffic
    for c in cs:
        c.stop()
    keys = run_cli("keys", "public", "--lake", lake_url, data=tmp_path / "auditor").stdout
    (tmp_path / "keys.pem").write_text(keys)
    done = run_cli("verify", "--lake", lake_url, "--public-key", str(tmp_path / "keys.pem"), "--format", "json",
                   "--quiet", data=tmp_path / "auditor", check=False)
    report = json.loads(done.stdout)
    assert report["ok"], report["problems"]
    assert len(report["writers"]) == 3


# -- maintenance: one collector at a time, under the lake's lease ------------------------------


def _fleet_policy(data: Path, cold: Path, lease_s: float = 3) -> None:
    data.mkdir(parents=True, exist_ok=True)
    (data / "auditlake.toml").write_text(
        f"[collector]\nmaintenance_lease_s = {lease_s}\n\n"
        f"[retention]\nhot_days = 5\ndelete_after_days = 30\nminimum_days = 0\ncold = \"{cold.as_uri()}\"\n")


def _lake_counts(data: Path, lake: str) -> dict[str, int]:
    from auditlake.collector.lake.query import connect
    from auditlake.collector.storage.datadir import DataDir

    con = connect(DataDir.resolve(data, lake))
    try:
        rows = con.execute("SELECT CAST(date AS VARCHAR), count(*), count(DISTINCT id) FROM events "
                           "WHERE tenant_id <> '_auditlake' GROUP BY 1").fetchall()
    finally:
        con.close()
    for day, n, distinct in rows:
        assert n == distinct, f"{day}: an event counted twice"
    return {d: int(n) for d, n, _ in rows}


@pytest.mark.parametrize("step", ["move_checkpointed", "hot_removed_partly"])
def test_retention_holder_killed_mid_step_another_collector_finishes_after_the_lease_expires(
        s3_server: S3Server, lake_url: str, tmp_path: Path, step: str) -> None:
    from auditlake.collector.retention.interrupts import FAIL_ENV
    from tests.retention.conftest import TENANTS, write_history

    a, b, cold = tmp_path / "a", tmp_path / "b", tmp_path / "cold"
    cold.mkdir()
    for d in (a, b):
        _fleet_policy(d, cold)
    expected: dict[str, int] = {}
    for data, start in ((a, 0), (b, 20)):  # each writer imports its own days, 0..39 days ago
        src = tmp_path / f"history-{data.name}.jsonl"
        for day, n in write_history(src, 20, start_days_ago=start).items():
            expected[day] = expected.get(day, 0) + n
        for tenant in TENANTS:
            part = tmp_path / f"{data.name}-{tenant}.jsonl"
            part.write_text("".join(ln + "\n" for ln in src.read_text().splitlines()
                                    if json.loads(ln)["tenant_id"] == tenant))
            run_cli("import", "--quiet", "--tenant", tenant, "--lake", lake_url, str(part), data=data)
    assert _lake_counts(a, lake_url) == expected

    crashed = run_cli("retention", "run", "--lake", lake_url, data=a, check=False,
                      env={FAIL_ENV: step, "AUDITLAKE_RETENTION_GROUP_DAYS": "2"})
    assert crashed.returncode == 137, crashed.stdout + crashed.stderr
    # A's lease is live (3 s): B's run does nothing.
    busy = run_cli("retention", "run", "--lake", lake_url, data=b, check=False)
    assert "running lake maintenance" in busy.stdout + busy.stderr
    time.sleep(3.5)
    done = run_cli("retention", "run", "--lake", lake_url, data=b)
    assert "error" not in done.stdout, done.stdout
    expired = {d for d in expected if d < (time.strftime("%Y-%m-%d", time.gmtime(time.time() - 30 * 86400)))}
    want = {d: n for d, n in expected.items() if d not in expired}
    assert _lake_counts(b, lake_url) == want
    # A comes back: its recovery finishes what it had committed; nothing changes twice.
    run_cli("retention", "run", "--lake", lake_url, data=a, check=False)
    assert _lake_counts(a, lake_url) == want
    keys = run_cli("keys", "public", "--lake", lake_url, data=tmp_path / "auditor").stdout
    (tmp_path / "keys.pem").write_text(keys)
    report = json.loads(run_cli("verify", "--lake", lake_url, "--public-key", str(tmp_path / "keys.pem"),
                                "--format", "json", "--quiet", data=tmp_path / "auditor", check=False).stdout)
    assert report["ok"], report["problems"]
    # The independent recipe (docs/integrity.md section 7) on a copy of the
    # bucket, where one writer's checkpoints moved and expired the other's files.
    import pyarrow.fs as pafs

    from tests.collector.test_auditor_script import run_auditor

    copy = tmp_path / "lake-copy"
    pafs.copy_files(lake_url[len("s3://"):], str(copy), source_filesystem=s3_server.filesystem(),
                    destination_filesystem=pafs.LocalFileSystem())
    foreign = [r["path"] for doc in map(json.loads, map(Path.read_text, copy.glob("checkpoints/*/*-move.json")))
               for r in doc["removed"] if f"-{doc['writer_id']}-" not in r["path"]]
    assert foreign  # a move by one writer of another writer's files: the case the recipe must follow
    code, summary = run_auditor(copy, "--public-key", str(tmp_path / "keys.pem"), "--cold", str(cold))
    assert code == 0, summary["errors"]
    assert len(summary["writers"]) == 2
    assert {w["signatures"] for w in summary["writers"].values()} == {"checked with openssl"}


@pytest.mark.parametrize("step", ["published", "checkpointed"])
def test_compaction_holder_killed_mid_step_the_lease_passes_on_and_its_restart_finishes(
        lake_url: str, tmp_path: Path, step: str) -> None:
    """Compaction merges a writer's own files, so the writer itself finishes
    (or rolls back) its interrupted compaction when it comes back, as it
    seals its WAL; meanwhile the lease passes to another collector once it
    expires, and the view counts every event once."""
    from auditlake.collector.lake.compact import FAIL_ENV
    from tests.retention.conftest import TENANTS, write_history

    a, b, cold = tmp_path / "a", tmp_path / "b", tmp_path / "cold"
    expected: dict[str, int] = {}
    for data, start in ((a, 2), (b, 6)):
        _fleet_policy(data, cold, lease_s=6)
        src = tmp_path / f"history-{data.name}.jsonl"
        for day, n in write_history(src, 4, start_days_ago=start).items():
            expected[day] = expected.get(day, 0) + n
        for tenant in TENANTS:  # one import per tenant: two files a day to merge
            part = tmp_path / f"{data.name}-{tenant}.jsonl"
            part.write_text("".join(ln + "\n" for ln in src.read_text().splitlines()
                                    if json.loads(ln)["tenant_id"] == tenant))
            run_cli("import", "--quiet", "--tenant", tenant, "--lake", lake_url, str(part), data=data)

    crashed = run_cli("compact", "--lake", lake_url, "--delete-now", data=a, check=False, env={FAIL_ENV: step})
    assert crashed.returncode == 137, crashed.stdout + crashed.stderr
    busy = run_cli("compact", "--lake", lake_url, data=b, check=False)
    assert busy.returncode == 3 and "running lake maintenance" in busy.stderr
    assert _lake_counts(b, lake_url) == expected  # a half-done compaction hides nothing, doubles nothing
    time.sleep(6.5)
    took_over = run_cli("compact", "--lake", lake_url, "--delete-now", data=b)
    assert "files ->" in took_over.stdout
    assert _lake_counts(b, lake_url) == expected
    again = run_cli("compact", "--lake", lake_url, "--delete-now", data=a)  # a comes back
    assert _lake_counts(a, lake_url) == expected, again.stdout
    keys = run_cli("keys", "public", "--lake", lake_url, data=tmp_path / "auditor").stdout
    (tmp_path / "keys.pem").write_text(keys)
    report = json.loads(run_cli("verify", "--lake", lake_url, "--public-key", str(tmp_path / "keys.pem"),
                                "--format", "json", "--quiet", data=tmp_path / "auditor", check=False).stdout)
    assert report["ok"], report["problems"]
    assert not report["warnings"], report["warnings"]
