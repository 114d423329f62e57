"""The accepted batch: a validated Arrow table on its way to the lake, its
write-ahead-log record, and the index of batch ids already stored (a retried
batch is stored once).  Ingest makes batches; the WAL stores them; the sealer
seals them.
"""

from __future__ import annotations

import itertools
import struct
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field

import pyarrow as pa

# -- the WAL record of an accepted batch ---------------------------------------

_BATCH_HEADER = struct.Struct("<4sqBH")
_MAGIC = b"ALB1"
FLAG_IMPORTED = 1
#: The batch id is followed by the ingest key id (u16 length, UTF-8).  Records
#: written before the flag existed lack it and recover with key id "".
FLAG_KEY_ID = 2
_KEY_ID_LENGTH = struct.Struct("<H")


@dataclass
class AcceptedBatch:
    """A validated batch on its way to the lake."""

    batch_id: str
    received_at_us: int
    table: pa.Table
    imported: bool = False
    #: The ``key_id`` of the ingest key that delivered the batch; "" for the
    #: collector's own events (imports, read-audit, retention).
    ingest_key_id: str = ""
    #: Each row's canonical encoding up to the seq field, computed ahead by
    #: the receiving thread (seal.canonical_prefix); not stored in the WAL.
    canonical_prefix: pa.Array | None = field(default=None, repr=False, compare=False)

    def encode(self) -> bytes:
        """The WAL payload: header, batch id, the ingest key id (when there
        is one), Arrow IPC stream of the table."""
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, self.table.schema) as writer:
            writer.write_table(self.table)
        bid = self.batch_id.encode()
        flags = FLAG_IMPORTED if self.imported else 0
        key = b""
        if self.ingest_key_id:
            flags |= FLAG_KEY_ID
            raw = self.ingest_key_id.encode()
            key = _KEY_ID_LENGTH.pack(len(raw)) + raw
        header = _BATCH_HEADER.pack(_MAGIC, self.received_at_us, flags, len(bid))
        ipc: bytes = sink.getvalue().to_pybytes()
        return header + bid + key + ipc

    @classmethod
    def decode(cls, payload: bytes) -> AcceptedBatch:
        """Inverse of encode (used when recovering the WAL)."""
        magic, received, flags, blen = _BATCH_HEADER.unpack_from(payload)
        if magic != _MAGIC:
            raise ValueError("not an auditlake batch record")
        start = _BATCH_HEADER.size
        bid = payload[start : start + blen].decode()
        start += blen
        key_id = ""
        if flags & FLAG_KEY_ID:
            (klen,) = _KEY_ID_LENGTH.unpack_from(payload, start)
            start += _KEY_ID_LENGTH.size
            key_id = payload[start : start + klen].decode()
            start += klen
        with pa.ipc.open_stream(pa.py_buffer(payload[start:])) as reader:
            table = reader.read_all()
        return cls(bid, received, table, bool(flags & FLAG_IMPORTED), key_id)


class BatchIndex:
    """Batch ids already stored or in flight, so a retried batch is stored once.

    Remembers the newest ``keep`` stored ids (oldest forgotten first); a
    second request with an id still in flight waits for the first's outcome.
    """

    def __init__(self, known: dict[str, int] | None = None, keep: int = 200_000) -> None:
        self._lock = threading.Lock()
        self._done: dict[str, int] = dict(known or {})
        self._inflight: dict[str, Future[int]] = {}
        self.keep = keep

    def claim(self, batch_id: str) -> tuple[bool, int | Future[int] | None]:
        """(True, None) if the caller now owns ``batch_id``; else (False, the
        stored count, or the future of the request storing it now)."""
        with self._lock:
            if batch_id in self._done:
                return False, self._done[batch_id]
            if batch_id in self._inflight:
                return False, self._inflight[batch_id]
            self._inflight[batch_id] = Future()
            return True, None

    def finish(self, batch_id: str, accepted: int | None) -> None:
        """Record the outcome of an owned batch (None: it failed, may be retried)."""
        with self._lock:
            fut = self._inflight.pop(batch_id)
            if accepted is not None:
                self._done[batch_id] = accepted
                self._trim()
        if accepted is None:
            fut.set_exception(RuntimeError("the first attempt of this batch failed"))
        else:
            fut.set_result(accepted)

    def stored(self, batch_id: str) -> int | None:
        """The accepted count of an already stored ``batch_id``, else None."""
        with self._lock:
            return self._done.get(batch_id)

    def add(self, batch_id: str, accepted: int) -> None:
        """Mark ``batch_id`` stored (from recovery)."""
        with self._lock:
            self._done[batch_id] = accepted
            self._trim()

    def _trim(self) -> None:
        # dicts keep insertion order: the first keys are the oldest.  Trim in
        # steps of 1/16 so the cost is amortised.
        extra = len(self._done) - self.keep
        if extra > 0:
            extra = max(extra, self.keep // 16)
            for key in list(itertools.islice(self._done, extra)):
                del self._done[key]

    def __len__(self) -> int:
        return len(self._done)

    def forget_oldest(self, keep: int) -> None:
        """Keep only the newest ``keep`` ids in memory."""
        with self._lock:
            extra = len(self._done) - keep
            if extra > 0:
                for key in list(self._done)[:extra]:
                    del self._done[key]
