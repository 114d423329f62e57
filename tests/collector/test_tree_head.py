"""Every checkpoint signs its writer's Merkle tree head (RFC 9162): the size
is the chain's last seq and the root is the tree over every event's
canonical encoding in seq order; the tree carries over from seal to seal,
across pipelined seals and across a restart; and the signed bytes are the
RFC 8785 (JCS) serialisation of the body, as an independent implementation
produces them."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
import rfc8785
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from auditlake.collector.integrity.chain import canonical_column
from auditlake.collector.integrity.checkpoint import ChainCheckpoint, canonical_json, read_checkpoints
from auditlake.collector.integrity.merkle import hash_leaf, tree_root
from auditlake.collector.storage.datadir import DataDir

sys.path.insert(0, str(Path(__file__).parent))
from test_seal import _queue, _sealer  # noqa: E402


def _lake_leaves(data: DataDir) -> list[bytes]:
    """Each stored event's leaf hash, in seq order, recomputed from the files."""
    tables = [pq.read_table(p) for p in sorted(data.events.glob("date=*/*.parquet"))]
    rows: list[tuple[int, bytes]] = []
    for table in tables:
        seqs = table.column("seq").to_pylist()
        rows += zip(seqs, canonical_column(table).to_pylist(), strict=True)
    rows.sort()
    assert [s for s, _ in rows] == list(range(1, len(rows) + 1))
    return [hash_leaf(encoding) for _, encoding in rows]


def test_each_checkpoint_signs_the_tree_over_every_event_so_far(tmp_path: Path) -> None:
    sealer = _sealer(tmp_path, max_rows=600)
    _queue(sealer, 7)  # 1,750 events: several pipelined seals
    sealer.seal_pending()
    sealer.stop()
    # a restart carries the tree on from the saved state
    sealer = _sealer(tmp_path, max_rows=600)
    _queue(sealer, 3, start=7)
    sealer.seal_pending()
    sealer.stop()

    data = DataDir(tmp_path)
    leaves = _lake_leaves(data)
    assert len(leaves) == 2_500
    signed = read_checkpoints(data.checkpoints)
    assert len(signed) >= 4
    public = load_pem_public_key((data.keys / "signing.pub.pem").read_bytes())
    for s in signed:
        cp = s.checkpoint
        assert cp.version == 2 and cp.tree_size == cp.seq
        assert cp.tree_root == tree_root(leaves[: cp.seq]).hex(), f"seal {cp.seal}"
        assert s.verify(public)  # type: ignore[arg-type]


def test_a_changed_tree_head_breaks_the_signature(tmp_path: Path) -> None:
    sealer = _sealer(tmp_path)
    _queue(sealer, 2)
    sealer.seal_pending()
    sealer.stop()
    data = DataDir(tmp_path)
    public = load_pem_public_key((data.keys / "signing.pub.pem").read_bytes())
    (s,) = read_checkpoints(data.checkpoints)
    for change in ({"tree_root": hashlib.sha256(b"x").hexdigest()}, {"tree_size": s.checkpoint.seq - 1},
                   {"tree_size": None, "tree_root": ""}):
        body = {**s.checkpoint.body(), **change}
        forged = ChainCheckpoint.from_body(body)
        assert not type(s)(forged, s.signature, s.path).verify(public), change  # type: ignore[arg-type]


def test_signed_bytes_are_rfc8785(tmp_path: Path) -> None:
    sealer = _sealer(tmp_path)
    _queue(sealer, 1)
    sealer.seal_pending()
    sealer.stop()
    (s,) = read_checkpoints(DataDir(tmp_path).checkpoints)
    body = s.checkpoint.body()
    assert canonical_json(body) == rfc8785.dumps(body)
    # non-ASCII text (a policy name in extra, say) is UTF-8, as JCS says
    body["extra"] = {"policy": {"name": "Aufbewahrung für Ärzte", "days": 3650}, "ok": True, "none": None}
    assert canonical_json(body) == rfc8785.dumps(body)


def test_values_outside_the_jcs_domain_are_refused() -> None:
    body = ChainCheckpoint("w1", 1, 0, "0" * 64, "t", tree_size=0, tree_root="").body()
    with pytest.raises(TypeError, match="float"):
        canonical_json({**body, "extra": {"ratio": 0.5}})
    with pytest.raises(TypeError, match="2\\*\\*53"):
        canonical_json({**body, "extra": {"n": 2**60}})


def test_a_version_1_checkpoint_keeps_its_bytes() -> None:
    cp = ChainCheckpoint("w1", 1, 3, "ab" * 32, "t", extra={"note": "ü"})
    body = cp.body()
    assert body["version"] == 1 and "tree_size" not in body
    assert canonical_json(body) == json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def test_a_chain_sealed_before_trees_keeps_checkpoints_without_one(tmp_path: Path) -> None:
    sealer = _sealer(tmp_path)
    _queue(sealer, 1)
    sealer.seal_pending()
    sealer.stop()
    state = tmp_path / "state" / "seal.json"
    raw = json.loads(state.read_text())
    del raw["tree"]  # as written by a collector before this version
    state.write_text(json.dumps(raw))
    sealer = _sealer(tmp_path)
    _queue(sealer, 1, start=1)
    sealer.seal_pending()
    sealer.stop()
    latest = read_checkpoints(DataDir(tmp_path).checkpoints)[-1].checkpoint
    assert latest.seq == 500 and latest.version == 1 and latest.tree_size is None
    assert duckdb.sql(
        f"SELECT count(*) FROM read_parquet('{tmp_path}/lake/events/*/*.parquet')").fetchall() == [(500,)]


def test_verify_rebuilds_each_tree_and_names_a_wrong_signed_head(tmp_path: Path) -> None:
    import base64

    from auditlake.collector.integrity.signing import SigningKey
    from auditlake.collector.integrity.verify import verify_lake

    sealer = _sealer(tmp_path, max_rows=250)
    _queue(sealer, 4)
    sealer.seal_pending()
    sealer.stop()
    report = verify_lake(tmp_path)
    assert report.ok, report.to_text()
    signed = read_checkpoints(DataDir(tmp_path).checkpoints)
    assert report.tree_heads == len(signed) >= 3
    assert "tree heads:    " in report.to_text()

    # a checkpoint whose tree head is not the events' tree, validly signed
    # (a writer bug, or whoever holds the key): verify names it
    victim = signed[1]
    body = {**victim.checkpoint.body(), "tree_root": hashlib.sha256(b"other").hexdigest()}
    key = SigningKey.load_or_create(tmp_path / "keys")
    doc = {**body, "signature": base64.b64encode(key.sign(canonical_json(body))).decode()}
    victim.path.write_text(json.dumps(doc))
    # the next checkpoint links to the old digest: re-link the rest as that signer would
    previous = hashlib.sha256(canonical_json(body)).hexdigest()
    for later in signed[2:]:
        b = {**later.checkpoint.body(), "previous": previous}
        later.path.write_text(json.dumps({**b, "signature": base64.b64encode(key.sign(canonical_json(b))).decode()}))
        previous = hashlib.sha256(canonical_json(b)).hexdigest()
    report = verify_lake(tmp_path)
    kinds = {(p.kind, p.file) for p in report.problems}
    assert kinds == {("tree_head", victim.path.name)}, report.to_text()
