"""The JSON API against a real collector: filters, keyset pagination under
concurrent arrivals, malformed parameters, tenant isolation, CSRF, login
throttling, meta-audit of reads, export and its signed manifest."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.admin.conftest import PASSWORD, Lake, csrf_of, lake_rows, login, send, wait_count
from tests.conftest import CollectorProcess, run_cli
from tests.wire_client import make_event


def all_events(client: httpx.Client, params: dict[str, Any], limit: int = 1000) -> list[dict[str, Any]]:
    """Every event of a filter, following next_cursor."""
    out: list[dict[str, Any]] = []
    cursor = None
    while True:
        r = client.get("/api/v1/events", params={**params, "limit": limit, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200, r.text
        body = r.json()
        out += body["events"]
        cursor = body["next_cursor"]
        if not cursor:
            return out


def ids_sent(lake: Lake, pred: Callable[[dict[str, Any]], bool]) -> set[str]:
    return {e["id"] for e in lake.events if pred(e)}


def test_api_needs_a_token_and_answers_401_json(lake: Lake) -> None:
    r = httpx.get(lake.url + "/api/v1/events")
    assert r.status_code == 401
    assert r.json()["error"] and r.headers["www-authenticate"] == "Bearer"
    r = httpx.get(lake.url + "/api/v1/events", headers={"Authorization": "Bearer alu_nope_nope"})
    assert r.status_code == 401 and "error" in r.json()


def _at(us: int) -> str:
    return (dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=us)).isoformat()


@pytest.mark.parametrize(
    ("params", "pred"),
    [
        ({"tenant": "globex"}, lambda e: e["tenant_id"] == "globex"),
        ({"tenant": ["acme", "initech"]}, lambda e: e["tenant_id"] in ("acme", "initech")),
        ({"user": "acme-user-3"}, lambda e: e["user_id"] == "acme-user-3"),
        ({"action": ["update", "delete"]}, lambda e: e["action"] in ("update", "delete")),
        ({"resource_type": "payment", "tenant": "initech"},
         lambda e: e["resource_type"] == "payment" and e["tenant_id"] == "initech"),
        ({"resource_id": "globex-doc-7"}, lambda e: e["resource_id"] == "globex-doc-7"),
        ({"outcome": ["denied", "failure"], "tenant": "acme"},
         lambda e: e["outcome"] in ("denied", "failure") and e["tenant_id"] == "acme"),
        ({"ip": "10.6.0.3"}, lambda e: e["ip_address"] == "10.6.0.3"),
        ({"q": "FINAL-12"}, lambda e: "final-12" in e["changes"]),
        ({"q": "T-initech-3"}, lambda e: "T-initech-3" in e["metadata"]),
    ],
    ids=["tenant", "tenants", "user", "actions", "resource_type", "resource_id", "outcomes", "ip",
         "text-in-changes", "text-in-metadata"],
)
def test_every_filter_returns_exactly_the_matching_events(
        lake: Lake, params: dict[str, Any], pred: Callable[[dict[str, Any]], bool]) -> None:
    with lake.api("root") as api:
        got = all_events(api, params)
    ours = [e for e in got if e["service"] == "tests"]  # the rest are reads of the log itself
    expected = ids_sent(lake, pred)
    assert expected, "the filter must match something in the known history"
    assert {e["id"] for e in ours} == expected
    assert len(ours) == len(expected)
    # The rest are the admin's records of reads, and events other tests of this
    # lake send late (test_proofs_api's "late-proofs", this file's "late"), in
    # whatever order the files run.
    assert all(e["service"] in ("auditlake-admin", "late", "late-proofs") for e in got if e["service"] != "tests")


def test_time_range_is_inclusive_from_and_exclusive_to(lake: Lake) -> None:
    acme = sorted(lake.sent(tenant_id="acme"), key=lambda e: e["created_at_us"])
    lo, hi = acme[40]["created_at_us"], acme[120]["created_at_us"]
    with lake.api("root") as api:
        got = all_events(api, {"tenant": "acme", "from": _at(lo), "to": _at(hi)})
    assert {e["id"] for e in got if e["service"] == "tests"} == {e["id"] for e in acme[40:120]}
    # a named range: everything of the last 7 days, nothing older
    with lake.api("root") as api:
        got = all_events(api, {"tenant": "initech", "range": "7d"})
    assert {e["id"] for e in got if e["service"] == "tests"} == ids_sent(lake, lambda e: e["tenant_id"] == "initech")


def test_results_are_newest_first_and_detail_has_every_column(lake: Lake) -> None:
    with lake.api("root") as api:
        got = all_events(api, {"tenant": "globex"}, limit=50)
        keys = [(e["created_at"], e["id"]) for e in got]
        assert keys == sorted(keys, reverse=True)
        one = lake.sent(tenant_id="globex", action="update")[0]
        r = api.get(f"/api/v1/events/{one['id']}")
    assert r.status_code == 200
    ev = r.json()
    assert ev["changes"] == one["changes"] and ev["metadata"] == one["metadata"]
    assert {"seq", "chain_hash", "writer_id", "received_at", "date"} <= set(ev)


def test_pagination_has_no_gaps_or_duplicates_while_events_arrive(lake: Lake) -> None:
    before = ids_sent(lake, lambda e: e["tenant_id"] == "acme")
    stop = threading.Event()
    arrived: list[str] = []

    def writer() -> None:  # new acme events keep arriving while we page
        i = 0
        while not stop.is_set():
            batch = [make_event(i, id=str(uuid.uuid4()), tenant_id="acme", service="late")
                     for i in range(i, i + 5)]
            send(lake.collector, batch)
            arrived.extend(e["id"] for e in batch)
            i += 5
            time.sleep(0.05)

    t = threading.Thread(target=writer)
    t.start()
    try:
        seen: list[str] = []
        cursor = None
        with lake.api("root") as api:
            while True:
                p: dict[str, Any] = {"tenant": "acme", "limit": 23}
                if cursor:
                    p["cursor"] = cursor
                body = api.get("/api/v1/events", params=p).json()
                seen += [e["id"] for e in body["events"]]
                cursor = body["next_cursor"]
                time.sleep(0.02)
                if not cursor:
                    break
    finally:
        stop.set()
        t.join()
    assert len(seen) == len(set(seen)), "a row appeared on two pages"
    assert before <= set(seen), f"{len(before - set(seen))} rows fell between pages"
    assert arrived, "the writer must have sent events during the walk"


@pytest.mark.parametrize(
    ("path", "params", "parameter"),
    [
        ("/api/v1/events", {"limit": "0"}, "limit"),
        ("/api/v1/events", {"limit": "abc"}, "limit"),
        ("/api/v1/events", {"limit": "1001"}, "limit"),
        ("/api/v1/events", {"limit": "\u00b2"}, "limit"),  # a digit to str.isdigit, not to int()
        ("/api/v1/events", {"from": "0001-01-01T00:00:00+05:00"}, "from"),
        ("/api/v1/events", {"from": "yesterday"}, "from"),
        ("/api/v1/events", {"from": "2026-02-01", "to": "2026-01-01"}, "to"),
        ("/api/v1/events", {"from": "0001-01-01"}, "from"),
        ("/api/v1/events", {"outcome": "maybe"}, "outcome"),
        ("/api/v1/events", {"range": "3d"}, "range"),
        ("/api/v1/events", {"range": "7d", "from": "2026-01-01"}, "range"),
        ("/api/v1/events", {"cursor": "not-a-cursor"}, "cursor"),
        ("/api/v1/events", {"cursor": "WzEsMl0"}, "cursor"),  # [1,2]: wrong types
        ("/api/v1/events", {"fields": "everything"}, "fields"),
        ("/api/v1/events", {"user": ["a", "b"]}, "user"),
        ("/api/v1/events", {"tenant": "ac\x00me"}, "tenant"),
        ("/api/v1/events", {"q": "x" * 300}, "q"),
        ("/api/v1/events", {"resource_id": "r" * 600}, "resource_id"),
        ("/api/v1/stats", {"by": "tenant"}, "by"),
        ("/api/v1/export", {"format": "xls"}, "format"),
        ("/api/v1/export", {"format": "csv", "eid": "../../etc"}, "eid"),
        ("/api/v1/events/" + "x" * 80, {}, "id"),
    ],
)
def test_malformed_parameters_are_400_with_a_json_error(lake: Lake, path: str, params: dict[str, Any],
                                                         parameter: str) -> None:
    with lake.api("root") as api:
        r = api.get(path, params=params)
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["parameter"] == parameter and body["error"]


def test_an_auditor_never_sees_counts_or_rows_of_another_tenant(lake: Lake) -> None:
    with lake.api("alice") as api:  # auditor of acme
        for path, extra in (("/api/v1/events", {}), ("/api/v1/stats", {}), ("/api/v1/export", {"format": "csv"})):
            for tenants in (["globex"], ["acme", "globex"]):
                r = api.get(path, params={"tenant": tenants, **extra})
                assert r.status_code == 403, (path, tenants, r.text)
                assert "globex" not in r.text.replace("tenant", "") or r.json()["parameter"] == "tenant"
        mine = all_events(api, {})
        assert {e["tenant_id"] for e in mine} == {"acme"}
        # free text that only globex holds: nothing, not even a count
        assert all_events(api, {"q": "globex-secret-marker"}) == []
        stats = api.get("/api/v1/stats", params={"q": "globex-secret-marker"}).json()
        assert stats["total"] == 0
        stats = api.get("/api/v1/stats", params={"resource_type": "document"}).json()
        assert stats["total"] == len(lake.sent(tenant_id="acme", resource_type="document"))
        # a globex event by id: the same 404 as an id that does not exist
        other = lake.sent(tenant_id="globex")[0]["id"]
        r1 = api.get(f"/api/v1/events/{other}")
        r2 = api.get(f"/api/v1/events/{uuid.uuid4()}")
        assert r1.status_code == r2.status_code == 404 and r1.json() == r2.json()
        # an export without a tenant holds only acme rows
        r = api.get("/api/v1/export", params={"format": "jsonl"})
        rows = [json.loads(line) for line in r.text.splitlines()]
        assert rows and {row["tenant_id"] for row in rows} == {"acme"}
    with lake.api("gary") as api:  # auditor of globex sees its marker
        assert len(all_events(api, {"q": "globex-secret-marker"})) == 200


def test_every_read_is_recorded_as_an_audit_event(lake: Lake) -> None:
    marker = f"acme-user-{uuid.uuid4().hex[:6]}"  # a filter value no one else uses
    with lake.api("alice") as api:
        assert api.get("/api/v1/events", params={"user": marker, "tenant": "acme"}).status_code == 200
        assert api.get("/api/v1/events", params={"tenant": "globex"}).status_code == 403
    where = f"user_id = 'alice' AND action = 'read' AND metadata LIKE '%{marker}%'"
    assert wait_count(lake.collector.data, where, 1) == 1
    row = lake_rows(lake.collector.data, f"SELECT * FROM events WHERE {where}")[0]
    assert row["tenant_id"] == "acme" and row["resource_type"] == "audit_log"
    meta = json.loads(row["metadata"])
    assert meta["filter"]["user"] == marker and meta["rows"] == 0
    denied = "user_id = 'alice' AND outcome = 'denied' AND tenant_id = '_auditlake'"
    assert wait_count(lake.collector.data, denied, 1) >= 1


def test_state_changing_forms_reject_a_missing_or_wrong_csrf_token(lake: Lake) -> None:
    client = login(lake.url, "alice")
    try:
        account = client.get("/account")
        token = csrf_of(account.text)
        assert client.post("/account/tokens", data={"description": "x"}).status_code == 403
        assert client.post("/account/tokens", data={"csrf": token[::-1], "description": "x"}).status_code == 403
        assert client.post("/logout", data={"csrf": "forged"}).status_code == 403
        assert client.get("/").status_code == 200, "a rejected logout must not end the session"
        ok = client.post("/account/tokens", data={"csrf": token, "description": "script"})
        assert ok.status_code == 200 and "alu_" in ok.text
        assert client.post("/logout", data={"csrf": token}).status_code == 303
        assert client.get("/").status_code == 303, "logged out"
    finally:
        client.close()
    # a login form posted without the login form's own token (cross-site)
    r = httpx.post(lake.url + "/login", data={"username": "alice", "password": PASSWORD})
    assert r.status_code == 403


def test_session_cookie_is_httponly_and_samesite_strict(lake: Lake) -> None:
    with httpx.Client(base_url=lake.url) as c:
        token = csrf_of(c.get("/login").text)
        r = c.post("/login", data={"username": "root", "password": PASSWORD, "csrf": token})
    cookie = r.headers["set-cookie"].lower()
    assert "auditlake_session=" in cookie and "httponly" in cookie and "samesite=strict" in cookie
    assert "content-security-policy" in r.headers


def test_login_is_throttled_after_repeated_failures(collector_factory: Callable[..., CollectorProcess]) -> None:
    c = collector_factory(http=True)
    from auditlake.collector.admin.users import UserStore

    UserStore(c.data / "keys").add("mallory-target", "admin", (), PASSWORD)
    with httpx.Client(base_url=c.http_url) as client:
        token = csrf_of(client.get("/login").text)
        codes = [client.post("/login", data={"username": "mallory-target", "password": f"guess-{i}",
                                             "csrf": token}).status_code for i in range(5)]
        assert codes == [401] * 5
        r = client.post("/login", data={"username": "mallory-target", "password": PASSWORD, "csrf": token})
        assert r.status_code == 429, "even the right password waits once throttled"
        assert int(r.headers["retry-after"]) >= 1
        time.sleep(int(r.headers["retry-after"]) + 0.2)
        r = client.post("/login", data={"username": "mallory-target", "password": PASSWORD, "csrf": token})
        assert r.status_code == 303
    n = wait_count(c.data, "action = 'login_failed' AND user_id = 'mallory-target'", 5)
    assert n == 5


def test_csv_export_round_trips_and_its_signed_manifest_verifies(lake: Lake, tmp_path: Path) -> None:
    with lake.api("root") as api:
        r = api.get("/api/v1/export", params={"format": "csv", "tenant": "acme", "resource_type": "payment"})
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
        manifest_url = r.headers["link"].split(">")[0].lstrip("<")
        m = api.get(manifest_url)
        assert m.status_code == 200
    path = tmp_path / "acme.csv"
    path.write_bytes(r.content)
    (tmp_path / "acme.csv.manifest.json").write_text(m.text)
    rows = list(csv.DictReader(io.StringIO(r.content.decode("utf-8"), newline="")))
    expected = {e["id"]: e for e in lake.sent(tenant_id="acme", resource_type="payment")}
    assert {row["id"] for row in rows} == set(expected)
    for row in rows:
        sent = expected[row["id"]]
        for field in ("resource_id", "metadata", "changes", "user_id"):
            want = sent[field]
            if want[:1] in ("=", "+", "-", "@", "\t", "\r"):
                want = "'" + want
            assert row[field] == want, field
    manifest = m.json()
    assert manifest["rows"] == len(rows) and manifest["filter"]["tenants"] == ["acme"]
    assert manifest["checkpoints"] and manifest["checkpoints"][0]["chain_hash"]
    pub = tmp_path / "pub.pem"
    pub.write_bytes((lake.collector.data / "keys" / "signing.pub.pem").read_bytes())
    ok = run_cli("export", "verify", str(path), "--public-key", str(pub))
    assert ok.stdout.startswith("OK")
    path.write_bytes(r.content.replace(b"acme", b"acmf", 1))
    bad = run_cli("export", "verify", str(path), "--public-key", str(pub), check=False)
    assert bad.returncode == 1 and "sha256" in bad.stdout


def test_cli_export_writes_jsonl_and_ocsf_with_progress_and_a_manifest(lake: Lake, tmp_path: Path) -> None:
    out = tmp_path / "acme.jsonl"
    p = run_cli("export", "--format", "jsonl", "--tenant", "acme", "--action", "update", "--output", str(out),
                data=lake.collector.data)
    assert "rows" in p.stderr and "100.0%" in p.stderr
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").split("\n") if line]
    sent = {e["id"]: e for e in lake.sent(tenant_id="acme", action="update")}
    assert {r["id"] for r in rows} == set(sent)
    for r in rows:  # JSON keeps every value exactly (unicode, CR, LF, quotes)
        assert (r["metadata"], r["changes"], r["resource_id"]) == (
            sent[r["id"]]["metadata"], sent[r["id"]]["changes"], sent[r["id"]]["resource_id"])
        assert r["created_at"].endswith("Z") and isinstance(r["seq"], int)
    assert run_cli("export", "verify", str(out), data=lake.collector.data).returncode == 0
    ocsf = tmp_path / "initech.ocsf.jsonl"
    run_cli("export", "--format", "ocsf", "--tenant", "initech", "--output", str(ocsf), "--quiet",
            data=lake.collector.data)
    events = [json.loads(line) for line in ocsf.read_text().splitlines()]
    by_action: dict[str, dict[str, Any]] = {e["unmapped"]["action"]: e for e in events}
    assert by_action["login"]["class_uid"] == 3002 and by_action["login"]["type_uid"] == 300201
    assert by_action["logout"]["activity_id"] == 2
    assert by_action["login_failed"]["status_id"] == 2
    assert by_action["update"]["class_uid"] == 6003 and by_action["update"]["activity_id"] == 3
    assert by_action["update"]["resources"][0]["type"] in ("document", "payment")
    assert all(e["metadata"]["tenant_uid"] == "initech" for e in events)
    # the CLI export is itself audited (through the inbox)
    assert wait_count(lake.collector.data, "action = 'export' AND resource_id = 'acme.jsonl'", 1) == 1


@pytest.mark.parametrize("params", [
    {"tenant": "initech", "resource_type": "document"},
    {"tenant": "initech", "resource_type": "document", "range": "1h"},
    {"tenant": "initech", "resource_type": "document", "from": "1970-01-01", "to": "9998-01-01"},
    {"tenant": "initech", "resource_type": "document", "from": "2020-01-01", "by": "outcome"},
])
def test_chart_counts_add_up_to_the_matching_events_for_any_range(lake: Lake, params: dict[str, Any]) -> None:
    with lake.api("root") as api:
        stats = api.get("/api/v1/stats", params=params).json()
        events = all_events(api, {k: v for k, v in params.items() if k != "by"})
    assert stats["total"] == len(events) == sum(sum(v) for v in stats["series"].values())
    assert len(stats["buckets"]) <= 400 and stats["bucket"] in ("hour", "day", "week")


def test_users_are_managed_from_the_cli_with_the_password_on_stdin(tmp_path: Path) -> None:
    data = tmp_path / "d"
    run_cli("users", "add", "bob", "--role", "auditor", "--tenant", "acme", "--tenant", "initech",
            data=data, input="a long enough password\n")
    short = run_cli("users", "add", "eve", "--role", "admin", data=data, input="short\n", check=False)
    assert short.returncode == 2 and "at least 10" in short.stderr
    listed = run_cli("users", "list", data=data).stdout
    assert listed.startswith("bob\tauditor\tacme,initech\t")
    token = run_cli("users", "token", "bob", data=data).stdout.strip()
    assert token.startswith("alu_")
    from auditlake.collector.admin.users import UserStore

    store = UserStore(data / "keys")
    assert store.check_password("bob", "a long enough password") is not None
    assert store.check_token(token).name == "bob"
    stored = (data / "keys" / "users.json").read_text()
    assert "a long enough password" not in stored and token not in stored and "$argon2id$" in stored
    run_cli("users", "remove", "bob", data=data)
    assert store.get("bob") is None and store.users() == []
