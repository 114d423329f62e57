"""Erasure by crypto-shredding (docs/erasure.md): with ``[erasure] enabled``
the lake's files hold no plaintext of the personal fields, every reader sees
plaintext, and `auditlake erase` makes one subject's fields read
``[erased]`` everywhere (query, API, export) while `verify` and the
subject's event proofs still pass and other subjects are untouched."""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from auditlake.collector.config import ErasureConfig, erasure_config
from auditlake.collector.errors import ConfigError
from auditlake.collector.storage.datadir import DataDir
from auditlake.collector.streams.feed import LakeFeed
from tests.admin.conftest import add_users, login
from tests.collector.test_auditor_script import run_auditor
from tests.conftest import CollectorProcess, S3Server, run_cli
from tests.wire_client import WireClient, make_event

ERASURE_TOML = '[erasure]\nenabled = true\n'

#: Markers of personal data that must never reach a lake file in clear.
def _event(i: int, user: str) -> dict[str, Any]:
    return make_event(i, tenant_id="acme", user_id=user, ip_address=f"192.0.2.{i % 200}-{user}",
                      user_agent=f"agent-of-{user}", changes=json.dumps({"name": {"after": f"name-of-{user}"}}),
                      metadata=json.dumps({"email": f"{user}@example.org"}), resource_id=f"doc-{i}")


@dataclass
class ErasedLake:
    """A running collector (with the admin API) on an erasure-enabled lake."""

    collector: CollectorProcess
    events: list[dict[str, Any]]
    token: str

    @property
    def data(self) -> Path:
        return self.collector.data

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=self.collector.http_url, timeout=30,
                            headers={"Authorization": f"Bearer {self.token}"})


def _send(collector: CollectorProcess, events: list[dict[str, Any]]) -> None:
    client = WireClient(collector.endpoint)
    try:
        assert client.export(events, collector.api_key("acme")).accepted == len(events)
    finally:
        client.close()


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ErasedLake]:
    root = tmp_path_factory.mktemp("erasure")
    data = root / "data"
    data.mkdir()
    (data / "auditlake.toml").write_text(ERASURE_TOML)
    tokens = add_users(data)
    collector = CollectorProcess(data, http=True).start()
    try:
        events = [_event(i, "ann-subject" if i % 2 else "bob-subject") for i in range(40)]
        events.append(make_event(99, tenant_id="acme", user_id="", ip_address="198.51.100.7"))
        _send(collector, events)
        assert collector.wait_for_count(len(events), "service = 'tests'") == len(events)
        yield ErasedLake(collector, events, tokens["root"])
    finally:
        collector.stop()


def _lake_bytes(data: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted((data / "lake").rglob("*.parquet")))


def _by_id(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in rows}


def test_files_hold_ciphertext_and_readers_see_plaintext(lake: ErasedLake) -> None:
    raw = _lake_bytes(lake.data)
    for marker in (b"ann-subject", b"bob-subject", b"agent-of-", b"name-of-", b"@example.org"):
        assert marker not in raw
    table = pq.read_table(sorted((lake.data / "lake").rglob("*.parquet"))[0]).to_pylist()
    for row in table:
        if row["service"] != "tests":
            continue
        for name in ("user_id", "ip_address", "user_agent", "changes", "metadata"):
            if row["user_id"]:
                assert row[name].startswith("enc:1:"), (name, row[name])
        if not row["user_id"]:  # no subject: stored as sent
            assert row["ip_address"] == "198.51.100.7"
        assert not row["resource_id"].startswith("enc:")  # not a configured field
    rows = _by_id(lake.collector.query_cli("SELECT * FROM events WHERE service = 'tests'"))
    for e in lake.events:
        for name in ("user_id", "ip_address", "user_agent", "changes", "metadata", "resource_id"):
            assert rows[e["id"]][name] == e[name]


def _erase(lake: ErasedLake, user: str) -> str:
    result = run_cli("erase", "--tenant", "acme", "--subject", user, "--reason", "GDPR request 42",
                     "--operator", "dpo", data=lake.data)
    return result.stdout


