"""Merkle proofs after retention expired part of a writer's chain
(docs/retention.md, "Proofs after expiry"): the expire tombstone keeps the
roots of the subtrees covering each expired range, so the events that remain
(hot, compacted, or moved to cold) still get inclusion proofs that check with
the public key alone, and a checkpoint signed before the expiry is still
proven contained in the newest one; an expired event says it expired; a
checkpoint whose tree ends inside an expired subtree cannot be proven from,
and says why; a changed kept root breaks its checkpoint's signature.

The lake is written by a real collector (`auditlake serve`), one seal per
batch, with events dated in the past; `auditlake compact` and
`auditlake retention run` (a local cold directory) then run on a copy.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from auditlake.collector.integrity.merkle import aligned_subtrees
from auditlake.collector.integrity.proofs import check_consistency, check_inclusion
from auditlake.collector.integrity.signing import KeyRing
from auditlake.collector.integrity.verify import verify_lake
from auditlake.collector.integrity.writer_tree import LakeTrees
from auditlake.collector.storage.datadir import DataDir
from tests.conftest import CollectorProcess, run_cli
from tests.retention.conftest import assert_verify_clean, run_retention, today, write_policy
from tests.wire_client import WireClient, make_event

#: The batches the collector seals, one seal each, in order: (days ago, events).
#: Leaves: [0, 40) [40, 65) [65, 77) [77, 95) expire (days 38-40); [95, 115)
#: today, [115, 135) moves to cold (25 days); [135, 145) expires (45 days), so
#: the second expired range sits after events that stay.
BATCHES = ((40, 40), (39, 25), (38, 12), (38, 18), (0, 10), (0, 10), (25, 20), (45, 10))
EXPIRED_DAYS = {38, 39, 40, 45}
#: Leaf ranges [start, end) the policy below expires.
EXPIRED = ((0, 95), (135, 145))
POLICY = {"hot_days": 10, "delete_after_days": 30, "minimum_days": 15}


def _day(days_ago: int) -> str:
    return (today() - dt.timedelta(days=days_ago)).isoformat()


def _uuid7(at_us: int, n: int) -> str:
    """A UUIDv7 whose timestamp is ``at_us`` (the SDK's ids carry their creation time)."""
    rand = int.from_bytes(os.urandom(10), "big")
    value = ((at_us // 1000) << 80) | (0x7 << 76) | ((n & 0xFFF) << 64) | (0b10 << 62) | (rand & ((1 << 62) - 1))
    return str(uuid.UUID(int=value))


def _checkpoints(data: Path) -> list[Path]:
    return sorted((data / "checkpoints").glob("*/*.json"))


def _wait_for_checkpoints(data: Path, n: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while len(_checkpoints(data)) < n:
        assert time.monotonic() < deadline, f"no checkpoint {n} after {timeout} s"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, list[list[str]]]]:
    """The lake a collector sealed from BATCHES, and each batch's event ids."""
    root = tmp_path_factory.mktemp("expiry-proofs")
    collector = CollectorProcess(root / "data").start()
    batches: list[list[str]] = []
    try:
        key = collector.api_key("acme")
        client = WireClient(collector.endpoint)
        noon = dt.datetime.combine(today(), dt.time(12), tzinfo=dt.UTC)
        for b, (days_ago, n) in enumerate(BATCHES):
            at = int((noon - dt.timedelta(days=days_ago)).timestamp() * 1e6)
            at = min(at, int(time.time() * 1e6))  # "today" but not in the future
            events = [make_event(b * 100 + i, id=_uuid7(at + i, i), created_at_us=at + i) for i in range(n)]
            assert client.export(events, key).accepted == n
            _wait_for_checkpoints(root / "data", b + 1)
            batches.append([e["id"] for e in events])
        client.close()
    finally:
        assert collector.stop() == 0
    yield root / "data", batches


@dataclass(frozen=True)
class Expired:
    """The written lake after compaction and retention, and what was kept from before."""

    data: Path
    batches: list[list[str]]
    #: The checkpoints signed before the retention run, in seal order.
    before: list[Path]
    #: `auditlake monitor`'s state from a run before the retention run.
    monitor_state: Path
    expire: dict[str, Any]


@pytest.fixture(scope="module")
def expired(written: tuple[Path, list[list[str]]], tmp_path_factory: pytest.TempPathFactory) -> Expired:
    """A copy of the written lake whose days written in two seals were
    compacted, then retention moved old days to a cold directory and expired
    the oldest.  Tests that change it work on a copy (:func:`changeable`)."""
    root = tmp_path_factory.mktemp("expired")
    data = root / "data"
    shutil.copytree(written[0], data, ignore=shutil.ignore_patterns(".lock"))
    before = _checkpoints(data)
    state = root / "monitor.json"
    run_cli("monitor", "--state", str(state), "--public-key", str(data / "keys" / "signing.pub.pem"), data=data)
    for days_ago in (38, 0):
        run_cli("compact", "--day", _day(days_ago), "--delete-now", data=data)
    assert len(list((data / "lake" / "events").glob("*/compact-*.parquet"))) == 2
    write_policy(data, cold=(root / "cold").as_uri(), **POLICY)
    run_retention(data)
    (expire,) = [json.loads(p.read_text()) for p in _checkpoints(data) if p.name.endswith("-expire.json")]
    return Expired(data, written[1], before, state, expire)


@pytest.fixture
def changeable(expired: Expired, tmp_path: Path) -> Path:
    """A copy of the expired lake's data dir (its cold directory is shared, read only)."""
    shutil.copytree(expired.data, tmp_path / "data", ignore=shutil.ignore_patterns(".lock"))
    return tmp_path / "data"


def _proof(data: Path, event_id: str, out: Path) -> Any:
    return run_cli("proof", event_id, "--output", str(out), data=data, check=False)


def _verify(proof: Path, data: Path) -> Any:
    return run_cli("proof", "verify", str(proof), "--public-key", str(data / "keys" / "signing.pub.pem"),
                   check=False)


def _keys(data: Path) -> KeyRing:
    return KeyRing.parse((data / "keys" / "signing.pub.pem").read_text())


def test_the_tombstone_keeps_the_subtrees_covering_each_expired_range(expired: Expired) -> None:
    extra = expired.expire["extra"]
    assert sorted(extra["days"]) == sorted(_day(d) for d in EXPIRED_DAYS)
    seq_ranges = sorted((a, b) for r in extra["ranges"] for a, b, _ in r["seq_ranges"])
    assert sorted(i for a, b in seq_ranges for i in range(a - 1, b)) == [i for a, b in EXPIRED for i in range(a, b)]
    kept = extra["subtrees"]
    assert {k["writer"] for k in kept} == {expired.expire["writer_id"]}
    # the fewest complete aligned subtrees covering each range, nothing more
    assert [(k["start"], k["size"]) for k in kept] == [s for a, b in EXPIRED for s in aligned_subtrees(a, b)]
    assert [(k["start"], k["size"]) for k in kept][:3] == [(0, 64), (64, 16), (80, 8)]
    # each root is the root those leaves had: the signed head before the expiry is rebuilt from them
    tree = LakeTrees(DataDir(expired.data)).levels(expired.expire["writer_id"])
    assert tree.pruned == [(k["start"], k["size"]) for k in kept]
    head = json.loads(expired.before[-1].read_text())
    assert tree.root(head["tree_size"]).hex() == head["tree_root"]
    assert not list(expired.data.parent.glob(f"cold/events/date={_day(40)}/*.parquet")), "the files are gone"
    report = assert_verify_clean(expired.data)
    assert "expired by policy" in report.to_text()
    # verify rebuilds the tree through the expired ranges from the kept roots:
    # every signed head outside a kept subtree is checked, none left out
    signed = [json.loads(p.read_text()) for p in expired.data.glob("checkpoints/*/*.json")]
    inside = [c for c in signed if any(k["start"] < c["tree_size"] < k["start"] + k["size"] for k in kept)]
    assert report.tree_heads == len(signed) - len(inside) > 0
    assert not [w for w in report.warnings if "Merkle tree" in w], report.warnings


def test_events_that_remain_are_proven_hot_compacted_and_cold(expired: Expired, tmp_path: Path) -> None:
    data, batches = expired.data, expired.batches
    today_ids = batches[4] + batches[5]  # compacted into one hot file
    cold_ids = batches[6]  # moved to the cold directory, between the two expired ranges
    # the command, and the proof checked alone, with the public key
    for event_id in (today_ids[0], cold_ids[-1]):
        out = tmp_path / f"{event_id}.json"
        result = _proof(data, event_id, out)
        assert result.returncode == 0, result.stderr
        alone = tmp_path / "alone.json"
        shutil.copy(out, alone)
        checked = _verify(alone, data)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert f"OK: event {event_id}" in checked.stdout
    assert json.loads((tmp_path / f"{cold_ids[-1]}.json").read_text())["leaf_index"] == 134  # leaf 135 expired
    # every event that remains, in process
    trees, keys = LakeTrees(DataDir(data)), _keys(data)
    for event_id in today_ids + cold_ids:
        doc = trees.inclusion(event_id)
        check = check_inclusion(doc, keys)
        assert check.ok, check.summary
        assert doc["tree_size"] == trees.head(doc["writer_id"]).checkpoint.tree_size


def test_proofs_hold_after_compaction_following_the_expiry(expired: Expired, changeable: Path,
                                                          tmp_path: Path) -> None:
    data, ids = changeable, expired.batches[5]
    before = {p.name for p in (data / "lake" / "events").glob("*/*.parquet")}
    run_cli("compact", "--day", today().isoformat(), "--delete-now", data=data)
    assert {p.name for p in (data / "lake" / "events").glob("*/*.parquet")} != before
    result = _proof(data, ids[3], tmp_path / "later.json")
    assert result.returncode == 0, result.stderr
    assert _verify(tmp_path / "later.json", data).returncode == 0
    assert_verify_clean(data)


def test_an_expired_event_says_it_expired(expired: Expired, tmp_path: Path) -> None:
    result = _proof(expired.data, expired.batches[0][7], tmp_path / "gone.json")
    assert result.returncode == 2
    assert "it expired" in result.stderr and _day(40) in result.stderr, result.stderr
    assert not (tmp_path / "gone.json").exists()


def test_a_checkpoint_before_the_expiry_is_proven_contained_in_the_newest(expired: Expired, tmp_path: Path) -> None:
    data, before = expired.data, expired.before
    # the head before the run, by the command, and checked with the public key alone
    out = tmp_path / "c.json"
    result = run_cli("proof", "consistency", "--from", str(before[-1]), "--output", str(out), data=data, check=False)
    assert result.returncode == 0, result.stderr
    doc = json.loads(out.read_text())
    assert doc["first"]["tree_size"] == json.loads(before[-1].read_text())["tree_size"] == 145
    assert doc["second"]["seal"] > len(before)  # signed after the expiry
    checked = _verify(out, data)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # every seal before it whose tree ends outside the kept subtrees' insides: on their edges (95, 135) or past
    trees, keys = LakeTrees(DataDir(data)), _keys(data)
    head = trees.head(doc["writer_id"])
    provable = [s for s in trees.checkpoints(doc["writer_id"]) if s.checkpoint.tree_size not in (40, 65, 77)]
    assert [s.checkpoint.tree_size for s in provable][:4] == [95, 105, 115, 135]
    for signed in provable:
        check = check_consistency(trees.consistency(signed, head), keys)
        assert check.ok, check.summary
    state = tmp_path / "monitor.json"
    shutil.copy(expired.monitor_state, state)
    monitored = run_cli("monitor", "--state", str(state), "--public-key", str(data / "keys" / "signing.pub.pem"),
                        data=data, check=False)
    assert monitored.returncode == 0, monitored.stdout
    # seal 1's tree (40 events) ends inside the kept subtree of leaves [0, 64): nothing below it is left
    result = run_cli("proof", "consistency", "--from", str(before[0]), data=data, check=False)
    assert result.returncode == 2
    assert "ends inside" in result.stderr and "events 1..64" in result.stderr, result.stderr


def test_a_changed_kept_subtree_root_breaks_the_signature(expired: Expired, changeable: Path,
                                                          tmp_path: Path) -> None:
    data = changeable
    (path,) = [p for p in _checkpoints(data) if p.name.endswith("-expire.json")]
    first = expired.before[3].name
    (first_path,) = [p for p in _checkpoints(data) if p.name == first]
    out = tmp_path / "c.json"
    run_cli("proof", "consistency", "--from", str(first_path), "--to", str(path), "--output", str(out), data=data)
    assert _verify(out, data).returncode == 0
    doc = json.loads(path.read_text())
    kept = doc["extra"]["subtrees"][0]
    kept["hash"] = ("0" if kept["hash"][0] != "0" else "1") + kept["hash"][1:]
    path.write_text(json.dumps(doc, indent=1, sort_keys=True))

    report = verify_lake(data)
    assert not report.ok and path.name in report.to_text(), report.to_text()
    run_cli("proof", "consistency", "--from", str(first_path), "--to", str(path), "--output", str(out), data=data)
    checked = _verify(out, data)
    assert checked.returncode == 1 and "FAIL second checkpoint signature" in checked.stdout, checked.stdout
    # A proof made over the changed root does not lead to the (untouched) signed head.
    doc = LakeTrees(DataDir(data)).inclusion(expired.batches[4][0])
    check = check_inclusion(doc, _keys(data))
    assert not check.ok and "audit path" in check.summary, check.summary


def test_a_cold_file_changed_since_its_move_is_not_expired(written: tuple[Path, list[list[str]]],
                                                           tmp_path: Path) -> None:
    """Expiring a changed file would delete the evidence of the change and
    sign roots its events never had: the run stops and deletes nothing."""
    data, cold = tmp_path / "data", tmp_path / "cold"
    shutil.copytree(written[0], data, ignore=shutil.ignore_patterns(".lock"))
    write_policy(data, cold=cold.as_uri(), hot_days=POLICY["hot_days"])
    run_retention(data)
    (victim,) = (cold / "events" / f"date={_day(40)}").glob("*.parquet")
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 1
    victim.write_bytes(bytes(raw))
    write_policy(data, cold=cold.as_uri(), **POLICY)
    result = run_retention(data, check=False)
    assert result.returncode == 2 and "no longer has the digest" in result.stderr, result.stdout + result.stderr
    assert victim.exists() and list((cold / "events" / f"date={_day(45)}").glob("*.parquet"))
    assert not [p for p in _checkpoints(data) if p.name.endswith("-expire.json")]
