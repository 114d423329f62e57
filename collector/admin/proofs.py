"""Proofs as the admin server serves them: Merkle inclusion proofs of one
event, consistency proofs between two checkpoints of a writer, and each
writer's newest signed tree head (docs/integrity.md section 8).

Owns :class:`ProofSource`, one per admin process: a
:class:`~auditlake.collector.integrity.writer_tree.LakeTrees` rebuilt only
when the listing of the checkpoint folder changes (a listing, no reads), and
each writer's tree kept across rebuilds and extended with only the events
sealed since.  A writer's first proof reads its whole chain through
``LakeTrees.levels`` (the one place that knows how a tree is rebuilt from
the lake, expired ranges included); later ones read the new files only.
Before a proof is served, the tree's root at the signed tree size is
compared with the signed root: a lake that no longer matches its signed
head is read again from scratch once, then refused (409), never proven from
stale hashes.

An event is proven by the writer and ``seq`` of the copy the ``events``
view showed the reader (already scoped to the reader's tenants), never by
its id alone: two tenants may store the same event id, and a proof carries
its event's fields.

Everything here blocks (Parquet reads, hashing): callers run it on a
worker thread.  Imports: ``integrity`` (trees, proofs, checkpoints),
``storage``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from auditlake.collector.admin.search import QueryParameterError
from auditlake.collector.errors import CollectorError, IntegrityError
from auditlake.collector.integrity.chain import canonical_column
from auditlake.collector.integrity.checkpoint import SignedCheckpoint
from auditlake.collector.integrity.merkle import from_hex, hash_leaf, hash_leaves
from auditlake.collector.integrity.proofs import consistency_document, inclusion_document, signed_document
from auditlake.collector.integrity.verify.checkpoints import checkpoint_listing
from auditlake.collector.integrity.verify.listing import LiveFile
from auditlake.collector.integrity.writer_tree import FoundEvent, LakeTrees
from auditlake.collector.storage.datadir import DataDir
from auditlake.collector.storage.tiers import checkpoint_tier, split_checkpoint_path


class ProofNotFound(LookupError, CollectorError):
    """The writer, checkpoint or event a proof was asked for does not exist."""


class ProofUnavailable(IntegrityError):
    """The lake cannot give this proof as it stands (a chain begun before
    trees, an event newer than the newest signed head, events missing, or
    events that no longer match their signed head)."""


class WriterTree(Protocol):
    """What a proof needs of a writer's tree (``LakeTrees.levels`` gives one)."""

    @property
    def size(self) -> int:
        """Leaves held."""

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        """Add leaves in order."""

    def leaf_hash(self, index: int) -> bytes:
        """The leaf hash at ``index``."""

    def root(self, size: int | None = None) -> bytes:
        """MTH of the first ``size`` leaves."""

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """The audit path of leaf ``index`` in the tree of ``size`` leaves."""

    def consistency_proof(self, first: int, second: int | None = None) -> list[bytes]:
        """The proof that the tree of ``second`` leaves extends that of ``first``."""


