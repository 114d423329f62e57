"""SIEM streams: every stored event reaches each destination at least once,
in seq order per writer, through failures, stalls, outages and kill -9;
lag is visible; credentials stay out of logs; the encodings are the
documented ones (docs/streams.md)."""

from __future__ import annotations

import collections
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from auditlake.collector.admin.routes.streams import STATUS_DIR, STATUS_SUFFIX, stream_statuses
from auditlake.collector.admin.users import UserStore
from auditlake.collector.errors import ConfigError
from auditlake.collector.schema import EVENT_SCHEMA
from auditlake.collector.storage.datadir import DataDir
from auditlake.collector.streams.cursor import STATUS_SUFFIX as WRITTEN_SUFFIX
from auditlake.collector.streams.cursor import STREAMS_DIR, write_status
from auditlake.collector.streams.destinations import DeliveryFailed, destination
from auditlake.collector.streams.encode import SD_ID, Encoder
from auditlake.collector.streams.feed import LakeFeed
from auditlake.collector.streams.run import Stream
from auditlake.collector.streams.settings import load_streams
from tests.conftest import CollectorProcess
from tests.ocsf_reference import ocsf_event
from tests.streams.receivers import HttpReceiver, SyslogListener, concatenated_json, self_signed
from tests.wire_client import WireClient, make_event

HOOK_SECRET = "hook-secret-" + uuid.uuid4().hex
HEC_TOKEN = "hec-token-" + uuid.uuid4().hex
NOW_US = int(time.time() * 1_000_000)


# -- stored rows for the encoders ------------------------------------------------------


def stored_rows(n: int) -> pa.Table:
    """``n`` stored events with awkward values (quotes, brackets, non-ASCII,
    empty optional fields) over every action kind and outcome."""
    actions = ["create", "read", "update", "delete", "login", "login_failed", "logout", "export"]
    outcomes = ["success", "failure", "denied"]
    odd = ['quote "q"', "bracket ]", "back\\slash", "naïve ✓ 日本", "line\nbreak", ""]
    cols: dict[str, list[Any]] = {f.name: [] for f in EVENT_SCHEMA}
    for i in range(n):
        row = {
            "id": str(uuid.uuid4()), "tenant_id": f"t{i % 3}", "user_id": odd[i % len(odd)] or "u",
            "action": actions[i % len(actions)], "resource_type": "doc", "resource_id": odd[(i + 1) % len(odd)],
            "changes": json.dumps({"x": {"before": i, "after": odd[i % len(odd)]}}) if i % 2 else "{}",
            "ip_address": "" if i % 4 == 0 else f"10.0.0.{i % 250}", "user_agent": odd[(i + 2) % len(odd)],
            "created_at": NOW_US + i, "outcome": outcomes[i % 3],
            "reason": "" if i % 3 == 0 else odd[i % len(odd)], "service": "svc",
            "trace_id": "" if i % 2 else "ab" * 16, "span_id": "" if i % 2 else "cd" * 8,
            "request_id": "" if i % 5 == 0 else f"r{i}", "metadata": json.dumps({"k": odd[i % len(odd)]}),
            "received_at": NOW_US + i + 5, "writer_id": "w1", "ingest_key_id": "k1", "seq": i + 1,
            "imported": i % 7 == 0, "clock_skew": i % 11 == 0, "chain_hash": f"{i:064x}",
        }
        for k, v in row.items():
            cols[k].append(v)
    arrays = [pa.array(cols[f.name], pa.int64()).cast(f.type) if f.name in ("created_at", "received_at")
              else pa.array(cols[f.name], f.type) for f in EVENT_SCHEMA]
    return pa.Table.from_arrays(arrays, schema=EVENT_SCHEMA)


def test_ocsf_stream_encoding_is_the_export_mapping_vectorised() -> None:
    table = stored_rows(240)
    enc = Encoder("ocsf", host="h")
    try:
        got = json.loads(enc.encode(table).body)
    finally:
        enc.close()
    assert got == [ocsf_event(r) for r in table.to_pylist()]


