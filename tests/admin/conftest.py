"""Fixtures of the admin UI/API tests: one running collector (with its HTTP
server) for the whole package, a known history of events in three tenants, and
users of each role."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from auditlake.collector.admin.users import UserStore
from tests.conftest import CollectorProcess
from tests.wire_client import WireClient, make_event

PASSWORD = "correct horse battery"
HOUR_US = 3600 * 1_000_000
NOW_US = int(time.time() * 1_000_000)

#: Text that a spreadsheet would run as a formula, and other awkward values.
AWKWARD = ["=HYPERLINK(\"http://evil\",\"x\")", "+SUM(A1)", "-2+3", "@cmd", "\tindent", "\rcr",
           "naïve — ünïcödé ✓ 日本語", 'quote "inside", comma', "line\nbreak", "x" * 500]


@dataclass
class Lake:
    """The running collector, its users' names and what was sent."""

    collector: CollectorProcess
    url: str
    events: list[dict[str, Any]]
    tokens: dict[str, str]

    def sent(self, **where: Any) -> list[dict[str, Any]]:
        """The events sent that match ``where`` exactly."""
        return [e for e in self.events if all(e[k] == v for k, v in where.items())]

    def api(self, user: str) -> httpx.Client:
        """An API client authenticated with ``user``'s token."""
        return httpx.Client(base_url=self.url, timeout=30,
                            headers={"Authorization": f"Bearer {self.tokens[user]}"})


def history() -> list[dict[str, Any]]:
    """A known history: acme (300), globex (200), initech (40) over 6 days."""
    events: list[dict[str, Any]] = []
    actions = ["read", "update", "create", "delete", "login", "login_failed", "logout"]
    outcomes = ["success"] * 8 + ["failure", "denied"]
    for tenant, n in (("acme", 300), ("globex", 200), ("initech", 40)):
        for i in range(n):
            action = actions[i % len(actions)]
            changes = json.dumps({"status": {"before": "draft", "after": f"final-{i}"},
                                  "amount": {"before": i, "after": i + 1}}) if action == "update" else "{}"
            meta = {"ticket": f"T-{tenant}-{i}"}
            if tenant == "globex":
                meta["secret"] = "globex-secret-marker"
            if tenant == "acme" and i < len(AWKWARD):
                meta["note"] = AWKWARD[i]
            events.append(make_event(
                i,
                id=str(uuid.uuid4()),
                tenant_id=tenant,
                user_id=f"{tenant}-user-{i % 6}",
                action=action,
                resource_type="document" if i % 3 else "payment",
                resource_id=AWKWARD[i] if tenant == "acme" and i < len(AWKWARD) and "\n" not in AWKWARD[i]
                and "\r" not in AWKWARD[i] and len(AWKWARD[i]) < 500 else f"{tenant}-doc-{i % 25}",
                changes=changes,
                ip_address=f"10.{len(tenant)}.0.{i % 5}",
                outcome=outcomes[i % len(outcomes)],
                reason="" if outcomes[i % len(outcomes)] == "success" else "not allowed",
                metadata=json.dumps(meta, ensure_ascii=False),
                # spread over six days back, every event at its own microsecond
                created_at_us=NOW_US - i * (6 * 24 * HOUR_US // n) - i,
            ))
    return events


def add_users(data: Path) -> dict[str, str]:
    """admin, auditor of acme, auditor of globex; returns their API tokens."""
    store = UserStore(data / "keys")
    store.add("root", "admin", (), PASSWORD)
    store.add("alice", "auditor", ("acme",), PASSWORD)
    store.add("gary", "auditor", ("globex",), PASSWORD)
    return {name: store.create_token(name) for name in ("root", "alice", "gary")}


def send(collector: CollectorProcess, events: list[dict[str, Any]]) -> None:
    """Send events over raw gRPC (batches of 200)."""
    key = collector.api_key("acme", "globex", "initech")
    client = WireClient(collector.endpoint)
    try:
        for i in range(0, len(events), 200):
            client.export(events[i:i + 200], key)
    finally:
        client.close()


@pytest.fixture(scope="package")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lake]:
    """A collector with the known history sealed and three users."""
    root = tmp_path_factory.mktemp("admin")
    collector = CollectorProcess(root / "data", http=True, seal_interval=0.2)
    (root / "data").mkdir()
    tokens = add_users(root / "data")
    collector.start()
    try:
        events = history()
        send(collector, events)
        assert wait_count(collector.data, "service = 'tests'", len(events)) == len(events)
        yield Lake(collector, collector.http_url, events, tokens)
    finally:
        collector.stop()


def lake_rows(data: Path, sql: str) -> list[dict[str, Any]]:
    """Rows of ``sql`` over ``data``'s lake, read in this process (no CLI start-up)."""
    from auditlake.collector.lake.query import connect
    from auditlake.collector.storage.datadir import DataDir

    con = connect(DataDir(data))
    try:
        cur = con.execute(sql)
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
    finally:
        con.close()


def wait_count(data: Path, where: str, expected: int, timeout: float = 20.0) -> int:
    """Poll until ``count(*)`` of events matching ``where`` reaches ``expected``."""
    deadline = time.monotonic() + timeout
    n = -1
    while time.monotonic() < deadline:
        n = int(lake_rows(data, f"SELECT count(*) AS n FROM events WHERE {where}")[0]["n"])
        if n >= expected:
            return n
        time.sleep(0.1)
    return n


def login(url: str, user: str, password: str = PASSWORD) -> httpx.Client:
    """A browser-like client logged in through the form."""
    client = httpx.Client(base_url=url, timeout=30, follow_redirects=False)
    page = client.get("/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert csrf, page.text
    r = client.post("/login", data={"username": user, "password": password, "csrf": csrf.group(1), "next": "/"})
    assert r.status_code == 303, r.text
    return client


def csrf_of(html: str) -> str:
    """The CSRF token embedded in a page's forms."""
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, "no CSRF field on the page"
    return m.group(1)
