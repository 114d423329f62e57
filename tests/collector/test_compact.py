"""Compaction: a closed day's small sealed files become one large sorted file
with the same rows, seqs and chain hashes; queries and verification agree
before and after; a crash at any step leaves exactly one live copy."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from auditlake.collector.ingest.inbox import submit
from auditlake.collector.ingest.receive import WIRE_SCHEMA
from auditlake.collector.integrity.chain import GENESIS, chain_table
from auditlake.collector.integrity.checkpoint import read_checkpoints
from auditlake.collector.integrity.verify import verify_lake
from auditlake.collector.lake.compact import FAIL_ENV
from auditlake.collector.lake.files import sha256_file
from auditlake.collector.schema import EVENT_SCHEMA, STRING_FIELDS
from auditlake.collector.storage.datadir import DataDir
from tests.conftest import CollectorProcess, S3Server, run_cli

DAY_US = 86_400_000_000
PAST = int((time.time() // 86400 - 3) * DAY_US) + 3_600_000_000  # 01:00 UTC, 3 days ago
PAST_DAY = time.strftime("%Y-%m-%d", time.gmtime(PAST / 1e6))


def wire_table(n: int, start_us: int, tenants: tuple[str, ...] = ("acme", "globex", "initech")) -> pa.Table:
    cols: dict[str, list[object]] = {name: [""] * n for name in STRING_FIELDS}
    cols["id"] = [str(uuid.uuid4()) for _ in range(n)]
    cols["tenant_id"] = [tenants[i % len(tenants)] for i in range(n)]
    cols["action"] = ["update"] * n
    cols["resource_type"] = ["document"] * n
    cols["resource_id"] = [f"d-{i}" for i in range(n)]
    cols["changes"] = ['{"s": {"before": 1, "after": 2}}'] * n
    cols["metadata"] = ["{}"] * n
    cols["outcome"] = ["success"] * n
    arrays = [pa.array(cols[name], pa.string()) for name in STRING_FIELDS]
    arrays.append(pa.array([start_us + i * 1000 for i in range(n)], pa.int64()).cast(WIRE_SCHEMA[-1].type))
    return pa.Table.from_arrays(arrays, schema=WIRE_SCHEMA)


def build_lake(root: Path, seals: int = 6, rows: int = 300) -> DataDir:
    """A data dir whose past day holds ``seals`` small sealed files (one per offline seal)."""
    data = DataDir(root)
    for k in range(seals):
        submit(data, wire_table(rows, PAST + k * rows * 1000), imported=True)
    return data


def day_files(data: DataDir, day: str = PAST_DAY) -> list[Path]:
    return sorted((data.events / f"date={day}").glob("*.parquet"))


def snapshot(data: DataDir) -> list[tuple[object, ...]]:
    """Every stored row (all columns), in seq order, as a query sees them."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    files = [str(p) for p in sorted(data.events.glob("date=*/*.parquet"))]
    return con.execute("SELECT * FROM read_parquet(?, hive_partitioning = true) ORDER BY seq", [files]).fetchall()


def superseded(data: DataDir, day: str = PAST_DAY) -> list[Path]:
    """The replaced files waiting out their grace period (outside events/)."""
    return sorted((data.lake / "_superseded" / "events" / f"date={day}").glob("*"))


def reader_counts(events: str, filesystem: pafs.FileSystem | None = None) -> dict[str, int]:
    """Rows that engines reading the events folder count: pyarrow.dataset
    over the folder (Hive partitioning: every file not named _* or .*) and,
    for a local lake, DuckDB's recursive glob."""
    dataset = pads.dataset(events, format="parquet", partitioning="hive", filesystem=filesystem)
    counts = {"pyarrow.dataset": dataset.count_rows()}
    if filesystem is None:
        with duckdb.connect() as con:
            row = con.execute(
                f"SELECT count(*) FROM read_parquet('{events}/**/*.parquet', hive_partitioning = 1)").fetchone()
        assert row is not None
        counts["duckdb **/*.parquet"] = int(row[0])
    return counts


