"""A writer's Merkle tree rebuilt from the lake, for making proofs.

Owns: finding an event (by id) among the files the checkpoints say are live,
in the hot and cold tiers; reading one writer's events in ``seq`` order as
leaf hashes (the leaf is the canonical encoding of docs/integrity.md
section 2, whatever file version the event sits in); and the proof
documents of ``integrity.proofs`` made from them.

The checkpoints are read as verify reads them (primary folder, mirrors,
every writer); proofs are made from what the lake holds and checked by
whoever receives them, so nothing here trusts the lake: a proof over a
changed event fails at its reader.

Imports: ``integrity.verify`` (the checkpoint reading and the live file
set), ``integrity.merkle``, ``integrity.proofs``, ``storage``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from auditlake.collector.config import load_toml
from auditlake.collector.errors import ConfigError, IntegrityError
from auditlake.collector.integrity.chain import canonical_column, canonical_fields
from auditlake.collector.integrity.checkpoint import SignedCheckpoint
from auditlake.collector.integrity.merkle import MerkleLevels, hash_leaf
from auditlake.collector.integrity.proofs import consistency_document, inclusion_document
from auditlake.collector.integrity.verify.checkpoints import ByWriter, read_checkpoints
from auditlake.collector.integrity.verify.listing import ExpectedFiles, LiveFile, expected_files, lake_tiers
from auditlake.collector.integrity.verify.report import VerifyReport
from auditlake.collector.storage.datadir import DataDir
from auditlake.collector.storage.store import LocalStore, Store
from auditlake.collector.storage.tiers import COLD_PREFIX, Tier, checkpoint_tier


@dataclass(frozen=True)
class FoundEvent:
    """An event located in the lake: its writer, seq and stored row."""

    writer_id: str
    seq: int
    row: pa.Table  # one row, the file's own columns

    def fields(self) -> list[tuple[str, str]]:
        """The event's canonical field texts, in encoding order."""
        encoding = canonical_column(self.row)[0].as_py()
        texts: list[str] = []
        rest = encoding
        for _ in canonical_fields(self.row.column_names):
            length, _, rest = rest.partition(b",")
            n = int(length)
            texts.append(rest[:n].decode())
            rest = rest[n + 1:]
        return list(zip(canonical_fields(self.row.column_names), texts, strict=True))


