"""Merkle trees over a writer's chain (RFC 9162 section 2.1, the same hashing
as RFC 6962): tree hashes, inclusion and consistency proofs, and their checks.

Owns: the hashing (leaf = SHA-256(0x00 || leaf bytes), node = SHA-256(0x01 ||
left || right), the empty tree = SHA-256 of nothing, a tree of n leaves split
at the largest power of two below n); :class:`CompactTree`, the O(log n)
frontier a writer carries across seals and restarts (JSON-able, for a
checkpoint's body); :class:`MerkleLevels`, every complete subtree of a tree
kept for making many proofs; :class:`PrunedTree`, the same over a tree
some of whose subtrees are known only by their roots (leaves retention
expired: :func:`aligned_subtrees` says which roots proofs still need, and
why); one-off proof generation over leaf hashes held in memory or fetched
by range, all through one hook (:data:`RangeRoot`); and the verifiers of
RFC 9162 sections 2.1.3.2 and 2.1.4.2.

Hashes are 32-byte ``bytes`` throughout; hex (64 lowercase digits, like the
chain hash) only at the edges, through :func:`to_hex` and :func:`from_hex`.

What a proof binds: the leaf hash, its index and the root.  It does not bind
the tree size on its own (a proof for leaf 3 of a 6-leaf tree also checks
against that root called a 7-leaf tree: both read the same three hashes the
same way), so the size and the root a proof is checked against must come
from the same signed checkpoint.

Imports: the standard library only; this module sits at the bottom of
``integrity`` so that an offline verifier can be read beside RFC 9162.
"""

from __future__ import annotations

import hashlib
import re
from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence
from itertools import islice
from typing import Any

#: Bytes in every hash: SHA-256.
HASH_SIZE = 32

#: The root of the tree of no leaves: SHA-256 of the empty string.
EMPTY_ROOT = hashlib.sha256(b"").digest()

_LEAF = b"\x00"
_NODE = b"\x01"
_HEX = re.compile(r"[0-9a-f]{64}")

#: Leaf hashes for the proof generators: a sequence indexed by leaf index
#: (at least ``size`` long), or ``fetch(start, end)`` returning the leaf
#: hashes of indices ``start <= i < end`` in order (the lake holds them).
LeafSource = Sequence[bytes] | Callable[[int, int], Iterable[bytes]]

#: Leaf hashes read from a fetch callable at a time, so that a proof over a
#: large range does not hold the whole range in memory.
_FETCH_CHUNK = 1 << 16


class ProofError(ValueError):
    """A Merkle proof does not prove what it claims (or is malformed)."""


# -- hashing ------------------------------------------------------------------


def hash_leaf(data: bytes) -> bytes:
    """The leaf hash of ``data``: SHA-256(0x00 || data)."""
    return hashlib.sha256(_LEAF + data).digest()


def hash_leaves(leaves: Iterable[bytes]) -> list[bytes]:
    """The leaf hash of each of ``leaves``, in order (one C-speed loop)."""
    sha256 = hashlib.sha256
    return [sha256(_LEAF + data).digest() for data in leaves]


def hash_children(left: bytes, right: bytes) -> bytes:
    """An interior node's hash: SHA-256(0x01 || left || right)."""
    return hashlib.sha256(_NODE + left + right).digest()


def tree_root(leaf_hashes: Iterable[bytes]) -> bytes:
    """MTH: the root of the tree whose leaves have these hashes, in order
    (:data:`EMPTY_ROOT` for none)."""
    tree = CompactTree()
    tree.extend(leaf_hashes)
    return tree.root()


def to_hex(digest: bytes) -> str:
    """A hash as 64 lowercase hex digits, the form checkpoints and proof files use."""
    return digest.hex()


def from_hex(text: object) -> bytes:
    """The hash written as ``text``: exactly 64 lowercase hex digits, or a
    ValueError (a proof file is outside input; nothing is guessed)."""
    if not isinstance(text, str) or not _HEX.fullmatch(text):
        raise ValueError(f"not a hash (64 lowercase hex digits): {text!r:.80}")
    return bytes.fromhex(text)


