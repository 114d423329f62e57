"""Durability: every acknowledged event survives kill -9 and is stored once;
a retried batch after a lost answer is stored once; a torn WAL tail is cut;
a seal killed between staging its files and publishing them leaves nothing
any reader of the lake reads, and the next start finishes or redoes it
(also from the visible stage names older versions wrote)."""

from __future__ import annotations

import collections
import json
import signal
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import duckdb
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from auditlake.collector.ingest.inbox import submit, write_item
from auditlake.collector.ingest.receive import decode_request, normalize
from auditlake.collector.integrity.verify import verify_lake
from auditlake.collector.lake.batch import AcceptedBatch
from auditlake.collector.lake.writer import LakeWriter
from auditlake.collector.storage.datadir import DataDir
from tests.collector.durability_client import Client, columns, ingest_key, new_ids
from tests.conftest import CollectorProcess
from tests.wire_client import make_event, request

HERE = Path(__file__).resolve().parent


def lake_id_counts(data: Path) -> collections.Counter[str]:
    """How many times each event id is stored in the lake (read directly)."""
    files = sorted((data / "lake" / "events").glob("date=*/*.parquet"))
    if not files:
        return collections.Counter()
    con = duckdb.connect()
    rows = con.execute(
        "SELECT id, count(*) FROM read_parquet(?) GROUP BY id", [[str(f) for f in files]]
    ).fetchall()
    return collections.Counter({r[0]: int(r[1]) for r in rows})


def read_ids(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


@pytest.mark.timeout(150)
def test_acked_events_survive_repeated_kill_9(
    collector_factory: Callable[..., CollectorProcess], tmp_path: Path
) -> None:
    collector = collector_factory(seal_interval=0.5)
    key = ingest_key(collector.data, "acme")
    outs = [tmp_path / f"client-{i}.acked" for i in range(3)]
    clients = [
        subprocess.Popen([sys.executable, str(HERE / "durability_client.py"), collector.endpoint,
                          key, str(out), "12", str(i)])
        for i, out in enumerate(outs)
    ]
    try:
        for _ in range(5):  # over ~20 s: each restart takes a few seconds
            time.sleep(1.5)
            collector.kill()
            time.sleep(0.3)
            collector.start()
        for c in clients:
            assert c.wait(120) == 0
    finally:
        for c in clients:
            if c.poll() is None:
                c.kill()
                c.wait()
    assert collector.stop() == 0
    acked = [i for out in outs for i in read_ids(out)]
    unacked = [i for out in outs for i in read_ids(Path(str(out) + ".unacked"))]
    assert len(acked) > 1000, "the clients should have streamed for a while"
    counts = lake_id_counts(collector.data)
    missing = [i for i in acked if counts[i] == 0]
    twice = {i: n for i, n in counts.items() if n > 1}
    assert not missing, f"{len(missing)} acknowledged events lost, e.g. {missing[:3]}"
    assert not twice, f"{len(twice)} events stored more than once, e.g. {list(twice.items())[:3]}"
    assert set(counts) <= set(acked) | set(unacked)
    report = verify_lake(DataDir(collector.data))  # chain and checkpoints intact after the crashes
    assert report.ok, [str(p) for p in report.problems]
    assert collector.log().count("recovering") >= 1  # the WAL was replayed at least once


def test_retry_after_lost_answer_is_stored_once(
    collector_factory: Callable[..., CollectorProcess],
) -> None:
    # A long seal interval keeps the batch in the WAL only when we kill.
    collector = collector_factory(seal_interval=30)
    key = ingest_key(collector.data, "acme")
    client = Client(collector.endpoint, key)
    ids = new_ids(50)
    first = client.export("batch-lost-answer", columns(ids))
    assert first.accepted == 50 and not first.duplicate
    # The client "lost" that answer and retries at once: stored once.
    again = client.export("batch-lost-answer", columns(ids))
    assert again.duplicate and again.accepted == 50
    collector.kill()  # acknowledged, fsynced, never sealed
    collector.start()
    # ... and retries again after the restart (batch ids are scoped by the
    # key that sent them: the same client, the same key).
    client = Client(collector.endpoint, key)
    after = client.export("batch-lost-answer", columns(ids))
    assert after.duplicate and after.accepted == 50
    client.close()
    # The same events under another key of the tenant: a new batch, whose
    # events are all known (tenant, id) pairs, so none is stored again.
    other = Client(collector.endpoint, ingest_key(collector.data, "acme"))
    again = other.export("batch-lost-answer", columns(ids))
    assert not again.duplicate and again.accepted + again.duplicates == 50
    other.close()
    assert collector.stop() == 0
    counts = lake_id_counts(collector.data)
    assert sorted(counts) == sorted(ids)
    assert set(counts.values()) == {1}


def test_torn_wal_tail_is_cut_on_start(collector_factory: Callable[..., CollectorProcess]) -> None:
    collector = collector_factory(seal_interval=30)
    client = Client(collector.endpoint, ingest_key(collector.data, "acme"))
    ids = new_ids(20)
    assert client.export(str(uuid.uuid4()), columns(ids)).accepted == 20
    client.close()
    collector.kill()
    segment = sorted((collector.data / "wal").glob("wal-*.log"))[-1]
    whole = segment.stat().st_size
    with open(segment, "ab") as f:  # half a record: a header promising 1000 bytes, then 10
        f.write(struct.pack("<II", 1000, 12345) + b"x" * 10)
    collector.start()
    log = collector.log()
    assert "cutting a torn tail of 18 bytes" in log
    assert f"at offset {whole}" in log
    assert collector.stop() == 0
    counts = lake_id_counts(collector.data)
    assert sorted(counts) == sorted(ids) and set(counts.values()) == {1}


def test_corrupt_last_record_is_cut_and_earlier_records_kept(
    collector_factory: Callable[..., CollectorProcess],
) -> None:
    collector = collector_factory(seal_interval=30)
    client = Client(collector.endpoint, ingest_key(collector.data, "acme"))
    kept, torn = new_ids(10), new_ids(10)
    client.export("b-kept", columns(kept))
    client.export("b-torn", columns(torn))
    client.close()
    collector.kill()
    segment = sorted((collector.data / "wal").glob("wal-*.log"))[-1]
    with open(segment, "r+b") as f:  # flip the last byte: the last record fails its crc
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 0xFF]))
    collector.start()
    assert "cutting a torn tail" in collector.log()
    assert collector.stop() == 0
    assert sorted(lake_id_counts(collector.data)) == sorted(kept)