def assert_lake_verifies(data: DataDir) -> None:
    """The chain recomputes from genesis over the live files, and the files
    present are exactly those the checkpoints leave live, with their digests."""
    files = sorted(data.events.glob("date=*/*.parquet"))
    table = pa.concat_tables(
        pq.read_table(p).select(EVENT_SCHEMA.names).cast(EVENT_SCHEMA) for p in files
    ).sort_by("seq")
    seqs = table.column("seq").to_pylist()
    assert seqs == list(range(1, len(seqs) + 1))
    expected = [h.hex() for h in chain_table(GENESIS, table)]
    assert table.column("chain_hash").to_pylist() == expected
    live: dict[str, str] = {}
    for signed in read_checkpoints(data.checkpoints):
        cp = signed.checkpoint
        for f in cp.removed:
            assert live.pop(f.path) == f.sha256, f"{f.path} removed with another digest"
        for f in cp.files:
            live[f.path] = f.sha256
    present = {p.relative_to(data.lake).as_posix(): sha256_file(p) for p in files}
    assert present == live
    report = verify_lake(data)  # the full check `auditlake verify` runs
    assert report.ok, [str(p) for p in report.problems]


def test_compaction_keeps_rows_seqs_hashes_and_query_results(tmp_path: Path) -> None:
    data = build_lake(tmp_path / "data")
    before_files = day_files(data)
    assert len(before_files) == 6
    before = snapshot(data)
    out = run_cli("compact", data=data.root).stdout
    assert f"{PAST_DAY}: 6 files -> 1 (1800 rows)" in out
    after_files = day_files(data)
    assert len(after_files) == 1 and after_files[0].name.startswith("compact-")
    assert snapshot(data) == before
    # sorted for row-group skipping: (tenant_id, created_at)
    t = pq.read_table(after_files[0])
    keys = list(zip(t.column("tenant_id").to_pylist(), t.column("created_at").to_pylist(), strict=True))
    assert keys == sorted(keys)
    cps = [s.checkpoint for s in read_checkpoints(data.checkpoints)]
    compact = [c for c in cps if c.kind == "compact"]
    assert len(compact) == 1
    assert {f.path for f in compact[0].removed} == {p.relative_to(data.lake).as_posix() for p in before_files}
    assert compact[0].seq == cps[-2].seq and compact[0].chain_hash == cps[-2].chain_hash
    assert compact[0].previous == cps[-2].digest()
    assert_lake_verifies(data)
    # The replaced files wait out their grace period outside events/, so
    # whatever reads the folder counts each event once.
    assert [p.name for p in superseded(data)] == sorted(p.name + ".superseded" for p in before_files)
    assert [p.name for p in (data.events / f"date={PAST_DAY}").iterdir()] == [after_files[0].name]
    assert reader_counts(str(data.events)) == {"pyarrow.dataset": 1800, "duckdb **/*.parquet": 1800}
    run_cli("compact", "--delete-now", data=data.root)
    assert len(superseded(data)) == 6  # not yet due
    state = json.loads((data.state / "compact.json").read_text())
    assert sorted(s["path"] for s in state["superseded"]) == [
        f"_superseded/events/date={PAST_DAY}/{p.name}.superseded" for p in before_files]


def test_open_days_and_single_files_are_left_alone(tmp_path: Path) -> None:
    data = DataDir(tmp_path / "data")
    now = int(time.time() * 1_000_000)
    for _ in range(3):
        submit(data, wire_table(50, now - 60_000_000))
    submit(data, wire_table(50, PAST))
    out = run_cli("compact", data=data.root).stdout
    assert "nothing to compact" in out
    assert not [c for c in read_checkpoints(data.checkpoints) if c.checkpoint.kind == "compact"]


