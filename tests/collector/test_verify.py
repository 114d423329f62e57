"""`auditlake verify` against the checkpoint contract: compaction, moves to
the cold tier and expiry are verified clean when done as the contract says,
and every deviation is named.  Lakes are built in-process by SyntheticWriter
(same chain, files and signed checkpoints as the Sealer)."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from auditlake.collector.errors import ConfigError
from auditlake.collector.integrity.checkpoint import FileEntry
from auditlake.collector.integrity.verify import PROBLEM_KINDS, VerifyReport, verify_lake
from auditlake.collector.lake.files import publish, sha256_file, sort_for_queries, stage_file
from auditlake.collector.storage.datadir import DataDir
from auditlake.collector.storage.store import LocalStore, ObjectStore
from auditlake.collector.storage.tiers import COLD_PREFIX, Tier
from tests.collector.synthetic_lake import SyntheticWriter, event_rows
from tests.conftest import CollectorProcess, run_cli
from tests.wire_client import WireClient, make_event


@pytest.fixture
def writer(tmp_path: Path) -> SyntheticWriter:
    """A writer with three seals (60 events over 3 days) already written."""
    w = SyntheticWriter(DataDir(tmp_path / "data"))
    for s in range(3):
        w.seal(event_rows(20, start=20 * s))
    return w


def kinds(report: VerifyReport) -> set[str]:
    return {p.kind for p in report.problems}


def day_files(w: SyntheticWriter, day: str) -> list[FileEntry]:
    return sorted((e for p, e in w.entries().items() if f"date={day}/" in p), key=lambda e: e.path)


def compact(w: SyntheticWriter, day: str, *, delete_old: bool = True) -> FileEntry:
    """What compaction does: one file with the same rows, a compact checkpoint."""
    old = day_files(w, day)
    table = pa.concat_tables([pq.read_table(w.data.lake / e.path) for e in old])
    final = w.data.events / f"date={day}" / f"part-{w.writer_id}-c{w.seal_no + 1:010d}.parquet"
    staged = stage_file(sort_for_queries(table), final)
    publish(staged.tmp, staged.final)
    new = FileEntry(final.relative_to(w.data.lake).as_posix(), staged.sha256, staged.bytes,
                    staged.rows, staged.first_seq, staged.last_seq)
    w.checkpoint("compact", files=(new,), removed=tuple(old))
    if delete_old:
        for e in old:
            (w.data.lake / e.path).unlink()
    return new


def move_cold(w: SyntheticWriter, cold_root: Path, day: str) -> list[FileEntry]:
    """What retention's move does: the same files under cold:, a move checkpoint."""
    hot = day_files(w, day)
    moved = []
    for e in hot:
        dest = cold_root / e.path
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(w.data.lake / e.path, dest)
        moved.append(FileEntry(COLD_PREFIX + e.path, e.sha256, e.bytes, e.rows, e.first_seq,
                               e.last_seq))
    w.checkpoint("move", files=tuple(moved), removed=tuple(hot))
    return moved


def seq_runs(path: Path) -> list[list[object]]:
    """Maximal runs of consecutive seqs in a file: [first, last, chain_hash of last]."""
    t = pq.read_table(path, columns=["seq", "chain_hash"]).sort_by("seq")
    runs: list[list[object]] = []
    for seq, h in zip(t.column("seq").to_pylist(), t.column("chain_hash").to_pylist(), strict=True):
        if runs and runs[-1][1] == seq - 1:
            runs[-1][1:] = [seq, h]
        else:
            runs.append([seq, seq, h])
    return runs


def expire(w: SyntheticWriter, cold_root: Path, entries: list[FileEntry]) -> None:
    """What retention's expiry does: delete cold files, record their seq ranges."""
    ranges = []
    for e in entries:
        path = cold_root / e.path[len(COLD_PREFIX):]
        ranges.append({"path": e.path, "seq_ranges": seq_runs(path)})
        path.unlink()
    w.checkpoint("expire", removed=tuple(entries),
                 extra={"policy": {"keep_days": 365}, "legal_holds": [], "ranges": ranges})


def cold(root: Path) -> Tier:
    return LocalStore(root, "cold")


# -- the contract's kinds, done right ------------------------------------------------


def test_fresh_synthetic_lake_is_clean(writer: SyntheticWriter) -> None:
    report = verify_lake(writer.data)
    assert report.ok, report.to_text()
    assert report.events == report.events_hashed == 60
    assert report.writers[0].head_seq == 60 and report.writers[0].checkpoints == 3


