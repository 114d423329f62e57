"""A writer's Merkle tree rebuilt from the lake, for making proofs.

Owns: finding an event (by id) among the files the checkpoints say are live,
in the hot and cold tiers; reading one writer's events in ``seq`` order as
leaf hashes (the leaf is the canonical encoding of docs/integrity.md
section 2, whatever file version the event sits in), with the events
retention expired standing in as the subtree roots their ``expire``
checkpoints kept (``extra.subtrees``, docs/retention.md); and the proof
documents of ``integrity.proofs`` made from them.

The checkpoints are read as verify reads them (primary folder, mirrors,
every writer); proofs are made from what the lake holds and checked by
whoever receives them, so nothing here trusts the lake: a proof over a
changed event fails at its reader.

Imports: ``integrity.verify`` (the checkpoint reading and the live file
set), ``integrity.merkle``, ``integrity.proofs``, ``storage``.
"""

from __future__ import annotations

import datetime as dt
import uuid
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
from auditlake.collector.integrity.checkpoint import SUBTREES_KEY, SignedCheckpoint, read_kept_subtrees
from auditlake.collector.integrity.merkle import PrunedSubtreeError, PrunedTree, hash_leaves
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
        self._levels: dict[str, PrunedTree] = {}
        self._kept: dict[str, dict[int, tuple[int, bytes]]] | None = None

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
            raise IntegrityError(f"no event {event_id!r} in the lake's live files{where}{self._expired_note(event_id)}")
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

    def _expired_note(self, event_id: str) -> str:
        """Why an event may be missing: retention expired its day (dated by
        its UUIDv7 id), or, less surely, some events were expired."""
        expires = [s for seals in self.writers.values() for s in seals.values() if s.checkpoint.kind == "expire"]
        if not expires:
            return ""
        try:
            parsed = uuid.UUID(event_id)
        except ValueError:
            parsed = None
        if parsed is not None and parsed.version == 7:
            day = dt.datetime.fromtimestamp((parsed.int >> 80) / 1000, dt.UTC).date().isoformat()
            for s in expires:
                if day in s.checkpoint.extra.get("days", ()):
                    return (f": it expired (its id dates it {day}, a day retention deleted under writer "
                            f"{s.checkpoint.writer_id}'s expire checkpoint {s.checkpoint.seal}); an expired "
                            "event's inclusion can no longer be proven")
        expired = sum(self.expected.expired_events(w) for w in list(self.expected.expired))
        return f" (retention expired {expired:,} events of this lake: it may be one of them)"

    def subtrees(self, writer_id: str) -> dict[int, tuple[int, bytes]]:
        """The subtrees of ``writer_id``'s tree that expire checkpoints (of
        any writer: a fleet's maintenance holder expires every writer's
        files) kept in place of expired events: ``{first leaf: (size,
        root)}``, from each checkpoint's ``extra.subtrees`` (docs/retention.md)."""
        if self._kept is None:
            kept: dict[str, dict[int, tuple[int, bytes]]] = {}
            for seals in self.writers.values():
                for signed in seals.values():
                    if signed.checkpoint.kind == "expire":
                        _read_subtrees(signed, kept)
            self._kept = kept
        return self._kept.get(writer_id, {})

    def levels(self, writer_id: str) -> PrunedTree:
        """The writer's tree over events 1..its newest seq, rebuilt from its
        live files and the subtrees kept of its expired events (cached)."""
        cached = self._levels.get(writer_id)
        if cached is not None:
            return cached
        seqs: list[np.ndarray] = []
        leaves: list[bytes] = []
        for live in self._files_of(writer_id):
            t = self._read(live)
            seqs.append(t.column("seq").to_numpy())
            leaves += hash_leaves(canonical_column(t).to_pylist())
        all_seqs = np.concatenate(seqs) if seqs else np.array([], np.int64)
        order = np.argsort(all_seqs, kind="stable")
        ordered = all_seqs[order]
        # Runs of consecutive seqs: (first leaf index, offset, end offset) in ``ordered``.
        bounds = [0, *(np.flatnonzero(np.diff(ordered) != 1) + 1).tolist(), len(ordered)]
        runs = [(int(ordered[a]) - 1, a, b) for a, b in zip(bounds, bounds[1:], strict=False) if a < b]
        kept = self.subtrees(writer_id)
        tree = PrunedTree()
        at, r = 0, 0  # the next leaf index; the next run
        while True:
            if at in kept:
                size, root = kept[at]
                tree.append_subtree(size, root)
                at += size
            elif r < len(runs) and runs[r][0] == at:
                _, a, b = runs[r]
                tree.extend(leaves[i] for i in order[a:b].tolist())
                at += b - a
                r += 1
            elif r == len(runs):
                break
            else:
                raise IntegrityError(self._missing(writer_id, at + 1, runs[r][0] + 1))
        self._levels[writer_id] = tree
        return tree

    def _missing(self, writer_id: str, seq: int, found: int) -> str:
        """Why seq ``seq`` is not in ``writer_id``'s tree (``found``: the next seq the lake holds)."""
        if found < seq:
            return f"writer {writer_id}'s event {found} is in the lake twice (in two live files, or live and expired)"
        expired = any(a <= seq <= b for a, b, _ in self.expected.expired.get(writer_id, ()))
        if expired:
            return (f"writer {writer_id}'s events from seq {seq} were expired by retention without keeping "
                    "their subtree hashes (an expire checkpoint written before auditlake kept them, "
                    "docs/retention.md): proofs over this writer's tree cannot be made")
        return f"writer {writer_id}'s events are not all in the lake: seq {seq} is missing"

    def _tree(self, writer_id: str, size: int) -> PrunedTree:
        """The writer's tree, covering at least ``size`` events."""
        tree = self.levels(writer_id)
        if tree.size < size:
            raise IntegrityError(f"writer {writer_id}'s events are not all in the lake: its signed tree has "
                                 f"{size} events, the lake holds events 1..{tree.size}")
        return tree

    def _pruned(self, writer_id: str, exc: PrunedSubtreeError, what: str) -> IntegrityError:
        first, end = exc.pruned
        return IntegrityError(
            f"{what} ends inside writer {writer_id}'s events {first + 1}..{end}, which retention expired keeping "
            "only their subtree's root: RFC 9162 needs hashes below it, so no proof can be made from or to that "
            "tree size (docs/retention.md); use a checkpoint signed after those events")

    def inclusion(self, event_id: str, writer_id: str | None = None) -> dict[str, Any]:
        """The inclusion proof document of ``event_id`` against its writer's newest tree head."""
        found = self.find(event_id, writer_id)
        signed = self.head(found.writer_id)
        cp = signed.checkpoint
        assert cp.tree_size is not None
        if found.seq > cp.tree_size:
            raise IntegrityError(f"event {event_id} (seq {found.seq}) is newer than writer "
                                 f"{found.writer_id}'s newest signed tree head ({cp.tree_size} events)")
        tree = self._tree(found.writer_id, cp.tree_size)
        try:
            path = tree.inclusion_proof(found.seq - 1, cp.tree_size)
        except PrunedSubtreeError as exc:  # only a head ending inside an expired range can need one
            raise self._pruned(found.writer_id, exc, f"checkpoint {cp.seal}'s tree ({cp.tree_size} events)") from None
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
        if a.tree_size == 0:
            path: list[bytes] = []
        else:
            tree = self._tree(a.writer_id, b.tree_size)
            try:
                path = tree.consistency_proof(a.tree_size, b.tree_size)
            except PrunedSubtreeError as exc:
                inside = a if exc.pruned[0] < a.tree_size < exc.pruned[1] else b
                raise self._pruned(a.writer_id, exc, f"checkpoint {inside.seal}'s tree ({inside.tree_size} events)"
                                   ) from None
        return consistency_document((a, first.signature), (b, second.signature), path)


def _read_subtrees(signed: SignedCheckpoint, into: dict[str, dict[int, tuple[int, bytes]]]) -> None:
    """Add ``signed``'s kept subtrees to ``into``; IntegrityError naming the checkpoint when malformed."""
    try:
        read_kept_subtrees(signed.checkpoint, into)
    except ValueError as exc:
        raise IntegrityError(f"expire checkpoint {signed.path.name}: malformed extra.{SUBTREES_KEY} ({exc})") from None
