"""Ingest keys, admin users, API tokens and browser sessions are the fleet's:
two `auditlake serve --lake s3://...` processes on one bucket (each its own
data directory) accept the same keys, users, tokens and session cookies; a
revocation or a logout at one holds at the other within seconds; a restart
logs nobody out; and changes made at the same moment through different
processes lose nothing (conditional writes against a real S3-API server).
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from auditlake.collector.admin.users import SessionStore, UserStore
from auditlake.collector.ingest.keys import FreshnessPolicy, IngestKeyStore
from auditlake.collector.storage.store import LocalStore, Store
from auditlake.collector.storage.tiers import FLEET, tier_from_uri
from tests.conftest import CollectorProcess, S3Server, run_cli
from tests.wire_client import WireClient, make_event

pytestmark = pytest.mark.s3

PASSWORD = "fleet password 123"
SESSION_COOKIE = "auditlake_session"
#: A revocation or logout must hold at every collector within this (docs/admin.md says 5 s).
PROPAGATION_S = 5.0


# -- fixtures ------------------------------------------------------------------------------


@dataclass
class Fleet:
    """Two collectors (gRPC and HTTP) writing one lake in a bucket."""

    url: str
    a: CollectorProcess
    b: CollectorProcess

    def cli(self, *args: str, input: str | None = None, check: bool = True) -> Any:
        """`auditlake ARGS --lake URL --data A's DIR` (what an operator types at one collector's host)."""
        return run_cli(*args, "--lake", self.url, data=self.a.data, input=input, check=check)


@pytest.fixture(scope="module")
def fleet(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    bucket = s3_server.bucket("shared-state")
    url = f"s3://{bucket}/lake"
    root = tmp_path_factory.mktemp("shared-state")
    with pytest.MonkeyPatch.context() as mp:
        # The collectors and CLIs find the test server the standard AWS way.
        mp.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
        a = CollectorProcess(root / "a", http=True, extra_args=("--lake", url))
        b = CollectorProcess(root / "b", http=True, extra_args=("--lake", url))
        try:
            a.start()
            b.start()
            yield Fleet(url, a, b)
        finally:
            a.stop()
            b.stop()


def _fleet_store(s3_server: S3Server, url: str) -> Store:
    """The lake's fleet state as a process of its own would open it (its own S3 client)."""
    return tier_from_uri(url, endpoint_url=s3_server.endpoint, timeout_s=5.0).child(FLEET, "fleet state")


def _add_user(fleet: Fleet, name: str, *role: str) -> None:
    """`users add` at A's host, then the moment any collector may take to see
    it: each re-reads the users at most once a second for a name it does not
    know (docs/admin.md: a new user logs in everywhere within 2 s), so a login
    right after the add can still be refused."""
    fleet.cli("users", "add", name, *role, input=PASSWORD + "\n")
    time.sleep(1.1)


def _login(base_url: str, user: str, password: str = PASSWORD) -> httpx.Client:
    client = httpx.Client(base_url=base_url, timeout=30, follow_redirects=False)
    form = client.get("/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert csrf, form.text
    r = client.post("/login", data={"username": user, "password": password, "csrf": csrf.group(1), "next": "/"})
    assert r.status_code == 303 and r.headers["location"] == "/", r.text
    return client


def _with_cookie(base_url: str, cookie: str) -> httpx.Client:
    """A browser at ``base_url`` holding the session cookie ``cookie``."""
    return httpx.Client(base_url=base_url, timeout=30, follow_redirects=False, cookies={SESSION_COOKIE: cookie})


def _signed_in(client: httpx.Client) -> bool:
    r = client.get("/account")
    assert r.status_code in (200, 303), r.text
    return r.status_code == 200


def _within(seconds: float, condition: Callable[[], bool]) -> float:
    """Poll ``condition`` until true; the seconds it took (fails after ``seconds``)."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < seconds, f"not within {seconds} s"
        time.sleep(0.1)
    return time.monotonic() - started


def _export(endpoint: str, key: str, tag: str) -> grpc.StatusCode:
    client = WireClient(endpoint)
    try:
        client.export([make_event(0, tenant_id="acme", resource_id=tag)], key=key)
        return grpc.StatusCode.OK
    except grpc.RpcError as exc:
        return exc.code()
    finally:
        client.close()


# -- two collectors, one bucket ---------------------------------------------------------------


def test_an_ingest_key_made_once_works_at_every_collector_and_its_revocation_holds_everywhere(
        fleet: Fleet) -> None:
    token = fleet.cli("keys", "create", "--tenant", "acme").stdout.strip()
    key_id = token.split("_")[1]
    # Nothing in either data directory: the key is in the bucket only.
    assert not (fleet.a.data / "keys" / "ingest.json").exists()
    assert not (fleet.b.data / "keys" / "ingest.json").exists()
    assert key_id in run_cli("keys", "list", "--lake", fleet.url, data=fleet.b.data).stdout
    assert _export(fleet.a.endpoint, token, "at-a") == grpc.StatusCode.OK
    assert _export(fleet.b.endpoint, token, "at-b") == grpc.StatusCode.OK

    fleet.cli("keys", "revoke", key_id)
    took = [_within(PROPAGATION_S, lambda c=c: _export(c.endpoint, token, "late")  # type: ignore[misc]
                    == grpc.StatusCode.UNAUTHENTICATED) for c in (fleet.a, fleet.b)]
    print(f"revocation refused at A after {took[0]:.2f} s, at B after {took[1]:.2f} s")


def test_a_user_made_once_logs_in_anywhere_and_a_session_outlives_a_restart_until_logout(fleet: Fleet) -> None:
    _add_user(fleet, "root", "--role", "admin")
    at_a = _login(fleet.a.http_url, "root")
    assert _signed_in(_login(fleet.b.http_url, "root"))

    cookie = at_a.cookies.get(SESSION_COOKIE)
    assert cookie
    at_b = _with_cookie(fleet.b.http_url, cookie)
    assert _signed_in(at_b)  # made at A, valid at B

    fleet.a.stop()
    fleet.a.start()
    assert _signed_in(_with_cookie(fleet.a.http_url, cookie))  # a restart logs nobody out
    assert _signed_in(at_b)

    # Log out at A (the form's CSRF token is the session's, at either collector).
    page = at_a.get("/account")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert csrf
    r = at_a.post("/logout", data={"csrf": csrf.group(1)})
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert not _signed_in(_with_cookie(fleet.a.http_url, cookie))  # at once where it ended
    took = _within(PROPAGATION_S, lambda: not _signed_in(at_b))
    print(f"logout at A ended the session at B after {took:.2f} s")


def test_users_logout_ends_every_session_at_every_collector(fleet: Fleet) -> None:
    _add_user(fleet, "carol", "--role", "admin")
    at_a, at_b = _login(fleet.a.http_url, "carol"), _login(fleet.b.http_url, "carol")
    assert _signed_in(at_a) and _signed_in(at_b)
    run_cli("users", "logout", "carol", "--lake", fleet.url, data=fleet.b.data)
    _within(PROPAGATION_S, lambda: not _signed_in(at_a) and not _signed_in(at_b))
    assert _signed_in(_login(fleet.a.http_url, "carol"))  # a new login works


def test_an_api_token_made_at_one_collector_works_at_the_other(fleet: Fleet) -> None:
    _add_user(fleet, "dave", "--role", "auditor", "--tenant", "acme")
    at_a = _login(fleet.a.http_url, "dave")
    page = at_a.get("/account")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert csrf
    made = at_a.post("/account/tokens", data={"csrf": csrf.group(1), "description": "script"})
    token = re.search(r"alu_[A-Za-z0-9_-]+", made.text)
    assert made.status_code == 200 and token, made.text
    headers = {"Authorization": f"Bearer {token.group(0)}"}
    # Accepted at once: a token unknown to B's copy of the users makes B read them again.
    r = httpx.get(f"{fleet.b.http_url}/api/v1/integrity", headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    forged = token.group(0)[:-4] + ("AAAA" if not token.group(0).endswith("AAAA") else "BBBB")
    r = httpx.get(f"{fleet.b.http_url}/api/v1/integrity", headers={"Authorization": f"Bearer {forged}"}, timeout=30)
    assert r.status_code == 401


# -- changes at the same moment lose nothing ----------------------------------------------------


@pytest.fixture(params=["s3", "local"])
def two_stores(request: pytest.FixtureRequest, s3_server: S3Server, tmp_path: Path) -> tuple[Store, Store]:
    """The same fleet state opened twice, as two processes would (each its own client)."""
    if request.param == "local":
        return LocalStore(tmp_path / "keys", "keys"), LocalStore(tmp_path / "keys", "keys")
    bucket = s3_server.bucket(f"concurrent-{os.getpid()}-{time.monotonic_ns()}")
    url = f"s3://{bucket}/lake"
    return _fleet_store(s3_server, url), _fleet_store(s3_server, url)


def test_keys_created_and_revoked_at_once_through_two_stores_are_all_kept(two_stores: tuple[Store, Store]) -> None:
    stores = [IngestKeyStore(s) for s in two_stores]
    doomed = stores[0].create(["acme"], "revoked while others are created")

    def create(i: int) -> str:
        return stores[i % 2].create(["acme"], f"key {i}")

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        revoked = pool.submit(stores[1].revoke, doomed.split("_")[1])
        tokens = list(pool.map(create, range(32)))
    assert revoked.result()
    fresh = IngestKeyStore(two_stores[1])  # a reader with no cache
    assert {k.key_id for k in fresh.keys()} == {t.split("_")[1] for t in tokens}  # noqa: SIM118 - a method
    for t in tokens:
        assert fresh.authenticate(t).tenants == frozenset({"acme"})


def test_users_and_tokens_changed_at_once_through_two_stores_are_all_kept(two_stores: tuple[Store, Store]) -> None:
    stores = [UserStore(s) for s in two_stores]
    stores[0].add("owner", "admin", (), PASSWORD)

    def add(i: int) -> str:
        stores[i % 2].add(f"user-{i}", "auditor", ("acme",), PASSWORD)
        return stores[(i + 1) % 2].create_token("owner", f"token {i}")  # the same entry, from both sides

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        tokens = list(pool.map(add, range(8)))
    fresh = UserStore(two_stores[0])
    assert [u.name for u in fresh.users()] == ["owner", *sorted(f"user-{i}" for i in range(8))]
    assert len(fresh.tokens("owner")) == 8
    assert all(fresh.check_token(t).name == "owner" for t in tokens)


# -- what a reader pays --------------------------------------------------------------------------


def test_a_frozen_store_does_not_hold_up_authentication(s3_server: S3Server) -> None:
    """While the bucket hangs, ingest keeps authenticating with the keys it
    knows: a stale copy is re-read in the background, and a caller waits for
    that at most ``wait_s``."""
    bucket = s3_server.bucket(f"frozen-{time.monotonic_ns()}")
    store = _fleet_store(s3_server, f"s3://{bucket}/lake")
    policy = FreshnessPolicy(refresh_s=0.2, stale_s=0.5, wait_s=0.3)
    keys = IngestKeyStore(store, policy=policy)
    token = keys.create(["acme"])
    assert keys.authenticate(token).tenants == frozenset({"acme"})
    s3_server.pause()
    try:
        time.sleep(0.6)  # the copy is stale now: the next reader waits for a re-read that hangs
        worst = 0.0
        for _ in range(20):
            started = time.monotonic()
            assert keys.authenticate(token).key_id == token.split("_")[1]
            worst = max(worst, time.monotonic() - started)
            time.sleep(0.05)
    finally:
        s3_server.resume()
    assert worst < policy.wait_s + 0.2, worst
    print(f"slowest authentication while the store was frozen: {worst * 1000:.0f} ms")


def test_a_revocation_reaches_a_reader_that_was_idle(s3_server: S3Server) -> None:
    """A reader that has not asked for a while does not answer from its old
    copy: past ``stale_s`` it waits for the re-read."""
    bucket = s3_server.bucket(f"idle-{time.monotonic_ns()}")
    writer, reader = (IngestKeyStore(_fleet_store(s3_server, f"s3://{bucket}/lake"),
                                     policy=FreshnessPolicy(refresh_s=0.2, stale_s=0.5, wait_s=2.0))
                      for _ in range(2))
    token = writer.create(["acme"])
    assert reader.authenticate(token)
    writer.revoke(token.split("_")[1])
    time.sleep(0.6)
    with pytest.raises(Exception, match="unknown API key"):
        reader.authenticate(token)


def test_sessions_are_shared_tagged_and_end_everywhere(tmp_path: Path) -> None:
    """Two session stores on one fleet state (two collectors): a session made
    at one is found at the other; a made-up cookie is refused without a
    record being read; a logout holds at the other after its cache time;
    an idle session ends."""
    fleet = LocalStore(tmp_path / "keys", "keys")
    one = SessionStore(fleet, idle_s=60, cache_s=0.2)
    two = SessionStore(LocalStore(tmp_path / "keys", "keys"), idle_s=60, cache_s=0.2)
    cookie, made = one.create("root", "gen-1")
    seen = two.get(cookie)
    assert seen is not None and (seen.user, seen.csrf, seen.generation) == ("root", made.csrf, "gen-1")

    sid, _, tag = cookie.partition(".")
    assert two.get(f"{sid}.{'A' * len(tag)}") is None and two.get(sid) is None
    records = sorted(p.name for p in (tmp_path / "keys" / "sessions").iterdir())
    assert len(records) == 1 and sid not in records[0]  # named by a hash, never by the cookie

    one.end(cookie)
    assert one.get(cookie) is None
    _within(1.0, lambda: two.get(cookie) is None)

    short = SessionStore(fleet, idle_s=0.3, cache_s=0.1)
    cookie, _ = short.create("root", "gen-1")
    assert short.get(cookie) is not None
    time.sleep(0.5)
    assert short.get(cookie) is None
    assert not list((tmp_path / "keys" / "sessions").iterdir())  # the expired record is gone
