"""A writer that builds small lakes in-process for verify tests: the same
chain (integrity.chain_table), file layout (lake.stage_file/publish) and signed
checkpoints (checkpoint.write_checkpoint) as the Sealer, without a collector
process, so property tests can build hundreds of lakes quickly.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from auditlake.collector.integrity.chain import GENESIS, chain_table
from auditlake.collector.integrity.checkpoint import ChainCheckpoint, FileEntry, write_checkpoint
from auditlake.collector.integrity.signing import SigningKey
from auditlake.collector.lake.files import publish, sort_for_queries, split_by_day, stage_file
from auditlake.collector.schema import EVENT_SCHEMA
from auditlake.collector.storage.datadir import DataDir

BASE = dt.datetime(2026, 3, 1, 12, tzinfo=dt.UTC)


def event_rows(n: int, start: int = 0, days: int = 3, **fields: Any) -> list[dict[str, Any]]:
    """``n`` stored-event dicts (without writer_id/seq/chain_hash), spread over ``days``."""
    rows = []
    for i in range(start, start + n):
        row = {
            "id": str(uuid.UUID(int=i + 1)), "tenant_id": ("acme", "globex")[i % 2],
            "user_id": f"u{i % 3}", "action": "read", "resource_type": "doc",
            "resource_id": f"d{i}", "changes": "{}", "ip_address": "10.0.0.1",
            "user_agent": "ua", "created_at": BASE + dt.timedelta(days=i % days, seconds=i),
            "outcome": "success", "reason": "", "service": "svc", "trace_id": "",
            "span_id": "", "request_id": f"r{i}", "metadata": "{}",
            "received_at": BASE + dt.timedelta(days=days, seconds=i),
            "imported": True, "clock_skew": False, "ingest_key_id": "",
        }
        row.update(fields)
        rows.append(row)
    return rows


@dataclass
class SyntheticWriter:
    """One writer's chain over ``data``; ``seal(rows)`` writes files + a signed checkpoint.

    ``schema``: LEGACY_EVENT_SCHEMA builds the files of a lake sealed before
    ``ingest_key_id`` existed (hashed with canonical encoding version 1)."""

    data: DataDir
    writer_id: str = "wtest00000001"
    mirrors: tuple[Path, ...] = ()
    seq: int = 0
    chain_hash: str = GENESIS.hex()
    seal_no: int = 0
    previous: str = ""
    key: SigningKey = field(init=False)
    checkpoints: list[ChainCheckpoint] = field(default_factory=list)
    schema: pa.Schema = EVENT_SCHEMA

    def __post_init__(self) -> None:
        self.data.create()
        self.key = SigningKey.load_or_create(self.data.keys)

    def chained(self, rows: list[dict[str, Any]]) -> pa.Table:
        """``rows`` as stored events, continuing this writer's chain."""
        n = len(rows)
        for i, r in enumerate(rows):
            r.update(writer_id=self.writer_id, seq=self.seq + 1 + i, chain_hash="")
        table = pa.Table.from_pylist(rows, schema=self.schema)
        hashes = chain_table(bytes.fromhex(self.chain_hash), table)
        table = table.set_column(table.schema.get_field_index("chain_hash"), "chain_hash",
                                 pa.array([h.hex() for h in hashes], pa.string()))
        self.seq += n
        self.chain_hash = hashes[-1].hex()
        return table.cast(self.schema)

    def seal(self, rows: list[dict[str, Any]]) -> ChainCheckpoint:
        """Chain ``rows``, write one file per day, sign a seal checkpoint."""
        table = self.chained(rows)
        entries = []
        for day, part in sorted(split_by_day(table).items()):
            final = (self.data.events / f"date={day.isoformat()}"
                     / f"part-{self.writer_id}-{self.seal_no + 1:010d}.parquet")
            staged = stage_file(sort_for_queries(part), final)
            publish(staged.tmp, staged.final)
            entries.append(FileEntry(final.relative_to(self.data.lake).as_posix(), staged.sha256,
                                     staged.bytes, staged.rows, staged.first_seq, staged.last_seq))
        return self.checkpoint("seal", tuple(entries))

    def checkpoint(self, kind: str, files: tuple[FileEntry, ...] = (),
                   removed: tuple[FileEntry, ...] = (), extra: dict[str, Any] | None = None
                   ) -> ChainCheckpoint:
        """Sign the next checkpoint (any kind), linked to the previous one."""
        self.seal_no += 1
        cp = ChainCheckpoint(
            writer_id=self.writer_id, seal=self.seal_no, seq=self.seq,
            chain_hash=self.chain_hash, time=BASE.isoformat(), kind=kind, files=files,
            removed=removed, previous=self.previous, extra=extra or {})
        write_checkpoint(cp, self.key, (self.data.checkpoints, *self.mirrors))
        self.previous = cp.digest()
        self.checkpoints.append(cp)
        return cp

    def entries(self) -> dict[str, FileEntry]:
        """The live files (union of files minus removed, in order)."""
        live: dict[str, FileEntry] = {}
        for cp in self.checkpoints:
            for r in cp.removed:
                live.pop(r.path, None)
            for f in cp.files:
                live[f.path] = f
        return live
