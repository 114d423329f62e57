"""Exports under attack (issue 17): ids made by the server, a few at a time,
on record before the first byte, stopped when the client leaves."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from auditlake.collector.admin.users import UserStore
from tests.admin.conftest import PASSWORD, lake_rows, wait_count
from tests.conftest import CollectorProcess
from tests.wire_client import WireClient, make_event

EVENTS = 8000  # OCSF of these is ~30 MB: far more than the socket buffers hold


@pytest.fixture(scope="module")
def busy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[CollectorProcess, dict[str, str]]]:
    data = tmp_path_factory.mktemp("exports") / "data"
    data.mkdir()
    (data / "auditlake.toml").write_text(
        "[admin]\nmax_exports_per_user = 2\nmax_exports = 3\nverify_interval_minutes = 0\n")
    store = UserStore(data / "keys")
    store.add("root", "admin", (), PASSWORD)
    store.add("alice", "auditor", ("acme",), PASSWORD)
    store.add("bob", "auditor", ("acme",), PASSWORD)
    tokens = {name: store.create_token(name) for name in ("root", "alice", "bob")}
    c = CollectorProcess(data, http=True)
    c.start()
    try:
        key = c.api_key("acme")
        client = WireClient(c.endpoint)
        try:
            for start in range(0, EVENTS, 1000):
                client.export([make_event(i, resource_id=f"doc-{i}", metadata=json.dumps({"pad": "x" * 3000}))
                               for i in range(start, start + 1000)], key=key)
        finally:
            client.close()
        assert wait_count(c.data, "tenant_id = 'acme'", EVENTS) == EVENTS
        yield c, tokens
    finally:
        c.stop()


def _open(c: CollectorProcess, token: str, retry: bool = False, **params: str) -> tuple[httpx.Client, httpx.Response]:
    client = httpx.Client(base_url=c.http_url, timeout=60, headers={"Authorization": f"Bearer {token}"})
    req = client.build_request("GET", "/api/v1/export", params={"format": "ocsf", "tenant": "acme", **params})
    deadline = time.monotonic() + (20 if retry else 0)
    while True:
        r = client.send(req, stream=True)
        if r.status_code != 200:
            r.read()  # an error answer is small: read it, the test looks at it
        if r.status_code != 429 or time.monotonic() > deadline:
            return client, r
        r.close()
        time.sleep(0.2)  # another test's exports are still winding down


def _running(c: CollectorProcess, token: str, eid: str) -> bool:
    r = httpx.get(f"{c.http_url}/api/v1/exports/{eid}", headers={"Authorization": f"Bearer {token}"})
    return r.status_code == 200 and r.json()["state"] == "running"


def test_exports_run_a_few_at_a_time_and_a_hung_up_one_frees_its_slot(busy) -> None:  # noqa: ANN001
    c, tokens = busy
    opened = [_open(c, tokens["alice"], retry=True), _open(c, tokens["alice"])]
    try:
        assert all(r.status_code == 200 for _, r in opened)
        third_client, third = _open(c, tokens["alice"])
        third_client.close()
        assert third.status_code == 429 and int(third.headers["Retry-After"]) > 0
        assert "limit per user" in third.json()["error"]
        bob_client, bob = _open(c, tokens["bob"])  # the third slot overall
        try:
            assert bob.status_code == 200
            root_client, root = _open(c, tokens["root"])
            root_client.close()
            assert root.status_code == 429 and "exports are running" in root.json()["error"]
        finally:
            bob.close()
            bob_client.close()
    finally:
        eids = [r.headers["X-Auditlake-Export-Id"] for _, r in opened]
        for client, r in opened:
            r.close()
            client.close()
    # The clients hung up: their exports stop (not encoding on for no one),
    # free their slots, and each is on record as incomplete.
    deadline = time.monotonic() + 20
    while any(_running(c, tokens["alice"], e) for e in eids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_running(c, tokens["alice"], e) for e in eids)
    client, again = _open(c, tokens["alice"])
    again.close()
    client.close()
    assert again.status_code == 200
    for eid in eids:
        assert wait_count(c.data, f"action = 'export' AND resource_id = '{eid}' AND outcome = 'failure'", 1) == 1


def test_an_export_is_on_record_before_its_first_byte(busy) -> None:  # noqa: ANN001
    c, tokens = busy
    client, r = _open(c, tokens["bob"], retry=True)
    try:
        assert r.status_code == 200
        eid = r.headers["X-Auditlake-Export-Id"]
        # Nothing read yet: the start is already durable (and soon queryable).
        assert wait_count(c.data, f"action = 'export_started' AND resource_id = '{eid}'", 1) == 1
    finally:
        r.close()
        client.close()


def test_export_ids_are_the_servers_and_a_handle_is_private_to_its_user(busy) -> None:  # noqa: ANN001
    c, tokens = busy

    def export(user: str, handle: str) -> httpx.Response:
        return httpx.get(f"{c.http_url}/api/v1/export", timeout=60,
                         params={"format": "csv", "tenant": "acme", "eid": handle, "resource_id": "doc-1"},
                         headers={"Authorization": f"Bearer {tokens[user]}"})

    mine = export("alice", "shared-handle-1")
    theirs = export("root", "shared-handle-1")  # the same handle, another user: no clash
    assert mine.status_code == 200 and theirs.status_code == 200
    a, b = mine.headers["X-Auditlake-Export-Id"], theirs.headers["X-Auditlake-Export-Id"]
    assert a != b and "shared-handle-1" not in (a, b)
    again = export("alice", "shared-handle-1")
    assert again.status_code == 400 and again.json()["parameter"] == "eid"
    # Each manifest is its owner's, under the server's id, and the handle
    # finds only the asker's own export.
    as_alice = {"Authorization": f"Bearer {tokens['alice']}"}
    m_a = httpx.get(f"{c.http_url}/api/v1/exports/{a}/manifest", headers=as_alice)
    assert m_a.status_code == 200 and m_a.json()["exported_by"] == "alice"
    p = httpx.get(f"{c.http_url}/api/v1/exports/shared-handle-1", headers=as_alice)
    assert p.status_code == 200 and p.json()["id"] == a
    assert httpx.get(f"{c.http_url}/api/v1/exports/{b}/manifest", headers=as_alice).status_code == 404
    saved = json.loads((Path(c.data) / "exports" / f"{a}.manifest.json").read_text())
    assert saved["exported_by"] == "alice" and saved["sha256"] == m_a.json()["sha256"]


def test_an_api_page_is_capped_in_bytes_and_its_cursor_continues(busy) -> None:  # noqa: ANN001
    c, tokens = busy
    api = httpx.Client(base_url=c.http_url, timeout=60, headers={"Authorization": f"Bearer {tokens['root']}"})
    try:
        seen: list[str] = []
        cursor = None
        pages = 0
        while True:
            params = {"tenant": "acme", "fields": "all", "limit": "1000", "resource_id": None}
            params = {k: v for k, v in params.items() if v is not None}
            if cursor:
                params["cursor"] = cursor
            r = api.get("/api/v1/events", params=params)
            assert r.status_code == 200
            assert len(r.content) < 5 * 1024 * 1024
            body = r.json()
            seen += [e["id"] for e in body["events"]]
            pages += 1
            cursor = body["next_cursor"]
            if not cursor or pages > 20:
                break
        sent = {r["id"] for r in lake_rows(c.data, "SELECT id FROM events WHERE service = 'tests'")}
        assert len(seen) == len(set(seen)) and sent <= set(seen) and len(sent) == EVENTS
        assert pages > 1, "a page of 1000 events of ~500 B each should have been cut at the byte cap"
    finally:
        api.close()


def test_manifests_are_written_once_and_only_the_newest_are_kept(tmp_path: Path) -> None:
    from auditlake.collector.admin.export_runs import ExportLimitReached, ExportRegistry  # noqa: PLC0415

    reg = ExportRegistry(tmp_path / "exports", max_per_user=1, max_total=2, keep_manifests=3)
    a = reg.start("alice", run=object(), handle="my-handle-1")
    with pytest.raises(ExportLimitReached):
        reg.start("alice", run=object())
    b = reg.start("bob", run=object(), handle="my-handle-1")  # another user's handle: no clash
    with pytest.raises(ExportLimitReached):
        reg.start("carol", run=object())
    assert reg.find("my-handle-1", "alice", False) is a and reg.find("my-handle-1", "bob", False) is b
    assert reg.find(a.eid, "bob", False) is None and reg.find(a.eid, "root", True) is a
    reg.finish(a)
    reg.start("alice", run=object())  # the slot is free again
    reg.save_manifest(a.eid, {"exported_by": "alice"})
    with pytest.raises(FileExistsError):
        reg.save_manifest(a.eid, {"exported_by": "mallory"})  # never replaced
    assert reg.load_manifest(a.eid) == {"exported_by": "alice"}
    for i in range(5):
        time.sleep(0.01)
        reg.save_manifest(f"later-export-{i}", {"i": i})
    kept = sorted(p.name for p in (tmp_path / "exports").glob("*.manifest.json"))
    assert kept == [f"later-export-{i}.manifest.json" for i in (2, 3, 4)]
