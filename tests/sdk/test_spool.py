"""The disk spool: atomic files, crash leftovers, claims, bounds."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

from auditlake import sdk
from auditlake.sdk import BatchPolicy, RetryPolicy, SpoolPolicy
from auditlake.sdk._context import EMPTY_ACTOR
from auditlake.sdk._event import encode_batch
from auditlake.sdk._spool import DeadLetter, DeadLetterSpool, DiskSpool, SpoolFull, utc_now
from auditlake.sdk.testing import InMemoryExporter
from auditlake.v1 import audit_pb2


def batch(batch_id: str, resource_id: str, ns: int) -> audit_pb2.ExportRequest:
    event = (ns, 1, EMPTY_ACTOR, None, "read", "doc", resource_id, "u", "t", "success", "",
             None, None, None, None, None, None)
    return encode_batch([event], batch_id, "svc", random.Random(1))


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_batches_come_back_oldest_first_and_keep_their_id(tmp_path: Path) -> None:
    spool = DiskSpool(tmp_path, 1_000_000)
    now = time.time_ns()
    spool.write(batch("b-late", "2", now + 1000))
    spool.write(batch("b-early", "1", now))
    assert len(spool) == 2
    claimed = spool.claim_head()
    assert claimed is not None and claimed[1].batch_id == "b-early"
    spool.release(claimed[0])  # a failed send leaves it at the head
    claimed = spool.claim_head()
    assert claimed is not None and claimed[1].batch_id == "b-early"
    spool.done(claimed[0])
    assert [p.name.endswith("b-late.batch") for p in tmp_path.iterdir()] == [True]


def test_the_bound_is_enforced(tmp_path: Path) -> None:
    bound = len(batch("a", "1", time.time_ns()).SerializeToString()) * 5 // 2  # room for two
    spool = DiskSpool(tmp_path, bound)
    spool.write(batch("a", "1", time.time_ns()))
    try:
        for i in range(10):
            spool.write(batch(f"b{i}", "1", time.time_ns()))
    except SpoolFull:
        pass
    else:
        raise AssertionError("the spool should have been full")
    assert spool.bytes <= bound
    assert len(spool) == 2


def test_crash_leftovers_are_recovered_on_configure(tmp_path: Path) -> None:
    pid = dead_pid()
    now = time.time_ns()
    # A batch a crashed process had claimed for sending, a temp file it never
    # renamed (half written), and an unreadable file.
    claimed = batch("claimed", "c1", now)
    (tmp_path / f"{now // 1000:017d}-claimed.batch.{pid}.sending").write_bytes(
        claimed.SerializeToString())
    (tmp_path / f".tmp-{pid}-half").write_bytes(b"\x0a\x05hal")
    (tmp_path / f"{now // 1000 + 1:017d}-broken.batch").write_bytes(b"\xff\xff\xff")
    exporter = InMemoryExporter()
    sdk.configure(service_name="svc", exporter=exporter, spool=SpoolPolicy(directory=tmp_path),
                  batch=BatchPolicy(schedule_delay=0.01),
                  retry=RetryPolicy(initial_backoff=0.01, max_backoff=0.05))
    assert sdk.flush(5)
    assert [e["resource_id"] for e in exporter.events] == ["c1"]
    assert exporter.batch_ids == ["claimed"]
    names = sorted(os.listdir(tmp_path))
    assert names == [f"{now // 1000 + 1:017d}-broken.batch.bad"]  # set aside, not lost


def test_spool_files_are_private_to_the_user(tmp_path: Path) -> None:
    spool = DiskSpool(tmp_path / "spool", 1_000_000)
    spool.write(batch("private", "1", time.time_ns()))
    (path,) = (tmp_path / "spool").glob("*.batch")
    assert path.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "spool").stat().st_mode & 0o777 == 0o700


def letter(batch_id: str, resource_id: str, ns: int, code: str = "UNAUTHENTICATED") -> DeadLetter:
    return DeadLetter(batch(batch_id, resource_id, ns), code, code.lower(), f"{code}: no", utc_now())


def test_a_dead_letter_file_is_a_json_line_then_the_batch(tmp_path: Path) -> None:
    directory = tmp_path / "spool" / "dead-letter"
    dead = DeadLetterSpool(directory, 1_000_000)
    assert not directory.exists()  # made by the first refusal, not before
    dead.keep(letter("b1", "r1", time.time_ns()))
    (path,) = directory.glob("*.dead")
    assert path.name.endswith("-b1.dead")
    header, _, body = path.read_bytes().partition(b"\n")
    fields = json.loads(header)
    assert {k: fields[k] for k in ("batch_id", "events", "code", "reason", "replays")} == {
        "batch_id": "b1", "events": 1, "code": "UNAUTHENTICATED", "reason": "unauthenticated",
        "replays": 0}
    assert fields["message"] == "UNAUTHENTICATED: no" and fields["refused_at"].endswith("Z")
    assert audit_pb2.ExportRequest.FromString(body).batch_id == "b1"
    assert path.stat().st_mode & 0o777 == 0o600 and directory.stat().st_mode & 0o777 == 0o700
    assert dead.events_in(path.name) == 1


def test_the_dead_letter_bound_keeps_the_first_refusals(tmp_path: Path) -> None:
    one = len(letter("a", "1", 1).header()) + len(batch("a", "1", 1).SerializeToString())
    dead = DeadLetterSpool(tmp_path, one * 2 + one // 2)  # room for two
    now = time.time_ns()
    dead.keep(letter("a", "1", now))
    dead.keep(letter("b", "2", now + 1000))
    try:
        dead.keep(letter("c", "3", now + 2000))
    except SpoolFull:
        pass
    else:
        raise AssertionError("the dead-letter spool should have been full")
    assert len(dead) == 2 and dead.bytes <= dead.max_bytes
    # A replay writing back what it took out is not refused for room.
    name = dead.names()[0]
    taken = dead.claim(name)
    assert taken is not None and taken.request.batch_id == "a"
    rewritten = dead.keep(DeadLetter(taken.request, "PERMISSION_DENIED", "permission_denied",
                                     "PERMISSION_DENIED: no", utc_now(), replays=1), bounded=False)
    assert rewritten == name
    dead.discard_claim(name)
    again = DeadLetterSpool(tmp_path, dead.max_bytes)  # as the next process sees it
    assert again.names() == dead.names() and len(again) == 2
    kept = again.claim(name)
    assert kept is not None and (kept.code, kept.replays) == ("PERMISSION_DENIED", 1)


def test_an_unreadable_dead_letter_is_set_aside_not_lost(tmp_path: Path) -> None:
    (tmp_path / "00000000000000001-broken.dead").write_bytes(b"not json\n\xff")
    dead = DeadLetterSpool(tmp_path, 1_000_000)
    assert dead.claim_next() is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00000000000000001-broken.dead.bad"]
