"""Merkle proofs over a real lake (docs/integrity.md section 8): an inclusion
proof of one event checks with the public key alone; any change to the
proof, the event or the signed checkpoint is refused; a consistency proof
shows a later log extends an earlier one; proofs still hold after a
compaction; and `auditlake monitor` catches a lake rolled back or rewritten
since the head it kept."""

from __future__ import annotations

import copy
import datetime as dt
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auditlake.collector.integrity.proofs import check_consistency, check_inclusion
from auditlake.collector.integrity.signing import KeyRing
from tests.collector.test_tamper import wait_for_checkpoints
from tests.conftest import CollectorProcess, run_cli
from tests.wire_client import WireClient, make_event

SEALS = 3
PER_SEAL = 70


def _send(collector: CollectorProcess, key: str, first: int, n: int, tag: str = "") -> list[str]:
    client = WireClient(collector.endpoint)
    events = [make_event(first + i, tenant_id="acme", user_id=f"dr-{i % 3}{tag}") for i in range(n)]
    assert client.export(events, key).accepted == n
    client.close()
    return [e["id"] for e in events]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, list[str]]]:
    """A lake of 3 seals by `auditlake serve` (210 events), and the event ids."""
    root = tmp_path_factory.mktemp("proofs")
    collector = CollectorProcess(root / "data").start()
    ids: list[str] = []
    try:
        key = collector.api_key("acme")
        for s in range(SEALS):
            ids += _send(collector, key, s * PER_SEAL, PER_SEAL)
            wait_for_checkpoints(root / "data", s + 1)
    finally:
        assert collector.stop() == 0
    yield root / "data", ids


@pytest.fixture
def lake(pristine: tuple[Path, list[str]], tmp_path: Path) -> tuple[Path, list[str]]:
    shutil.copytree(pristine[0], tmp_path / "data", ignore=shutil.ignore_patterns(".lock"))
    return tmp_path / "data", pristine[1]


def _keys(data: Path) -> KeyRing:
    return KeyRing.parse((data / "keys" / "signing.pub.pem").read_text())


def _proof(data: Path, event_id: str, out: Path) -> dict[str, Any]:
    result = run_cli("proof", event_id, "--output", str(out), data=data, check=False)
    assert result.returncode == 0, result.stderr
    return json.loads(out.read_text())  # type: ignore[no-any-return]


def _verify(proof: Path, data: Path) -> Any:
    return run_cli("proof", "verify", str(proof), "--public-key", str(data / "keys" / "signing.pub.pem"),
                   check=False)


def test_an_event_proof_checks_with_the_public_key_alone(lake: tuple[Path, list[str]], tmp_path: Path) -> None:
    data, ids = lake
    for event_id in (ids[0], ids[100], ids[-1]):
        out = tmp_path / f"{event_id}.json"
        doc = _proof(data, event_id, out)
        assert doc["tree_size"] == SEALS * PER_SEAL and doc["checkpoint"]["tree_size"] == doc["tree_size"]
        assert dict(doc["event"])["id"] == event_id
        # the proof travels alone: the lake is gone when it is checked
        alone = tmp_path / "alone.json"
        shutil.copy(out, alone)
        result = _verify(alone, data)
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"OK: event {event_id}" in result.stdout


def test_a_proof_fails_closed(lake: tuple[Path, list[str]], tmp_path: Path) -> None:
    data, ids = lake
    doc = _proof(data, ids[5], tmp_path / "p.json")
    # without a key there is nothing to check against
    result = run_cli("proof", "verify", str(tmp_path / "p.json"), check=False)
    assert result.returncode == 2 and "--public-key" in result.stderr
    # another key (another collector's) is refused
    other = CollectorProcess(tmp_path / "other").start()
    other.stop()
    result = run_cli("proof", "verify", str(tmp_path / "p.json"), "--public-key",
                     str(tmp_path / "other" / "keys" / "signing.pub.pem"), check=False)
    assert result.returncode == 1 and "FAIL checkpoint signature" in result.stdout
    # an edited event
    edited = copy.deepcopy(doc)
    edited["event"] = [[n, "mallory" if n == "user_id" else t] for n, t in doc["event"]]
    (tmp_path / "e.json").write_text(json.dumps(edited))
    result = _verify(tmp_path / "e.json", data)
    assert result.returncode == 1 and "FAIL audit path" in result.stdout
    # an event moved to another position
    moved = copy.deepcopy(doc)
    moved["leaf_index"] += 1
    (tmp_path / "m.json").write_text(json.dumps(moved))
    assert _verify(tmp_path / "m.json", data).returncode == 1
    # not a proof at all
    (tmp_path / "x.json").write_text("{}")
    assert _verify(tmp_path / "x.json", data).returncode == 1
    result = run_cli("proof", "nonexistent-id", data=data, check=False)
    assert result.returncode == 2 and "no event 'nonexistent-id'" in result.stderr