def test_compaction_verifies_clean(writer: SyntheticWriter) -> None:
    compact(writer, "2026-03-01")
    writer.seal(event_rows(5, start=100))  # sealing continues after a compaction
    report = verify_lake(writer.data)
    assert report.ok, report.to_text()
    assert report.events == 65


def test_a_file_compaction_replaced_is_a_problem_while_readers_still_see_it(writer: SyntheticWriter) -> None:
    # Every reader globbing events/ counts such a file's events twice: an
    # error, not a warning (hole: it used to pass with a warning).
    old = day_files(writer, "2026-03-02")
    compact(writer, "2026-03-02", delete_old=False)
    report = verify_lake(writer.data)
    removed = [p for p in report.problems if p.kind == "removed_file"]
    assert sorted(p.file for p in removed) == [e.path for e in old]
    assert kinds(report) == {"removed_file"}, report.to_text()
    assert all("compact checkpoint seal 4" in p.message and "counts its events a second time" in p.message
               for p in removed)
    assert report.events == 60  # not read: its events are counted once, in the file that replaced it
    # Outside --from/--to it is not digested, but its path alone is wrong.
    ranged = verify_lake(writer.data, date_from="2026-03-03", date_to="2026-03-03")
    assert sorted(p.file for p in ranged.problems if p.kind == "removed_file") == [e.path for e in old]


def test_old_style_superseded_copy_inside_events_is_a_removed_file(writer: SyntheticWriter) -> None:
    # What compaction of older versions left beside the live files, which
    # pyarrow.dataset reads whatever the suffix.
    old = day_files(writer, "2026-03-02")
    compact(writer, "2026-03-02", delete_old=False)
    for e in old:
        path = writer.data.lake / e.path
        path.rename(path.with_name(path.name + ".superseded"))
    report = verify_lake(writer.data)
    assert sorted(p.file for p in report.problems if p.kind == "removed_file") == [
        e.path + ".superseded" for e in old]
    assert kinds(report) == {"removed_file"}


def test_any_file_a_folder_reader_reads_must_be_listed(writer: SyntheticWriter) -> None:
    day = writer.data.events / "date=2026-03-01"
    source = day_files(writer, "2026-03-01")[0]
    # pyarrow.dataset and Spark read every file not named _* or .*, whatever its suffix.
    shutil.copy(writer.data.lake / source.path, day / "extra.data")
    (day / "sub").mkdir()
    (day / "sub" / "notes.txt").write_text("hello")
    # A stage under the visible name older collectors used: folder readers read it.
    (day / "part-wtest00000001-0000000098.parquet.tmp").write_text("x")
    # Names no reader reads: hidden (a stage in flight too), underscore-prefixed.
    (day / ".hidden").write_text("x")
    (writer.data.events / "_meta").mkdir()
    (writer.data.events / "_meta" / "x.json").write_text("{}")
    (day / ".part-wtest00000001-0000000099.parquet.tmp").write_text("x")
    report = verify_lake(writer.data)
    unlisted = sorted(p.file for p in report.problems if p.kind == "unlisted_file")
    assert unlisted == ["events/date=2026-03-01/extra.data",
                        "events/date=2026-03-01/part-wtest00000001-0000000098.parquet.tmp",
                        "events/date=2026-03-01/sub/notes.txt"]
    assert kinds(report) == {"unlisted_file"}


def test_move_to_cold_then_expire_verifies_clean(writer: SyntheticWriter, tmp_path: Path) -> None:
    moved = move_cold(writer, tmp_path / "cold", "2026-03-01")
    report = verify_lake(writer.data, cold_tier=cold(tmp_path / "cold"))
    assert report.ok, report.to_text()
    assert report.events == 60
    expire(writer, tmp_path / "cold", moved)
    writer.seal(event_rows(6, start=200))
    report = verify_lake(writer.data, cold_tier=cold(tmp_path / "cold"))
    assert report.ok, report.to_text()
    assert report.writers[0].expired_events == 20
    assert report.events == 46


def test_cold_file_missing_without_expire_is_named(writer: SyntheticWriter, tmp_path: Path) -> None:
    moved = move_cold(writer, tmp_path / "cold", "2026-03-01")
    (tmp_path / "cold" / moved[0].path[len(COLD_PREFIX):]).unlink()
    report = verify_lake(writer.data, cold_tier=cold(tmp_path / "cold"))
    missing = [p for p in report.problems if p.kind == "missing_file"]
    assert [p.file for p in missing] == [moved[0].path]
    assert "missing_events" in kinds(report)


