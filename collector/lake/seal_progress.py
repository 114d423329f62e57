"""The sealer's progress record, local to this collector (not lake files):

    DIR/state/seal.json     what has been sealed: the chain head, the WAL
                            position, and the last commit's staged files and
                            checkpoint; replacing it is the commit point
    DIR/state/batches.log   the ids (and event counts) of sealed batches,
                            for idempotent retries; compacted to the newest

One line of batches.log per sealed batch: ``<batch id> <accepted>``, and for a
batch the collector stored in part, ``<batch id> <accepted> <refused rows>``
(:meth:`RowSet.encode`, ``r:3,5-9`` or ``b:<base64 bitmap>``), so a retry of
it is answered with the same refusal, also after a restart.  The last token
tells the forms apart: a count is digits, refused rows never are (batch ids
may hold spaces).  Lines of the first form are what older collectors wrote.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from auditlake.collector.integrity.chain import GENESIS
from auditlake.collector.lake.batch import AcceptedBatch
from auditlake.collector.lake.wal import LogPosition
from auditlake.collector.storage.local import append_file, replace_file

#: Schema metadata key of an accepted batch's table holding the rows of the
#: batch the collector refused (``RowSet.encode()``): it rides in the WAL
#: record's Arrow IPC stream to state/batches.log, never into a sealed file
#: (sealing casts the rows to the event schema, which has no metadata).
REFUSED_ROWS_KEY = b"auditlake.refused_rows"

#: Ranges up to this long are kept as ranges even when a bitmap is shorter:
#: ``3,17`` reads better than two bytes of bits.
_SHORT_RANGES = 64


@dataclass(frozen=True)
class RowSet:
    """Positions of rows in a batch (0-based, in the order they were sent),
    kept compact: as ranges (``3,5-9,12``) or as a bitmap (row ``i`` is bit
    ``i % 8``, least significant first, of byte ``i // 8``; as long as the
    last row needs), whichever is shorter (ranges up to 64 bytes always).
    A bitmap bounds the size at an eighth of a byte per row of the batch,
    however the rows are scattered; ranges are far shorter for a few rows or
    long runs."""

    count: int = 0
    ranges: str = ""
    bitmap: bytes = b""

    @classmethod
    def of(cls, rows: Iterable[int]) -> RowSet:
        """The set of ``rows`` (non-negative), in its shorter form."""
        ordered = np.unique(np.fromiter(rows, np.int64))
        if len(ordered) == 0:
            return cls()
        if ordered[0] < 0:
            raise ValueError("row positions are never negative")
        # A run starts where the row does not follow the one before.
        starts = np.flatnonzero(np.diff(ordered, prepend=ordered[0] - 2) != 1)
        ends = np.append(starts[1:], len(ordered)) - 1
        ranges = ",".join(
            str(int(ordered[a])) if a == b else f"{int(ordered[a])}-{int(ordered[b])}"
            for a, b in zip(starts, ends, strict=True)
        )
        bitmap_size = (int(ordered[-1]) + 8) // 8
        if len(ranges) <= max(_SHORT_RANGES, bitmap_size):
            return cls(len(ordered), ranges=ranges)
        mask = np.zeros(bitmap_size * 8, bool)
        mask[ordered] = True
        return cls(len(ordered), bitmap=np.packbits(mask, bitorder="little").tobytes())

    @classmethod
    def from_ranges(cls, text: str) -> RowSet:
        """The set written as ``3,5-9,12`` (ValueError if it is not)."""
        if not text:
            return cls()
        rows: list[int] = []
        for part in text.split(","):
            first, dash, last = part.partition("-")
            if not first.isdigit() or (dash and not last.isdigit()):
                raise ValueError(f"not a row range: {part!r}")
            a, b = int(first), int(last) if dash else int(first)
            if b < a:
                raise ValueError(f"not a row range: {part!r}")
            rows.extend(range(a, b + 1))
        return cls.of(rows)

    @classmethod
    def from_bitmap(cls, bitmap: bytes) -> RowSet:
        """The set whose bitmap is ``bitmap``."""
        bits = np.unpackbits(np.frombuffer(bitmap, np.uint8), bitorder="little")
        return cls.of(np.flatnonzero(bits).tolist())

    def rows(self) -> list[int]:
        """The positions, ascending."""
        if self.bitmap:
            bits = np.unpackbits(np.frombuffer(self.bitmap, np.uint8), bitorder="little")
            return [int(i) for i in np.flatnonzero(bits)]
        out: list[int] = []
        for part in self.ranges.split(",") if self.ranges else ():
            first, _, last = part.partition("-")
            out.extend(range(int(first), int(last or first) + 1))
        return out

    @property
    def size(self) -> int:
        """Bytes of the compact form (the ranges' text, or the bitmap)."""
        return len(self.bitmap) if self.bitmap else len(self.ranges)

    def encode(self) -> str:
        """The form kept in state/batches.log: ``r:<ranges>`` or ``b:<base64 bitmap>``."""
        if self.bitmap:
            return "b:" + base64.b64encode(self.bitmap).decode()
        return "r:" + self.ranges

    @classmethod
    def decode(cls, token: str) -> RowSet:
        """Inverse of :meth:`encode` (ValueError if ``token`` is not one)."""
        kind, body = token[:2], token[2:]
        if kind == "r:":
            return cls.from_ranges(body)
        if kind == "b:":
            try:
                return cls.from_bitmap(base64.b64decode(body, validate=True))
            except binascii.Error as exc:
                raise ValueError(f"not a base64 bitmap: {exc}") from exc
        raise ValueError(f"not a row set: {token[:20]!r}")


class BatchOutcome(int):
    """What the collector answered for a batch it stored in part: the count
    of events accepted (an ``int``, so the batch index holds and returns it
    as it holds any stored batch's count) and the rows it refused, for the
    answer to a retry to repeat.  A plain ``int`` in the index is a batch
    whose refusals were not recorded (none, or kept by an older collector)."""

    refused: RowSet

    def __new__(cls, accepted: int, refused: RowSet) -> BatchOutcome:
        outcome = super().__new__(cls, accepted)
        outcome.refused = refused
        return outcome

    def __repr__(self) -> str:
        return f"BatchOutcome({int(self)}, {self.refused.encode()!r})"


def _log_line(batch_id: str, outcome: int) -> str:
    if isinstance(outcome, BatchOutcome) and outcome.refused.count:
        return f"{batch_id} {int(outcome)} {outcome.refused.encode()}\n"
    return f"{batch_id} {int(outcome)}\n"


def _parse_log_line(line: str) -> tuple[str, int] | None:
    """(batch id, count or BatchOutcome) of a batches.log line; None if torn."""
    rest, _, last = line.rstrip("\n").rpartition(" ")
    if last.isdigit():
        return (rest, int(last)) if rest else None
    bid, _, count = rest.rpartition(" ")
    if not bid or not count.isdigit():
        return None
    try:
        refused = RowSet.decode(last)
    except ValueError:
        refused = RowSet()
    # An empty set is a torn line (none is ever written): the count alone
    # is still right, and receive finds the refused rows again.
    return bid, BatchOutcome(int(count), refused) if refused.count else int(count)


def batch_outcome(batch: AcceptedBatch) -> int:
    """The outcome to remember for a stored ``batch``: its event count, with
    the rows refused when receiving it (carried in the table's metadata)."""
    token = (batch.table.schema.metadata or {}).get(REFUSED_ROWS_KEY)
    try:
        refused = RowSet.decode(token.decode()) if token else RowSet()
    except ValueError:  # never written so; the count alone is still right
        refused = RowSet()
    return BatchOutcome(batch.table.num_rows, refused) if refused.count else int(batch.table.num_rows)


@dataclass
class SealState:
    """What has been sealed: persisted in DIR/state/seal.json after each seal."""

    seal: int = 0
    seq: int = 0
    chain_hash: str = GENESIS.hex()
    wal_segment: int = 0
    wal_offset: int = 0
    checkpoint_digest: str = ""
    #: The last seal's files and checkpoint, so recovery can finish publishing.
    last: dict[str, Any] | None = None
    #: The writer's Merkle tree over events 1..seq (``CompactTree.to_json``);
    #: None for a chain begun before trees existed (its checkpoints sign none).
    tree: dict[str, Any] | None = field(default_factory=lambda: {"size": 0, "frontier": []})

    @property
    def position(self) -> LogPosition:
        return LogPosition(self.wal_segment, self.wal_offset)


class SealProgress:
    """The seal state (``state/seal.json``) and the sealed batch ids
    (``state/batches.log``) of one data directory's state folder."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.state_path = state_dir / "seal.json"
        self.batches_log = state_dir / "batches.log"
        self._batches_lines = 0
        self.state = self._load()

    def _load(self) -> SealState:
        try:
            raw = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return SealState()
        if "tree" not in raw:  # sealed before trees existed: none unless nothing was sealed
            raw["tree"] = {"size": 0, "frontier": []} if not raw.get("seq") else None
        return SealState(**raw)

    def save(self) -> None:
        """Replace state/seal.json with ``state`` (atomic, durable)."""
        replace_file(self.state_path, json.dumps(self.state.__dict__).encode())

    def known_batches(self, keep: int) -> dict[str, int]:
        """Batch ids sealed before (the newest ``keep``), for idempotent
        retries: each one's accepted count, a :class:`BatchOutcome` for a
        batch stored in part.  Also compacts state/batches.log down to
        those ids, so it never grows without bound."""
        out: dict[str, int] = {}
        lines = 0
        try:
            with open(self.batches_log) as f:
                for line in f:
                    lines += 1
                    parsed = _parse_log_line(line)
                    if parsed is not None:
                        out.pop(parsed[0], None)  # a re-sealed id moves to the newest end
                        out[parsed[0]] = parsed[1]
        except FileNotFoundError:
            return out
        if len(out) > keep:
            out = dict(list(out.items())[-keep:])
        if lines > len(out):
            replace_file(self.batches_log, "".join(_log_line(b, n) for b, n in out.items()).encode())
        self._batches_lines = len(out)
        return out

    def log_batches(self, batches: list[AcceptedBatch], keep: int) -> None:
        """Append the batches' ids and outcomes (fsynced); compact the log
        to the newest ``keep`` once it holds twice that."""
        append_file(self.batches_log, "".join(_log_line(b.batch_id, batch_outcome(b)) for b in batches).encode())
        self._batches_lines += len(batches)
        if self._batches_lines > 2 * keep:
            self.known_batches(keep)  # compacts the file to the newest ids
