"""The admin server against hostile clients: half-sent requests, spoofed
client addresses, guessed passwords, stale credentials (issue 17)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from auditlake.collector.admin.users import UserStore
from tests.admin.conftest import PASSWORD, csrf_of, lake_rows, login, wait_count
from tests.conftest import CollectorProcess, run_cli


@pytest.fixture
def admin_collector(tmp_path: Path) -> Iterator[CollectorProcess]:
    """A collector with the admin server, a 1-second request deadline, and
    users root (admin) and alice (auditor of acme)."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "auditlake.toml").write_text("[admin]\nrequest_timeout_s = 1.0\nverify_interval_minutes = 0\n")
    store = UserStore(data / "keys")
    store.add("root", "admin", (), PASSWORD)
    store.add("alice", "auditor", ("acme",), PASSWORD)
    c = CollectorProcess(data, http=True)
    c.start()
    try:
        yield c
    finally:
        c.stop()


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        return sock.recv(1024) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_a_half_sent_request_is_cut_off_and_others_are_served(admin_collector: CollectorProcess) -> None:
    host, port = admin_collector.http_url.removeprefix("http://").split(":")
    slow = socket.create_connection((host, int(port)))
    try:
        slow.sendall(b"GET /login HTTP/1.1\r\nHost: x\r\n")  # headers never finished
        started = time.monotonic()
        for _ in range(5):  # trickling bytes does not buy time
            time.sleep(0.2)
            slow.sendall(b"X-a: b\r\n")
        assert _closed_within(slow, 5.0), "the server kept a half-sent request open"
        assert time.monotonic() - started < 6
    finally:
        slow.close()
    assert httpx.get(admin_collector.http_url + "/login", timeout=10).status_code == 200


def test_a_slow_body_is_cut_off_too(admin_collector: CollectorProcess) -> None:
    host, port = admin_collector.http_url.removeprefix("http://").split(":")
    slow = socket.create_connection((host, int(port)))
    try:
        slow.sendall(b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n"
                     b"Content-Type: application/x-www-form-urlencoded\r\n\r\nusername=")
        assert _closed_within(slow, 5.0)
    finally:
        slow.close()


def test_x_forwarded_for_from_an_unconfigured_peer_is_ignored(admin_collector: CollectorProcess) -> None:
    # Five wrong passwords, each claiming another client address: all count
    # against the real peer (127.0.0.1), so the sixth attempt is throttled.
    client = httpx.Client(base_url=admin_collector.http_url, timeout=30)
    statuses = []
    for i in range(7):
        page = client.get("/login")
        r = client.post("/login", headers={"X-Forwarded-For": f"198.51.100.{i}"},
                        data={"username": f"nobody{i}", "password": "wrong password!", "csrf": csrf_of(page.text),
                              "next": "/"})
        statuses.append(r.status_code)
    assert statuses[:5] == [401] * 5 and 429 in statuses[5:], statuses
    assert wait_count(admin_collector.data, "action = 'login_failed'", 5) >= 5
    ips = {r["ip_address"] for r in lake_rows(admin_collector.data,
                                               "SELECT ip_address FROM events WHERE action = 'login_failed'")}
    assert ips == {"127.0.0.1"}


def test_api_tokens_are_listed_revoked_and_expire(admin_collector: CollectorProcess) -> None:
    data = admin_collector.data
    token = run_cli("users", "token", "create", "alice", "--description", "ci", data=data).stdout.strip()
    short = run_cli("users", "token", "alice", "--expires-days", "0.00002", data=data).stdout.strip()  # ~2 s
    listed = run_cli("users", "token", "list", "alice", data=data).stdout.splitlines()
    assert len(listed) == 2 and any(line.endswith("\tci") for line in listed)
    api = admin_collector.http_url + "/api/v1/events"
    assert httpx.get(api, headers={"Authorization": f"Bearer {token}"}).status_code == 200
    time.sleep(2.5)
    expired = httpx.get(api, headers={"Authorization": f"Bearer {short}"})
    assert expired.status_code == 401 and "expired" in expired.json()["error"]
    token_id = token.split("_")[1]
    run_cli("users", "token", "revoke", "alice", token_id, data=data)
    assert httpx.get(api, headers={"Authorization": f"Bearer {token}"}).status_code == 401
    assert run_cli("users", "token", "revoke", "alice", token_id, data=data, check=False).returncode == 1


def test_the_token_limit_per_user(tmp_path: Path) -> None:
    store = UserStore(tmp_path / "keys")
    store.add("bob", "auditor", ("acme",), PASSWORD)
    for _ in range(20):
        store.create_token("bob")
    from auditlake.collector.errors import ConfigError  # noqa: PLC0415

    with pytest.raises(ConfigError, match="the limit"):
        store.create_token("bob")


def test_login_still_works_after_the_limits(admin_collector: CollectorProcess) -> None:
    client = login(admin_collector.http_url, "root")
    assert client.get("/").status_code == 200


# -- sessions and credentials --------------------------------------------------------


def _add_user(data: Path, *args: str, password: str = PASSWORD) -> None:
    run_cli("users", "add", *args, data=data, input=password + "\n")