def _mutations(doc: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    """Every scalar in the document, by its path."""
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _mutations(v, (*path, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _mutations(v, (*path, i))
    else:
        yield path, doc


def _changed(value: Any, salt: int) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1 + salt % 5
    if value is None:
        return 0
    text = str(value)
    if not text:
        return "x"
    i = salt % len(text)
    ch = "0" if text[i] != "0" else "1"
    return text[:i] + ch + text[i + 1:]


@pytest.fixture(scope="module")
def proof_doc(pristine: tuple[Path, list[str]], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    data, ids = pristine
    out = tmp_path_factory.mktemp("proof") / "p.json"
    return _proof(data, ids[77], out)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_any_change_to_a_proof_is_refused(proof_doc: dict[str, Any], pristine: tuple[Path, list[str]],
                                          data: st.DataObject) -> None:
    keys = _keys(pristine[0])
    assert check_inclusion(proof_doc, keys).ok
    places = list(_mutations(proof_doc))
    path, value = data.draw(st.sampled_from(places))
    salt = data.draw(st.integers(0, 1000))
    changed = copy.deepcopy(proof_doc)
    target = changed
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = _changed(value, salt)
    if changed == proof_doc:
        return
    assert not check_inclusion(changed, keys).ok, f"a change at {path} was accepted"


def test_consistency_and_compaction(lake: tuple[Path, list[str]], tmp_path: Path) -> None:
    data, ids = lake
    first = sorted((data / "checkpoints").glob("*/*.json"))[0]
    collector = CollectorProcess(data).start()
    try:
        more = _send(collector, collector.api_key("acme"), 1000, 50, tag="later")
        wait_for_checkpoints(data, SEALS + 1)
    finally:
        assert collector.stop() == 0
    out = tmp_path / "c.json"
    result = run_cli("proof", "consistency", "--from", str(first), "--output", str(out), data=data, check=False)
    assert result.returncode == 0, result.stderr
    doc = json.loads(out.read_text())
    assert (doc["first"]["tree_size"], doc["second"]["tree_size"]) == (PER_SEAL, SEALS * PER_SEAL + 50)
    assert check_consistency(doc, _keys(data)).ok
    result = _verify(out, data)
    assert result.returncode == 0 and "contains its log of 70" in result.stdout
    for i in range(len(doc["proof"])):
        bad = copy.deepcopy(doc)
        bad["proof"][i] = "0" * 64
        assert not check_consistency(bad, _keys(data)).ok
    swapped = {**doc, "first": doc["second"], "second": doc["first"]}
    assert not check_consistency(swapped, _keys(data)).ok

    # compaction rewrites files, not events: a proof made after it still holds
    today = dt.datetime.now(dt.UTC).date().isoformat()
    before = sorted(p.name for p in (data / "lake" / "events").glob("*/*.parquet"))
    result = run_cli("compact", "--day", today, "--delete-now", data=data, check=False)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (data / "lake" / "events").glob("*/*.parquet")) != before
    proof = _proof(data, more[-1], tmp_path / "after.json")
    assert _verify(tmp_path / "after.json", data).returncode == 0
    assert proof["tree_size"] == SEALS * PER_SEAL + 50


def test_monitor_catches_a_rolled_back_or_rewritten_log(lake: tuple[Path, list[str]], tmp_path: Path) -> None:
    data, _ = lake
    state = tmp_path / "monitor.json"
    key = str(data / "keys" / "signing.pub.pem")

    def monitor() -> Any:
        return run_cli("monitor", "--state", str(state), "--public-key", key, data=data, check=False)

    result = monitor()
    assert result.returncode == 0 and "first seen" in result.stdout, result.stdout + result.stderr
    snapshot = tmp_path / "snapshot"
    shutil.copytree(data, snapshot)

    collector = CollectorProcess(data).start()
    try:
        _send(collector, collector.api_key("acme"), 2000, 40)
        wait_for_checkpoints(data, SEALS + 1)
    finally:
        assert collector.stop() == 0
    result = monitor()
    assert result.returncode == 0 and f"{SEALS * PER_SEAL + 40} events" in result.stdout, result.stdout

    # roll the whole data dir back (lake, checkpoints, state): the log shrank
    shutil.rmtree(data)
    shutil.copytree(snapshot, data)
    result = monitor()
    assert result.returncode == 1 and "rolled back" in result.stdout, result.stdout
    # ...and grow it again with other events, past the kept head, re-signed by the real key
    collector = CollectorProcess(data).start()
    try:
        _send(collector, collector.api_key("acme"), 3000, 60, tag="forged")
        wait_for_checkpoints(data, SEALS + 1)
    finally:
        assert collector.stop() == 0
    result = monitor()
    assert result.returncode == 1 and "FAIL" in result.stdout, result.stdout
    kept = json.loads(state.read_text())["heads"]
    (head,) = kept.values()
    assert head["checkpoint"]["tree_size"] == SEALS * PER_SEAL + 40  # the honest head stays