class LakeTrees:
    """The checkpoints and live files of a lake, and each writer's tree on demand."""

    def __init__(self, data: DataDir, *, toml: dict[str, Any] | None = None,
                 mirrors: Sequence[Path | str] = (), cold: Tier | None = None) -> None:
        self.data = data
        if not data.shared_lake and not data.root.is_dir():
            raise ConfigError(f"data directory {data.root} does not exist")
        toml = toml if toml is not None else load_toml(data.config_file)
        report = VerifyReport(data=str(data.root))
        self.writers: ByWriter = read_checkpoints(
            checkpoint_tier(data), [LocalStore(Path(m), "checkpoint mirror") for m in mirrors], None, report)
        self.expected: ExpectedFiles = expected_files(self.writers, report)
        self.tiers = lake_tiers(data, toml, self.writers, cold)
        self._levels: dict[str, MerkleLevels] = {}

    # -- reading files ---------------------------------------------------------------

    def _tier(self, path: str) -> tuple[Store, str]:
        if path.startswith(COLD_PREFIX):
            if "cold" not in self.tiers:
                raise ConfigError(f"{path} is in the cold tier, and no cold tier is configured")
            return self.tiers["cold"], path[len(COLD_PREFIX):]
        return self.tiers["hot"], path

    def _read(self, live: LiveFile, columns: list[str] | None = None) -> pa.Table:
        store, rel = self._tier(live.entry.path)
        return pq.read_table(pa.BufferReader(store.read(rel)), columns=columns)

    def _files_of(self, writer_id: str) -> list[LiveFile]:
        return sorted((f for f in self.expected.live.values() if f.writer_id == writer_id),
                      key=lambda f: f.entry.first_seq)

    # -- what a proof needs ------------------------------------------------------------

    def find(self, event_id: str, writer_id: str | None = None) -> FoundEvent:
        """The stored event ``event_id``: in a lake with several copies (a
        fleet's retried batch), the copy the ``events`` view shows (first
        received), or ``writer_id``'s."""
        hits: list[tuple[int, str, int, LiveFile]] = []
        for live in self.expected.live.values():
            if writer_id is not None and live.writer_id != writer_id:
                continue
            t = self._read(live, ["id", "seq", "received_at"])
            mask = pc.equal(t.column("id"), event_id)
            for r in t.filter(mask).to_pylist():
                hits.append((int(r["received_at"].timestamp() * 1e6), live.writer_id, int(r["seq"]), live))
        if not hits:
            where = f" of writer {writer_id}" if writer_id else ""
            raise IntegrityError(f"no event {event_id!r} in the lake's live files{where}")
        _, writer, seq, live = min(hits, key=lambda h: h[:3])
        table = self._read(live)
        row = table.filter(pc.equal(table.column("seq"), seq)).slice(0, 1)
        return FoundEvent(writer, seq, row)

    def checkpoints(self, writer_id: str) -> list[SignedCheckpoint]:
        """The writer's checkpoints in seal order."""
        seals = self.writers.get(writer_id, {})
        return [seals[s] for s in sorted(seals)]

    def head(self, writer_id: str) -> SignedCheckpoint:
        """The writer's newest checkpoint that signs a tree head."""
        for signed in reversed(self.checkpoints(writer_id)):
            if signed.checkpoint.tree_size is not None:
                return signed
        raise IntegrityError(f"writer {writer_id} has no checkpoint with a Merkle tree head "
                             "(its chain was begun before trees: docs/integrity.md section 8)")

    def levels(self, writer_id: str) -> MerkleLevels:
        """Every subtree of the writer's tree over events 1..its newest seq,
        rebuilt from its live files (cached)."""
        cached = self._levels.get(writer_id)
        if cached is not None:
            return cached
        seqs: list[np.ndarray] = []
        leaves: list[list[bytes]] = []
        for live in self._files_of(writer_id):
            t = self._read(live)
            seqs.append(t.column("seq").to_numpy())
            leaves.append([hash_leaf(e) for e in canonical_column(t).to_pylist()])
        flat = [h for part in leaves for h in part]
        order = np.argsort(np.concatenate(seqs)) if seqs else np.array([], np.int64)
        ordered_seqs = np.concatenate(seqs)[order] if seqs else np.array([], np.int64)
        expected = np.arange(1, len(ordered_seqs) + 1)
        if not np.array_equal(ordered_seqs, expected):
            gap = int(np.argmax(ordered_seqs != expected)) + 1 if len(ordered_seqs) else 1
            expired = self.expected.expired.get(writer_id)
            why = (" (expired by retention: proofs across an expired range need its kept subtree "
                   "hashes, which this version does not keep yet)") if expired else ""
            raise IntegrityError(f"writer {writer_id}'s events are not all in the lake: "
                                 f"seq {gap} is missing{why}")
        levels = MerkleLevels(flat[i] for i in order)
        self._levels[writer_id] = levels
        return levels

    def inclusion(self, event_id: str, writer_id: str | None = None) -> dict[str, Any]:
        """The inclusion proof document of ``event_id`` against its writer's newest tree head."""
        found = self.find(event_id, writer_id)
        signed = self.head(found.writer_id)
        cp = signed.checkpoint
        assert cp.tree_size is not None
        if found.seq > cp.tree_size:
            raise IntegrityError(f"event {event_id} (seq {found.seq}) is newer than writer "
                                 f"{found.writer_id}'s newest signed tree head ({cp.tree_size} events)")
        path = self.levels(found.writer_id).inclusion_proof(found.seq - 1, cp.tree_size)
        return inclusion_document(found.fields(), path, cp, signed.signature)

    def consistency(self, first: SignedCheckpoint, second: SignedCheckpoint) -> dict[str, Any]:
        """The consistency proof document from ``first``'s tree head to ``second``'s."""
        a, b = first.checkpoint, second.checkpoint
        if a.writer_id != b.writer_id:
            raise IntegrityError(f"checkpoints of two writers ({a.writer_id}, {b.writer_id}) are not comparable")
        if a.tree_size is None or b.tree_size is None:
            raise IntegrityError("a version-1 checkpoint signs no tree head")
        if a.tree_size > b.tree_size:
            raise IntegrityError(f"the first checkpoint ({a.tree_size} events) is newer than the second "
                                 f"({b.tree_size})")
        path = [] if a.tree_size == 0 else self.levels(a.writer_id).consistency_proof(a.tree_size, b.tree_size)
        return consistency_document((a, first.signature), (b, second.signature), path)