def _check_hashes(hashes: list[bytes], what: str) -> None:
    """Every item is ``bytes`` of HASH_SIZE bytes (one pass in C per check)."""
    if not hashes:
        return
    if set(map(type, hashes)) - {bytes}:
        raise TypeError(f"{what}: every hash must be bytes")
    if set(map(len, hashes)) != {HASH_SIZE}:
        raise ValueError(f"{what}: every hash must be {HASH_SIZE} bytes")


def _check_range(start: int, end: int, size: int) -> None:
    if type(start) is not int or type(end) is not int or not 0 <= start < end <= size:
        raise ValueError(f"no leaves [{start!r}, {end!r}) in a tree of {size} leaves")


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (n >= 2): where RFC 9162
    splits a tree of n leaves."""
    return 1 << ((n - 1).bit_length() - 1)


# -- the compact tree: a writer's running root ----------------------------------


class CompactTree:
    """A Merkle tree that keeps only its frontier: the roots of the complete
    subtrees its leaves decompose into, largest (leftmost) first, one per set
    bit of the size.  Appending a leaf costs one hash amortised; the root at
    any size costs popcount(size) - 1 hashes; the state is a few hundred
    bytes, which :meth:`to_json` writes into a checkpoint's body so that the
    next seal, or the next process, carries on from it.

    Not thread-safe: one writer appends.
    """

    __slots__ = ("_frontier", "_size")

    def __init__(self) -> None:
        self._size = 0
        self._frontier: list[bytes] = []

    @property
    def size(self) -> int:
        """Leaves appended so far."""
        return self._size

    @property
    def frontier(self) -> tuple[bytes, ...]:
        """The complete subtrees' roots, largest first."""
        return tuple(self._frontier)

    def append(self, leaf_hash: bytes) -> None:
        """Add one leaf, given its leaf hash (see :func:`hash_leaf`)."""
        if type(leaf_hash) is not bytes:
            raise TypeError("a leaf hash is bytes")
        if len(leaf_hash) != HASH_SIZE:
            raise ValueError(f"a leaf hash is {HASH_SIZE} bytes")
        sha256 = hashlib.sha256
        frontier = self._frontier
        size = self._size
        node = leaf_hash
        # Each trailing 1 bit of the size is a complete subtree of the same
        # height as the carry: merge them, like incrementing a binary counter.
        while size & 1:
            node = sha256(_NODE + frontier.pop() + node).digest()
            size >>= 1
        frontier.append(node)
        self._size += 1

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        """Add leaves in order, given their leaf hashes.  Hashes a batch level
        by level (one list comprehension per level), which is what makes a
        million leaves cost about a million SHA-256 calls and little else."""
        level = list(leaf_hashes)
        if not level:
            return
        _check_hashes(level, "leaf hashes")
        added = len(level)
        sha256 = hashlib.sha256
        frontier = self._frontier
        size = self._size
        leftovers: list[bytes] = []  # new incomplete-pair nodes, lowest level first
        while level:
            if size & 1:
                # The frontier's subtree at this height is the left sibling of
                # the first new node here.
                level.insert(0, frontier.pop())
            if len(level) & 1:
                leftovers.append(level.pop())
            pairs = iter(level)
            level = [sha256(_NODE + left + right).digest() for left, right in zip(pairs, pairs, strict=False)]
            size >>= 1
        # What is left of the old frontier sits above every leftover.
        frontier.extend(reversed(leftovers))
        self._size += added

    def append_subtree(self, size: int, root: bytes) -> None:
        """Add ``size`` leaves known only by the ``root`` of their complete
        subtree (leaves retention expired, see :func:`aligned_subtrees`): a
        power of two, and the leaves so far a multiple of it, so the subtree
        joins the frontier as a leaf joins it ``log2(size)`` levels up."""
        if type(size) is not int or size < 1 or size & (size - 1):
            raise ValueError(f"a subtree has a power-of-two size, not {size!r}")
        if self._size % size:
            raise ValueError(f"a subtree of {size} leaves cannot start at leaf {self._size} (not aligned)")
        _check_hashes([root], "subtree root")
        sha256 = hashlib.sha256
        frontier = self._frontier
        node = root
        level = self._size // size
        while level & 1:
            node = sha256(_NODE + frontier.pop() + node).digest()
            level >>= 1
        frontier.append(node)
        self._size += size

    def root(self) -> bytes:
        """MTH of the leaves so far: the frontier folded from the right."""
        frontier = self._frontier
        if not frontier:
            return EMPTY_ROOT
        sha256 = hashlib.sha256
        node = frontier[-1]
        for i in range(len(frontier) - 2, -1, -1):
            node = sha256(_NODE + frontier[i] + node).digest()
        return node

    def copy(self) -> CompactTree:
        """An independent tree in the same state (e.g. before a seal that may fail)."""
        other = CompactTree()
        other._size = self._size
        other._frontier = list(self._frontier)
        return other

    def to_json(self) -> dict[str, Any]:
        """The state as a JSON-able value: ``{"size": n, "frontier": [hex,
        ...]}``, largest subtree first (popcount(n) hashes)."""
        return {"size": self._size, "frontier": [h.hex() for h in self._frontier]}

    @classmethod
    def from_json(cls, value: object) -> CompactTree:
        """The tree :meth:`to_json` wrote; a ValueError names what is wrong
        (a checkpoint body is read back from storage, so it is checked)."""
        if not isinstance(value, dict) or set(value) != {"size", "frontier"}:
            raise ValueError("a compact tree is {\"size\": n, \"frontier\": [hex, ...]}")
        size, frontier = value["size"], value["frontier"]
        if type(size) is not int or size < 0:
            raise ValueError(f"compact tree size must be a non-negative integer, not {size!r:.40}")
        if not isinstance(frontier, list):
            raise ValueError("compact tree frontier must be a list of hashes")
        if len(frontier) != size.bit_count():
            raise ValueError(f"a tree of {size} leaves has {size.bit_count()} frontier hashes, "
                             f"not {len(frontier)}")
        tree = cls()
        tree._size = size
        tree._frontier = [from_hex(h) for h in frontier]
        return tree

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CompactTree):
            return NotImplemented
        return self._size == other._size and self._frontier == other._frontier

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"CompactTree(size={self._size}, root={self.root().hex()})"