def test_json_hec_and_syslog_carry_each_event_whole() -> None:
    table = stored_rows(60)
    rows = table.to_pylist()
    encoders = {fmt: Encoder(fmt, host="collector-1", index="audit") for fmt in ("json", "hec", "syslog")}
    try:
        as_json = json.loads(encoders["json"].encode(table).body)
        hec = concatenated_json(encoders["hec"].encode(table).body)
        frames = encoders["syslog"].encode(table).body
    finally:
        for e in encoders.values():
            e.close()
    for row, doc in zip(rows, as_json, strict=True):
        assert doc["id"] == row["id"] and doc["seq"] == row["seq"] and doc["user_agent"] == row["user_agent"]
        assert doc["changes"] == json.loads(row["changes"]) and doc["metadata"] == json.loads(row["metadata"])
        assert doc["created_at"] == row["created_at"].strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert [h["event"] for h in hec] == as_json
    assert {(h["host"], h["source"], h["index"], h["sourcetype"]) for h in hec} == {
        ("collector-1", "auditlake", "audit", "auditlake:event")}
    assert [h["time"] for h in hec] == [r["created_at"].timestamp() for r in rows]
    listener = SyslogListener()
    rest = frames
    while rest:  # octet counting: LEN SP MSG, LEN in bytes (non-ASCII values included)
        length, _, rest = rest.partition(b" ")
        listener.take(rest[:int(length)])
        rest = rest[int(length):]
    assert not listener.bad
    assert [m["event"] for m in listener.messages] == as_json
    for m, row in zip(listener.messages, rows, strict=True):
        assert m["sd_id"] == SD_ID and m["sd"]["id"] == row["id"] and m["sd"]["seq"] == str(row["seq"])
        assert m["pri"] == 13 * 8 + {"success": 6, "failure": 5, "denied": 4}[row["outcome"]]
        assert m["msgid"] == row["action"] and m["host"] == "collector-1"


@pytest.mark.parametrize("fmt", ["json", "ocsf", "hec", "syslog"])
def test_one_encoding_cut_into_requests_keeps_every_event_once_in_order(fmt: str) -> None:
    table = stored_rows(103)
    enc = Encoder(fmt, host="h")
    try:
        whole = enc.encode(table).body
        requests = list(enc.requests(table, 10))
    finally:
        enc.close()
    assert [r.count for r in requests] == [10] * 10 + [3]
    if fmt in ("json", "ocsf"):  # each request a JSON array of its own
        parts = [json.loads(r.body) for r in requests]
        assert [e for p in parts for e in p] == json.loads(whole)
    else:  # concatenated objects or frames: the requests are the whole, cut
        assert b"".join(r.body for r in requests) == whole