def test_expire_gap_outside_recorded_ranges_is_missing_events(
        writer: SyntheticWriter, tmp_path: Path) -> None:
    moved = move_cold(writer, tmp_path / "cold", "2026-03-01")
    # Expire one file but also delete an event of another file without saying so.
    expire(writer, tmp_path / "cold", moved[:1])
    other = writer.data.lake / day_files(writer, "2026-03-02")[0].path
    t = pq.read_table(other)
    victim = t.column("seq")[0].as_py()
    pq.write_table(t.slice(1), other)
    report = verify_lake(writer.data, cold_tier=cold(tmp_path / "cold"))
    gaps = [p for p in report.problems if p.kind == "missing_events"]
    assert [p.seq for p in gaps] == [victim]


def test_expire_ranges_that_do_not_match_the_file_are_bad_checkpoints(
        writer: SyntheticWriter, tmp_path: Path) -> None:
    moved = move_cold(writer, tmp_path / "cold", "2026-03-01")
    e = moved[0]
    path = tmp_path / "cold" / e.path[len(COLD_PREFIX):]
    runs = seq_runs(path)
    path.unlink()
    writer.checkpoint("expire", removed=(e,), extra={"ranges": [
        {"path": e.path, "seq_ranges": runs[:-1]}]})  # one range left out
    report = verify_lake(writer.data, cold_tier=cold(tmp_path / "cold"))
    assert "bad_checkpoint" in kinds(report)
    assert "missing_events" in kinds(report)


def test_compact_checkpoint_that_moves_the_head_is_bad(writer: SyntheticWriter) -> None:
    writer.seq += 1  # a "compaction" that claims a new head
    writer.checkpoint("compact")
    report = verify_lake(writer.data)
    assert "bad_checkpoint" in kinds(report)


# -- other findings ---------------------------------------------------------------------


def test_unknown_writer_events_are_named(writer: SyntheticWriter, tmp_path: Path) -> None:
    rogue = SyntheticWriter(DataDir(tmp_path / "rogue"), writer_id="wrogue0000001")
    rogue.seal(event_rows(4))
    src = next((tmp_path / "rogue/lake/events").glob("date=*/*.parquet"))
    shutil.copy(src, writer.data.events / src.parent.name / src.name)
    report = verify_lake(writer.data)
    unknown = [p for p in report.problems if p.kind == "unknown_writer"]
    assert unknown and unknown[0].writer_id == "wrogue0000001"
    assert "unlisted_file" in kinds(report)


def test_garbage_file_is_unreadable(writer: SyntheticWriter) -> None:
    bad = writer.data.events / "date=2026-03-01" / "part-junk.parquet"
    bad.write_bytes(b"not parquet at all")
    report = verify_lake(writer.data)
    assert [p.file for p in report.problems if p.kind == "unreadable_file"] == [
        "events/date=2026-03-01/part-junk.parquet"]


def test_null_value_names_its_column(writer: SyntheticWriter) -> None:
    entry = day_files(writer, "2026-03-01")[0]
    path = writer.data.lake / entry.path
    t = pq.read_table(path)
    values = t.column("reason").to_pylist()
    values[0] = None
    schema = t.schema.set(t.schema.get_field_index("reason"), pa.field("reason", pa.string()))
    t = t.cast(schema).set_column(t.schema.get_field_index("reason"), "reason",
                                  pa.array(values, pa.string()))
    pq.write_table(t, path)
    report = verify_lake(writer.data)
    changed = [p for p in report.problems if p.kind == "changed_event"]
    assert [(p.seq, p.column) for p in changed] == [(t.column("seq")[0].as_py(), "reason")]


def test_invalid_value_names_its_column(writer: SyntheticWriter) -> None:
    entry = day_files(writer, "2026-03-02")[0]
    path = writer.data.lake / entry.path
    t = pq.read_table(path)
    outcome = t.column("outcome").to_pylist()
    outcome[2] = "approved"
    t = t.set_column(t.schema.get_field_index("outcome"), t.schema.field("outcome"),
                     pa.array(outcome, pa.string()))
    pq.write_table(t, path)
    report = verify_lake(writer.data)
    [changed] = [p for p in report.problems if p.kind == "changed_event"]
    assert changed.column == "outcome" and changed.seq == t.column("seq")[2].as_py()


