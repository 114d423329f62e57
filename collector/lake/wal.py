"""Write-ahead log: every accepted batch is appended and fsynced before the
collector answers; concurrent appends share one fsync (group commit).

A segment is a file of records ``[u32 length][u32 crc32][payload]``
(little-endian).  A torn last record (short or failing its checksum) was
never acknowledged: it is cut off when the log is opened.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from auditlake.collector.errors import StorageError
from auditlake.collector.storage.local import fsync_dir

log = logging.getLogger(__name__)

_HEADER = struct.Struct("<II")
_SEGMENT_GLOB = "wal-*.log"


@dataclass(frozen=True, order=True)
class LogPosition:
    """A point in the log: the byte offset just past a record in a segment."""

    segment: int
    offset: int


def _segment_name(number: int) -> str:
    return f"wal-{number:012d}.log"


def _segment_number(path: Path) -> int:
    return int(path.stem.split("-", 1)[1])


def read_segment(path: Path, start: int = 0) -> Iterator[tuple[bytes, int]]:
    """Yield ``(payload, end offset)`` of each whole, checksum-valid record
    from ``start``; stop at the first torn or corrupt one."""
    with open(path, "rb") as f:
        f.seek(start)
        offset = start
        while True:
            header = f.read(_HEADER.size)
            if len(header) < _HEADER.size:
                return
            length, crc = _HEADER.unpack(header)
            payload = f.read(length)
            if len(payload) < length or zlib.crc32(payload) != crc:
                return
            offset += _HEADER.size + length
            yield payload, offset


class WriteAheadLog:
    """Append-only, fsynced, segmented log with group commit.

    ``append`` returns a future that resolves to the record's end position
    once the record is on disk; ``on_durable`` (if given) is called on the
    writer thread with each durable record's ``context`` (whatever the caller
    passed to ``append``) and position, in log order, before its future
    resolves.
    """

    def __init__(
        self,
        directory: Path,
        *,
        segment_bytes: int = 16 * 1024 * 1024,
        on_durable: Callable[[object, LogPosition], None] | None = None,
        first_segment: int = 1,
    ) -> None:
        self.directory = directory
        self.segment_bytes = segment_bytes
        self._on_durable = on_durable
        directory.mkdir(parents=True, exist_ok=True)
        segments = self.segments()
        if segments:
            self._segment = segments[-1]
            self._repair_tail(directory / _segment_name(self._segment))
        else:
            self._segment = 1
        # Never append below what the sealer already covers (``first_segment``
        # is its position): records there would count as sealed.
        self._segment = max(self._segment, first_segment)
        path = directory / _segment_name(self._segment)
        self._file = open(path, "ab")  # noqa: SIM115 - lives as long as the log
        self._offset = self._file.tell()
        self._lock = threading.Condition()
        self._pending: list[tuple[bytes, object, Future[LogPosition]]] = []
        self._closed = False
        #: Bytes per segment on disk, and how far the sealer has covered.
        self._sizes = {n: (directory / _segment_name(n)).stat().st_size for n in segments}
        self._sizes.setdefault(self._segment, self._offset)
        self._sealed = LogPosition(0, 0)
        self._thread = threading.Thread(target=self._run, name="auditlake-wal", daemon=True)
        self._thread.start()

    # -- reading -------------------------------------------------------------

    def segments(self) -> list[int]:
        """Numbers of the segments on disk, oldest first."""
        return sorted(_segment_number(p) for p in self.directory.glob(_SEGMENT_GLOB))

    def read_from(self, position: LogPosition) -> Iterator[tuple[bytes, LogPosition]]:
        """Every durable record after ``position``, in order."""
        for number in self.segments():
            if number < position.segment:
                continue
            start = position.offset if number == position.segment else 0
            path = self.directory / _segment_name(number)
            for payload, end in read_segment(path, start):
                yield payload, LogPosition(number, end)

    def _repair_tail(self, path: Path) -> None:
        good = 0
        records = 0
        for _, end in read_segment(path):
            good = end
            records += 1
        size = path.stat().st_size
        if size != good:
            # A record not wholly on disk (or failing its checksum) was never
            # acknowledged: the append's fsync had not returned.
            log.warning(
                "write-ahead log %s: cutting a torn tail of %d bytes at offset %d "
                "(after %d whole records; it was never acknowledged)",
                path, size - good, good, records,
            )
            with open(path, "r+b") as f:
                f.truncate(good)
                f.flush()
                os.fsync(f.fileno())

    # -- writing -------------------------------------------------------------

    @property
    def unsealed_bytes(self) -> int:
        """Bytes of records after the sealed position (what a crash would replay)."""
        with self._lock:
            sealed = self._sealed
            return sum(
                size - (sealed.offset if number == sealed.segment else 0)
                for number, size in self._sizes.items()
                if number >= sealed.segment
            )

    @property
    def disk_bytes(self) -> int:
        """Bytes of the segments on disk (sealed segments are dropped)."""
        with self._lock:
            return sum(self._sizes.values())

    def append(self, payload: bytes, context: object = None) -> Future[LogPosition]:
        """Queue a record; the future resolves once it is fsynced."""
        fut: Future[LogPosition] = Future()
        with self._lock:
            if self._closed:
                raise StorageError("the write-ahead log is closed")
            self._pending.append((payload, context, fut))
            self._lock.notify()
        return fut

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._pending and not self._closed:
                    self._lock.wait()
                batch, self._pending = self._pending, []
                if not batch and self._closed:
                    return
            try:
                self._write_group(batch)
            except BaseException as exc:  # noqa: BLE001 - every waiter must hear of it
                log.exception("write-ahead log append failed")
                for _, _, fut in batch:
                    if not fut.done():
                        fut.set_exception(StorageError(f"write-ahead log append failed: {exc}"))

    def _write_group(self, batch: list[tuple[bytes, object, Future[LogPosition]]]) -> None:
        positions: list[LogPosition] = []
        chunks: list[bytes] = []
        for payload, _, _ in batch:
            if self._offset >= self.segment_bytes:
                self._flush_chunks(chunks)
                chunks = []
                self._rotate()
            record = _HEADER.pack(len(payload), zlib.crc32(payload)) + payload
            chunks.append(record)
            self._offset += len(record)
            positions.append(LogPosition(self._segment, self._offset))
        self._flush_chunks(chunks)
        with self._lock:
            for pos in positions:
                self._sizes[pos.segment] = pos.offset
        for (_, context, fut), pos in zip(batch, positions, strict=True):
            if self._on_durable is not None:
                self._on_durable(context, pos)
            fut.set_result(pos)

    def _flush_chunks(self, chunks: list[bytes]) -> None:
        if chunks:
            self._file.write(b"".join(chunks))
        self._file.flush()
        os.fsync(self._file.fileno())

    def _rotate(self) -> None:
        self._file.close()
        self._segment += 1
        self._file = open(self.directory / _segment_name(self._segment), "ab")  # noqa: SIM115
        self._offset = 0
        with self._lock:
            self._sizes[self._segment] = 0
        fsync_dir(self.directory)

    def drop_through(self, position: LogPosition) -> None:
        """Everything up to ``position`` is sealed: delete the segments wholly
        before it (never the one being written)."""
        with self._lock:
            current = self._segment
            self._sealed = max(self._sealed, position)
        dropped = False
        for number in self.segments():
            if number < position.segment and number < current:
                (self.directory / _segment_name(number)).unlink()
                dropped = True
                with self._lock:
                    self._sizes.pop(number, None)
        if dropped:
            fsync_dir(self.directory)

    def close(self) -> None:
        """Write what is queued, then stop."""
        with self._lock:
            self._closed = True
            self._lock.notify()
        self._thread.join()
        self._file.close()