# -- proof generation -----------------------------------------------------------


#: ``range_root(start, end)`` -> MTH(D[start:end]): how the proof builders
#: reach a tree, so that its leaves may be in memory, in the lake, or gone
#: with only the roots of the subtrees covering them kept (:class:`PrunedTree`).
RangeRoot = Callable[[int, int], bytes]


def inclusion_path(index: int, size: int, range_root: RangeRoot) -> list[bytes]:
    """PATH(index, D[0:size]) of RFC 9162 section 2.1.3.1, leaf's sibling
    first; ``range_root(start, end)`` gives MTH(D[start:end]).  Every range
    it asks for is a subtree of the RFC's tree of ``size`` leaves: a
    complete aligned one, or one ending at ``size``."""
    if type(index) is not int or type(size) is not int or not 0 <= index < size:
        raise ValueError(f"no inclusion proof for leaf {index!r} in a tree of {size!r} leaves")
    path: list[bytes] = []
    start, end = 0, size
    while end - start > 1:  # top down; the RFC lists bottom up
        k = _split(end - start)
        if index < start + k:
            path.append(range_root(start + k, end))
            end = start + k
        else:
            path.append(range_root(start, start + k))
            start += k
    path.reverse()
    return path


def consistency_path(first: int, second: int, range_root: RangeRoot) -> list[bytes]:
    """PROOF(first, D[0:second]) = SUBPROOF(first, D[0:second], true) of RFC
    9162 section 2.1.4.1; empty when the sizes are equal.  ``range_root`` as
    for :func:`inclusion_path`."""
    if type(first) is not int or type(second) is not int or not 0 < first <= second:
        raise ValueError(f"no consistency proof from {first!r} to {second!r} leaves "
                         "(needs 0 < first <= second; any tree extends the empty one)")
    path: list[bytes] = []
    start, end, m, whole = 0, second, first, True
    while True:  # top down; the RFC lists bottom up
        n = end - start
        if m == n:
            if not whole:
                path.append(range_root(start, end))
            break
        k = _split(n)
        if m <= k:
            path.append(range_root(start + k, end))
            end = start + k
        else:
            path.append(range_root(start, start + k))
            start += k
            m -= k
            whole = False
    path.reverse()
    return path


