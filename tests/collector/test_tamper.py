"""Tamper suite: on a real lake written by a real collector, every kind of
mutation an operator with write access could make is detected by
`auditlake verify` and named (kind, file, sequence, column where knowable).

The lake is built once per module (a collector process, a few hundred events
over four past days in several seals, a checkpoint mirror); each test mutates
its own copy.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from auditlake.collector.integrity.chain import canonical_rows, chain_link
from auditlake.collector.integrity.verify import Problem, VerifyReport, verify_lake
from auditlake.collector.lake.files import PARQUET_OPTIONS
from tests.conftest import CollectorProcess, run_cli
from tests.wire_client import WireClient, make_event

DAY_US = 86_400 * 1_000_000
SEALS = 4
PER_SEAL = 100


def wait_for_checkpoints(data: Path, n: int, timeout: float = 30.0) -> None:
    """Until the collector has signed ``n`` checkpoints (one per seal here)."""
    deadline = time.monotonic() + timeout
    while len(list((data / "checkpoints").glob("*/*.json"))) < n:
        assert time.monotonic() < deadline, f"no checkpoint {n} after {timeout} s"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A lake made by `auditlake serve`: 400 events over 4 past days, 4 seals,
    checkpoints mirrored to ``mirror/``.  Returns the folder holding both."""
    root = tmp_path_factory.mktemp("tamper")
    mirror = root / "mirror"
    mirror.mkdir()
    collector = CollectorProcess(root / "data", extra_args=("--checkpoint-mirror", str(mirror)))
    collector.start()
    try:
        key = collector.api_key("acme", "globex")
        client = WireClient(collector.endpoint)
        now = int(time.time() * 1_000_000)
        for s in range(SEALS):
            events = [
                make_event(i, tenant_id=("acme", "globex")[i % 2],
                           created_at_us=now - (1 + i % 4) * DAY_US + i * 1000,
                           user_id=f"dr-{i % 5}", metadata=json.dumps({"seal": s, "i": i}))
                for i in range(PER_SEAL)
            ]
            assert client.export(events, key).accepted == PER_SEAL
            wait_for_checkpoints(root / "data", s + 1)
        client.close()
    finally:
        assert collector.stop() == 0
    yield root


@pytest.fixture
def lake(pristine: Path, tmp_path: Path) -> Path:
    """This test's own copy of the lake (data dir ``data``, mirror ``mirror``)."""
    shutil.copytree(pristine / "data", tmp_path / "data", ignore=shutil.ignore_patterns(".lock"))
    shutil.copytree(pristine / "mirror", tmp_path / "mirror")
    return tmp_path


# -- helpers ------------------------------------------------------------------------


def files(lake: Path) -> list[Path]:
    return sorted((lake / "data/lake/events").glob("date=*/*.parquet"))


def key_of(lake: Path, path: Path) -> str:
    return path.relative_to(lake / "data/lake").as_posix()


def checkpoints(lake: Path, folder: str = "data/checkpoints") -> list[Path]:
    return sorted((lake / folder).glob("*/*.json"))


def rewrite(path: Path, table: pa.Table) -> None:
    """Rewrite a lake file as an attacker would: same schema, same options."""
    pq.write_table(table, path, **PARQUET_OPTIONS)  # type: ignore[arg-type]


def set_cell(table: pa.Table, column: str, row: int, value: object) -> pa.Table:
    values = table.column(column).to_pylist()
    values[row] = value
    i = table.schema.get_field_index(column)
    return table.set_column(i, table.schema.field(i), pa.array(values, table.schema.field(i).type))


def verify(lake: Path, **kwargs: object) -> VerifyReport:
    return verify_lake(lake / "data", **kwargs)  # type: ignore[arg-type]


def kinds(report: VerifyReport) -> set[str]:
    return {p.kind for p in report.problems}


def find(report: VerifyReport, kind: str, **where: object) -> Problem:
    for p in report.problems:
        if p.kind == kind and all(getattr(p, k) == v for k, v in where.items()):
            return p
    raise AssertionError(f"no {kind} problem with {where} in:\n{report.to_text()}")


def newest_seal_files(lake: Path) -> list[Path]:
    """The files the last seal wrote (part-<writer>-<seal>.parquet, highest seal)."""
    all_files = files(lake)
    last = max(p.stem.rsplit("-", 1)[1] for p in all_files)
    return [p for p in all_files if p.stem.endswith(last)]


# -- the untouched lake ----------------------------------------------------------------