class ProofSource:
    """The lake's proofs, with one LakeTrees and each writer's tree kept
    between calls.  Thread-safe: calls run one at a time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data: DataDir | None = None
        self._listing: list[tuple[str, int]] | None = None
        self._trees: LakeTrees | None = None
        #: Each writer's tree as far as it has been read; kept across rebuilds
        #: of ``_trees`` (sealed events do not change) and checked against
        #: every signed root it is used with.
        self._levels: dict[str, WriterTree] = {}
        #: Trees rebuilt and writer trees (re)read from scratch: for tests and the docs' figures.
        self.rebuilds = 0
        self.full_reads = 0
        #: Set by the routes on first use (an anyio CapacityLimiter of one):
        #: requests waiting for the running proof wait on the event loop, not
        #: each on a worker thread of their own.
        self.limiter: Any = None

    # -- the public calls ------------------------------------------------------------------

    def inclusion(self, data: DataDir, writer_id: str, seq: int, event_id: str, tenant_id: str) -> dict[str, Any]:
        """The inclusion proof document of event ``seq`` of ``writer_id``
        against the writer's newest signed head; the stored event must be
        ``event_id`` of ``tenant_id`` (what the reader was shown)."""
        with self._lock:
            trees = self._current(data)
            signed = self._head(trees, writer_id)
            cp = signed.checkpoint
            assert cp.tree_size is not None
            if seq > cp.tree_size:
                raise ProofUnavailable(f"event {event_id} (seq {seq}) is newer than writer {writer_id}'s newest "
                                       f"signed tree head ({cp.tree_size} events): try again after the next seal")
            found = _event_at(trees, writer_id, seq)
            fields = found.fields()
            stored = dict(fields)
            if (stored.get("id"), stored.get("tenant_id")) != (event_id, tenant_id):
                # never a proof carrying another event's (or tenant's) fields
                raise ProofUnavailable(f"writer {writer_id}'s event {seq} in the lake is not event {event_id}")
            tree = self._levels_for(trees, signed)
            with _unprovable(f"checkpoint {cp.seal}'s tree ({cp.tree_size} events)"):
                if hash_leaf(canonical_column(found.row)[0].as_py()) != tree.leaf_hash(seq - 1):
                    # the tree matches the signed root, the row read now does not: changed since it was signed
                    raise ProofUnavailable(f"event {event_id} as stored does not match writer {writer_id}'s "
                                           "signed tree head (changed after it was signed?): run `auditlake verify`")
                path = tree.inclusion_proof(seq - 1, cp.tree_size)
            return inclusion_document(fields, path, cp, signed.signature)

    def consistency(self, data: DataDir, writer_id: str, first: int, second: int | None) -> dict[str, Any]:
        """The consistency proof document from checkpoint ``first`` of
        ``writer_id`` to checkpoint ``second`` (default: its newest signed head)."""
        with self._lock:
            trees = self._current(data)
            old = self._seal(trees, writer_id, first)
            new = self._head(trees, writer_id) if second is None else self._seal(trees, writer_id, second)
            a, b = old.checkpoint, new.checkpoint
            for cp in (a, b):
                if cp.tree_size is None:
                    raise ProofUnavailable(f"checkpoint {cp.seal} of writer {writer_id} signs no tree head "
                                           "(it was written before trees: docs/integrity.md section 8)")
            assert a.tree_size is not None and b.tree_size is not None
            if a.seal > b.seal or a.tree_size > b.tree_size:
                raise QueryParameterError("from", f"checkpoint {a.seal} ({a.tree_size} events) is not before "
                                          f"checkpoint {b.seal} ({b.tree_size} events)")
            path: list[bytes] = []
            if 0 < a.tree_size < b.tree_size:
                tree = self._levels_for(trees, new)
                with _unprovable(f"the proof from checkpoint {a.seal} ({a.tree_size} events)"):
                    if tree.root(a.tree_size) != from_hex(a.tree_root):
                        raise ProofUnavailable(f"writer {writer_id}'s first {a.tree_size} events in the lake do "
                                               f"not match checkpoint {a.seal}'s signed tree root: run "
                                               "`auditlake verify`")
                    path = tree.consistency_proof(a.tree_size, b.tree_size)
            return consistency_document((a, old.signature), (b, new.signature), path)

    def head(self, data: DataDir, writer_id: str) -> dict[str, Any]:
        """``writer_id``'s newest checkpoint that signs a tree head, as stored."""
        with self._lock:
            signed = self._head(self._current(data), writer_id)
            return signed_document(signed.checkpoint, signed.signature)

    def heads(self, data: DataDir) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
        """Every writer's newest signed tree head, and the writers that have
        none (with why), each sorted by writer id."""
        with self._lock:
            trees = self._current(data)
            heads: list[dict[str, Any]] = []
            without: list[dict[str, str]] = []
            for writer in sorted(trees.writers):
                try:
                    signed = self._head(trees, writer)
                except ProofUnavailable as exc:
                    without.append({"writer_id": writer, "reason": str(exc)})
                    continue
                heads.append(signed_document(signed.checkpoint, signed.signature))
            return heads, without

    # -- the cache -----------------------------------------------------------------------

    def _current(self, data: DataDir) -> LakeTrees:
        """The LakeTrees of ``data``, rebuilt when a checkpoint was added
        (or removed, or rewritten) since it was built."""
        # Listed before the trees read the checkpoints: one added in between
        # makes the next call's listing differ, and that call rebuilds.
        listing = checkpoint_listing([checkpoint_tier(data)])
        if self._trees is None or listing != self._listing or data is not self._data:
            self._trees = LakeTrees(data)
            self._listing, self._data = listing, data
            self.rebuilds += 1
        return self._trees

    def _head(self, trees: LakeTrees, writer_id: str) -> SignedCheckpoint:
        if writer_id not in trees.writers:
            raise ProofNotFound(f"no writer {writer_id!r} has checkpoints in this lake")
        try:
            return trees.head(writer_id)
        except IntegrityError as exc:
            raise ProofUnavailable(str(exc)) from None

    def _seal(self, trees: LakeTrees, writer_id: str, seal: int) -> SignedCheckpoint:
        seals = trees.writers.get(writer_id)
        if seals is None:
            raise ProofNotFound(f"no writer {writer_id!r} has checkpoints in this lake")
        if seal not in seals:
            raise ProofNotFound(f"writer {writer_id} has no checkpoint {seal}")
        return seals[seal]

    def _levels_for(self, trees: LakeTrees, head: SignedCheckpoint) -> WriterTree:
        """The writer's tree over at least ``head``'s events, whose root at
        its size is the signed root."""
        cp = head.checkpoint
        assert cp.tree_size is not None
        signed_root = from_hex(cp.tree_root)
        kept = self._levels.get(cp.writer_id)
        if kept is not None:
            try:
                _extend_tail(trees, cp.writer_id, kept, cp.tree_size)
                if kept.root(cp.tree_size) == signed_root:
                    return kept
            except (IntegrityError, ValueError):
                pass  # read again from the start below, which names what is wrong
        # First use, or the kept hashes no longer lead to the signed root: read the whole chain.
        self._levels.pop(cp.writer_id, None)
        self.full_reads += 1
        with _unprovable(f"checkpoint {cp.seal}'s tree ({cp.tree_size} events)"):
            tree: WriterTree = trees.levels(cp.writer_id)
            if tree.size < cp.tree_size:
                raise ProofUnavailable(f"writer {cp.writer_id}'s events are not all in the lake: its signed tree "
                                       f"has {cp.tree_size} events, the lake holds events 1..{tree.size}")
            matches = tree.root(cp.tree_size) == signed_root
        if not matches:
            raise ProofUnavailable(f"writer {cp.writer_id}'s events in the lake do not match its signed tree "
                                   f"head (checkpoint {cp.seal}, {cp.tree_size} events): run `auditlake verify`")
        self._levels[cp.writer_id] = tree
        return tree