def _source_range_root(leaves: LeafSource, size: int) -> RangeRoot:
    """range_root over a leaf source: each range read and hashed once."""
    if callable(leaves):
        fetch = leaves

        def fetched(start: int, end: int) -> bytes:
            tree = CompactTree()
            got = iter(fetch(start, end))
            while chunk := list(islice(got, _FETCH_CHUNK)):
                tree.extend(chunk)
            if tree.size != end - start:
                raise ValueError(f"fetch({start}, {end}) gave {tree.size} leaf hashes, not {end - start}")
            return tree.root()

        return fetched
    if len(leaves) < size:
        raise ValueError(f"{len(leaves)} leaf hashes given for a tree of {size}")
    held = leaves
    return lambda start, end: tree_root(held[start:end])


def inclusion_proof(index: int, size: int, leaves: LeafSource) -> list[bytes]:
    """The audit path of leaf ``index`` in the tree of the first ``size``
    leaves (RFC 9162 section 2.1.3.1), its sibling first.  Reads and hashes
    every other leaf once; for many proofs build a :class:`MerkleLevels`."""
    return inclusion_path(index, size, _source_range_root(leaves, size))


def consistency_proof(first: int, second: int, leaves: LeafSource) -> list[bytes]:
    """The proof that the tree of ``second`` leaves extends the tree of its
    first ``first`` (RFC 9162 section 2.1.4.1); empty when they are equal.
    ``first`` must be positive: every tree extends the empty one, and the
    verifier refuses a proof from size 0 as meaningless."""
    return consistency_path(first, second, _source_range_root(leaves, second))