def test_untouched_lake_verifies_clean_with_summary(lake: Path) -> None:
    proc = run_cli("verify", "--format", "json", "--checkpoint-mirror", str(lake / "mirror"),
                   data=lake / "data")
    report = json.loads(proc.stdout)
    assert report["ok"] is True, report["problems"]
    assert report["events"] == report["events_hashed"] == SEALS * PER_SEAL
    assert report["checkpoints"] == SEALS
    assert report["files"] == len(files(lake)) >= SEALS * 4
    [writer] = report["writers"]
    assert (writer["first_seq"], writer["last_seq"], writer["head_seq"]) == (1, 400, 400)
    assert len(writer["head_hash"]) == 64
    assert "verify: hash" in proc.stderr  # progress


def test_untouched_lake_text_summary_exits_0(lake: Path) -> None:
    proc = run_cli("verify", data=lake / "data")
    assert proc.stdout.startswith("auditlake verify: OK")
    assert "400 stored, 400 re-hashed" in proc.stdout


# -- events ------------------------------------------------------------------------


def test_edited_value_is_named_by_file_and_seq(lake: Path) -> None:
    target = files(lake)[2]
    table = pq.read_table(target)
    seq = table.column("seq")[3].as_py()
    rewrite(target, set_cell(table, "user_id", 3, "someone-else"))

    proc = run_cli("verify", data=lake / "data", check=False)
    assert proc.returncode == 1
    assert "PROBLEMS FOUND" in proc.stdout
    report = verify(lake)
    key = key_of(lake, target)
    changed = find(report, "changed_event", file=key, seq=seq)
    # A user_id anyone could have sent: the column cannot be told, and we say so.
    assert changed.column is None and "cannot be determined" in changed.message
    assert f"seq {seq + 1} still links to its stored chain_hash" in changed.message
    find(report, "changed_file", file=key)
    assert kinds(report) == {"changed_event", "changed_file"}


def test_edited_created_at_names_the_column(lake: Path) -> None:
    target = files(lake)[1]
    table = pq.read_table(target)
    seq = table.column("seq")[0].as_py()
    moved = table.column("created_at")[0].as_py().replace(year=2020)
    rewrite(target, set_cell(table, "created_at", 0, moved))

    report = verify(lake)
    changed = find(report, "changed_event", file=key_of(lake, target), seq=seq)
    assert changed.column == "created_at"
    find(report, "wrong_partition", file=key_of(lake, target), seq=seq)


def test_edited_chain_hash_alone_is_named(lake: Path) -> None:
    target = files(lake)[0]
    table = pq.read_table(target)
    seq = table.column("seq")[5].as_py()
    rewrite(target, set_cell(table, "chain_hash", 5, "ab" * 32))

    report = verify(lake)
    p = find(report, "changed_hash", seq=seq)
    assert p.column == "chain_hash"
    assert not [q for q in report.problems if q.kind == "changed_event"]


def test_deleted_row_is_a_named_gap(lake: Path) -> None:
    target = files(lake)[3]
    table = pq.read_table(target)
    seq = table.column("seq")[4].as_py()
    rewrite(target, pa.concat_tables([table.slice(0, 4), table.slice(5)]))

    report = verify(lake)
    gap = find(report, "missing_events", seq=seq)
    assert f"seq {seq}..{seq} (1)" in gap.message
    find(report, "changed_file", file=key_of(lake, target))
    find(report, "file_rows", file=key_of(lake, target))


def test_forged_row_with_recomputed_hash_is_caught_by_checkpoint_and_digest(lake: Path) -> None:
    # The attacker appends an event after the head, with the correct chain hash.
    target = newest_seal_files(lake)[0]
    table = pq.read_table(target)
    all_rows = pa.concat_tables([pq.read_table(f) for f in files(lake)])
    head = all_rows.filter(pc.equal(all_rows.column("seq"), 400))
    forged = set_cell(set_cell(head, "seq", 0, 401), "user_id", 0, "mallory")
    forged = set_cell(forged, "chain_hash", 0,
                      chain_link(head.column("chain_hash")[0].as_py(), canonical_rows(forged)[0]))
    rewrite(target, pa.concat_tables([table, forged]))

    report = verify(lake)
    find(report, "unsigned_events", seq=401, file=key_of(lake, target))
    find(report, "changed_file", file=key_of(lake, target))
    assert "changed_event" not in kinds(report)  # its hash is right: the checkpoints catch it


