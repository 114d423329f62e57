"""The write-ahead log: group commit, order, torn tails, segment dropping."""

from __future__ import annotations

import logging
import struct
import threading
from pathlib import Path

import pytest

from auditlake.collector.lake.wal import LogPosition, WriteAheadLog, read_segment


def test_concurrent_appends_are_durable_in_order_and_share_fsyncs(tmp_path: Path) -> None:
    seen: list[object] = []
    wal = WriteAheadLog(tmp_path, on_durable=lambda ctx, pos: seen.append(ctx))
    futures = []
    lock = threading.Lock()

    def writer(k: int) -> None:
        for i in range(50):
            with lock:  # the order of appends is the order callbacks must see
                futures.append((f"{k}-{i}", wal.append(f"{k}-{i}".encode(), f"{k}-{i}")))

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    positions = [f.result(timeout=10) for _, f in futures]
    wal.close()
    assert seen == [name for name, _ in futures]
    assert positions == sorted(positions)
    reopened = WriteAheadLog(tmp_path)
    payloads = [p.decode() for p, _ in reopened.read_from(LogPosition(0, 0))]
    reopened.close()
    assert payloads == [name for name, _ in futures]


def test_torn_tail_is_cut_and_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    wal = WriteAheadLog(tmp_path)
    for i in range(5):
        wal.append(b"record-%d" % i).result()
    wal.close()
    segment = next(tmp_path.glob("wal-*.log"))
    good = segment.stat().st_size
    with open(segment, "ab") as f:
        f.write(struct.pack("<II", 100, 0) + b"half")
    with caplog.at_level(logging.WARNING):
        wal = WriteAheadLog(tmp_path)
    assert f"cutting a torn tail of 12 bytes at offset {good} (after 5 whole records" in caplog.text
    assert segment.stat().st_size == good
    wal.append(b"after").result()
    wal.close()
    got = [p for p, _ in read_segment(segment)]
    assert got == [b"record-%d" % i for i in range(5)] + [b"after"]


def test_bad_checksum_ends_the_log(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path)
    wal.append(b"one").result()
    wal.append(b"two").result()
    wal.close()
    segment = next(tmp_path.glob("wal-*.log"))
    raw = bytearray(segment.read_bytes())
    raw[-1] ^= 0xFF
    segment.write_bytes(bytes(raw))
    wal = WriteAheadLog(tmp_path)
    assert [p for p, _ in wal.read_from(LogPosition(0, 0))] == [b"one"]
    wal.close()


def test_sealed_segments_are_dropped_and_bytes_shrink(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path, segment_bytes=64)
    positions = [wal.append(b"x" * 40).result() for _ in range(6)]
    assert len(wal.segments()) >= 3
    before = wal.unsealed_bytes
    wal.drop_through(positions[-1])
    assert wal.segments() == [positions[-1].segment]
    assert wal.unsealed_bytes == 0 < before
    # records after the position are still read back
    nxt = wal.append(b"next").result()
    assert [p for p, _ in wal.read_from(positions[-1])] == [b"next"]
    assert nxt > positions[-1]
    wal.close()


def test_never_appends_below_the_sealed_segment(tmp_path: Path) -> None:
    # e.g. the WAL folder was emptied: new records must still count as unsealed
    wal = WriteAheadLog(tmp_path, first_segment=7)
    pos = wal.append(b"r").result()
    wal.close()
    assert pos.segment == 7
    reopened = WriteAheadLog(tmp_path, first_segment=7)
    assert [p for p, _ in reopened.read_from(LogPosition(7, 0))] == [b"r"]
    reopened.close()
