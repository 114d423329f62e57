"""The seal's commit step: the commit point, then publishing, signing and
letting the WAL go.

A seal (or a compaction, move or expire checkpoint) is committed when
``state/seal.json`` names its chain head, its WAL position, its staged files
and its checkpoint.  Finishing it then takes three idempotent steps, which
the next round repeats after an error and recovery repeats after a crash:

1. publish the staged files (rename into place in the lake store);
2. write the signed checkpoint to each checkpoint store (primary, mirrors);
3. let the WAL drop the segments wholly before the committed position.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from auditlake.collector.integrity.checkpoint import ChainCheckpoint, FileEntry, write_checkpoint
from auditlake.collector.integrity.merkle import CompactTree
from auditlake.collector.integrity.signing import SigningKey
from auditlake.collector.lake.files import StagedFile
from auditlake.collector.lake.seal_chain import PreparedSeal
from auditlake.collector.lake.seal_progress import SealProgress, SealState
from auditlake.collector.lake.wal import LogPosition, WriteAheadLog
from auditlake.collector.storage.store import Staged, Store

log = logging.getLogger(__name__)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


def _tree_head(tree: dict[str, Any] | None) -> dict[str, Any]:
    """The signed tree head (``tree_size``, ``tree_root``) of a stored
    ``CompactTree`` state; nothing for a chain without a tree."""
    if tree is None:
        return {}
    compact = CompactTree.from_json(tree)
    return {"tree_size": compact.size, "tree_root": compact.root().hex()}


class Committer:
    """Commits one writer's seals and checkpoints to its progress record, and
    finishes each commit: files into ``lake``, the signed checkpoint into
    each of ``checkpoint_stores``, the WAL (set by recovery) trimmed.
    The caller holds the sealer's chain lock."""

    def __init__(
        self,
        progress: SealProgress,
        lake: Store,
        checkpoint_stores: tuple[Store, ...],
        key: SigningKey,
        writer_id: str,
    ) -> None:
        self.progress = progress
        self.lake = lake
        self.checkpoint_stores = checkpoint_stores
        self.key = key
        self.writer_id = writer_id
        self.wal: WriteAheadLog | None = None
        #: The last seal or checkpoint is committed in state/seal.json but an
        #: error kept it from being published, signed or dropped from the WAL.
        self.unfinished = False

    # -- the commit point --------------------------------------------------------

    def commit_position(self, position: LogPosition) -> None:
        """Commit a seal that kept no events (every one a duplicate): only the
        WAL position moves on (no checkpoint: the chain did not change)."""
        self.progress.state = replace(self.progress.state, wal_segment=position.segment,
                                      wal_offset=position.offset)
        self.progress.save()

    def commit_seal(self, prepared: PreparedSeal, staged: list[StagedFile]) -> None:
        """Commit a prepared seal whose files are staged: the seal record is
        the commit point; publishing, the checkpoint and the WAL are then
        :meth:`finish`."""
        state = self.progress.state
        n: int = prepared.table.num_rows
        position = prepared.items[-1][1]
        if (prepared.seal_no, prepared.seq - n) != (state.seal + 1, state.seq):
            raise RuntimeError("internal error: a prepared seal does not follow the committed chain head")
        checkpoint = ChainCheckpoint(
            writer_id=self.writer_id,
            seal=prepared.seal_no,
            seq=prepared.seq,
            chain_hash=prepared.chain_hash,
            time=_now(),
            files=tuple(s.entry() for s in staged),
            previous=state.checkpoint_digest,
            tree_size=None if prepared.tree is None else prepared.tree.size,
            tree_root="" if prepared.tree is None else prepared.tree.root().hex(),
        )
        if prepared.tree is not None and prepared.tree.size != prepared.seq:
            raise RuntimeError("internal error: the Merkle tree does not cover the chain")
        self.progress.state = SealState(
            seal=prepared.seal_no,
            seq=checkpoint.seq,
            chain_hash=prepared.chain_hash,
            wal_segment=position.segment,
            wal_offset=position.offset,
            checkpoint_digest=checkpoint.digest(),
            last={
                "files": [{"tmp": self.lake.path(s.temp_key), "final": self.lake.path(s.key)} for s in staged],
                "checkpoint": checkpoint.body(),
            },
            tree=None if prepared.tree is None else prepared.tree.to_json(),
        )
        self.progress.save()  # the commit point of the seal
        # From here on the seal is committed: what remains (publish,
        # checkpoint, WAL) is finish(), which repeats until it succeeds.
        self.unfinished = True

    def commit_checkpoint(
        self,
        kind: str,
        files: Iterable[FileEntry],
        removed: Iterable[FileEntry],
        extra: dict[str, Any] | None,
    ) -> ChainCheckpoint:
        """Commit and write a checkpoint of ``kind`` that adds ``files`` and
        removes ``removed``: it takes the next seal number, links
        ``previous``, leaves the chain head as is, commits the state, then
        writes the signed file (primary + mirrors)."""
        self.finish()  # its checkpoint comes before this one
        state = self.progress.state
        checkpoint = ChainCheckpoint(
            writer_id=self.writer_id,
            seal=state.seal + 1,
            seq=state.seq,
            chain_hash=state.chain_hash,
            time=_now(),
            kind=kind,
            files=tuple(files),
            removed=tuple(removed),
            previous=state.checkpoint_digest,
            extra=dict(extra or {}),
            **_tree_head(state.tree),
        )
        self.progress.state = replace(
            state,
            seal=checkpoint.seal,
            checkpoint_digest=checkpoint.digest(),
            last={"files": [], "checkpoint": checkpoint.body()},
        )
        self.progress.save()
        self.unfinished = True  # should writing it fail, the next seal or checkpoint repeats it
        write_checkpoint(checkpoint, self.key, self.checkpoint_stores)
        self.unfinished = False
        return checkpoint

    # -- finishing -------------------------------------------------------------------

    def finish(self) -> None:
        """Finish the committed seal, if it is not finished: publish its
        files, write its signed checkpoint, drop the WAL it covers.  Each
        step is idempotent, so after an error (a full disk, an unreachable
        checkpoint mirror) the next round simply repeats it; the same steps
        finish an interrupted seal on start (recovery)."""
        if not self.unfinished:
            return
        self.finish_last()
        if self.wal is not None:
            self.wal.drop_through(self.progress.state.position)
        self.unfinished = False

    def finish_last(self) -> None:
        """Publish the last commit's files and write its checkpoint (idempotent)."""
        last = self.progress.state.last
        if not last:
            return
        for f in last["files"]:
            staged = self._recorded_stage(f)
            if staged is None or not (self.lake.stage_exists(staged.temp_key) or self.lake.exists(staged.key)):
                log.error("sealed file %s is missing after a crash", f["final"])
            if staged is not None:
                self.lake.publish(staged)
        write_checkpoint(ChainCheckpoint.from_body(last["checkpoint"]), self.key, self.checkpoint_stores)

    def _recorded_stage(self, record: dict[str, str]) -> Staged | None:
        """The stage a progress record names by its paths in the lake store
        (None when they are not in it, e.g. a data directory moved since).
        The record's own temporary path is used, never one derived from the
        final name: a record written by an older version names the visible
        ``<name>.parquet.tmp`` it staged under, and recovery after an upgrade
        publishes that file."""
        root = self.lake.path("").rstrip("/") + "/"
        tmp, final = record["tmp"], record["final"]
        if not (tmp.startswith(root) and final.startswith(root)):
            return None
        return Staged(final[len(root):], tmp[len(root):])