def test_forged_copy_with_existing_seq_is_a_duplicate(lake: Path) -> None:
    source = files(lake)[0]
    row = pq.read_table(source).slice(0, 1)
    seq = row.column("seq")[0].as_py()
    forged = source.parent / "part-extra.parquet"
    rewrite(forged, set_cell(row, "resource_id", 0, "p-forged"))

    report = verify(lake)
    find(report, "duplicate_seq", seq=seq)
    find(report, "unlisted_file", file=key_of(lake, forged))
    find(report, "changed_event", seq=seq, file=key_of(lake, forged))


def test_row_moved_to_another_file_is_misplaced(lake: Path) -> None:
    # Same day, different seals: seq order is untouched, only the files change.
    day = files(lake)[0].parent
    a, b = sorted(day.glob("*.parquet"))[:2]
    ta, tb = pq.read_table(a), pq.read_table(b)
    seq = ta.column("seq")[0].as_py()
    rewrite(a, ta.slice(1))
    rewrite(b, pa.concat_tables([tb, ta.slice(0, 1)]))

    report = verify(lake)
    p = find(report, "misplaced_event", file=key_of(lake, b), seq=seq)
    assert key_of(lake, a) in p.message
    find(report, "changed_file", file=key_of(lake, a))
    find(report, "changed_file", file=key_of(lake, b))


def test_swapped_sequence_numbers_are_reordered_events(lake: Path) -> None:
    target = files(lake)[0]
    table = pq.read_table(target)
    s1, s2 = table.column("seq")[0].as_py(), table.column("seq")[1].as_py()
    rewrite(target, set_cell(set_cell(table, "seq", 0, s2), "seq", 1, s1))

    report = verify(lake)
    named = {p.seq for p in report.problems if p.kind == "reordered_events"}
    assert named == {s1, s2}
    # The events after them are intact and must not be blamed.
    assert kinds(report) == {"reordered_events", "changed_file"}, report.to_text()


# -- files ------------------------------------------------------------------------


def test_deleted_file_is_named_with_its_events(lake: Path) -> None:
    target = files(lake)[4]
    entry = pq.read_table(target)
    lo = pc.min(entry.column("seq")).as_py()
    target.unlink()

    report = verify(lake)
    p = find(report, "missing_file", file=key_of(lake, target))
    assert f"{entry.num_rows} events" in p.message and p.seq == lo
    assert "missing_events" in kinds(report)


def test_files_swapped_between_days_are_named(lake: Path) -> None:
    a, b = files(lake)[0], files(lake)[-1]
    assert a.parent != b.parent
    tmp = a.with_suffix(".swap")
    a.rename(tmp)
    b.rename(a)
    tmp.rename(b)

    report = verify(lake)
    pa_ = find(report, "moved_file", file=key_of(lake, a))
    assert key_of(lake, b) in pa_.message
    find(report, "moved_file", file=key_of(lake, b))
    assert "missing_file" not in kinds(report) and "changed_event" not in kinds(report)


def test_file_moved_to_another_day_is_named(lake: Path) -> None:
    a = files(lake)[0]
    other_day = files(lake)[-1].parent
    a.rename(other_day / a.name)

    report = verify(lake)
    find(report, "moved_file", file=key_of(lake, other_day / a.name))


# -- truncation --------------------------------------------------------------------


def test_dropped_newest_events_are_a_truncated_tail(lake: Path) -> None:
    for f in newest_seal_files(lake):
        f.unlink()

    report = verify(lake)
    p = find(report, "truncated")
    assert p.seq == 301 and "seq 301..400" in p.message
    assert "missing_file" in kinds(report)


def test_truncation_with_checkpoints_deleted_is_caught_by_the_mirror(lake: Path) -> None:
    for f in newest_seal_files(lake):
        f.unlink()
    checkpoints(lake)[-1].unlink()
    # Without the mirror the truncated lake is self-consistent: the documented limit.
    assert verify(lake).ok
    report = verify(lake, mirrors=[lake / "mirror"])
    p = find(report, "checkpoints_truncated")
    assert "seal 4" in p.message
    find(report, "truncated", seq=301)
    proc = run_cli("verify", "--checkpoint-mirror", str(lake / "mirror"), data=lake / "data",
                   check=False)
    assert proc.returncode == 1 and "checkpoints_truncated" in proc.stdout


# -- checkpoints -------------------------------------------------------------------


