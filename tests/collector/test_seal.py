"""The sealer's pipeline, in process on real files: a backlog is sealed as
consecutive seals (one seal's Parquet written while the next is hashed), and
a seal that fails part-way puts every uncommitted batch back, in order, so
the retry stores each event exactly once and the chain verifies; a seal or
checkpoint that fails after its commit point is finished before anything
else, never repeated."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import duckdb
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from auditlake.collector.ingest.receive import decode_request, normalize
from auditlake.collector.integrity.signing import SigningKey
from auditlake.collector.integrity.verify import verify_lake
from auditlake.collector.lake.batch import AcceptedBatch
from auditlake.collector.lake.files import remove_stale_temps, stage_table
from auditlake.collector.lake.seal import Sealer, SealPolicy, canonical_prefix
from auditlake.collector.lake.seal_stage import seal_file_key
from auditlake.collector.lake.wal import LogPosition
from auditlake.collector.storage.datadir import DataDir
from tests.wire_client import make_event, request

BATCH = 250


def _sealer(root: Path, max_rows: int = 1000, dedupe_window: int = 2_000_000,
            mirrors: tuple[Path, ...] = ()) -> Sealer:
    data = DataDir(root)
    for p in (data.events, data.state, data.checkpoints, data.keys):
        p.mkdir(parents=True, exist_ok=True)
    return Sealer(data, data.wal, SigningKey.load_or_create(data.keys),
                  policy=SealPolicy(max_rows=max_rows, dedupe_window_events=dedupe_window),
                  checkpoint_mirrors=mirrors)


def _queue(sealer: Sealer, batches: int, ids_from: list[str] | None = None, start: int = 0) -> list[str]:
    """Queue ``batches`` durable batches of today's events (their ids taken
    from ``ids_from`` when given); the ids in order."""
    now_us = int(time.time() * 1_000_000)
    ids: list[str] = []
    for b in range(start, start + batches):
        events = [make_event(b * BATCH + i, created_at_us=now_us) for i in range(BATCH)]
        if ids_from is not None:
            for i, e in enumerate(events):
                e["id"] = ids_from[(b - start) * BATCH + i]
        table, bad = decode_request(request(events, f"batch-{b}", form="packed"))
        assert not bad
        batch = AcceptedBatch(f"batch-{b}", now_us, normalize(table))
        batch.canonical_prefix = canonical_prefix(batch.table, now_us, sealer.writer_id)
        sealer.add(batch, LogPosition(1, b + 1))
        ids += [e["id"] for e in events]
    return ids


def _lake_ids_by_seq(data: DataDir) -> list[tuple[int, str]]:
    glob = str(data.events / "date=*" / "*.parquet")
    return duckdb.sql(f"SELECT seq, id FROM read_parquet('{glob}') ORDER BY seq").fetchall()


def test_a_backlog_is_sealed_as_consecutive_seals_in_arrival_order(tmp_path: Path) -> None:
    sealer = _sealer(tmp_path)
    ids = _queue(sealer, 14)  # 3,500 events: four seals of at most 1,000
    assert sealer.seal_pending() == len(ids)
    assert sealer.pending_rows == 0
    rows = _lake_ids_by_seq(sealer.data)
    assert [seq for seq, _ in rows] == list(range(1, len(ids) + 1))
    assert [i for _, i in rows] == ids
    seals = sorted(p.name for p in (sealer.data.checkpoints / sealer.writer_id).glob("*-seal.json"))
    assert len(seals) == 4 and sealer.state.seal == 4
    assert sealer.state.position == LogPosition(1, 14)
    report = verify_lake(sealer.data)
    assert report.ok, [str(p) for p in report.problems]


def test_a_seal_that_fails_while_the_next_is_hashed_loses_and_repeats_nothing(tmp_path: Path) -> None:
    sealer = _sealer(tmp_path)
    ids = _queue(sealer, 14)
    # A real failure: the day's partition path is a file, so writing the
    # first seal's Parquet fails (after the next seal was taken and hashed).
    day = dt.datetime.now(dt.UTC).date()
    blocker = sealer.data.events / f"date={day.isoformat()}"
    blocker.write_text("not a directory")
    with pytest.raises(OSError):
        sealer.seal_pending()
    assert sealer.state.seal == 0 and sealer.state.seq == 0
    assert sealer.pending_rows == len(ids)  # every batch is queued again
    blocker.unlink()
    assert sealer.seal_pending() == len(ids)
    rows = _lake_ids_by_seq(sealer.data)
    assert [seq for seq, _ in rows] == list(range(1, len(ids) + 1))
    assert [i for _, i in rows] == ids  # exactly once, in arrival order
    report = verify_lake(sealer.data)
    assert report.ok, [str(p) for p in report.problems]


def test_a_seal_that_fails_after_its_commit_point_is_finished_not_repeated(tmp_path: Path) -> None:
    # The event-id window is off, so only the sealer's own bookkeeping can
    # keep a committed seal from being stored a second time.
    mirror = tmp_path / "mirror"
    sealer = _sealer(tmp_path / "data", dedupe_window=0, mirrors=(mirror,))
    ids = _queue(sealer, 14)  # four seals of at most 1,000 events
    # A real failure after the commit point: the checkpoint mirror path is a
    # file, so the first seal's checkpoint reaches the primary folder only.
    mirror.write_text("not a directory")
    with pytest.raises(OSError):
        sealer.seal_pending()
    assert sealer.state.seal == 1 and sealer.state.seq == 1000  # committed
    assert sealer.pending_rows == len(ids) - 1000  # and out of the queue
    assert [i for _, i in _lake_ids_by_seq(sealer.data)] == ids[:1000]  # published
    mirror.unlink()
    assert sealer.seal_pending() == len(ids) - 1000  # finishes seal 1, then seals the rest
    rows = _lake_ids_by_seq(sealer.data)
    assert [seq for seq, _ in rows] == list(range(1, len(ids) + 1))
    assert [i for _, i in rows] == ids  # exactly once
    mirrored = sorted(p.name for p in (mirror / sealer.writer_id).glob("*.json"))
    assert mirrored == sorted(p.name for p in (sealer.data.checkpoints / sealer.writer_id).glob("*.json"))
    assert len(mirrored) == 4
    report = verify_lake(sealer.data, mirrors=(mirror,))
    assert report.ok, [str(p) for p in report.problems]


def test_a_checkpoint_that_failed_to_write_is_written_before_the_next_seal(tmp_path: Path) -> None:
    sealer = _sealer(tmp_path)
    ids = _queue(sealer, 4)
    sealer.seal_pending()
    # A real failure: the compact checkpoint's temporary file name is taken
    # by a directory, so writing checkpoint 2 fails after the state moved on.
    folder = sealer.data.checkpoints / sealer.writer_id
    blocker = folder / "0000000002-compact.tmp"
    blocker.mkdir()
    with pytest.raises(OSError):
        sealer.append_checkpoint("compact")
    assert sealer.state.seal == 2
    blocker.rmdir()
    ids += _queue(sealer, 4, start=4)
    assert sealer.seal_pending() == 1000  # writes checkpoint 2 first, then seal 3
    assert sorted(p.name for p in folder.glob("*.json")) == [
        "0000000001-seal.json", "0000000002-compact.json", "0000000003-seal.json"]
    assert [i for _, i in _lake_ids_by_seq(sealer.data)] == ids
    report = verify_lake(sealer.data)
    assert report.ok, [str(p) for p in report.problems]


def test_events_repeated_across_two_seals_in_flight_are_stored_once(tmp_path: Path) -> None:
    sealer = _sealer(tmp_path)
    ids = _queue(sealer, 4)  # the first seal (1,000 events)
    again = _queue(sealer, 4, ids_from=ids, start=4)  # the same event ids, under new batch ids
    assert again == ids
    assert sealer.seal_pending() == len(ids)
    assert sealer.duplicate_events == len(ids)
    assert [i for _, i in _lake_ids_by_seq(sealer.data)] == ids


def test_a_seal_is_staged_under_a_name_no_reader_reads_and_stale_stages_are_removed(tmp_path: Path) -> None:
    sealer = _sealer(tmp_path)
    _queue(sealer, 4)
    sealer.seal_pending()  # seal 1: 1,000 live events
    day = dt.datetime.now(dt.UTC).date()
    rows = pq.read_table(sealer.data.lake / seal_file_key(sealer.writer_id, 1, day))
    # Seal 2 staged, not published (what a crash before the rename leaves).
    staged = stage_table(sealer.lake, seal_file_key(sealer.writer_id, 2, day), rows)
    folder = sealer.data.events / f"date={day.isoformat()}"
    assert staged.temp_key == f"events/date={day.isoformat()}/.part-{sealer.writer_id}-0000000002.parquet.tmp"
    assert staged.tmp.parent == folder and staged.tmp.exists()  # beside its final name: one rename publishes it

    def counts() -> tuple[int, int]:
        by_folder = pads.dataset(sealer.data.events, format="parquet", partitioning="hive").count_rows()
        with duckdb.connect() as con:
            by_glob = con.execute(f"SELECT count(*) FROM read_parquet('{sealer.data.events}/**/*.parquet')").fetchone()
        assert by_glob is not None
        return by_folder, int(by_glob[0])

    assert counts() == (1000, 1000)
    assert verify_lake(sealer.data).ok
    # An older version's stage, visible (a folder reader reads it), and
    # another writer's stages in the same lake (seals in progress: kept).
    legacy = folder / f"part-{sealer.writer_id}-0000000003.parquet.tmp"
    legacy.write_bytes(staged.tmp.read_bytes())
    assert counts() == (2000, 1000)
    others = [folder / ".part-wother0000001-0000000007.parquet.tmp",
              folder / "part-wother0000001-0000000008.parquet.tmp"]
    for other in others:
        other.write_bytes(b"in progress")
    assert remove_stale_temps(sealer.lake, sealer.writer_id) == 2
    assert not staged.tmp.exists() and not legacy.exists()
    assert all(other.exists() for other in others)