def _wait(check: Any, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def test_erase_shreds_one_subject_everywhere_and_evidence_holds(lake: ErasedLake, tmp_path: Path) -> None:
    out = _erase(lake, "ann-subject")
    assert "destroyed" in out and "erase checkpoint" in out
    ann = [e for e in lake.events if e["user_id"] == "ann-subject"]
    bob = [e for e in lake.events if e["user_id"] == "bob-subject"]

    # the DuckDB view / `auditlake query`
    rows = _by_id(lake.collector.query_cli("SELECT * FROM events WHERE service = 'tests'"))
    for e in ann:
        for name in ("user_id", "ip_address", "user_agent", "changes", "metadata"):
            assert rows[e["id"]][name] == "[erased]"
        assert rows[e["id"]]["resource_id"] == e["resource_id"]  # not personal: still there
    for e in bob:
        assert rows[e["id"]]["user_id"] == "bob-subject" and rows[e["id"]]["metadata"] == e["metadata"]

    # the admin API (a long-lived reader: its key cache follows within about a second)
    with lake.api() as api:
        def erased_in_api() -> bool:
            body = api.get(f"/api/v1/events/{ann[0]['id']}").json()
            return bool(body.get("user_id") == "[erased]")
        assert _wait(erased_in_api)
        body = api.get(f"/api/v1/events/{bob[0]['id']}").json()
        assert body["user_id"] == "bob-subject" and body["user_agent"] == "agent-of-bob-subject"
    # the admin UI's event page
    ui = login(lake.collector.http_url, "root")
    try:
        page = ui.get(f"/events/{ann[2]['id']}").text
        assert "[erased]" in page and "ann-subject" not in page and "agent-of-ann" not in page
        assert "agent-of-bob-subject" in ui.get(f"/events/{bob[2]['id']}").text
    finally:
        ui.close()

    # an export
    target = tmp_path / "out.csv"
    run_cli("export", "--format", "csv", "--output", str(target), "--tenant", "acme", "--quiet", data=lake.data)
    exported = {r["id"]: r for r in csv.DictReader(io.StringIO(target.read_text()))}
    assert exported[ann[1]["id"]]["user_id"] == "[erased]"
    assert exported[ann[1]["id"]]["ip_address"] == "[erased]"
    assert exported[bob[1]["id"]]["user_id"] == "bob-subject"
    assert b"ann-subject" not in target.read_bytes()
    for fmt in ("jsonl", "ocsf"):
        lines = tmp_path / f"out.{fmt}"
        run_cli("export", "--format", fmt, "--output", str(lines), "--tenant", "acme", "--quiet", data=lake.data)
        text = lines.read_text()
        assert "[erased]" in text and "ann-subject" not in text and "bob-subject" in text, fmt

    # the erasure is an audit event (tenant acme, by the operator, no subject in clear)
    events = lake.collector.query_cli("SELECT * FROM events WHERE action = 'erase'")
    assert len(events) == 1
    assert events[0]["tenant_id"] == "acme" and events[0]["resource_type"] == "subject"
    assert events[0]["user_id"] == "dpo" and events[0]["reason"] == "GDPR request 42"
    key_id = events[0]["resource_id"]
    assert "ann-subject" not in json.dumps(events[0])

    # ... and a signed checkpoint of kind erase
    checkpoints = [json.loads(p.read_text()) for p in (lake.data / "checkpoints").rglob("*.json")]
    erase = [c for c in checkpoints if c.get("kind") == "erase"]
    assert len(erase) == 1 and erase[0]["extra"]["key_id"] == key_id
    assert erase[0]["extra"]["tenant_id"] == "acme" and erase[0]["extra"]["reason"] == "GDPR request 42"
    assert not (lake.data / "keys" / "subject-keys" / key_id).exists()

    # the evidence still holds: verify, and a proof of an erased event
    result = run_cli("verify", "--quiet", data=lake.data, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    proof = tmp_path / "proof.json"
    run_cli("proof", ann[0]["id"], "--output", str(proof), data=lake.data)
    stored = dict(json.loads(proof.read_text())["event"])
    assert stored["user_id"].startswith("enc:1:")  # the proof carries what the chain covers
    result = run_cli("proof", "verify", str(proof), "--public-key", str(lake.data / "keys" / "signing.pub.pem"),
                     check=False)
    assert result.returncode == 0, result.stdout + result.stderr

    # the independent auditor's script (docs/integrity.md section 7) accepts the erase checkpoint
    code, report = run_auditor(lake.data, "--public-key", str(lake.data / "keys" / "signing.pub.pem"))
    assert code == 0 and report["ok"] is True, report["errors"]

    # a stream's feed (what a SIEM receives) reads like the view
    feed = LakeFeed(DataDir.resolve(lake.data, None))
    feed.refresh()
    (writer, (_, last)), = feed.heads().items()
    fed = _by_id(feed.read_after(writer, 0, last).rows.to_pylist())
    assert fed[ann[0]["id"]]["user_id"] == "[erased]" and fed[ann[0]["id"]]["changes"] == "[erased]"
    assert fed[bob[0]["id"]]["user_id"] == "bob-subject" and fed[bob[0]["id"]]["changes"] == bob[0]["changes"]

    # a later event of the erased subject is readable again (a new key)
    later = _event(500, "ann-subject")
    _send(lake.collector, [later])
    assert lake.collector.wait_for_count(1, f"id = '{later['id']}'") == 1
    # (a reader's key cache follows the key store within about a second)
    row = _wait(lambda: [r for r in lake.collector.query(f"SELECT user_id, user_agent FROM events WHERE id = "
                                                         f"'{later['id']}'") if r["user_id"] != "[erased]"])
    assert row == [{"user_id": "ann-subject", "user_agent": "agent-of-ann-subject"}]
    assert lake.collector.query(f"SELECT user_id FROM events WHERE id = '{ann[0]['id']}'")[0]["user_id"] == "[erased]"


def test_erase_refuses_when_erasure_is_off(tmp_path: Path) -> None:
    result = run_cli("erase", "--tenant", "acme", "--subject", "x", data=tmp_path / "data", check=False)
    assert result.returncode == 2 and "not enabled" in result.stderr


def test_fields_are_validated() -> None:
    assert erasure_config({}) == ErasureConfig()
    assert not ErasureConfig().enabled
    assert erasure_config({"erasure": {"enabled": True, "fields": ["user_id"]}}).fields == ("user_id",)
    for bad in (["tenant_id"], ["id"], ["action"], ["created_at"], ["nonexistent"], []):
        with pytest.raises(ConfigError, match=r"\[erasure\]"):
            erasure_config({"erasure": {"enabled": True, "fields": bad}})
    with pytest.raises(ConfigError, match="unknown"):
        erasure_config({"erasure": {"enable": True}})


def test_a_fleet_shares_subject_keys_and_one_erase_erases_for_all(
        s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    monkeypatch.setenv("AUDITLAKE_ERASURE", "true")
    url = f"s3://{s3_server.bucket('erasure-fleet')}/lake"
    a, b = (CollectorProcess(tmp_path / name, extra_args=("--lake", url)).start() for name in ("a", "b"))
    try:
        carol = [_event(i, "carol") for i in range(6)]
        dave = [_event(10 + i, "dave") for i in range(4)]
        _send(a, carol[:3] + dave[:2])
        _send(b, carol[3:] + dave[2:] + [carol[0]])  # carol[0] again: a retry stored by both writers
        assert a.wait_for_count(len(carol) + len(dave), "service = 'tests'") == len(carol) + len(dave)
        fs = s3_server.filesystem()
        keys = [i.path for i in fs.get_file_info(pafs.FileSelector("erasure-fleet/lake/_auditlake/subject-keys"))
                if i.base_name not in ("salt", "generation")]
        assert len(keys) == 2  # one key per subject for the whole fleet
        # both writers' copies of carol[0] are the same ciphertext: the view keeps one
        assert a.query(f"SELECT count(*) AS n FROM events WHERE id = '{carol[0]['id']}'") == [{"n": 1}]
        assert b.query(f"SELECT user_id FROM events WHERE id = '{carol[4]['id']}'") == [{"user_id": "carol"}]

        out = run_cli("erase", *b.lake_args, "--tenant", "acme", "--subject", "carol", data=b.data).stdout
        assert "destroyed" in out

        def erased_at_a() -> dict[str, dict[str, Any]] | None:
            # Collector a drops its cached copy of the key within about a second (docs/erasure.md).
            now = _by_id(a.query("SELECT id, user_id, metadata FROM events WHERE service = 'tests'"))
            return now if now[carol[0]["id"]]["user_id"] == "[erased]" else None

        rows = _wait(erased_at_a)
        assert rows is not None
        assert {rows[e["id"]]["user_id"] for e in carol} == {"[erased]"}
        assert {rows[e["id"]]["metadata"] for e in carol} == {"[erased]"}
        assert [rows[e["id"]]["user_id"] for e in dave] == ["dave"] * len(dave)
        left = [i.base_name for i in fs.get_file_info(pafs.FileSelector("erasure-fleet/lake/_auditlake/subject-keys"))]
        erased_key = a.query("SELECT resource_id FROM events WHERE action = 'erase'")[0]["resource_id"]
        assert erased_key in {k.rsplit("/", 1)[1] for k in keys} and erased_key not in left
        # collector a keeps writing dave with the shared key
        later = _event(50, "dave")
        _send(a, [later])
        assert a.wait_for_count(1, f"id = '{later['id']}'") == 1
        assert a.query(f"SELECT user_id FROM events WHERE id = '{later['id']}'") == [{"user_id": "dave"}]
    finally:
        assert a.stop() == 0 and b.stop() == 0


def test_a_bad_erasure_table_stops_the_collector_at_start(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "auditlake.toml").write_text('[erasure]\nenabled = true\nfields = ["tenant_id"]\n')
    result = run_cli("serve", "--grpc-listen", "127.0.0.1:1", "--http-listen", "", data=data, check=False,
                     timeout=60)
    assert result.returncode != 0 and "tenant_id" in result.stderr