def test_a_stored_hash_in_upper_case_is_a_changed_hash(writer: SyntheticWriter) -> None:
    """docs/integrity.md: chain_hash is the lowercase hex of the hash.  The
    same digest in capitals is a changed stored hash, named at its event
    (hex readers such as bytes.fromhex and DuckDB's unhex would take it)."""
    entry = day_files(writer, "2026-03-02")[0]
    path = writer.data.lake / entry.path
    t = pq.read_table(path)
    hashes = t.column("chain_hash").to_pylist()
    hashes[3] = hashes[3].upper()
    pq.write_table(t.set_column(t.schema.get_field_index("chain_hash"), "chain_hash", pa.array(hashes)), path)
    report = verify_lake(writer.data)
    assert kinds(report) == {"changed_hash", "changed_file"}
    [changed] = [p for p in report.problems if p.kind == "changed_hash"]
    assert changed.seq == t.column("seq")[3].as_py() and changed.file == entry.path


def test_rewritten_chain_from_an_event_is_a_head_mismatch(writer: SyntheticWriter) -> None:
    # Re-hash everything from seq 41 on with a changed event: every link holds,
    # only the signed head (and the file digests) can tell.
    from auditlake.collector.integrity.chain import chain_table

    files = sorted(writer.data.events.glob("date=*/*.parquet"))
    table = pa.concat_tables([pq.read_table(f).append_column(
        "_f", pa.array([str(f)] * pq.read_metadata(f).num_rows)) for f in files]).sort_by("seq")
    tail = table.filter(pc.greater_equal(table.column("seq"), 41))
    users = tail.column("user_id").to_pylist()
    users[0] = "forger"
    i = tail.schema.get_field_index("user_id")
    tail = tail.set_column(i, tail.schema.field(i), pa.array(users, pa.string()))
    prev = table.filter(pc.equal(table.column("seq"), 40)).column("chain_hash")[0].as_py()
    hashes = [h.hex() for h in chain_table(bytes.fromhex(prev), tail.drop_columns(["_f"]))]
    i = tail.schema.get_field_index("chain_hash")
    tail = tail.set_column(i, tail.schema.field(i), pa.array(hashes, pa.string()))
    keep = table.filter(pc.less(table.column("seq"), 41))
    new = pa.concat_tables([keep, tail])
    for f in files:
        part = new.filter(pc.equal(new.column("_f"), str(f))).drop_columns(["_f"])
        pq.write_table(part, f)
    report = verify_lake(writer.data)
    assert "head_mismatch" in kinds(report)
    assert "changed_event" not in kinds(report)
    assert {p.kind for p in report.problems} <= {"head_mismatch", "changed_file"}


def test_missing_public_key_is_a_problem(writer: SyntheticWriter) -> None:
    (writer.data.keys / "signing.pub.pem").unlink()
    report = verify_lake(writer.data)
    assert kinds(report) == {"no_public_key"}


def test_progress_reports_each_phase(writer: SyntheticWriter) -> None:
    seen: list[tuple[str, int, int]] = []
    verify_lake(writer.data, progress=lambda phase, done, total: seen.append((phase, done, total)))
    phases = [s[0] for s in seen]
    assert {"digest", "index", "hash"} <= set(phases)
    assert seen[-1] == ("hash", 60, 60)


def test_report_json_names_only_documented_kinds(writer: SyntheticWriter) -> None:
    (writer.data.lake / day_files(writer, "2026-03-03")[0].path).unlink()
    report = verify_lake(writer.data)
    doc = json.loads(json.dumps(report.to_json()))
    assert doc["ok"] is False
    assert {p["kind"] for p in doc["problems"]} <= set(PROBLEM_KINDS)
    assert all("message" in p for p in doc["problems"])