def test_edited_checkpoint_fails_its_signature(lake: Path) -> None:
    path = checkpoints(lake)[1]
    doc = json.loads(path.read_text())
    doc["files"][0]["rows"] += 1
    path.write_text(json.dumps(doc))

    report = verify(lake)
    p = find(report, "bad_signature")
    assert p.file == str(path)
    find(report, "broken_checkpoint_chain", file=str(checkpoints(lake)[2]))


def test_deleted_checkpoint_breaks_the_chain(lake: Path) -> None:
    path = checkpoints(lake)[1]
    path.unlink()

    report = verify(lake)
    p = find(report, "broken_checkpoint_chain")
    assert "seal(s) 2 are missing" in p.message
    assert "unlisted_file" in kinds(report)  # that seal's files are now unaccounted for
    with_mirror = verify(lake, mirrors=[lake / "mirror"])
    find(with_mirror, "missing_checkpoint")


def test_auditor_key_rejects_checkpoints_signed_by_another_key(lake: Path, tmp_path: Path) -> None:
    from auditlake.collector.integrity.signing import SigningKey

    other = SigningKey.load_or_create(tmp_path / "other-keys")
    pem = tmp_path / "auditor.pem"
    pem.write_bytes(other.public_pem())
    report = verify(lake, public_key=pem)
    assert {p.kind for p in report.problems} == {"bad_signature"}
    assert len(report.problems) == SEALS
    good = lake / "good.pem"
    good.write_text(run_cli("keys", "public", data=lake / "data").stdout)
    assert verify(lake, public_key=good).ok


def test_date_range_rehashes_only_those_partitions(lake: Path) -> None:
    days = sorted({f.parent.name[5:] for f in files(lake)})
    outside = [f for f in files(lake) if f.parent.name[5:] == days[0]][0]
    table = pq.read_table(outside)
    rewrite(outside, set_cell(table, "user_id", 0, "someone-else"))
    proc = run_cli("verify", "--from", days[1], "--to", days[-1], "--format", "json",
                   data=lake / "data")
    report = json.loads(proc.stdout)
    assert report["ok"] and 0 < report["events_hashed"] < report["events"]
    full = verify(lake)
    assert "changed_event" in kinds(full)


def test_bad_dates_are_a_usage_error(lake: Path) -> None:
    proc = run_cli("verify", "--from", "yesterday", data=lake / "data", check=False)
    assert proc.returncode == 2 and "YYYY-MM-DD" in proc.stderr


def test_event_replaced_with_a_recomputed_hash_is_named(lake: Path) -> None:
    # The attacker rewrites one event and recomputes its chain_hash so that its
    # own link holds; the next event (in another, untouched file) exposes it.
    all_rows = pa.concat_tables([
        pq.read_table(f).append_column("_f", pa.array([str(f)] * pq.read_metadata(f).num_rows))
        for f in files(lake)]).sort_by("seq")
    seq = next(s for s in range(150, 300)
               if all_rows.column("_f")[s - 1].as_py() != all_rows.column("_f")[s].as_py())
    target = Path(all_rows.column("_f")[seq - 1].as_py())
    table = pq.read_table(target)
    row = table.column("seq").to_pylist().index(seq)
    edited = set_cell(table, "resource_id", row, "p-forged")
    prev = all_rows.column("chain_hash")[seq - 2].as_py()
    forged_hash = chain_link(prev, canonical_rows(edited.slice(row, 1))[0])
    rewrite(target, set_cell(edited, "chain_hash", row, forged_hash))

    report = verify(lake)
    p = find(report, "changed_event", seq=seq, file=key_of(lake, target))
    assert "recomputed chain_hash" in p.message
    find(report, "changed_file", file=key_of(lake, target))
    assert {q.seq for q in report.problems if q.kind == "changed_event"} == {seq}


# -- what readers read, and who wrote it ------------------------------------------------


def query_count(lake: Path) -> int:
    """What `auditlake query` counts: the rows every analyst sees."""
    out = run_cli("query", "--format", "csv", "SELECT count(*) AS n FROM events", data=lake / "data").stdout
    return int(out.splitlines()[1])