def test_settings_refuse_bad_tables_and_never_show_a_secret(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(HEC_TOKEN + "\n")
    [hook, hec] = load_streams({"streams": [
        {"name": "hook", "type": "webhook", "url": "https://siem.example/in", "format": "ocsf",
         "secret_env": "HOOK", "filter": {"tenants": ["acme"]}},
        {"name": "splunk", "type": "splunk", "url": "https://splunk.example:8088", "secret_file": str(token_file)},
    ]}, env={"HOOK": HOOK_SECRET})
    assert hook.secret.reveal() == HOOK_SECRET and hec.secret.reveal() == HEC_TOKEN
    assert hec.endpoint == "https://splunk.example:8088/services/collector/event"
    for shown in (repr(hook), str(hook), repr(hec), hec.endpoint):
        assert HOOK_SECRET not in shown and HEC_TOKEN not in shown
    bad: list[tuple[dict[str, Any], str]] = [
        ({"name": "a", "type": "webhook", "url": "https://x/"}, "HMAC key is required"),
        ({"name": "a", "type": "webhook", "url": "https://x/", "secret_env": "MISSING"}, "MISSING"),
        ({"name": "a", "type": "kafka"}, "type must be"),
        ({"name": "a", "type": "syslog", "host": "nohost"}, "HOST:PORT"),
        ({"name": "../up", "type": "syslog", "host": "h:1"}, "name must match"),
        ({"name": "a", "type": "syslog", "host": "h:1", "password": "x"}, "unknown setting"),
        ({"name": "a", "type": "webhook", "url": "https://u:p@x/", "secret_env": "HOOK"}, "credentials"),
    ]
    for table, message in bad:
        with pytest.raises(ConfigError, match=message):
            load_streams({"streams": [table]}, env={"HOOK": "k"})


def test_the_admin_route_reads_what_the_stream_threads_write(tmp_path: Path) -> None:
    # The admin layer may not import streams: the status file is the contract.
    assert (STATUS_DIR, STATUS_SUFFIX) == (STREAMS_DIR, WRITTEN_SUFFIX)
    write_status(tmp_path / STREAMS_DIR, "s1", {"name": "s1", "events_behind": 3})
    assert stream_statuses(tmp_path) == [{"name": "s1", "events_behind": 3}]


def test_syslog_over_tls_and_an_https_webhook_check_the_receivers_certificate(tmp_path: Path) -> None:
    ca, server_tls = self_signed(tmp_path)
    stranger, _ = self_signed(tmp_path, "stranger")
    syslog = SyslogListener(tls=server_tls).start()
    hook = HttpReceiver(HOOK_SECRET, tls=server_tls).start()
    rows = stored_rows(20)
    encoders = {fmt: Encoder(fmt) for fmt in ("syslog", "json")}
    try:
        def settings(trust: Path) -> list[Any]:
            return load_streams({"streams": [
                {"name": "s", "type": "syslog", "host": f"127.0.0.1:{syslog.port}", "tls": True,
                 "ca_file": str(trust), "timeout_s": 5},
                {"name": "h", "type": "webhook", "url": hook.url, "ca_file": str(trust), "secret_env": "K",
                 "timeout_s": 5}]}, env={"K": HOOK_SECRET})

        for s, fmt in zip(settings(stranger), ("syslog", "json"), strict=True):
            with pytest.raises(DeliveryFailed, match="CERTIFICATE_VERIFY_FAILED"):
                destination(s).send(encoders[fmt].encode(rows).body, "w1:1-20")
        for s, fmt in zip(settings(ca), ("syslog", "json"), strict=True):
            dest = destination(s)
            dest.send(encoders[fmt].encode(rows).body, "w1:1-20")
            dest.close()
        _wait(lambda: len(syslog.messages) == 20, 10, "the syslog frames")
        ids = rows.column("id").to_pylist()
        assert [e["id"] for e in syslog.events()] == ids and not syslog.bad
        assert [e["id"] for e in hook.events()] == ids and not hook.forged
    finally:
        for e in encoders.values():
            e.close()
        syslog.stop()
        hook.stop()


# -- the feed: a writer's events after a position, from the lake's files ---------------------


def _lake_file(data: Path, name: str, table: pa.Table) -> None:
    folder = data / "lake" / "events" / "date=2026-11-27"
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / f"part-{name}.parquet")


class _Taken:
    """A destination that takes everything and keeps the batch ids."""

    def __init__(self) -> None:
        self.batches: list[str] = []

    def send(self, body: bytes, batch_id: str) -> None:
        self.batches.append(batch_id)

    def close(self) -> None:
        return