@contextlib.contextmanager
def _unprovable(what: str) -> Iterator[None]:
    """Turn what the lake or the tree refuses (an IntegrityError, or a
    ValueError such as a tree size ending inside an expired range) into
    ProofUnavailable, naming ``what`` was being proven."""
    try:
        yield
    except (ProofUnavailable, QueryParameterError):
        raise
    except IntegrityError as exc:
        raise ProofUnavailable(str(exc)) from None
    except ValueError as exc:
        raise ProofUnavailable(f"{what} cannot be proven from this lake: {exc}") from None


# -- reading the lake ----------------------------------------------------------------------


def _read(trees: LakeTrees, live: LiveFile) -> pa.Table:
    """A live file's rows, from the tier its checkpoint path names."""
    tier, rel = split_checkpoint_path(live.entry.path)
    store = trees.tiers.get(tier)
    if store is None:
        raise ProofUnavailable(f"{live.entry.path} is in the {tier} tier, and no {tier} tier is configured")
    try:
        return pq.read_table(pa.BufferReader(store.read(rel)))
    except (OSError, pa.ArrowException) as exc:
        # a listed file gone or unreadable: the lake no longer matches its checkpoints
        raise ProofUnavailable(f"cannot read {live.entry.path}, which the checkpoints list: {exc}") from exc


def _files_of(trees: LakeTrees, writer_id: str, first: int, last: int) -> list[LiveFile]:
    """The writer's live files that may hold a seq in ``first..last``."""
    return [f for f in trees.expected.live.values()
            if f.writer_id == writer_id and f.entry.last_seq >= first and f.entry.first_seq <= last]


def _event_at(trees: LakeTrees, writer_id: str, seq: int) -> FoundEvent:
    """Event ``seq`` of ``writer_id`` as stored, in its file's own columns."""
    for live in _files_of(trees, writer_id, seq, seq):
        table = _read(trees, live)
        row = table.filter(pc.equal(table.column("seq"), seq)).slice(0, 1)
        if row.num_rows:
            return FoundEvent(writer_id, seq, row)
    raise ProofUnavailable(f"writer {writer_id}'s event {seq} is in none of the files its checkpoints list")


def _extend_tail(trees: LakeTrees, writer_id: str, tree: WriterTree, size: int) -> None:
    """Add to ``tree`` the writer's leaves after its last one, up to leaf
    ``size``, read from the files holding those seqs only (events sealed
    since the tree was built: never expired, all in live files)."""
    start = tree.size + 1  # the first seq not in the tree yet
    if start > size:
        return
    by_seq: dict[int, bytes] = {}
    for live in _files_of(trees, writer_id, start, size):
        table = _read(trees, live)
        seqs = table.column("seq")
        table = table.filter(pc.and_(pc.greater_equal(seqs, start), pc.less_equal(seqs, size)))
        by_seq.update(zip(table.column("seq").to_pylist(), hash_leaves(canonical_column(table).to_pylist()),
                          strict=True))
    missing = next((seq for seq in range(start, size + 1) if seq not in by_seq), None)
    if missing is not None:
        raise IntegrityError(f"writer {writer_id}'s events are not all in the lake: seq {missing} is missing")
    tree.extend(by_seq[seq] for seq in range(start, size + 1))