def test_usage_errors(writer: SyntheticWriter, tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        verify_lake(tmp_path / "nowhere")
    with pytest.raises(ConfigError):
        verify_lake(writer.data, date_from="2026-03-05", date_to="2026-03-01")
    proc = run_cli("verify", "--public-key", str(tmp_path / "missing.pem"), data=writer.data.root,
                   check=False)
    assert proc.returncode == 2 and "public key" in proc.stderr


def test_file_digests_match_what_the_sealer_signed(writer: SyntheticWriter) -> None:
    # The digest verify compares is the plain sha256 of the file's bytes.
    for path, entry in writer.entries().items():
        assert sha256_file(writer.data.lake / path) == entry.sha256


def test_live_lake_verifies_clean_while_the_collector_keeps_sealing(
        collector_factory: Callable[..., CollectorProcess]) -> None:
    # Verification reads checkpoints and files that belong together even while
    # seals publish new files every 0.2 s: no false alarm on a healthy lake.
    collector = collector_factory(seal_interval=0.2)
    key = collector.api_key("acme")
    stop = threading.Event()
    sent = [0]

    def send() -> None:
        client = WireClient(collector.endpoint)
        try:
            while not stop.is_set():
                client.export([make_event(i) for i in range(50)], key)
                sent[0] += 50
                time.sleep(0.02)
        finally:
            client.close()

    sender = threading.Thread(target=send)
    sender.start()
    try:
        deadline = time.monotonic() + 4
        reports = []
        while time.monotonic() < deadline:
            reports.append(verify_lake(collector.data))
            time.sleep(0.1)
    finally:
        stop.set()
        sender.join()
    assert sent[0] > 0 and len(reports) >= 2
    for report in reports:
        assert report.ok, report.to_text()
    assert reports[-1].events > 0


def test_cold_tier_on_a_non_local_filesystem_is_read_through_pyarrow(
        writer: SyntheticWriter, tmp_path: Path) -> None:
    # Object stores (s3://, gs://) are pyarrow filesystems that DuckDB cannot
    # open itself: the same path as a SubTreeFileSystem over a local folder.
    moved = move_cold(writer, tmp_path / "cold", "2026-03-01")
    tier = ObjectStore(pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem()), "cold", "cold")
    report = verify_lake(writer.data, cold_tier=tier)
    assert report.ok, report.to_text()
    assert report.events == report.events_hashed == 60
    path = tmp_path / "cold" / moved[0].path[len(COLD_PREFIX):]
    t = pq.read_table(path)
    values = t.column("user_id").to_pylist()
    values[0] = "intruder"
    i = t.schema.get_field_index("user_id")
    pq.write_table(t.set_column(i, t.schema.field(i), pa.array(values, pa.string())), path)
    report = verify_lake(writer.data, cold_tier=tier)
    assert {p.kind for p in report.problems} == {"changed_file", "changed_event"}
    assert {p.file for p in report.problems} == {moved[0].path}


def test_verify_checks_every_file_pyarrow_and_duckdb_read(tmp_path: Path) -> None:
    # What a reader globs is what verify checks, tried against the readers
    # themselves rather than assumed: pyarrow.dataset over events/ (Hive
    # partitioning) and DuckDB's events/**/*.parquet.
    import duckdb
    import pyarrow.dataset as pads

    from auditlake.collector.integrity.verify.listing import list_lake

    root = tmp_path / "lake"
    names = ["date=2026-03-01/a.parquet", "date=2026-03-01/.hidden.parquet", "date=2026-03-01/_u.parquet",
             "date=2026-03-01/b.parquet.superseded", "date=2026-03-01/c.data", "date=2026-03-01/sub/d.parquet",
             "date=2026-03-01/e.parquet.tmp", "_superseded/date=2026-03-01/f.parquet", "g.parquet",
             ".meta/h.parquet", "date=2026-03-01/.s.parquet.tmp"]
    for name in names:
        (root / "events" / name).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"x": [1]}), root / "events" / name)
    events = root / "events"
    by_pyarrow = {Path(f).relative_to(root).as_posix()
                  for f in pads.dataset(events, format="parquet", partitioning="hive").files}
    with duckdb.connect() as con:
        by_duckdb = {Path(r[0]).relative_to(root).as_posix() for r in con.execute(
            f"SELECT DISTINCT filename FROM read_parquet('{events}/**/*.parquet', filename = true)").fetchall()}
    listing = list_lake({"hot": LocalStore(root)})
    checked = set(listing.files) | set(listing.strays)
    assert (by_pyarrow | by_duckdb) <= checked
    # Why collectors stage under a hidden name: a .tmp suffix alone does not
    # hide a file from pyarrow (e.parquet.tmp, an older version's stage, is
    # checked); a leading dot and the .tmp suffix hide it from both.
    assert "events/date=2026-03-01/e.parquet.tmp" in by_pyarrow
    assert "events/date=2026-03-01/.s.parquet.tmp" not in by_pyarrow | by_duckdb | checked
    # Why replaced files wait outside events/: a suffix does not hide them
    # from pyarrow, and an _-named folder does not hide them from DuckDB.
    assert "events/date=2026-03-01/b.parquet.superseded" in by_pyarrow
    assert "events/_superseded/date=2026-03-01/f.parquet" in by_duckdb