_CRASH_CHILD = r"""
import os, signal, sys
from auditlake.collector.lake import compact, seal
from auditlake.collector.config import CollectorConfig
from auditlake.collector.storage.datadir import DataDir
from auditlake.collector.server import Collector

point = sys.argv[2]
def die(*a, **k):
    os.kill(os.getpid(), signal.SIGKILL)  # a real kill -9 at this step
if point == "before-checkpoint":
    seal.Sealer.append_checkpoint = die
elif point == "after-checkpoint":
    compact.Compactor._supersede = die
c = Collector(DataDir.resolve(sys.argv[1]), CollectorConfig(http_listen=""))
c.compactor.run()
"""


@pytest.mark.parametrize("point", ["before-checkpoint", "after-checkpoint"])
def test_crash_mid_compaction_leaves_one_live_copy(tmp_path: Path, point: str) -> None:
    data = build_lake(tmp_path / "data", seals=4, rows=200)
    before = snapshot(data)
    old = {p.name for p in day_files(data)}
    child = subprocess.run([sys.executable, "-c", _CRASH_CHILD, str(data.root), point],
                           capture_output=True, text=True, timeout=60)
    assert child.returncode == -signal.SIGKILL, child.stderr
    names = {p.name for p in day_files(data)}
    assert old <= names and len(names) == len(old) + 1  # both visible until recovery
    # recovery (any collector start: here the CLI's) settles it
    run_cli("compact", "--day", "1970-01-01", data=data.root)
    names = {p.name for p in day_files(data)}
    if point == "before-checkpoint":
        assert names == old
    else:
        assert len(names) == 1 and next(iter(names)).startswith("compact-")
    assert snapshot(data) == before
    assert not list(data.events.glob("date=*/*.tmp"))
    assert not list(data.events.glob("**/*.superseded"))
    assert_lake_verifies(data)


def stage_files(data: DataDir, day: str = PAST_DAY) -> list[Path]:
    """Files staged in the day's folder and not published (either version's names)."""
    return sorted((data.events / f"date={day}").glob("*.parquet.tmp"))  # pathlib's * matches hidden names


def test_a_staged_compaction_is_read_by_no_reader_and_rolled_back(tmp_path: Path) -> None:
    # Killed with the merged file written in full under its temporary name
    # and the job recorded, before the rename: readers of the folder and of
    # the *.parquet glob count the live events once, and verify passes.
    data = build_lake(tmp_path / "data", seals=4, rows=200)
    before = snapshot(data)
    old = {p.name for p in day_files(data)}
    proc = run_cli("compact", data=data.root, check=False, env={FAIL_ENV: "staged"})
    assert proc.returncode == 137, proc.stderr
    [staged] = stage_files(data)
    assert staged.name.startswith(".compact-") and pq.read_metadata(staged).num_rows == 800
    assert json.loads((data.state / "compact.json").read_text())["job"]["new"][0]["tmp"] == \
        staged.relative_to(data.lake).as_posix()
    assert reader_counts(str(data.events)) == {"pyarrow.dataset": 800, "duckdb **/*.parquet": 800}
    report = verify_lake(data)
    assert report.ok, [str(p) for p in report.problems]
    run_cli("compact", "--day", "1970-01-01", data=data.root)  # any start recovers: rolled back
    assert stage_files(data) == [] and {p.name for p in day_files(data)} == old
    assert snapshot(data) == before
    assert_lake_verifies(data)