def test_sigusr1_prints_every_threads_stack_and_the_collector_keeps_serving(
    collector_factory: Callable[..., CollectorProcess],
) -> None:
    collector = collector_factory()
    assert collector.proc is not None
    collector.proc.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while not all(w in collector.log() for w in ("cmd_serve", "seal.py")) and time.monotonic() < deadline:
        time.sleep(0.05)
    log = collector.log()
    # every thread's stack: the main thread waiting in serve, the sealer's loop
    assert "Current thread" in log and "cmd_serve" in log and "seal.py" in log, log
    client = Client(collector.endpoint, ingest_key(collector.data, "acme"))
    assert client.export("after-dump", columns(new_ids(3))).accepted == 3
    client.close()
    assert collector.stop() == 0


_SEAL_CRASH_CHILD = r"""
import os, signal, sys
from auditlake.collector.ingest.inbox import drain
from auditlake.collector.lake.seal_commit import Committer
from auditlake.collector.lake.writer import LakeWriter
from auditlake.collector.storage.datadir import DataDir
from auditlake.collector.storage.store import LocalStore

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)  # a real kill -9 at this step

if sys.argv[2] == "before-commit":  # the seal's files staged, state/seal.json not yet naming them
    Committer.commit_seal = die
else:  # "before-publish": committed, its files not yet renamed into place
    publish = LocalStore.publish
    def publish_or_die(self, staged):
        if staged.key.endswith(".parquet") and self.stage_exists(staged.temp_key):  # not a repeat at start
            die()
        publish(self, staged)
    LocalStore.publish = publish_or_die
writer = LakeWriter.offline(DataDir.resolve(sys.argv[1]))
drain(writer)  # into the WAL; the seal runs as the writer closes
writer.close()
"""