class MerkleLevels:
    """Every complete, aligned subtree root of a tree, level by level: level
    0 the leaf hashes, level h the roots of leaves [j * 2**h, (j+1) * 2**h).
    Built once (n - 1 hashes), it answers a proof for any leaf and any tree
    size up to its own with O(log n) lookups, a few hashes for the right edge.
    Each level is one contiguous bytearray (a million leaves take 64 MB, not
    the 150 MB two million bytes objects would).

    Not thread-safe while :meth:`extend` runs.
    """

    __slots__ = ("_levels",)

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        self._levels: list[bytearray] = [bytearray()]
        self.extend(leaf_hashes)

    @property
    def size(self) -> int:
        """Leaves held."""
        return len(self._levels[0]) // HASH_SIZE

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        """Add leaves in order, given their leaf hashes, and every subtree
        they complete."""
        fresh = list(leaf_hashes)
        if not fresh:
            return
        _check_hashes(fresh, "leaf hashes")
        sha256 = hashlib.sha256
        levels = self._levels
        first = self.size  # index of fresh[0] on its level
        levels[0] += b"".join(fresh)
        height = 0
        while True:
            lower = levels[height]
            count = len(lower) // HASH_SIZE
            if height + 1 == len(levels):
                if count < 2:
                    return
                levels.append(bytearray())
            upper = levels[height + 1]
            done = len(upper) // HASH_SIZE
            if count // 2 == done:
                return  # nothing new completes above this level
            start = 2 * done
            # At most one old node (the unpaired last one) pairs with the fresh ones.
            items = fresh if start == first else [bytes(lower[start * HASH_SIZE:first * HASH_SIZE]), *fresh]
            pairs = iter(items)
            fresh = [sha256(_NODE + left + right).digest() for left, right in zip(pairs, pairs, strict=False)]
            upper += b"".join(fresh)
            first = done
            height += 1

    def leaf_hash(self, index: int) -> bytes:
        """The leaf hash at ``index``."""
        if not 0 <= index < self.size:
            raise IndexError(f"leaf {index} of {self.size}")
        return bytes(self._levels[0][index * HASH_SIZE:(index + 1) * HASH_SIZE])

    def range_root(self, start: int, end: int) -> bytes:
        """MTH(D[start:end]) for 0 <= start < end <= size: the hook the
        proof builders take (:data:`RangeRoot`)."""
        _check_range(start, end, self.size)
        return self._range_root(start, end)

    def _range_root(self, start: int, end: int) -> bytes:
        """MTH(D[start:end]): a lookup for a complete aligned subtree, else
        split as RFC 9162 does (only the right edge of a tree needs that)."""
        n = end - start
        if n & (n - 1) == 0 and start % n == 0:
            height = n.bit_length() - 1
            at = (start >> height) * HASH_SIZE
            return bytes(self._levels[height][at:at + HASH_SIZE])
        k = _split(n)
        return hash_children(self._range_root(start, start + k), self._range_root(start + k, end))

    def _size_or_all(self, size: int | None) -> int:
        if size is None:
            return self.size
        if type(size) is not int or not 0 <= size <= self.size:
            raise ValueError(f"tree size {size!r} is not within the {self.size} leaves held")
        return size

    def root(self, size: int | None = None) -> bytes:
        """MTH of the first ``size`` leaves (default: all)."""
        size = self._size_or_all(size)
        return self._range_root(0, size) if size else EMPTY_ROOT

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """The audit path of leaf ``index`` in the tree of the first ``size``
        leaves (default: all), its sibling first."""
        return inclusion_path(index, self._size_or_all(size), self._range_root)

    def consistency_proof(self, first: int, second: int | None = None) -> list[bytes]:
        """The proof that the tree of ``second`` leaves (default: all) extends
        the tree of its first ``first`` (0 < first <= second)."""
        return consistency_path(first, self._size_or_all(second), self._range_root)


# -- trees whose expired leaves are kept as subtree roots --------------------------


class PrunedSubtreeError(ValueError):
    """A root or proof needs a node below a pruned subtree, of which only
    the root is kept (its leaves expired): RFC 9162 gives no other way to it."""

    def __init__(self, wanted: tuple[int, int], pruned: tuple[int, int]) -> None:
        #: The leaves [start, end) whose hash was needed.
        self.wanted = wanted
        #: The pruned subtree's leaves [start, end) that hold them.
        self.pruned = pruned
        super().__init__(f"leaves [{wanted[0]}, {wanted[1]}) lie inside the pruned subtree of leaves "
                         f"[{pruned[0]}, {pruned[1]}), of which only the root is kept")


