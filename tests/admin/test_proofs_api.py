"""Merkle proofs over the admin API (docs/admin.md "Proofs"): an event's
inclusion proof for whoever may read the event, and nobody else; signed
tree heads and consistency proofs for admins; clear 4xx answers when a
proof cannot be made; the trees kept between requests and extended with
only what was sealed since; and `auditlake monitor --url`, which checks
heads fetched over HTTP with no access to the lake."""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from auditlake.collector.admin.proofs import ProofSource, ProofUnavailable
from auditlake.collector.admin.server import AdminServer
from auditlake.collector.integrity.checkpoint import ChainCheckpoint, write_checkpoint
from auditlake.collector.integrity.proofs import check_consistency, check_heads, check_inclusion, read_signed
from auditlake.collector.integrity.signing import KeyRing, SigningKey
from auditlake.collector.storage.datadir import DataDir
from tests.admin.conftest import Lake, send
from tests.conftest import run_cli
from tests.wire_client import make_event


def _keys(lake: Lake) -> KeyRing:
    return KeyRing.parse((lake.collector.data / "keys" / "signing.pub.pem").read_text())


def _seals(data: Path, writer: str) -> dict[int, int]:
    """The writer's checkpoints: tree size by seal number."""
    docs = (json.loads(p.read_text()) for p in (data / "checkpoints" / writer).glob("*.json"))
    return dict(sorted((d["seal"], d["tree_size"]) for d in docs))


def _collector_writer(lake: Lake) -> str:
    return (lake.collector.data / "writer_id").read_text().strip()


def _head_size(lake: Lake, writer: str) -> int:
    with lake.api("root") as api:
        return int(api.get(f"/api/v1/checkpoints/{writer}/head").json()["tree_size"])


def _send_late(lake: Lake, n: int) -> list[str]:
    """n more acme events (service "late-proofs", as test_api's late arrivals),
    returned once a signed tree head covers them."""
    writer = _collector_writer(lake)
    before = _head_size(lake, writer)
    events = [make_event(i, id=str(uuid.uuid4()), tenant_id="acme", service="late-proofs") for i in range(n)]
    send(lake.collector, events)
    deadline = time.monotonic() + 30
    while _head_size(lake, writer) < before + n:
        assert time.monotonic() < deadline, "no signed head covers the new events"
        time.sleep(0.1)
    return [e["id"] for e in events]


def test_an_auditor_gets_a_proof_of_their_event_that_checks_with_the_key_alone(lake: Lake) -> None:
    event = lake.sent(tenant_id="acme", action="update")[3]
    with lake.api("alice") as api:
        r = api.get(f"/api/v1/events/{event['id']}/proof")
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("application/json")
        assert "content-disposition" not in r.headers
        doc = r.json()
        check = check_inclusion(doc, _keys(lake))
        assert check.ok, check.summary
        fields = dict(doc["event"])
        assert (fields["id"], fields["tenant_id"], fields["user_id"], fields["changes"]) == (
            event["id"], "acme", event["user_id"], event["changes"])
        # it says nothing of any other event: none of their ids, none of another tenant's text
        others = {e["id"] for e in lake.events} - {event["id"]}
        assert not any(other in r.text for other in others)
        assert "globex" not in r.text

        download = api.get(f"/api/v1/events/{event['id']}/proof", params={"download": "1"})
        assert download.status_code == 200
        assert download.headers["content-disposition"] == f'attachment; filename="proof-{event["id"]}.json"'
        assert check_inclusion(download.json(), _keys(lake)).ok
        assert api.get(f"/api/v1/events/{event['id']}/proof", params={"download": "maybe"}).json() == {
            "error": "must be 1 or 0", "parameter": "download"}


def test_a_proof_of_another_tenants_event_is_the_same_404_as_the_event(lake: Lake) -> None:
    theirs = lake.sent(tenant_id="globex")[5]["id"]
    with lake.api("alice") as api:
        proof = api.get(f"/api/v1/events/{theirs}/proof")
        event = api.get(f"/api/v1/events/{theirs}")
        assert proof.status_code == event.status_code == 404
        assert proof.json() == event.json()
        assert "globex" not in proof.text
        assert api.get(f"/api/v1/events/{uuid.uuid4()}/proof").status_code == 404
        too_long = api.get("/api/v1/events/" + "x" * 80 + "/proof")
        assert too_long.status_code == 400 and too_long.json()["parameter"] == "id"
    with lake.api("gary") as api:
        r = api.get(f"/api/v1/events/{theirs}/proof")
        assert r.status_code == 200 and check_inclusion(r.json(), _keys(lake)).ok
    with httpx.Client(base_url=lake.url) as anonymous:
        assert anonymous.get(f"/api/v1/events/{theirs}/proof").status_code == 401