def test_a_password_change_ends_the_old_sessions(admin_collector: CollectorProcess) -> None:
    old = login(admin_collector.http_url, "alice")
    assert old.get("/").status_code == 200
    _add_user(admin_collector.data, "alice", "--role", "auditor", "--tenant", "acme", "--replace",
              password="a brand new password")
    r = old.get("/")
    assert r.status_code == 303 and r.headers["location"].startswith("/login")
    assert login(admin_collector.http_url, "alice", "a brand new password").get("/").status_code == 200


def test_a_user_re_added_under_the_same_name_gets_no_old_session(admin_collector: CollectorProcess) -> None:
    old = login(admin_collector.http_url, "alice")
    run_cli("users", "remove", "alice", data=admin_collector.data)
    _add_user(admin_collector.data, "alice", "--role", "admin")  # the same password, now an admin
    assert old.get("/api/v1/events", params={"tenant": "globex"}).status_code == 401
    assert old.get("/").status_code == 303


def test_users_logout_ends_every_session_of_a_user(admin_collector: CollectorProcess) -> None:
    a, b = login(admin_collector.http_url, "root"), login(admin_collector.http_url, "root")
    other = login(admin_collector.http_url, "alice")
    out = run_cli("users", "logout", "root", data=admin_collector.data).stdout
    assert "every session of root ends" in out
    assert a.get("/").status_code == 303 and b.get("/").status_code == 303
    assert other.get("/").status_code == 200
    assert login(admin_collector.http_url, "root").get("/").status_code == 200


def test_simultaneous_wrong_passwords_are_checked_only_as_often_as_the_throttle_allows(
        admin_collector: CollectorProcess) -> None:
    import concurrent.futures  # noqa: PLC0415

    def attempt(i: int) -> int:
        with httpx.Client(base_url=admin_collector.http_url, timeout=60) as c:
            page = c.get("/login")
            return c.post("/login", data={"username": "root", "password": f"wrong guess {i}",
                                          "csrf": csrf_of(page.text), "next": "/"}).status_code

    with concurrent.futures.ThreadPoolExecutor(30) as pool:
        statuses = list(pool.map(attempt, range(30)))
    assert statuses.count(401) <= 5, statuses  # the policy's free failures, however simultaneous
    assert statuses.count(429) >= 25
    assert wait_count(admin_collector.data, "action = 'login_failed'", statuses.count(401)) == statuses.count(401)


# -- what readers see and leave behind ---------------------------------------------------


def test_an_auditor_sees_whether_the_lake_verified_not_how_big_it_is(lake) -> None:  # noqa: ANN001
    from tests.admin.conftest import login as browser_login  # noqa: PLC0415

    deadline = time.monotonic() + 60
    with lake.api("root") as root:
        while root.get("/api/v1/integrity").json().get("ok") is None and time.monotonic() < deadline:
            time.sleep(0.5)
        full = root.get("/api/v1/integrity").json()
    assert "events" in full.get("summary", "")
    with lake.api("alice") as alice:
        seen = alice.get("/api/v1/integrity").json()
    assert set(seen) <= {"state", "ok", "time", "seconds", "source", "summary"}
    assert seen["ok"] == full["ok"] and not any(ch.isdigit() for ch in seen.get("summary", ""))
    page = browser_login(lake.url, "alice").get("/integrity").text
    assert "Signed chain heads" not in page and full["summary"] not in page


def test_a_read_naming_a_tenant_that_does_not_exist_creates_no_tenant(lake) -> None:  # noqa: ANN001
    made_up = f"no-such-tenant-{time.time_ns()}"
    with lake.api("root") as root:
        assert root.get("/api/v1/events", params={"tenant": made_up}).json()["events"] == []
        assert root.get("/api/v1/events", params={"tenant": "acme", "limit": "1"}).status_code == 200
    data = lake.collector.data
    where = f"tenant_id = '_auditlake' AND metadata LIKE '%{made_up}%'"
    assert wait_count(data, where, 1) == 1
    assert lake_rows(data, f"SELECT count(*) AS n FROM events WHERE tenant_id = '{made_up}'")[0]["n"] == 0
    # A real tenant named alone still gets the record of its read.
    assert wait_count(data, "tenant_id = 'acme' AND service = 'auditlake-admin' AND action = 'read'", 1) >= 1


def test_a_slow_admin_query_is_interrupted(lake) -> None:  # noqa: ANN001
    from auditlake.collector.admin.search import LakeReader, QueryTimeout  # noqa: PLC0415
    from auditlake.collector.storage.datadir import DataDir  # noqa: PLC0415

    reader = LakeReader(DataDir(lake.collector.data), timeout_s=0.3, memory_limit_mb=256)
    try:
        started = time.monotonic()
        with pytest.raises(QueryTimeout, match="longer than 0.3 s"):
            reader._fetch("SELECT count(*) FROM range(100000000000) a, events b", [])
        assert time.monotonic() - started < 10
        assert reader._fetch("SELECT current_setting('memory_limit')", [])[0][0] == "244.1 MiB"  # 256 MB
        assert reader._fetch("SELECT count(*) FROM events WHERE tenant_id = 'acme'", [])[0][0] > 0
    finally:
        reader.close()


def test_a_login_form_token_with_non_ascii_characters_is_refused_not_a_crash(
        admin_collector: CollectorProcess) -> None:
    client = httpx.Client(base_url=admin_collector.http_url, timeout=30)
    client.get("/login")
    r = client.post("/login", data={"username": "root", "password": PASSWORD, "csrf": "é" * 10, "next": "/"})
    assert r.status_code == 403