def test_the_feed_reads_in_seq_order_across_compacted_and_overlapping_files(tmp_path: Path) -> None:
    rows = stored_rows(300)
    _lake_file(tmp_path, "w1-1", rows.slice(0, 100))
    # a compacted file (sorted by tenant, not seq) listed beside one of its sources
    compacted = rows.slice(100, 150)
    _lake_file(tmp_path, "w1-compacted", compacted.take(pc.sort_indices(compacted, [("tenant_id", "ascending")])))
    _lake_file(tmp_path, "w1-2", rows.slice(100, 50))
    _lake_file(tmp_path, "w1-4", rows.slice(260, 40))  # seqs 251-260 are not there (yet)
    feed = LakeFeed(DataDir(tmp_path))
    feed.refresh()
    assert feed.heads() == {"w1": (1, 300)}
    got = feed.read_after("w1", 40, 1000)
    assert got.rows.column("seq").to_pylist() == list(range(41, 251))  # stops before the hole
    assert got.rows.column("id").to_pylist() == rows.column("id").to_pylist()[40:250]
    assert feed.read_after("w1", 40, 7).rows.column("seq").to_pylist() == list(range(41, 48))
    hole = feed.read_after("w1", 250, 1000)
    assert hole.rows.num_rows == 0 and hole.resumes_at == 261
    _lake_file(tmp_path, "w1-3", rows.slice(250, 10))  # the hole fills: nothing is skipped
    feed.refresh()
    assert feed.read_after("w1", 250, 1000).rows.column("seq").to_pylist() == list(range(251, 301))
    assert feed.read_after("w1", 300, 1000).rows.num_rows == 0


def test_a_stream_steps_over_a_lasting_hole_only_after_its_grace(tmp_path: Path) -> None:
    rows = stored_rows(30)
    _lake_file(tmp_path, "w1-1", rows.slice(0, 10))
    _lake_file(tmp_path, "w1-3", rows.slice(20, 10))  # 11-20 expired
    [settings] = load_streams({"streams": [{"name": "s", "type": "syslog", "host": "127.0.0.1:9",
                                            "gap_grace_s": 0.5}]})
    taken = _Taken()
    stream = Stream(DataDir(tmp_path), settings, dest=taken)
    stream._encoder = Encoder("syslog")
    try:
        while stream.step():
            pass
        assert taken.batches == ["w1:1-10"] and stream.cursor.after("w1") == 10
        assert stream.lag().events_behind == 20
        time.sleep(0.6)
        while stream.step():
            pass
    finally:
        stream._encoder.close()
    assert taken.batches == ["w1:1-10", "w1:21-30"] and stream.cursor.after("w1") == 30
    assert stream.lag().events_behind == 0
    # the cursor is durable: a new stream over the same data starts after it
    assert Stream(DataDir(tmp_path), settings, dest=_Taken()).cursor.after("w1") == 30


# -- a real collector streaming to real receivers -----------------------------------------


@pytest.fixture
def receivers() -> Iterator[dict[str, Any]]:
    found = {"hook": HttpReceiver(HOOK_SECRET).start(), "ocsf": HttpReceiver(HOOK_SECRET).start(),
             "splunk": HttpReceiver(HEC_TOKEN, mode="splunk").start(), "syslog": SyslogListener().start()}
    yield found
    for r in found.values():
        r.stop()


@pytest.fixture
def streaming(tmp_path: Path) -> Iterator[Callable[..., CollectorProcess]]:
    """Start collectors over ``tmp_path/data`` with the given TOML; stopped after."""
    started: list[CollectorProcess] = []

    def make(toml: str, *, http: bool = False) -> CollectorProcess:
        data = tmp_path / "data"
        data.mkdir(exist_ok=True)
        (data / "auditlake.toml").write_text(toml)
        c = CollectorProcess(data, http=http, seal_interval=0.2, env={"HOOK_SECRET": HOOK_SECRET})
        started.append(c)
        return c.start()

    yield make
    for c in started:
        c.stop()


def _toml(receivers: dict[str, Any], token_file: Path, batch: int = 50) -> str:
    token_file.write_text(HEC_TOKEN + "\n")
    fast = f"batch_events = {batch}\nretry_initial_s = 0.05\nretry_max_s = 0.4\ntimeout_s = 3\n"
    return (
        f'[[streams]]\nname = "hook"\ntype = "webhook"\nurl = "{receivers["hook"].url}"\n'
        f'secret_env = "HOOK_SECRET"\n{fast}\n'
        f'[[streams]]\nname = "ocsf-acme-denied"\ntype = "webhook"\nformat = "ocsf"\n'
        f'url = "{receivers["ocsf"].url}"\nsecret_env = "HOOK_SECRET"\n{fast}'
        'filter = { tenants = ["acme"], outcomes = ["denied"] }\n\n'
        f'[[streams]]\nname = "splunk"\ntype = "splunk"\nurl = "{receivers["splunk"].url}"\n'
        f'secret_file = "{token_file}"\n{fast}\n'
        f'[[streams]]\nname = "syslog"\ntype = "syslog"\nhost = "127.0.0.1:{receivers["syslog"].port}"\n{fast}'
    )


