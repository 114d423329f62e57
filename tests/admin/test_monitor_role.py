"""The ``monitor`` role (docs/admin.md "Users and roles"): its API token reads
signed tree heads and consistency proofs, enough for `auditlake monitor
--url`, and nothing else.  Every other route of the application, found by
walking its route table (so a route added later is checked without anyone
listing it here), answers a monitor 403, recorded as a denied read; a
monitor cannot sign in to the pages; and `users add --role monitor` takes
no tenant."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import BaseRoute, Mount, Route

from auditlake.collector.admin.routes.principal import monitors_may_call
from auditlake.collector.admin.server import AdminServer
from auditlake.collector.admin.users import UserStore
from auditlake.collector.integrity.proofs import check_consistency, check_heads, read_signed
from auditlake.collector.integrity.signing import KeyRing
from auditlake.collector.storage.datadir import DataDir
from tests.admin.conftest import PASSWORD, Lake, lake_rows, wait_count
from tests.conftest import run_cli

MONITOR = "heads-monitor"
#: The only routes a monitor may call.
FOR_MONITORS = {"/api/v1/checkpoints/heads", "/api/v1/checkpoints/{writer}/head", "/api/v1/proofs/consistency"}
#: Routes that answer without a user (the test below holds every other route
#: to a 401 or a login redirect without credentials, so none hides here).
WITHOUT_USER = {("/login", "GET"), ("/login", "POST"), ("/logout", "POST"), ("/api/v1/openapi.json", "GET")}


@pytest.fixture(scope="module")
def monitor_token(lake: Lake) -> Iterator[str]:
    """The API token of a monitor added to the running collector's users."""
    store = UserStore(lake.collector.data / "keys")
    store.add(MONITOR, "monitor", (), PASSWORD)
    try:
        yield store.create_token(MONITOR, "auditlake monitor --url")
    finally:
        store.remove(MONITOR)


def _routes(tmp_path: Path) -> list[BaseRoute]:
    """The admin application's route table, as the collector serves it."""
    (tmp_path / "routes").mkdir()
    app: Any = AdminServer.for_reading(DataDir(tmp_path / "routes"), users_dir=tmp_path / "routes" / "keys").app
    while not isinstance(app, Starlette):  # under the ops endpoints and the security headers
        app = app.app
    return list(app.routes)


def _calls(routes: list[BaseRoute]) -> list[tuple[str, str, Route]]:
    """(path, method, route) of every route, HEAD left out (GET's twin)."""
    out = []
    for route in routes:
        if isinstance(route, Route):
            out += [(route.path, m, route) for m in sorted(route.methods or ()) if m != "HEAD"]
        else:
            assert isinstance(route, Mount) and route.path == "/static", f"a route of a new kind: {route!r}"
    return out


def _writer(lake: Lake) -> str:
    return (lake.collector.data / "writer_id").read_text().strip()


def _url(path: str, lake: Lake) -> str:
    event = lake.sent(tenant_id="acme")[0]["id"]
    return (path.replace("{id}", event).replace("{eid}", "monitor-probe-0001")
            .replace("{writer}", _writer(lake)))


def test_a_monitors_token_reads_heads_and_consistency_proofs(lake: Lake, monitor_token: str) -> None:
    keys = KeyRing.parse((lake.collector.data / "keys" / "signing.pub.pem").read_text())
    writer = _writer(lake)
    api = httpx.Client(base_url=lake.url, timeout=30, headers={"Authorization": f"Bearer {monitor_token}"})
    with api:
        heads = api.get("/api/v1/checkpoints/heads")
        assert heads.status_code == 200, heads.text
        for head in heads.json()["heads"]:
            cp, sig = read_signed(head, "head")
            assert check_heads(cp, sig, cp, sig, [], keys).ok
        one = api.get(f"/api/v1/checkpoints/{writer}/head")
        assert one.status_code == 200 and one.json()["writer_id"] == writer
        proof = api.get("/api/v1/proofs/consistency", params={"writer": writer, "from": 1})
        assert proof.status_code == 200, proof.text
        assert check_consistency(proof.json(), keys).ok
        # a bad parameter is still the endpoint's own 400, not a refusal
        bad = api.get("/api/v1/proofs/consistency", params={"writer": writer, "from": "x"})
        assert bad.status_code == 400 and bad.json()["parameter"] == "from"
    where = f"user_id = '{MONITOR}' AND outcome = 'success' AND metadata LIKE '%api-consistency-proof%'"
    assert wait_count(lake.collector.data, where, 1) >= 1
    # admins keep reading them; auditors keep getting 403
    for user, status in (("root", 200), ("alice", 403)):
        with lake.api(user) as other:
            for path in FOR_MONITORS:
                r = other.get(_url(path, lake), params={"writer": writer, "from": 1})
                assert r.status_code == status, (user, path, r.text)
                assert status == 200 or "admins and monitors" in r.json()["error"]