def aligned_subtrees(start: int, end: int) -> list[tuple[int, int]]:
    """The maximal complete aligned subtrees covering leaves [start, end),
    left to right, as ``(start, size)``: each ``size`` a power of two,
    ``start`` a multiple of it, and no two of them siblings.  The fewest
    such subtrees that cover the range: at most 2·log2(end - start) of them.

    Why their roots are all that proofs need of leaves that are gone.
    Aligned subtrees, the leaf ranges [j·2**h, (j+1)·2**h), are nested or
    disjoint.  The nodes of RFC 9162's tree of n leaves are the aligned
    subtrees inside [0, n) and ranges ending at n, and below an aligned
    subtree the tree is perfect.  Let K be a subtree known only by its root
    and S a node that a root or proof at tree size n needs, with S strictly
    inside K; then S's parent P is inside K too.

    - Inclusion of leaf i: S is the sibling of a node on i's path, so
      i is in P, so in K.  The audit path of a leaf outside every kept
      subtree needs no node strictly inside one.
    - The root of size n: only nodes ending at n are not aligned; one lies
      strictly inside K only when n does (K's start < n < K's end).
    - Consistency from m to n: the proof holds B, the largest node ending
      at m, and siblings of B's ancestors; B and each such P contain leaf
      m - 1, so m - 1 is in K.  Were K's end m, K would be a node ending at
      m larger than B (or than P ⊇ B): impossible.  So m lies strictly
      inside K.

    So with the roots of any aligned subtrees covering the expired leaves,
    every inclusion proof of a leaf outside them, and every root and
    consistency proof between tree sizes that do not fall strictly inside
    one of them, can be made, the same hashes as from all the leaves; a
    size strictly inside one cannot be proven from or to (a node below the
    kept root is needed).  Covering [a, m) and [m, b) apart instead of
    [a, b) makes size m provable, for O(log n) more roots.
    """
    if type(start) is not int or type(end) is not int or not 0 <= start <= end:
        raise ValueError(f"no leaf range [{start!r}, {end!r})")
    out: list[tuple[int, int]] = []
    at = start
    while at < end:
        size = at & -at or 1 << (end - at).bit_length()  # the largest aligned subtree starting here
        while size > end - at:
            size >>= 1
        out.append((at, size))
        at += size
    return out