def test_a_compaction_an_older_version_staged_under_a_visible_name_is_cleaned_up(tmp_path: Path) -> None:
    # Older versions staged as compact-<writer>-...parquet.tmp beside the live
    # files, where pyarrow.dataset reads it: the job's stage, and a stage no
    # job names (a crash before the job was recorded).  Recovery removes both.
    data = build_lake(tmp_path / "data", seals=3, rows=100)
    proc = run_cli("compact", data=data.root, check=False, env={FAIL_ENV: "staged"})
    assert proc.returncode == 137, proc.stderr
    [hidden] = stage_files(data)
    legacy = hidden.with_name(hidden.name.removeprefix("."))
    hidden.rename(legacy)
    writer_id = legacy.name.split("-")[1]
    orphan = legacy.with_name(f"compact-{writer_id}-19990101T000000000000-000.parquet.tmp")
    orphan.write_bytes(legacy.read_bytes())
    state_path = data.state / "compact.json"
    state = json.loads(state_path.read_text())
    state["job"]["new"][0]["tmp"] = legacy.relative_to(data.lake).as_posix()
    state_path.write_text(json.dumps(state))
    assert reader_counts(str(data.events)) == {"pyarrow.dataset": 900, "duckdb **/*.parquet": 300}
    strays = {p.file: p for p in verify_lake(data).problems if p.kind == "unlisted_file"}
    assert set(strays) == {legacy.relative_to(data.lake).as_posix(), orphan.relative_to(data.lake).as_posix()}
    assert all("older collector" in p.message for p in strays.values())

    run_cli("compact", "--day", "1970-01-01", data=data.root)
    assert stage_files(data) == []
    assert reader_counts(str(data.events)) == {"pyarrow.dataset": 300, "duckdb **/*.parquet": 300}
    assert_lake_verifies(data)


def test_compact_cli_defers_to_a_running_collector(
    collector_factory: Callable[..., CollectorProcess], tmp_path: Path
) -> None:
    collector = collector_factory(seal_interval=1.0)
    proc = run_cli("compact", data=collector.data, check=False)
    assert proc.returncode == 3
    assert "a collector is running" in proc.stdout and "compaction runs inside it" in proc.stdout


def test_serve_compacts_closed_days_at_start(
    collector_factory: Callable[..., CollectorProcess], tmp_path: Path
) -> None:
    data = build_lake(tmp_path / "data", seals=3, rows=100)
    before = snapshot(data)
    collector = collector_factory(seal_interval=1.0)
    deadline = time.monotonic() + 20
    while len(day_files(data)) != 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(day_files(data)) == 1
    assert collector.query(f"SELECT count(*) AS n FROM events WHERE date = '{PAST_DAY}'")[0]["n"] == 300
    assert collector.stop() == 0
    assert snapshot(data) == before
    assert_lake_verifies(data)


def test_superseded_files_are_deleted_after_the_grace_period(tmp_path: Path) -> None:
    data = build_lake(tmp_path / "data", seals=2, rows=50)
    run_cli("compact", data=data.root)
    state_path = data.state / "compact.json"
    state = json.loads(state_path.read_text())
    for s in state["superseded"]:
        s["delete_after"] = time.time() - 1  # as if the grace period had passed
    state_path.write_text(json.dumps(state))
    run_cli("compact", data=data.root)
    assert not list(data.lake.glob("**/*.superseded"))
    assert not (data.lake / "_superseded" / "events" / f"date={PAST_DAY}").exists()  # empty folders go too
    assert json.loads(state_path.read_text())["superseded"] == []
    assert os.path.exists(day_files(data)[0])


def test_superseded_files_an_older_version_left_in_events_are_moved_out(tmp_path: Path) -> None:
    # Older versions renamed replaced files to <name>.parquet.superseded beside
    # the live files, where pyarrow.dataset counted them (5,800 rows for 4,602
    # events in one lake).  Any start (here the CLI's recovery) moves them out
    # and keeps their deletion time.
    data = build_lake(tmp_path / "data", seals=3, rows=100)
    run_cli("compact", data=data.root)
    state_path = data.state / "compact.json"
    state = json.loads(state_path.read_text())
    for entry in state["superseded"]:  # put them back where an older version kept them
        old = data.lake / entry["path"]
        legacy = data.lake / entry["path"].removeprefix("_superseded/")
        old.rename(legacy)
        entry["path"] = legacy.relative_to(data.lake).as_posix()
        entry["delete_after"] = 4_000_000_000.0
    state_path.write_text(json.dumps(state))
    assert reader_counts(str(data.events))["pyarrow.dataset"] == 600  # 300 events, counted twice
    assert "removed_file" in {p.kind for p in verify_lake(data).problems}

    run_cli("compact", "--day", "1970-01-01", data=data.root)
    assert not list(data.events.glob("**/*.superseded"))
    assert len(superseded(data)) == 3
    assert reader_counts(str(data.events)) == {"pyarrow.dataset": 300, "duckdb **/*.parquet": 300}
    state = json.loads(state_path.read_text())
    assert {s["delete_after"] for s in state["superseded"]} == {4_000_000_000.0}
    assert all(s["path"].startswith("_superseded/events/") for s in state["superseded"])
    assert_lake_verifies(data)