def test_auditlake_monitor_runs_clean_with_a_monitors_token(lake: Lake, monitor_token: str, tmp_path: Path) -> None:
    state = tmp_path / "heads.json"
    key = str(lake.collector.data / "keys" / "signing.pub.pem")
    args = ("monitor", "--url", lake.url, "--state", str(state), "--public-key", key)
    env = {"AUDITLAKE_DATA": str(tmp_path / "no-lake-here"), "AUDITLAKE_ADMIN_TOKEN": monitor_token}
    first = run_cli(*args, check=False, env=env)
    assert first.returncode == 0 and "first seen" in first.stdout, first.stdout + first.stderr
    assert _writer(lake) in json.loads(state.read_text())["heads"]
    again = run_cli(*args, check=False, env=env)
    assert again.returncode == 0, again.stdout + again.stderr


def test_every_other_route_refuses_a_monitor(lake: Lake, monitor_token: str, tmp_path: Path) -> None:
    routes = _routes(tmp_path)
    calls = _calls(routes)
    # the marks are exactly on the three routes, and those routes exist
    marked = {path for path, _, route in calls if monitors_may_call(route.endpoint)}
    assert marked == FOR_MONITORS
    assert {(path, method) for path, method, _ in calls} >= WITHOUT_USER
    refused = [(path, method) for path, method, _ in calls
               if path not in FOR_MONITORS and (path, method) not in WITHOUT_USER]
    # among them what the task of a monitor never needs: events, an event's proof, exports, users, streams...
    assert {("/api/v1/events", "GET"), ("/api/v1/events/{id}", "GET"), ("/api/v1/events/{id}/proof", "GET"),
            ("/api/v1/export", "GET"), ("/users", "GET"), ("/api/v1/streams", "GET"), ("/api/v1/integrity", "GET"),
            ("/", "GET"), ("/account/tokens", "POST")} <= set(refused)

    anonymous = httpx.Client(base_url=lake.url, timeout=30, follow_redirects=False)
    monitor = httpx.Client(base_url=lake.url, timeout=30, follow_redirects=False,
                           headers={"Authorization": f"Bearer {monitor_token}"})
    with anonymous, monitor:
        for path, method in refused:
            url = _url(path, lake)
            # the route needs a user: nobody signed in gets a 401 or the login form
            nobody = anonymous.request(method, url)
            assert nobody.status_code == 401 or nobody.headers.get("location", "").startswith("/login?next="), (
                path, method, nobody.status_code)
            # and a monitor is refused before the handler runs (no parameter is even looked at)
            r = monitor.request(method, url)
            assert r.status_code == 403, (path, method, r.status_code, r.text[:300])
            if path.startswith("/api/"):
                assert r.headers["content-type"].startswith("application/json"), path
                assert "monitor" in r.json()["error"], (path, r.text)
            else:
                assert r.headers["content-type"].startswith("text/html"), path
                assert "monitor account has no pages" in r.text, path
            assert "acme" not in r.text and "tree_size" not in r.text, path
        # with parameters that would make an auditor's or admin's call succeed, the same
        for url in ("/api/v1/events?tenant=acme", "/api/v1/export?format=jsonl", "/api/v1/stats?by=outcome",
                    "/?range=all", "/users", "/api/v1/streams", "/api/v1/integrity"):
            r = monitor.get(url)
            assert r.status_code == 403, (url, r.text[:300])
    where = f"user_id = '{MONITOR}' AND outcome = 'denied' AND tenant_id = '_auditlake'"
    assert wait_count(lake.collector.data, where, len(refused) + 7) >= len(refused) + 7
    rows = lake_rows(lake.collector.data, f"SELECT reason, metadata FROM events WHERE {where}")
    assert {r["reason"] for r in rows} == {"not an endpoint for a monitor"}
    assert "/api/v1/events" in {json.loads(r["metadata"])["path"] for r in rows}


def test_a_monitor_cannot_sign_in_to_the_pages(lake: Lake, monitor_token: str) -> None:
    with httpx.Client(base_url=lake.url, timeout=30, follow_redirects=False) as browser:
        form = browser.get("/login")
        csrf = form.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        r = browser.post("/login", data={"username": MONITOR, "password": PASSWORD, "csrf": csrf, "next": "/"})
        assert r.status_code == 403 and "monitor account cannot sign in" in r.text, r.text
        assert "auditlake_session" not in browser.cookies
        assert browser.get("/").headers["location"].startswith("/login?next=")
    where = f"user_id = '{MONITOR}' AND action = 'login_failed' AND outcome = 'denied'"
    assert wait_count(lake.collector.data, where, 1) >= 1


def test_users_add_gives_a_monitor_no_tenant(tmp_path: Path) -> None:
    data = tmp_path / "data"
    refused = run_cli("users", "add", "heads", "--role", "monitor", "--tenant", "acme", data=data,
                      input=PASSWORD + "\n", check=False)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "a monitor reads no tenant's events" in refused.stderr and "--tenant is for auditors" in refused.stderr
    run_cli("users", "add", "heads", "--role", "monitor", data=data, input=PASSWORD + "\n")
    listed = run_cli("users", "list", data=data).stdout.split("\t")
    assert listed[:3] == ["heads", "monitor", "-"]  # no tenant, not "*" (every tenant)
    token = run_cli("users", "token", "heads", data=data).stdout.strip()
    assert UserStore(data / "keys").check_token(token).is_monitor