class PrunedTree:
    """A Merkle tree some of whose complete aligned subtrees are known only
    by their roots (their leaves expired), the rest by its leaf hashes.
    Built in leaf order from both (:meth:`extend`, :meth:`append_subtree`),
    it makes roots and proofs like :class:`MerkleLevels` does, the same
    hashes as the whole tree would give, as far as the pruned subtrees
    allow (see :func:`aligned_subtrees`: a node below a pruned root raises
    :class:`PrunedSubtreeError`).  Without pruned subtrees it is one
    :class:`MerkleLevels`.

    Inside, the leaves are blocks: each pruned subtree is one, and each run
    of leaves is cut into live blocks that start at a multiple of their
    capacity, the largest power of two dividing their start (unbounded at
    leaf 0), so every aligned node inside a block is a lookup in that
    block's levels.  A node spanning blocks is hashed from its halves once
    and remembered (complete nodes never change).

    Not thread-safe while it grows.
    """

    __slots__ = ("_blocks", "_joined", "_size", "_starts")

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        self._starts: list[int] = []
        #: A live block's levels, or a pruned subtree as (size, root).
        self._blocks: list[MerkleLevels | tuple[int, bytes]] = []
        self._joined: dict[tuple[int, int], bytes] = {}
        self._size = 0
        self.extend(leaf_hashes)

    @property
    def size(self) -> int:
        """Leaves covered, held or pruned."""
        return self._size

    @property
    def pruned(self) -> list[tuple[int, int]]:
        """The pruned subtrees, as ``(start, size)``, in leaf order."""
        return [(start, block[0]) for start, block in zip(self._starts, self._blocks, strict=True)
                if isinstance(block, tuple)]

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        """Add leaves in order, given their leaf hashes."""
        fresh = list(leaf_hashes)
        _check_hashes(fresh, "leaf hashes")
        taken = 0
        while taken < len(fresh):
            block = self._blocks[-1] if self._blocks else None
            start = self._starts[-1] if self._starts else 0
            room = (start & -start) - block.size if isinstance(block, MerkleLevels) and start else None
            if not isinstance(block, MerkleLevels) or room == 0:
                block, start = MerkleLevels(), self._size
                self._starts.append(start)
                self._blocks.append(block)
                room = start & -start or None
            chunk = fresh[taken:] if room is None else fresh[taken:taken + room]
            block.extend(chunk)
            taken += len(chunk)
            self._size += len(chunk)

    def append_subtree(self, size: int, root: bytes) -> None:
        """Add ``size`` leaves known only by their subtree's ``root``: a
        power of two, and the leaves so far a multiple of it (a complete
        aligned subtree, see :func:`aligned_subtrees`)."""
        if type(size) is not int or size < 1 or size & (size - 1):
            raise ValueError(f"a pruned subtree has a power-of-two size, not {size!r}")
        if self._size % size:
            raise ValueError(f"a subtree of {size} leaves cannot start at leaf {self._size} (not aligned)")
        _check_hashes([root], "subtree root")
        self._starts.append(self._size)
        self._blocks.append((size, root))
        self._size += size

    def leaf_hash(self, index: int) -> bytes:
        """The leaf hash at ``index`` (PrunedSubtreeError when it was pruned)."""
        _check_range(index, index + 1, self._size)
        return self._node(index, 1)

    def range_root(self, start: int, end: int) -> bytes:
        """MTH(D[start:end]) for 0 <= start < end <= size: the hook the
        proof builders take (:data:`RangeRoot`)."""
        _check_range(start, end, self._size)
        return self._range_root(start, end)

    def _range_root(self, start: int, end: int) -> bytes:
        n = end - start
        if n & (n - 1) == 0 and start % n == 0:
            return self._node(start, n)
        k = _split(n)
        return hash_children(self._range_root(start, start + k), self._range_root(start + k, end))

    def _node(self, start: int, size: int) -> bytes:
        """The root of the complete aligned subtree of leaves [start, start + size)."""
        i = bisect_right(self._starts, start) - 1
        first, block = self._starts[i], self._blocks[i]
        if isinstance(block, MerkleLevels):
            if start + size <= first + block.size:
                return block._range_root(start - first, start - first + size)  # aligned in the block too
        elif start + size <= first + block[0]:
            if (start, size) == (first, block[0]):
                return block[1]
            raise PrunedSubtreeError((start, start + size), (first, first + block[0]))
        # Spans blocks: from its halves, once.
        joined = self._joined.get((start, size))
        if joined is None:
            half = size >> 1
            joined = hash_children(self._node(start, half), self._node(start + half, half))
            self._joined[(start, size)] = joined
        return joined

    def _size_or_all(self, size: int | None) -> int:
        if size is None:
            return self._size
        if type(size) is not int or not 0 <= size <= self._size:
            raise ValueError(f"tree size {size!r} is not within the {self._size} leaves covered")
        return size

    def _hook(self) -> RangeRoot:
        # Nothing pruned: one block from leaf 0, whose lookups need no block search.
        only = self._blocks[0] if len(self._blocks) == 1 else None
        return only._range_root if isinstance(only, MerkleLevels) else self._range_root

    def root(self, size: int | None = None) -> bytes:
        """MTH of the first ``size`` leaves (default: all)."""
        size = self._size_or_all(size)
        return self._hook()(0, size) if size else EMPTY_ROOT

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """The audit path of leaf ``index`` in the tree of the first ``size``
        leaves (default: all), its sibling first."""
        return inclusion_path(index, self._size_or_all(size), self._hook())

    def consistency_proof(self, first: int, second: int | None = None) -> list[bytes]:
        """The proof that the tree of ``second`` leaves (default: all) extends
        the tree of its first ``first`` (0 < first <= second)."""
        return consistency_path(first, self._size_or_all(second), self._hook())


# -- verification ---------------------------------------------------------------


def inclusion_proof_size(index: int, size: int) -> int:
    """How many hashes the audit path of leaf ``index`` in a tree of ``size``
    has: the levels below where its path and the last leaf's part, plus one
    per left sibling above that."""
    inner = (index ^ (size - 1)).bit_length()
    return inner + (index >> inner).bit_count()


def consistency_proof_size(first: int, second: int) -> int:
    """How many hashes a consistency proof from ``first`` to ``second``
    leaves has (0 < first < second)."""
    shift = ((first & -first).bit_length() - 1)  # trailing zero bits of first
    size = inclusion_proof_size(first - 1, second) - shift
    return size if first == 1 << shift else size + 1  # + the seed subtree unless first is 2**shift


def _check_integer(value: object, name: str) -> None:
    if type(value) is not int:
        raise ProofError(f"{name} must be an integer, not {value!r:.40}")