def test_admins_get_signed_heads_and_consistency_proofs(lake: Lake) -> None:
    keys = _keys(lake)
    writer = _collector_writer(lake)
    with lake.api("root") as api:
        body = api.get("/api/v1/checkpoints/heads").json()
        assert writer in {h["writer_id"] for h in body["heads"]}
        for head in body["heads"]:
            cp, sig = read_signed(head, "head")
            assert check_heads(cp, sig, cp, sig, [], keys).ok
        one = api.get(f"/api/v1/checkpoints/{writer}/head").json()
        assert one["writer_id"] == writer and one["tree_size"] >= 540

        seals = _seals(lake.collector.data, writer)
        first = min(seals)
        r = api.get("/api/v1/proofs/consistency", params={"writer": writer, "from": first})
        assert r.status_code == 200, r.text
        doc = r.json()
        assert doc["first"]["seal"] == first and doc["second"]["seal"] >= one["seal"]
        check = check_consistency(doc, keys)
        assert check.ok, check.summary
        # two checkpoints of different sizes, neither the newest
        small = next(s for s in seals if seals[s] > 0)
        large = next(s for s in seals if seals[s] > seals[small])
        between = api.get("/api/v1/proofs/consistency",
                          params={"writer": writer, "from": small, "to": large}).json()
        assert (between["first"]["seal"], between["second"]["seal"]) == (small, large)
        assert check_consistency(between, keys).ok and between["proof"]
        swapped = {**between, "first": between["second"], "second": between["first"]}
        assert not check_consistency(swapped, keys).ok

        def error(params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
            answer = api.get("/api/v1/proofs/consistency", params=params)
            return answer.status_code, answer.json()

        assert error({"writer": writer, "from": "abc"}) == (400, {
            "error": "must be a checkpoint's seal number (a whole number, 0 or more)", "parameter": "from"})
        assert error({"writer": writer, "from": "-1"})[0] == 400
        status, body = error({"writer": writer, "from": large, "to": small})
        assert status == 400 and body["parameter"] == "to"
        assert error({"writer": writer})[1]["parameter"] == "from"
        assert error({"from": 1})[1]["parameter"] == "writer"
        assert error({"writer": writer, "from": 10**12}) == (404, {
            "error": f"writer {writer} has no checkpoint {10**12}"})
        assert error({"writer": "no-such-writer", "from": 1})[0] == 404
        assert api.get("/api/v1/checkpoints/no-such-writer/head").status_code == 404

    # heads tell every tenant's volume: an auditor gets none of them
    with lake.api("alice") as api:
        for path in ("/api/v1/checkpoints/heads", f"/api/v1/checkpoints/{writer}/head",
                     f"/api/v1/proofs/consistency?writer={writer}&from=1"):
            r = api.get(path)
            assert r.status_code == 403 and "admins" in r.json()["error"], path
            assert "tree_size" not in r.text


def test_the_trees_are_kept_and_extended_with_what_was_sealed_since(lake: Lake) -> None:
    """One ProofSource over the running collector's data dir, as an admin
    process holds it: the chain is read once; after new seals only the new
    files are read, and every proof checks against the newest head."""
    source = ProofSource()
    data = DataDir(lake.collector.data)
    writer = _collector_writer(lake)
    keys = _keys(lake)
    old = lake.sent(tenant_id="initech")[0]
    with lake.api("root") as api:
        seq = int(api.get(f"/api/v1/events/{old['id']}").json()["seq"])
    first = source.inclusion(data, writer, seq, old["id"], "initech")
    assert check_inclusion(first, keys).ok
    assert (source.rebuilds, source.full_reads) == (1, 1)

    new_ids = _send_late(lake, 30)
    with lake.api("root") as api:
        newest = api.get(f"/api/v1/events/{new_ids[-1]}").json()
    second = source.inclusion(data, writer, int(newest["seq"]), newest["id"], "acme")
    again = source.inclusion(data, writer, seq, old["id"], "initech")
    assert check_inclusion(second, keys).ok and check_inclusion(again, keys).ok
    assert again["tree_size"] > first["tree_size"]
    assert source.full_reads == 1, "the kept tree was extended, not read again"
    assert source.rebuilds >= 2
    # the identity the reader was shown must be the stored one: never another tenant's copy
    with pytest.raises(ProofUnavailable):
        source.inclusion(data, writer, seq, old["id"], "acme")


@pytest.fixture
def copied(lake: Lake, tmp_path: Path) -> Iterator[tuple[AdminServer, Path]]:
    """A read-only admin server over a copy of the lake (its users, keys,
    checkpoints and files), to be changed by the test."""
    data = tmp_path / "copy"
    data.mkdir()
    for part in ("keys", "checkpoints", "lake"):
        shutil.copytree(lake.collector.data / part, data / part, ignore=shutil.ignore_patterns("*.tmp", ".lock"))
    (data / "writer_id").write_text((lake.collector.data / "writer_id").read_text())
    server = AdminServer.for_reading(DataDir(data), users_dir=data / "keys")
    server.start()
    try:
        yield server, data
    finally:
        server.stop()


def test_a_proof_the_lake_cannot_give_is_a_409_that_says_why(lake: Lake, copied: tuple[AdminServer, Path]) -> None:
    server, data = copied
    url = f"http://{server.address}"
    headers = {"Authorization": f"Bearer {lake.tokens['root']}"}
    # a writer whose chain began before trees: its checkpoints sign no tree head
    legacy = ChainCheckpoint(writer_id="w-legacy", seal=1, seq=0, chain_hash="0" * 64, time="2024-01-01T00:00:00Z")
    write_checkpoint(legacy, SigningKey(Ed25519PrivateKey.generate()), [data / "checkpoints"])
    with httpx.Client(base_url=url, headers=headers, timeout=30) as api:
        r = api.get("/api/v1/checkpoints/w-legacy/head")
        assert r.status_code == 409 and "before trees" in r.json()["error"], r.text
        heads = api.get("/api/v1/checkpoints/heads").json()
        assert [w["writer_id"] for w in heads["without_tree_head"]] == ["w-legacy"]
        assert api.get("/api/v1/proofs/consistency", params={"writer": "w-legacy", "from": 1}).status_code == 409

        # an event changed in its file after it was signed: no proof is made from it
        event = lake.sent(tenant_id="globex")[0]
        assert api.get(f"/api/v1/events/{event['id']}/proof").status_code == 200
        _rewrite(data, event["id"], user_id="mallory")
        r = api.get(f"/api/v1/events/{event['id']}/proof")
        assert r.status_code == 409 and "does not match" in r.json()["error"], r.text


def _rewrite(data: Path, event_id: str, **changes: str) -> None:
    """Change one stored event in place (what an attacker with the bucket could do)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    for path in (data / "lake" / "events").glob("*/*.parquet"):
        table = pq.read_table(path, partitioning=None)
        hit = pc.equal(table.column("id"), event_id)
        if not pc.any(hit).as_py():
            continue
        for column, value in changes.items():
            i = table.schema.get_field_index(column)
            replaced = pc.if_else(hit, pa.scalar(value, table.schema.field(i).type), table.column(column))
            table = table.set_column(i, table.schema.field(i), replaced)
        pq.write_table(table, path)
        return
    raise AssertionError(f"no file holds {event_id}")


def test_monitor_checks_heads_over_http_with_no_lake(lake: Lake, copied: tuple[AdminServer, Path],
                                                     tmp_path: Path) -> None:
    snapshot, _ = copied  # the lake as it is now, served by another admin server
    key = str(lake.collector.data / "keys" / "signing.pub.pem")
    state = tmp_path / "monitor.json"
    elsewhere = tmp_path / "elsewhere"  # the monitor's own directory: no data dir, no lake
    elsewhere.mkdir()

    def monitor(url: str, token: str | None = lake.tokens["root"], *extra: str) -> Any:
        args = ["monitor", "--url", url, "--state", str(state), "--public-key", key, *extra]
        env = {"AUDITLAKE_DATA": str(elsewhere / "nothing-here")}
        if token is not None:
            args += ["--token", token]
        return run_cli(*args, check=False, env=env)

    result = monitor(lake.url)
    assert result.returncode == 0 and "first seen" in result.stdout, result.stdout + result.stderr
    writer = _collector_writer(lake)
    kept = json.loads(state.read_text())["heads"][writer]["checkpoint"]["tree_size"]

    _send_late(lake, 20)
    result = monitor(lake.url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"contains its log of {kept}" in result.stdout
    grown = json.loads(state.read_text())["heads"][writer]["checkpoint"]["tree_size"]
    assert grown >= kept + 20

    # the earlier copy of the lake, served as if it were the live one: rolled back
    result = monitor(f"http://{snapshot.address}")
    assert result.returncode == 1 and "rolled back" in result.stdout, result.stdout + result.stderr
    assert json.loads(state.read_text())["heads"][writer]["checkpoint"]["tree_size"] == grown

    # an auditor's token, or none, is refused before anything is checked
    result = monitor(lake.url, lake.tokens["alice"])
    assert result.returncode == 2 and "monitor's (or an admin's) API token" in result.stderr, result.stderr
    result = monitor(lake.url, None)
    assert result.returncode == 2 and "--token" in result.stderr, result.stderr
    result = monitor(lake.url, lake.tokens["root"], "--data", str(lake.collector.data))
    assert result.returncode == 2 and "not both" in result.stderr, result.stderr


CHECKS = [schemathesis.checks.not_a_server_error, status_code_conformance,
          content_type_conformance, response_schema_conformance]
PROOF_PATHS = ("/api/v1/events/{id}/proof", "/api/v1/proofs/consistency", "/api/v1/checkpoints/heads",
               "/api/v1/checkpoints/{writer}/head")


def test_proof_routes_never_answer_5xx_and_match_the_openapi_document(lake: Lake) -> None:
    """As test_api_fuzz.py does for every route with an auditor's token, with
    an admin's here: the admin gets past the 403 to the proofs themselves."""
    schema = schemathesis.openapi.from_url(lake.url + "/api/v1/openapi.json")
    headers = {"Authorization": f"Bearer {lake.tokens['root']}"}
    operations = [r.ok() for r in schema.get_all_operations()]
    operations = [o for o in operations if o.path in PROOF_PATHS]
    assert len(operations) == len(PROOF_PATHS)
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def fuzz(case: schemathesis.Case) -> None:
            case.call_and_validate(headers=headers, checks=CHECKS)

        fuzz()