def test_forged_file_of_correctly_chained_events_is_unlisted(lake: Path) -> None:
    # A new file with a plausible name, its events chained on from the signed
    # head with correct hashes: every reader returns them, so verify must fail.
    all_rows = pa.concat_tables([pq.read_table(f) for f in files(lake)]).sort_by("seq")
    head = all_rows.slice(all_rows.num_rows - 1, 1)
    forged, prev = [], head.column("chain_hash")[0].as_py()
    for k in range(3):
        row = set_cell(set_cell(head, "seq", 0, 401 + k), "user_id", 0, "mallory")
        prev = chain_link(prev, canonical_rows(row)[0])
        forged.append(set_cell(row, "chain_hash", 0, prev))
    target = newest_seal_files(lake)[0]
    writer = json.loads(checkpoints(lake)[-1].read_text())["writer_id"]
    path = target.parent / f"part-{writer}-0000000005.parquet"
    rewrite(path, pa.concat_tables(forged))
    assert query_count(lake) == SEALS * PER_SEAL + 3  # what readers see

    proc = run_cli("verify", data=lake / "data", check=False)
    assert proc.returncode == 1
    report = verify(lake)
    find(report, "unlisted_file", file=key_of(lake, path))
    find(report, "unsigned_events", seq=401, file=key_of(lake, path))


def test_superseded_file_renamed_back_fails_verify(lake: Path) -> None:
    # Compaction sets replaced files aside outside events/; putting one back
    # makes every reader count its events twice: verify fails (it used to
    # exit 0 with a warning).
    day = files(lake)[0].parent
    before = sorted(day.glob("*.parquet"))
    assert len(before) >= 2
    out = run_cli("compact", "--day", day.name[5:], data=lake / "data").stdout
    assert f"{len(before)} files -> 1" in out
    assert query_count(lake) == SEALS * PER_SEAL
    # Engines reading the folder count each event once too.
    dataset = pads.dataset(lake / "data/lake/events", format="parquet", partitioning="hive")
    assert dataset.count_rows() == SEALS * PER_SEAL
    assert verify(lake).ok

    aside = lake / "data/lake/_superseded/events" / day.name / (before[0].name + ".superseded")
    assert aside.exists()
    aside.rename(before[0])
    n = pq.read_metadata(before[0]).num_rows
    assert query_count(lake) == SEALS * PER_SEAL + n  # the double count

    proc = run_cli("verify", "--format", "json", data=lake / "data", check=False)
    assert proc.returncode == 1
    doc = json.loads(proc.stdout)
    [p] = [p for p in doc["problems"] if p["kind"] == "removed_file"]
    assert p["file"] == key_of(lake, before[0]) and "compact checkpoint seal 5" in p["message"]
    assert {q["kind"] for q in doc["problems"]} == {"removed_file"}
    assert doc["events"] == SEALS * PER_SEAL  # its events are not counted twice by verify itself


def test_lake_and_checkpoints_deleted_together_fail_verify(lake: Path) -> None:
    # DIR/writer_id names a writer that has sealed (state/seal.json), and
    # nothing of it is left: evidence of deletion, not an empty lake.
    shutil.rmtree(lake / "data/lake/events")
    (lake / "data/lake/events").mkdir()
    for path in checkpoints(lake):
        path.unlink()
    proc = run_cli("verify", data=lake / "data", check=False)
    assert proc.returncode == 1, proc.stdout
    report = verify(lake)
    writer = (lake / "data/writer_id").read_text().strip()
    p = find(report, "missing_writer", writer_id=writer)
    assert "seal 4" in p.message
    assert kinds(report) == {"missing_writer"}


def test_collector_that_never_sealed_verifies_clean(
        collector_factory: Callable[..., CollectorProcess]) -> None:
    collector = collector_factory()
    assert collector.stop() == 0
    assert (collector.data / "writer_id").exists()
    proc = run_cli("verify", data=collector.data)
    assert proc.stdout.startswith("auditlake verify: OK") and "0 stored" in proc.stdout


def test_changed_writer_id_names_the_column_and_seq(lake: Path) -> None:
    target = files(lake)[1]
    table = pq.read_table(target)
    seq = table.column("seq")[2].as_py()
    writer = table.column("writer_id")[2].as_py()
    rewrite(target, set_cell(table, "writer_id", 2, "w00000000beef"))

    proc = run_cli("verify", "--format", "json", data=lake / "data", check=False)
    assert proc.returncode == 1
    changed = [p for p in json.loads(proc.stdout)["problems"] if p["kind"] == "changed_event"]
    assert [(p["seq"], p["column"], p["file"], p["writer_id"]) for p in changed] == [
        (seq, "writer_id", key_of(lake, target), writer)]
    assert "writer_id is the only column changed" in changed[0]["message"]
    report = verify(lake)
    assert "unknown_writer" not in kinds(report)  # the event is the file's writer's, edited
    assert kinds(report) <= {"changed_event", "changed_file", "missing_events"}