def _check_proof_hashes(proof: Sequence[bytes]) -> None:
    # Checked with two C-level passes: a proof is checked per request, and
    # this is most of a verification's cost beside the hashing.
    if not isinstance(proof, (list, tuple)) and (isinstance(proof, (bytes, str)) or not isinstance(proof, Sequence)):
        raise ProofError("a proof is a list of hashes")
    if proof and (set(map(type, proof)) != {bytes} or set(map(len, proof)) != {HASH_SIZE}):
        bad = next(i for i, item in enumerate(proof) if not isinstance(item, bytes) or len(item) != HASH_SIZE)
        raise ProofError(f"proof hash {bad} is not {HASH_SIZE} bytes")


def _check_hash(value: object, name: str) -> None:
    if not isinstance(value, bytes) or len(value) != HASH_SIZE:
        raise ProofError(f"{name} is not a {HASH_SIZE}-byte hash")


def verify_inclusion(*, leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> None:
    """Check that the leaf with ``leaf_hash`` is leaf ``index`` of the tree of
    ``size`` leaves whose root is ``root``, by RFC 9162 section 2.1.3.2.
    Returns quietly or raises :class:`ProofError` saying why not."""
    _check_integer(index, "the leaf index")
    _check_integer(size, "the tree size")
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is not within a tree of {size} leaves")
    _check_hash(leaf_hash, "the leaf hash")
    _check_hash(root, "the root")
    _check_proof_hashes(proof)
    want = inclusion_proof_size(index, size)
    if len(proof) != want:
        raise ProofError(f"an inclusion proof for leaf {index} of {size} has {want} hashes, not {len(proof)}")
    sha256 = hashlib.sha256
    fn, sn = index, size - 1
    r = leaf_hash
    for p in proof:
        if sn == 0:
            raise ProofError("the proof is longer than the path to the root")
        if fn & 1 or fn == sn:
            r = sha256(_NODE + p + r).digest()
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = sha256(_NODE + r + p).digest()
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("the proof is shorter than the path to the root")
    if r != root:
        raise ProofError("the proof leads to a different root")


def verify_consistency(*, first_size: int, second_size: int, first_root: bytes, second_root: bytes,
                       proof: Sequence[bytes]) -> None:
    """Check that the tree of ``second_size`` leaves with ``second_root``
    extends the tree of ``first_size`` leaves with ``first_root``, by RFC 9162
    section 2.1.4.2.  Equal sizes need an empty proof and equal roots; a
    first size of 0 is refused (a proof from the empty tree is meaningless:
    the caller that saw an empty tree has nothing to check).  Returns
    quietly or raises :class:`ProofError` saying why not."""
    _check_integer(first_size, "the first tree size")
    _check_integer(second_size, "the second tree size")
    if first_size > second_size:
        raise ProofError(f"the first tree ({first_size} leaves) is larger than the second ({second_size})")
    if first_size <= 0:
        raise ProofError("a consistency proof from the empty tree is meaningless")
    _check_proof_hashes(proof)
    if first_size == second_size:
        if proof:
            raise ProofError("trees of the same size need an empty consistency proof")
        if first_root != second_root:
            raise ProofError("trees of the same size have different roots")
        return
    _check_hash(first_root, "the first root")
    _check_hash(second_root, "the second root")
    want = consistency_proof_size(first_size, second_size)
    if len(proof) != want:
        raise ProofError(f"a consistency proof from {first_size} to {second_size} leaves has {want} hashes, "
                         f"not {len(proof)}")
    sha256 = hashlib.sha256
    path = list(proof)
    if first_size & (first_size - 1) == 0:
        path.insert(0, first_root)
    fn, sn = first_size - 1, second_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("the proof is longer than the path to the root")
        if fn & 1 or fn == sn:
            fr = sha256(_NODE + c + fr).digest()
            sr = sha256(_NODE + c + sr).digest()
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = sha256(_NODE + sr + c).digest()
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("the proof is shorter than the path to the root")
    if fr != first_root:
        raise ProofError("the proof does not lead to the first root")
    if sr != second_root:
        raise ProofError("the proof does not lead to the second root")