def _send(collector: CollectorProcess, n: int, start: int = 0) -> list[dict[str, Any]]:
    key = collector.api_key("acme", "globex")
    events = [make_event(i, tenant_id="acme" if i % 2 else "globex",
                         outcome=("success", "failure", "denied")[i % 3],
                         reason="" if i % 3 == 0 else "no", created_at_us=NOW_US + i)
              for i in range(start, start + n)]
    client = WireClient(collector.endpoint)
    try:
        for i in range(0, n, 250):
            client.export(events[i:i + 250], key)
    finally:
        client.close()
    return events


def _wait(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _in_writer_order(events: list[dict[str, Any]]) -> None:
    """Each writer's events arrive in seq order: the first arrival of each
    seq comes after the first arrival of every lower seq, and no seq of the
    writer is missing up to the highest seen."""
    first: dict[str, list[int]] = collections.defaultdict(list)
    seen: set[tuple[str, int]] = set()
    for e in events:
        key = (e["writer_id"], int(e["seq"]))
        if key not in seen:
            seen.add(key)
            first[key[0]].append(key[1])
    for writer, seqs in first.items():
        assert seqs == sorted(seqs), f"writer {writer}: seqs out of order"
        assert seqs == list(range(1, len(seqs) + 1)), f"writer {writer}: a seq is missing"


def _same_copies(events: list[dict[str, Any]], key: str = "id") -> None:
    """A repeated event is the same event: same id, same content."""
    by_id: dict[str, str] = {}
    for e in events:
        text = json.dumps(e, sort_keys=True)
        assert by_id.setdefault(e[key], text) == text, f"two different events carry id {e[key]}"


def test_every_event_reaches_every_destination_across_failures_and_kill_9(
        streaming: Callable[..., CollectorProcess], receivers: dict[str, Any], tmp_path: Path) -> None:
    hook, ocsf, splunk, syslog = receivers["hook"], receivers["ocsf"], receivers["splunk"], receivers["syslog"]
    hook.fail_next, hook.drop_next = 3, 2        # 5xx answers, then connections dropped unanswered
    splunk.fail_next = 2
    hook.delay_s = splunk.delay_s = 0.03       # slow receivers: the kill lands mid-stream
    toml = _toml(receivers, tmp_path / "hec-token")
    collector = streaming(toml)
    sent = _send(collector, 3000)
    _wait(lambda: len(hook.batches) >= 8, 60, "the first webhook batches")
    collector.kill()  # kill -9 mid-stream: some batches taken, cursors behind
    assert len({e["id"] for e in hook.events()} & {e["id"] for e in sent}) < len(sent)
    collector.start()
    sent += _send(collector, 500, start=3000)
    ids = {e["id"] for e in sent}
    hook.delay_s = splunk.delay_s = 0.0

    def arrived(receiver: Any, pick: Callable[[dict[str, Any]], str]) -> set[str]:
        return {pick(e) for e in receiver.events()}

    _wait(lambda: ids <= arrived(hook, lambda e: e["id"]), 90, "every event at the webhook")
    _wait(lambda: ids <= arrived(splunk, lambda e: e["event"]["id"]), 90, "every event at Splunk")
    _wait(lambda: ids <= arrived(syslog, lambda e: e["id"]), 90, "every event at syslog")
    wanted = {e["id"] for e in sent if e["tenant_id"] == "acme" and e["outcome"] == "denied"}
    _wait(lambda: wanted <= arrived(ocsf, lambda e: e["metadata"]["uid"]), 90, "the filtered OCSF stream")
    collector.stop()

    # the filter let nothing else through, and OCSF events are OCSF
    assert arrived(ocsf, lambda e: e["metadata"]["uid"]) == wanted
    assert {e["class_uid"] for e in ocsf.events()} == {6003}
    for received in (hook.events(), [e["event"] for e in splunk.events()], syslog.events()):
        _in_writer_order(received)
        _same_copies(received)
    assert hook.failed >= 5 and splunk.failed >= 2 and not hook.forged and not splunk.forged
    assert not syslog.bad
    log = collector.log()
    assert "send failed" in log  # the failures were seen...
    assert HOOK_SECRET not in log and HEC_TOKEN not in log  # ...and no credential was logged


def test_a_destination_down_catches_up_in_order_and_its_lag_shows(
        streaming: Callable[..., CollectorProcess], receivers: dict[str, Any], tmp_path: Path) -> None:
    hook = receivers["hook"]
    hook.down = True
    (tmp_path / "data").mkdir()
    users = UserStore(tmp_path / "data" / "keys")
    users.add("root", "admin", (), "correct horse battery")
    users.add("alice", "auditor", ("acme",), "correct horse battery")
    tokens = {name: users.create_token(name) for name in ("root", "alice")}
    toml = (f'[[streams]]\nname = "hook"\ntype = "webhook"\nurl = "{hook.url}"\nsecret_env = "HOOK_SECRET"\n'
            "batch_events = 500\nretry_initial_s = 0.05\nretry_max_s = 0.3\n")
    collector = streaming(toml, http=True)
    api = httpx.Client(base_url=collector.http_url, timeout=30)

    def status() -> dict[str, Any]:
        got = api.get("/api/v1/streams", headers={"Authorization": f"Bearer {tokens['root']}"})
        assert got.status_code == 200
        [only] = got.json()["streams"] or [{"failures": 0, "events_behind": 0, "seconds_behind": 0}]
        return dict(only)

    sent = _send(collector, 2000)
    _wait(lambda: status()["failures"] >= 2, 60, "the stream to be retrying")
    sent += _send(collector, 2000, start=2000)  # stored while the stream waits to retry: the lag grows
    _wait(lambda: status()["events_behind"] >= 4000 and status()["seconds_behind"] > 0.5, 60, "the lag to show")
    behind = status()
    assert behind["failures"] > 0 and "503" in behind["last_error"] and behind["delivered"] == 0
    assert behind["name"] == "hook" and behind["endpoint"] == hook.url
    denied = api.get("/api/v1/streams", headers={"Authorization": f"Bearer {tokens['alice']}"})
    assert denied.status_code == 403  # a lag tells every tenant's event count
    assert not hook.batches
    # ...and on /metrics, for alerting (labels: the stream's name and type only)
    metrics = api.get("/metrics").text
    lag = [line for line in metrics.splitlines() if line.startswith("auditlake_stream_events_behind{")]
    assert lag and 'stream="hook"' in lag[0] and float(lag[0].rsplit(" ", 1)[1]) >= 4000, lag
    # ...and on the integrity page, for admins only
    page = api.get("/integrity", headers={"Authorization": f"Bearer {tokens['root']}"}).text
    assert "<h2>Streams</h2>" in page and "<td>hook</td>" in page and "503" in page
    page = api.get("/integrity", headers={"Authorization": f"Bearer {tokens['alice']}"}).text
    assert "<h2>Streams</h2>" not in page

    hook.down = False
    ids = {e["id"] for e in sent}
    _wait(lambda: ids <= {e["id"] for e in hook.events()}, 60, "the catch-up")
    _in_writer_order(hook.events())
    _wait(lambda: status()["events_behind"] == 0 and status()["failures"] == 0, 30, "the lag to clear")
    assert status()["seconds_behind"] == 0 and status()["last_error"] == ""
    api.close()
    # the cursor is on disk, per writer: the chain position last acknowledged
    cursor = json.loads((tmp_path / "data" / STREAMS_DIR / "hook.cursor.json").read_text())
    assert max(e["seq"] for e in hook.events()) == max(cursor["writers"].values())
    assert os.path.getsize(tmp_path / "data" / STREAMS_DIR / "hook.status.json") > 0