def _events(n: int) -> tuple[list[str], AcceptedBatch]:
    """A batch of ``n`` of today's events, and their ids."""
    events = [make_event(i) for i in range(n)]
    table, bad = decode_request(request(events, form="packed"))
    assert not bad
    return [e["id"] for e in events], AcceptedBatch(f"b-{uuid.uuid4()}", int(time.time() * 1e6), normalize(table))


def stage_files(data: DataDir) -> list[Path]:
    """Files a seal or compaction staged and did not publish (either version's names)."""
    return sorted(data.events.glob("date=*/*.parquet.tmp"))  # pathlib's * matches hidden names too


def reader_counts(data: DataDir) -> dict[str, int]:
    """Rows that readers of lake/events count: pyarrow.dataset over the folder
    (Hive partitioning: every file not named _* or .*, whatever its suffix)
    and DuckDB's recursive glob."""
    counts = {"pyarrow.dataset": pads.dataset(data.events, format="parquet", partitioning="hive").count_rows()}
    with duckdb.connect() as con:
        row = con.execute(f"SELECT count(*) FROM read_parquet('{data.events}/**/*.parquet')").fetchone()
    assert row is not None
    counts["duckdb **/*.parquet"] = int(row[0])
    return counts


def _as_an_older_version_left_it(data: DataDir, hidden: Path) -> Path:
    """Rename a stage to the visible ``<name>.parquet.tmp`` older versions
    staged under, and point state/seal.json at it where it names the stage."""
    legacy = hidden.with_name(hidden.name.removeprefix("."))
    hidden.rename(legacy)
    state_path = data.state / "seal.json"
    state = json.loads(state_path.read_text())
    for f in (state.get("last") or {}).get("files", []):
        if f["tmp"] == str(hidden):
            f["tmp"] = str(legacy)
    state_path.write_text(json.dumps(state))
    return legacy


@pytest.mark.parametrize("legacy", [False, True], ids=["this-version", "older-version-stage"])
@pytest.mark.parametrize("point", ["before-commit", "before-publish"])
def test_a_seal_killed_between_stage_and_publish_is_read_by_no_reader_and_recovered(
        tmp_path: Path, point: str, legacy: bool) -> None:
    data = DataDir(tmp_path / "data")
    first, batch = _events(300)
    submit(data, batch.table, imported=True)  # seal 1: live
    second, batch = _events(200)
    write_item(data, batch)
    child = subprocess.run([sys.executable, "-c", _SEAL_CRASH_CHILD, str(data.root), point],
                           capture_output=True, text=True, timeout=60)
    assert child.returncode == -signal.SIGKILL, child.stderr
    [staged] = stage_files(data)
    assert staged.name.startswith(".part-") and pq.read_metadata(staged).num_rows == 200  # written in full
    committed = json.loads((data.state / "seal.json").read_text())["seal"]
    assert committed == (1 if point == "before-commit" else 2)
    # Staged under a hidden name: every reader counts exactly the live events.
    assert reader_counts(data) == {"pyarrow.dataset": 300, "duckdb **/*.parquet": 300}
    if legacy:
        staged = _as_an_older_version_left_it(data, staged)
        # What older versions left: the folder reader reads the stage too.
        assert reader_counts(data) == {"pyarrow.dataset": 500, "duckdb **/*.parquet": 300}
        stray = staged.relative_to(data.lake).as_posix()
        problems = [p for p in verify_lake(data).problems if p.file == stray]
        assert [p.kind for p in problems] == ["unlisted_file"] and "older collector" in problems[0].message

    LakeWriter.offline(data).close()  # any start recovers: publishes (committed) or redoes (not) the seal
    assert stage_files(data) == []
    assert reader_counts(data) == {"pyarrow.dataset": 500, "duckdb **/*.parquet": 500}
    counts = lake_id_counts(data.root)
    assert sorted(counts) == sorted(first + second) and set(counts.values()) == {1}
    assert json.loads((data.state / "seal.json").read_text())["seal"] == 2  # the second seal, once
    report = verify_lake(data)
    assert report.ok, [str(p) for p in report.problems]
