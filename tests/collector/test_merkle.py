"""The Merkle core (integrity.merkle) against RFC 9162 section 2.1.

- Every case of the transparency-dev test vectors (tests/vectors/rfc6962):
  each happy path accepted, each mutated case rejected; the generators
  reproduce the happy paths' proofs from the RFC 6962 test leaves.
- The compact tree (a writer's running root) equals the RFC's recursive
  MTH at every size, appended one by one or in batches, and after a
  round trip through JSON at every size.
- Generated inclusion and consistency proofs verify; a one-bit change to a
  proof hash, a root or the leaf hash is rejected.  A changed index or size
  is accepted exactly when an independent model (the RFC's recursive
  definitions over symbolic leaves) says the same hashes rebuild the same
  roots: always rejected for the index; for the size only when the new
  size reads the proof the same way, which is why the size must be signed
  with the root.
- A pruned tree (expired leaves kept as the roots of the maximal aligned
  subtrees covering them) gives the whole tree's roots and proofs for every
  leaf outside the pruned subtrees and every size not strictly inside one,
  and refuses exactly the others; each kept root is needed by some proof.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from auditlake.collector.integrity.merkle import (
    EMPTY_ROOT,
    CompactTree,
    MerkleLevels,
    ProofError,
    PrunedSubtreeError,
    PrunedTree,
    aligned_subtrees,
    consistency_proof,
    from_hex,
    hash_children,
    hash_leaf,
    hash_leaves,
    inclusion_proof,
    to_hex,
    tree_root,
    verify_consistency,
    verify_inclusion,
)

#: transparency-dev/merkle's vectors, copied into the repository unchanged
#: (tests/vectors/rfc6962: README and Apache 2.0 LICENSE beside them).
VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "rfc6962" / "testdata"
INCLUSION_FILES = sorted((VECTORS / "inclusion").rglob("*.json"))
CONSISTENCY_FILES = sorted((VECTORS / "consistency").rglob("*.json"))

#: The leaves the vectors' numbered folders were made from (RFC 6962 test data).
RFC_LEAVES = [bytes.fromhex(h) for h in (
    "", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f")]


def _id(path: Path) -> str:
    return str(path.relative_to(VECTORS))


def _case(path: Path) -> dict[str, Any]:
    case: dict[str, Any] = json.loads(path.read_text())
    return case


def _b64(value: str) -> bytes:
    return base64.b64decode(value, validate=True)


def _proof(case: dict[str, Any]) -> list[bytes]:
    return [_b64(p) for p in case["proof"] or []]


# -- reference: RFC 9162 section 2.1 written as recursion, independent of the module


def _split(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(data: list[bytes]) -> bytes:
    """MTH(D[n]) exactly as RFC 9162 section 2.1.1 defines it."""
    if not data:
        return hashlib.sha256(b"").digest()
    if len(data) == 1:
        return hashlib.sha256(b"\x00" + data[0]).digest()
    k = _split(len(data))
    return hashlib.sha256(b"\x01" + ref_mth(data[:k]) + ref_mth(data[k:])).digest()


Expr = Any  # a leaf's index, or a (left, right) pair: a tree hash with the hashing left out


def sym_mth(lo: int, hi: int) -> Expr:
    """MTH(D[lo:hi]) over symbolic leaves."""
    if hi - lo == 1:
        return lo
    k = _split(hi - lo)
    return (sym_mth(lo, lo + k), sym_mth(lo + k, hi))


def path_ranges(m: int, lo: int, hi: int) -> list[tuple[int, int]]:
    """PATH(m, D[lo:hi]) as the leaf ranges its hashes cover (RFC 9162 2.1.3.1)."""
    if hi - lo == 1:
        return []
    k = _split(hi - lo)
    if m < k:
        return [*path_ranges(m, lo, lo + k), (lo + k, hi)]
    return [*path_ranges(m - k, lo + k, hi), (lo, lo + k)]


def subproof_ranges(m: int, lo: int, hi: int, whole: bool) -> list[tuple[int, int]]:
    """SUBPROOF(m, D[lo:hi], b) as leaf ranges (RFC 9162 2.1.4.1)."""
    if m == hi - lo:
        return [] if whole else [(lo, hi)]
    k = _split(hi - lo)
    if m <= k:
        return [*subproof_ranges(m, lo, lo + k, whole), (lo + k, hi)]
    return [*subproof_ranges(m - k, lo + k, hi, False), (lo, lo + k)]


def rebuild(lo: int, hi: int, given: dict[tuple[int, int], Expr]) -> Expr | None:
    """The tree over [lo, hi) from the given subtrees, or None if they do not tile it."""
    if (lo, hi) in given:
        return given[(lo, hi)]
    if hi - lo <= 1:
        return None
    k = _split(hi - lo)
    left, right = rebuild(lo, lo + k, given), rebuild(lo + k, hi, given)
    return None if left is None or right is None else (left, right)


def model_accepts_inclusion(index: int, size: int, true_index: int, true_size: int) -> bool:
    """Would a correct verifier accept the proof of leaf ``true_index`` in the
    ``true_size`` tree (with that leaf and root) claimed as ``index``, ``size``?"""
    if not 0 <= index < size:
        return False
    ranges = path_ranges(index, 0, size)
    truth = path_ranges(true_index, 0, true_size)
    if len(ranges) != len(truth):
        return False
    given = {r: sym_mth(*t) for r, t in zip(ranges, truth, strict=True)}
    given[(index, index + 1)] = true_index
    return bool(rebuild(0, size, given) == sym_mth(0, true_size))


def model_accepts_consistency(first: int, second: int, true_first: int, true_second: int) -> bool:
    """Would a correct verifier accept the proof from ``true_first`` to
    ``true_second`` (with their roots) claimed as ``first`` to ``second``?"""
    if not 0 < first <= second:
        return False
    truth = subproof_ranges(true_first, 0, true_second, True)
    root1, root2 = sym_mth(0, true_first), sym_mth(0, true_second)
    if first == second:
        return not truth and root1 == root2
    ranges = subproof_ranges(first, 0, second, True)
    elems = [sym_mth(*t) for t in truth]
    if first & (first - 1) == 0:
        ranges, elems = [(0, first), *ranges], [root1, *elems]
    if len(ranges) != len(elems):
        return False
    given = dict(zip(ranges, elems, strict=True))
    return bool(rebuild(0, first, given) == root1 and rebuild(0, second, given) == root2)


def leaves_for(n: int, salt: bytes = b"") -> list[bytes]:
    return [salt + i.to_bytes(4, "big") for i in range(n)]


def flip(value: bytes, bit: int) -> bytes:
    bit %= len(value) * 8
    out = bytearray(value)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def inclusion_ok(**kwargs: Any) -> bool:
    try:
        verify_inclusion(**kwargs)
    except ProofError:
        return False
    return True


def consistency_ok(**kwargs: Any) -> bool:
    try:
        verify_consistency(**kwargs)
    except ProofError:
        return False
    return True


# -- the RFC 6962 / 9162 test vectors ---------------------------------------------


def test_the_vectors_are_all_there() -> None:
    assert len(INCLUSION_FILES) == 98 and len(CONSISTENCY_FILES) == 98
    assert sum(_case(p)["wantErr"] is False for p in INCLUSION_FILES + CONSISTENCY_FILES) == 12


@pytest.mark.parametrize("path", INCLUSION_FILES, ids=_id)
def test_inclusion_vector(path: Path) -> None:
    case = _case(path)
    kwargs = dict(leaf_hash=_b64(case["leafHash"]), index=case["leafIdx"], size=case["treeSize"],
                  proof=_proof(case), root=_b64(case["root"]))
    if case["wantErr"]:
        with pytest.raises(ProofError):
            verify_inclusion(**kwargs)
    else:
        verify_inclusion(**kwargs)


@pytest.mark.parametrize("path", CONSISTENCY_FILES, ids=_id)
def test_consistency_vector(path: Path) -> None:
    case = _case(path)
    kwargs = dict(first_size=case["size1"], second_size=case["size2"], first_root=_b64(case["root1"]),
                  second_root=_b64(case["root2"]), proof=_proof(case))
    if case["wantErr"]:
        with pytest.raises(ProofError):
            verify_consistency(**kwargs)
    else:
        verify_consistency(**kwargs)


@pytest.mark.parametrize("path", [p for p in INCLUSION_FILES if p.parent.name.isdigit() and p.stem == "happy-path"],
                         ids=_id)
def test_inclusion_proofs_are_made_as_the_vectors_have_them(path: Path) -> None:
    case = _case(path)
    index, size = case["leafIdx"], case["treeSize"]
    leaves = hash_leaves(RFC_LEAVES)
    assert leaves[index] == _b64(case["leafHash"])
    assert tree_root(leaves[:size]) == ref_mth(RFC_LEAVES[:size]) == _b64(case["root"])
    assert inclusion_proof(index, size, leaves) == _proof(case)
    assert MerkleLevels(leaves).inclusion_proof(index, size) == _proof(case)


@pytest.mark.parametrize("path", [p for p in CONSISTENCY_FILES if p.parent.name.isdigit() and p.stem == "happy-path"],
                         ids=_id)
def test_consistency_proofs_are_made_as_the_vectors_have_them(path: Path) -> None:
    case = _case(path)
    first, second = case["size1"], case["size2"]
    leaves = hash_leaves(RFC_LEAVES)
    assert tree_root(leaves[:first]) == _b64(case["root1"])
    assert tree_root(leaves[:second]) == _b64(case["root2"])
    assert consistency_proof(first, second, leaves) == _proof(case)
    assert MerkleLevels(leaves).consistency_proof(first, second) == _proof(case)


# -- hashing and hex at the edges -------------------------------------------------------


def test_hashes_are_domain_separated_as_rfc_9162_says() -> None:
    assert EMPTY_ROOT == tree_root([]) == hashlib.sha256(b"").digest()
    assert hash_leaf(b"x") == hashlib.sha256(b"\x00x").digest()
    assert hash_children(b"a" * 32, b"b" * 32) == hashlib.sha256(b"\x01" + b"a" * 32 + b"b" * 32).digest()
    # A one-leaf tree's root is its leaf hash; two leaves are never confused with one node.
    assert tree_root([hash_leaf(b"x")]) == hash_leaf(b"x")
    assert tree_root(hash_leaves([b"a", b"b"])) != hash_leaf(hash_leaf(b"a") + hash_leaf(b"b"))


def test_hex_is_exactly_64_lowercase_digits() -> None:
    digest = hash_leaf(b"x")
    assert from_hex(to_hex(digest)) == digest and to_hex(digest) == digest.hex()
    for bad in (digest.hex().upper(), digest.hex()[:-1], digest.hex() + "0", " " + digest.hex()[1:],
                digest.hex()[:-1] + "g", None, 5, digest):
        with pytest.raises(ValueError):
            from_hex(bad)


# -- the compact tree ----------------------------------------------------------------


def test_compact_tree_root_is_the_rfc_mth_at_every_size_and_survives_json() -> None:
    data = leaves_for(301)
    hashes = hash_leaves(data)
    tree = CompactTree()
    snapshots = []
    for size in range(301):
        assert tree.size == size and len(tree.frontier) == size.bit_count()
        assert tree.root() == ref_mth(data[:size]), size
        snapshots.append(json.dumps(tree.to_json()))
        restored = CompactTree.from_json(json.loads(snapshots[-1]))
        assert restored == tree and restored.root() == tree.root()
        if size < 300:
            tree.append(hashes[size])
    final = tree.root()
    # A tree restored at any size and carried on reaches the same root.
    for size in range(0, 301, 7):
        restored = CompactTree.from_json(json.loads(snapshots[size]))
        restored.extend(hashes[size:300])
        assert restored.root() == final


@settings(max_examples=60, deadline=None)
@given(start=st.integers(0, 70), cuts=st.lists(st.integers(0, 300), max_size=8))
def test_compact_tree_extend_in_any_batches_equals_appending_one_by_one(start: int, cuts: list[int]) -> None:
    hashes = hash_leaves(leaves_for(300))
    one_by_one = CompactTree()
    for h in hashes:
        one_by_one.append(h)
    batched = CompactTree()
    bounds = sorted({0, 300, *cuts})
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        batched.extend(hashes[lo:hi])
        assert batched.root() == tree_root(hashes[:hi])
    assert batched == one_by_one
    # Starting from a restored state too.
    restored = CompactTree.from_json(json.loads(json.dumps(one_by_one.to_json())))
    restored.extend(hashes[:start])
    assert restored.root() == tree_root(hashes + hashes[:start])


def test_compact_tree_copy_is_independent() -> None:
    tree = CompactTree()
    tree.extend(hash_leaves(leaves_for(5)))
    before = tree.root()
    copy = tree.copy()
    copy.append(hash_leaf(b"more"))
    assert tree.root() == before and copy.size == 6 and copy != tree


@pytest.mark.parametrize("value", [
    None, [], {"size": 1}, {"frontier": []}, {"size": 1, "frontier": [], "extra": 1},
    {"size": -1, "frontier": []}, {"size": True, "frontier": ["00" * 32]}, {"size": "1", "frontier": ["00" * 32]},
    {"size": 3, "frontier": ["00" * 32]}, {"size": 1, "frontier": []}, {"size": 0, "frontier": ["00" * 32]},
    {"size": 1, "frontier": ["00" * 31]}, {"size": 1, "frontier": ["AA" * 32]}, {"size": 1, "frontier": "00" * 32},
])
def test_compact_tree_from_json_refuses_anything_else(value: object) -> None:
    with pytest.raises(ValueError):
        CompactTree.from_json(value)


def test_leaf_hashes_must_be_32_bytes() -> None:
    with pytest.raises(ValueError):
        CompactTree().append(b"short")
    for bad in ([b"a" * 32, b"b" * 31], [b"a" * 33]):
        with pytest.raises(ValueError):
            CompactTree().extend(bad)
        with pytest.raises(ValueError):
            MerkleLevels(bad)
    with pytest.raises(TypeError):
        CompactTree().extend(["a" * 32])  # type: ignore[list-item]  # the mistake under test
    # A refused batch leaves the tree as it was.
    tree = CompactTree()
    tree.extend(hash_leaves([b"a"]))
    with pytest.raises(ValueError):
        tree.extend([hash_leaf(b"b"), b"x"])
    assert tree.size == 1 and tree.root() == hash_leaf(b"a")


# -- proof generation ----------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 300), cuts=st.lists(st.integers(0, 300), max_size=6))
def test_merkle_levels_grown_in_batches_answer_as_one_built_at_once(n: int, cuts: list[int]) -> None:
    hashes = hash_leaves(leaves_for(n))
    whole = MerkleLevels(hashes)
    grown = MerkleLevels()
    bounds = sorted({0, n, *(c for c in cuts if c < n)})
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        grown.extend(hashes[lo:hi])
        assert grown.size == hi and grown.root() == tree_root(hashes[:hi])
    for size in range(1, n + 1, max(1, n // 9)):
        assert grown.root(size) == whole.root(size) == tree_root(hashes[:size])
        for index in range(0, size, max(1, size // 5)):
            assert grown.inclusion_proof(index, size) == whole.inclusion_proof(index, size)
        for first in range(1, size + 1, max(1, size // 5)):
            assert grown.consistency_proof(first, size) == whole.consistency_proof(first, size)


def test_a_one_off_proof_reads_each_leaf_at_most_once() -> None:
    n = 1000
    hashes = hash_leaves(leaves_for(n))
    reads = [0] * n

    def fetch(start: int, end: int) -> Iterable[bytes]:
        for i in range(start, end):
            reads[i] += 1
            yield hashes[i]

    for index in (0, 1, 511, 512, 999):
        reads[:] = [0] * n
        proof = inclusion_proof(index, n, fetch)
        assert proof == inclusion_proof(index, n, hashes)
        assert max(reads) == 1 and reads[index] == 0 and sum(reads) == n - 1
    for first in (1, 3, 512, 700, 999, 1000):
        reads[:] = [0] * n
        assert consistency_proof(first, n, fetch) == MerkleLevels(hashes).consistency_proof(first, n)
        assert max(reads) <= 1


def test_a_fetch_that_returns_the_wrong_count_is_an_error() -> None:
    hashes = hash_leaves(leaves_for(10))
    with pytest.raises(ValueError, match="gave"):
        inclusion_proof(3, 10, lambda start, end: hashes[start:end - 1])
    with pytest.raises(ValueError):
        inclusion_proof(3, 10, hashes[:9])


@pytest.mark.parametrize(("index", "size"), [(0, 0), (5, 5), (-1, 5), (True, 5)])
def test_no_inclusion_proof_outside_the_tree(index: int, size: int) -> None:
    hashes = hash_leaves(leaves_for(5))
    with pytest.raises(ValueError):
        inclusion_proof(index, size, hashes)
    with pytest.raises(ValueError):
        MerkleLevels(hashes).inclusion_proof(index, size)


@pytest.mark.parametrize(("first", "second"), [(0, 0), (0, 5), (3, 2), (2, 6)])
def test_no_consistency_proof_from_the_empty_tree_backwards_or_past_the_leaves(first: int, second: int) -> None:
    hashes = hash_leaves(leaves_for(5))
    with pytest.raises(ValueError):
        consistency_proof(first, second, hashes)
    with pytest.raises(ValueError):
        MerkleLevels(hashes).consistency_proof(first, second)


# -- proofs verify, and nothing else does ---------------------------------------------


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 5000), data=st.data())
def test_proofs_for_any_sizes_verify(n: int, data: st.DataObject) -> None:
    index = data.draw(st.integers(0, n - 1), label="index")
    first = data.draw(st.integers(1, n), label="first")
    hashes = hash_leaves(leaves_for(n, data.draw(st.binary(max_size=4), label="salt")))
    levels = MerkleLevels(hashes)
    root, first_root = levels.root(), levels.root(first)
    assert root == tree_root(hashes) and first_root == tree_root(hashes[:first])
    proof = levels.inclusion_proof(index)
    assert proof == inclusion_proof(index, n, hashes)
    verify_inclusion(leaf_hash=hashes[index], index=index, size=n, proof=proof, root=root)
    cproof = levels.consistency_proof(first)
    assert cproof == consistency_proof(first, n, hashes)
    verify_consistency(first_size=first, second_size=n, first_root=first_root, second_root=root, proof=cproof)


@settings(max_examples=300, deadline=None)
@given(n=st.integers(1, 300), data=st.data())
def test_inclusion_any_changed_bit_is_rejected(n: int, data: st.DataObject) -> None:
    index = data.draw(st.integers(0, n - 1), label="index")
    hashes = hash_leaves(leaves_for(n, data.draw(st.binary(max_size=4), label="salt")))
    root = tree_root(hashes)
    proof = inclusion_proof(index, n, hashes)
    claim = dict(leaf_hash=hashes[index], index=index, size=n, proof=proof, root=root)
    assert inclusion_ok(**claim)
    bits = st.integers(0, 255)
    for i in range(len(proof)):
        changed = [*proof]
        changed[i] = flip(proof[i], data.draw(bits, label=f"bit of proof[{i}]"))
        assert not inclusion_ok(**{**claim, "proof": changed})
    assert not inclusion_ok(**{**claim, "root": flip(root, data.draw(bits, label="root bit"))})
    assert not inclusion_ok(**{**claim, "leaf_hash": flip(hashes[index], data.draw(bits, label="leaf bit"))})
    assert not inclusion_ok(**{**claim, "proof": proof[:-1]}) or not proof
    assert not inclusion_ok(**{**claim, "proof": [*proof, root]})
    for bit in range(n.bit_length() + 2):
        changed_index = index ^ (1 << bit)
        assert not inclusion_ok(**{**claim, "index": changed_index})
        assert not model_accepts_inclusion(changed_index, n, index, n)
        changed_size = n ^ (1 << bit)
        assert inclusion_ok(**{**claim, "size": changed_size}) == model_accepts_inclusion(index, changed_size, index, n)


@settings(max_examples=300, deadline=None)
@given(n=st.integers(1, 300), data=st.data())
def test_consistency_any_changed_bit_is_rejected(n: int, data: st.DataObject) -> None:
    first = data.draw(st.integers(1, n), label="first")
    hashes = hash_leaves(leaves_for(n, data.draw(st.binary(max_size=4), label="salt")))
    root1, root2 = tree_root(hashes[:first]), tree_root(hashes)
    proof = consistency_proof(first, n, hashes)
    claim = dict(first_size=first, second_size=n, first_root=root1, second_root=root2, proof=proof)
    assert consistency_ok(**claim)
    bits = st.integers(0, 255)
    for i in range(len(proof)):
        changed = [*proof]
        changed[i] = flip(proof[i], data.draw(bits, label=f"bit of proof[{i}]"))
        assert not consistency_ok(**{**claim, "proof": changed})
    assert not consistency_ok(**{**claim, "first_root": flip(root1, data.draw(bits, label="root1 bit"))})
    assert not consistency_ok(**{**claim, "second_root": flip(root2, data.draw(bits, label="root2 bit"))})
    assert not consistency_ok(**{**claim, "proof": proof[:-1]}) or not proof
    assert not consistency_ok(**{**claim, "proof": [*proof, root2]})
    if first < n:
        assert not consistency_ok(**{**claim, "first_root": root2, "second_root": root1})
    for bit in range(n.bit_length() + 2):
        for first_size, second_size in ((first ^ (1 << bit), n), (first, n ^ (1 << bit))):
            accepted = consistency_ok(**{**claim, "first_size": first_size, "second_size": second_size})
            assert accepted == model_accepts_consistency(first_size, second_size, first, n), (first_size, second_size)


def test_the_size_is_bound_by_the_signed_checkpoint_not_by_the_proof() -> None:
    """RFC 9162 proofs bind the leaf, its index and the root; a size that
    reads the same hashes the same way passes too, so checkpoints sign the
    size with the root.  Leaf 3 of 6 reads: leaf 2 on its left, leaves 0-1
    on the left, then one subtree on the right; so does leaf 3 of 5, 7 or 8."""
    hashes = hash_leaves(leaves_for(6))
    proof, root = inclusion_proof(3, 6, hashes), tree_root(hashes)
    for size in (5, 6, 7, 8):
        verify_inclusion(leaf_hash=hashes[3], index=3, size=size, proof=proof, root=root)
        assert model_accepts_inclusion(3, size, 3, 6)
    for size in (4, 9):
        with pytest.raises(ProofError):
            verify_inclusion(leaf_hash=hashes[3], index=3, size=size, proof=proof, root=root)
        assert not model_accepts_inclusion(3, size, 3, 6)


@pytest.mark.parametrize("change", [
    {"index": 1.0}, {"size": "4"}, {"size": None}, {"proof": b"\x00" * 64}, {"proof": "ab"},
    {"proof": None}, {"leaf_hash": "00" * 32}, {"root": None},
])
def test_malformed_inclusion_claims_are_proof_errors(change: dict[str, Any]) -> None:
    hashes = hash_leaves(leaves_for(4))
    claim = dict(leaf_hash=hashes[1], index=1, size=4, proof=inclusion_proof(1, 4, hashes), root=tree_root(hashes))
    assert inclusion_ok(**claim)
    with pytest.raises(ProofError):
        verify_inclusion(**{**claim, **change})


@pytest.mark.parametrize("change", [
    {"first_size": 2.0}, {"second_size": "4"}, {"proof": None}, {"proof": [b"short"]}, {"first_root": "00" * 32},
])
def test_malformed_consistency_claims_are_proof_errors(change: dict[str, Any]) -> None:
    hashes = hash_leaves(leaves_for(4))
    claim = dict(first_size=3, second_size=4, first_root=tree_root(hashes[:3]), second_root=tree_root(hashes),
                 proof=consistency_proof(3, 4, hashes))
    assert consistency_ok(**claim)
    with pytest.raises(ProofError):
        verify_consistency(**{**claim, **change})


# -- pruned trees: expired leaves kept as the roots of subtrees ------------------------


@settings(max_examples=300, deadline=None)
@given(start=st.integers(0, 1 << 20), length=st.integers(0, 1 << 20))
def test_aligned_subtrees_are_the_fewest_that_cover_a_range(start: int, length: int) -> None:
    end = start + length
    blocks = aligned_subtrees(start, end)
    at = start
    for first, size in blocks:  # they tile the range, in order, each complete and aligned
        assert first == at and size & (size - 1) == 0 and first % size == 0
        at += size
    assert at == end
    for first, size in blocks:  # maximal: no parent fits in the range (so no coarser tiling exists)
        parent = first - first % (2 * size)
        assert not (start <= parent and parent + 2 * size <= end)
    assert len(blocks) <= 2 * max(1, length.bit_length())
    assert aligned_subtrees(0, 95) == [(0, 64), (64, 16), (80, 8), (88, 4), (92, 2), (94, 1)]


def _pruned(hashes: list[bytes], ranges: list[tuple[int, int]], chunks: list[int],
            roots: dict[tuple[int, int], bytes] | None = None) -> PrunedTree:
    """A pruned tree over ``hashes`` whose leaves in ``ranges`` are kept as
    the roots of aligned_subtrees (or ``roots``), the others added in chunks."""
    full = MerkleLevels(hashes)
    tree = PrunedTree()
    at, sizes = 0, iter(chunks)
    for a, b in [*ranges, (len(hashes), len(hashes))]:
        while at < a:
            step = min(a - at, max(1, next(sizes, a - at)))
            tree.extend(hashes[at:at + step])
            at += step
        for first, size in aligned_subtrees(a, b):
            tree.append_subtree(size, (roots or {}).get((first, size)) or full.range_root(first, first + size))
        at = max(at, b)
    return tree


@st.composite
def _expiries(draw: st.DrawFn) -> tuple[int, list[tuple[int, int]], list[int]]:
    """A tree size, disjoint leaf ranges in it, and chunk sizes to add the rest in."""
    n = draw(st.integers(1, 160))
    bounds = sorted(set(draw(st.lists(st.integers(0, n), max_size=6))))
    ranges = [(a, b) for a, b in zip(bounds[::2], bounds[1::2], strict=False) if a < b]
    return n, ranges, draw(st.lists(st.integers(1, 40), max_size=8))


def _refused(call: Any) -> bool:
    try:
        call()
    except PrunedSubtreeError:
        return True
    return False


@settings(max_examples=150, deadline=None)
@given(_expiries())
def test_a_pruned_tree_proves_what_remains_and_refuses_only_sizes_inside_a_kept_subtree(
        case: tuple[int, list[tuple[int, int]], list[int]]) -> None:
    n, ranges, chunks = case
    hashes = hash_leaves(leaves_for(n))
    full, tree = MerkleLevels(hashes), _pruned(hashes, ranges, chunks)
    kept = [(first, first + size) for a, b in ranges for first, size in aligned_subtrees(a, b)]
    assert tree.size == n and tree.pruned == [(a, b - a) for a, b in kept]

    def inside(size: int) -> bool:
        return any(a < size < b for a, b in kept)

    live = [i for i in range(n) if not any(a <= i < b for a, b in kept)]
    sizes = sorted({1, n, *range(1, n + 1, max(1, n // 12)), *(b for _, b in kept), *(a + 1 for a, _ in kept)})
    for size in sizes:
        if inside(size):
            assert _refused(lambda: tree.root(size))  # noqa: B023 - called at once
            assert size == 1 or _refused(lambda: tree.consistency_proof(1, size))  # noqa: B023 (1 to 1: empty)
            continue
        root = tree.root(size)
        assert root == full.root(size)
        for index in (i for i in live if i < size):
            proof = tree.inclusion_proof(index, size)
            assert proof == full.inclusion_proof(index, size)
            verify_inclusion(leaf_hash=hashes[index], index=index, size=size, proof=proof, root=root)
        for first in range(1, size + 1):
            if inside(first):
                assert _refused(lambda: tree.consistency_proof(first, size))  # noqa: B023
                continue
            proof = tree.consistency_proof(first, size)
            assert proof == full.consistency_proof(first, size)
            verify_consistency(first_size=first, second_size=size, first_root=full.root(first), second_root=root,
                               proof=proof)
    for index in live:
        assert tree.leaf_hash(index) == hashes[index]
    # a compact tree takes the same kept roots in a stream (what a verifier folds)
    compact, at = CompactTree(), 0
    for a, b in kept:
        compact.extend(hashes[at:a])
        compact.append_subtree(b - a, full.range_root(a, b))
        at = b
    compact.extend(hashes[at:])
    assert compact.size == n and compact.root() == full.root()


def test_every_kept_root_is_needed_by_some_proof() -> None:
    """Of a range expired in the middle of a tree, the maximal aligned
    subtrees are exactly what proofs of the other leaves need: change any
    one kept root and some inclusion proof changes."""
    n, expired = 300, (37, 201)
    hashes = hash_leaves(leaves_for(n))
    full = MerkleLevels(hashes)
    live = [i for i in range(n) if not expired[0] <= i < expired[1]]
    for first, size in aligned_subtrees(*expired):
        wrong = {(first, size): hash_leaf(b"not the root")}
        tree = _pruned(hashes, [expired], [], wrong)
        assert any(tree.inclusion_proof(i) != full.inclusion_proof(i) for i in live), (first, size)


def test_cutting_an_expired_range_at_a_size_keeps_that_size_provable() -> None:
    """Kept as [a, m) and [m, b) apart, size m stays provable, for a few roots more."""
    n, (a, b), m = 200, (10, 150), 77
    hashes = hash_leaves(leaves_for(n))
    full = MerkleLevels(hashes)
    whole = _pruned(hashes, [(a, b)], [])
    cut = _pruned(hashes, [(a, m), (m, b)], [])
    assert _refused(lambda: whole.consistency_proof(m))
    assert cut.consistency_proof(m) == full.consistency_proof(m)
    assert len(cut.pruned) - len(whole.pruned) <= 2 * (n - 1).bit_length()


def test_pruned_subtrees_must_be_complete_and_aligned() -> None:
    tree = PrunedTree(hash_leaves(leaves_for(6)))
    root = hash_leaf(b"r")
    for size in (0, 3, 6, True):
        with pytest.raises(ValueError, match="power-of-two"):
            tree.append_subtree(size, root)
    with pytest.raises(ValueError, match="not aligned"):
        tree.append_subtree(4, root)
    with pytest.raises(ValueError):
        tree.append_subtree(2, b"short")
    tree.append_subtree(2, root)
    assert (tree.size, tree.pruned) == (8, [(6, 2)])
    compact = CompactTree()
    compact.extend(hash_leaves(leaves_for(6)))
    with pytest.raises(ValueError, match="not aligned"):
        compact.append_subtree(4, root)
    compact.append_subtree(2, root)
    assert compact.root() == tree.root()
    with pytest.raises(PrunedSubtreeError) as refused:
        tree.leaf_hash(7)
    assert (refused.value.wanted, refused.value.pruned) == ((7, 8), (6, 8))
    with pytest.raises(ValueError):
        tree.range_root(3, 9)
    assert tree.range_root(0, 8) == hash_children(MerkleLevels(hash_leaves(leaves_for(6))).range_root(0, 4),
                                                  hash_children(tree.range_root(4, 6), root))
