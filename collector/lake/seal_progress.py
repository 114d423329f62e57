"""The sealer's progress record, local to this collector (not lake files):

    DIR/state/seal.json     what has been sealed: the chain head, the WAL
                            position, and the last commit's staged files and
                            checkpoint; replacing it is the commit point
    DIR/state/batches.log   the ids (and event counts) of sealed batches,
                            for idempotent retries; compacted to the newest
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from auditlake.collector.integrity.chain import GENESIS
from auditlake.collector.lake.batch import AcceptedBatch
from auditlake.collector.lake.wal import LogPosition
from auditlake.collector.storage.local import append_file, replace_file


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
        retries.  Also compacts state/batches.log down to those ids, so it
        never grows without bound."""
        out: dict[str, int] = {}
        lines = 0
        try:
            with open(self.batches_log) as f:
                for line in f:
                    lines += 1
                    bid, _, count = line.rstrip("\n").rpartition(" ")
                    if bid and count.isdigit():
                        out.pop(bid, None)  # a re-sealed id moves to the newest end
                        out[bid] = int(count)
        except FileNotFoundError:
            return out
        if len(out) > keep:
            out = dict(list(out.items())[-keep:])
        if lines > len(out):
            replace_file(self.batches_log, "".join(f"{b} {n}\n" for b, n in out.items()).encode())
        self._batches_lines = len(out)
        return out

    def log_batches(self, batches: list[AcceptedBatch], keep: int) -> None:
        """Append the batches' ids (fsynced); compact the log to the newest
        ``keep`` once it holds twice that."""
        append_file(self.batches_log, "".join(f"{b.batch_id} {b.table.num_rows}\n" for b in batches).encode())
        self._batches_lines += len(batches)
        if self._batches_lines > 2 * keep:
            self.known_batches(keep)  # compacts the file to the newest ids