def test_compaction_in_a_bucket_sets_replaced_files_aside_outside_events(
        s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A lake on object storage: the move out of events/ is a copy and a
    # delete through the Store; readers of the bucket's events/ count each
    # event once.
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    bucket = s3_server.bucket(f"compact-{uuid.uuid4().hex[:12]}")
    url = f"s3://{bucket}/lake"
    data = DataDir.resolve(tmp_path / "data", lake=url)
    for k in range(3):
        submit(data, wire_table(100, PAST + k * 100_000), imported=True)
    out = run_cli("compact", "--lake", url, data=data.root).stdout
    assert f"{PAST_DAY}: 3 files -> 1 (300 rows)" in out
    fs = s3_server.filesystem()
    keys = sorted(i.path.removeprefix(f"{bucket}/lake/") for i in fs.get_file_info(
        pafs.FileSelector(f"{bucket}/lake", recursive=True)) if i.type == pafs.FileType.File)
    events = [k for k in keys if k.startswith("events/")]
    assert len(events) == 1 and events[0].split("/")[-1].startswith("compact-")
    aside = [k for k in keys if k.startswith("_superseded/")]
    assert len(aside) == 3 and all(k.startswith(f"_superseded/events/date={PAST_DAY}/part-")
                                   and k.endswith(".parquet.superseded") for k in aside)
    assert reader_counts(f"{bucket}/lake/events", fs) == {"pyarrow.dataset": 300}
    report = json.loads(run_cli("verify", "--lake", url, "--format", "json", "--quiet", data=data.root,
                                check=False).stdout)
    assert report["ok"], report["problems"]
    assert report["events"] == 300


def test_append_checkpoint_interleaves_safely_with_sealing(tmp_path: Path) -> None:
    """Checkpoints appended from another thread while seals run: one chain
    of seal numbers, each linking the previous, and the lake verifies."""
    import threading

    from auditlake.collector.lake.batch import AcceptedBatch
    from auditlake.collector.server import Collector

    data = DataDir(tmp_path / "data")
    collector = Collector.offline(data)
    collector.sealer.policy = type(collector.sealer.policy)(interval_s=0.01)
    collector.sealer.start()
    stop = threading.Event()
    appended = []

    def append() -> None:
        while not stop.is_set():
            appended.append(collector.sealer.append_checkpoint("compact", (), (), {"test": True}))

    t = threading.Thread(target=append)
    t.start()
    try:
        for k in range(30):
            now = int(time.time() * 1_000_000)
            batch = AcceptedBatch(f"b{k}", now, wire_table(20, now))
            collector.store(batch).result()
            time.sleep(0.01)
    finally:
        stop.set()
        t.join()
        collector.stop()
    cps = [s.checkpoint for s in read_checkpoints(data.checkpoints)]
    assert [c.seal for c in cps] == list(range(1, len(cps) + 1))
    assert all(b.previous == a.digest() for a, b in zip(cps, cps[1:], strict=False))
    kinds = {c.kind for c in cps}
    assert kinds == {"seal", "compact"} and len(appended) > 5
    assert cps[-1].seq == 600  # every event chained once, checkpoints in between or not
    assert_lake_verifies(data)
