"""Receive: idempotency by batch id and by event id, concurrent retries,
JSON-object validation, freshness (acked -> queryable within 2 s), and the
answer to a partly refused batch: every refused row in a trailer, the same
answer to a retry (also after a restart), within gRPC's metadata limit."""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import duckdb
import grpc
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from auditlake.collector.ingest.receive import Limits, normalize, validate
from auditlake.collector.lake.query import connect
from auditlake.collector.lake.seal import RecentEventIds
from auditlake.collector.lake.seal_progress import BatchOutcome, SealProgress
from auditlake.collector.storage.datadir import DataDir
from tests.collector.durability_client import Client, columns, ingest_key, new_ids, wait_sealed
from tests.collector.test_durability import lake_id_counts
from tests.conftest import CollectorProcess
from tests.wire_client import WireClient, make_event


def test_retried_batch_id_is_stored_once(collector_factory: Callable[..., CollectorProcess]) -> None:
    collector = collector_factory()
    client = Client(collector.endpoint, ingest_key(collector.data, "acme"))
    ids = new_ids(30)
    assert not client.export("b-1", columns(ids)).duplicate
    again = client.export("b-1", columns(ids))
    assert again.duplicate and again.accepted == 30
    client.close()
    collector.stop()
    assert set(lake_id_counts(collector.data).values()) == {1}


def test_resent_events_under_a_new_batch_id_are_stored_once(
    collector_factory: Callable[..., CollectorProcess],
) -> None:
    collector = collector_factory()
    client = Client(collector.endpoint, ingest_key(collector.data, "acme"))
    ids = new_ids(40)
    client.export("first", columns(ids))
    wait_sealed(collector.data, 40)
    # same events, new batch id, some new ones mixed in, some repeated inside the batch
    extra = new_ids(5)
    resp = client.export("second", columns(ids[:20] + extra + extra[:2]))
    assert not resp.duplicate
    collector.kill()  # the window must survive a crash: rebuilt from the lake
    collector.start()
    client = Client(collector.endpoint, ingest_key(collector.data, "acme"))
    client.export("third", columns(ids[20:] + [ids[0]]))
    client.close()
    collector.stop()
    counts = lake_id_counts(collector.data)
    assert sorted(counts) == sorted(ids + extra)
    assert set(counts.values()) == {1}
    assert "dropped" in collector.log() and "event-id dedupe window" in collector.log()


def test_concurrent_retries_of_one_batch_wait_for_the_first(
    collector_factory: Callable[..., CollectorProcess],
) -> None:
    collector = collector_factory()
    key = ingest_key(collector.data, "acme")
    ids = new_ids(2000)
    cols = columns(ids)
    answers: list[tuple[int, bool]] = []
    lock = threading.Lock()

    def send() -> None:
        c = Client(collector.endpoint, key)
        r = c.export("same-batch", cols)
        c.close()
        with lock:
            answers.append((r.accepted, r.duplicate))

    threads = [threading.Thread(target=send) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(answers) == [(2000, False)] + [(2000, True)] * 7
    collector.stop()
    counts = lake_id_counts(collector.data)
    assert len(counts) == 2000 and set(counts.values()) == {1}


def test_changes_and_metadata_must_be_json_objects() -> None:
    ids = [str(uuid.uuid4()) for _ in range(8)]
    changes = ['{"a": {"before": 1, "after": 2}}', "[1, 2]", '"text"', "{not json", '{"a":1}{"b":2}',
               '{"multi":\n "line"}', "", "[1, 2]"]
    n = len(ids)
    table = pa.table({
        "id": ids, "tenant_id": ["t"] * n, "user_id": [""] * n, "action": ["read"] * n,
        "resource_type": ["doc"] * n, "resource_id": [""] * n, "changes": changes,
        "ip_address": [""] * n, "user_agent": [""] * n, "outcome": [""] * n, "reason": [""] * n,
        "service": [""] * n, "trace_id": [""] * n, "span_id": [""] * n, "request_id": [""] * n,
        "metadata": ['{"ok": true}'] * n,
        "created_at": pa.array([int(time.time() * 1e6)] * n, pa.int64()).cast(pa.timestamp("us", "UTC")),
    })
    problems = validate(normalize(table), int(time.time() * 1e6), Limits())
    assert [(p.index, p.field) for p in problems] == [(1, "changes"), (2, "changes"), (3, "changes"),
                                                      (4, "changes"), (7, "changes")]


def test_event_id_window_forgets_the_oldest_and_never_drops_other_ids() -> None:
    window = RecentEventIds(capacity=10_000)
    first = new_ids(10_000)
    window.remember(pa.array(first))
    for _ in range(4):
        window.remember(pa.array(new_ids(5_000)))
    assert 10_000 <= len(window) <= 10_000 + window._gen_cap
    fresh = new_ids(1000)
    assert len(window.duplicates(pa.array(fresh))) == 0
    upper = [i.upper() for i in fresh[:3]]
    assert window.duplicates(pa.array(fresh[:3] + upper + ["not-a-uuid", "not-a-uuid"])).tolist() == [3, 4, 5]
    assert len(window.duplicates(pa.array(first[:100]))) == 0  # aged out of the window


@pytest.mark.timeout(60)
def test_acked_event_is_queryable_within_2_s_by_default(
    collector_factory: Callable[..., CollectorProcess],
) -> None:
    collector = collector_factory(seal_interval=1.0)  # the default interval
    client = Client(collector.endpoint, ingest_key(collector.data, "acme"))
    worst = 0.0
    for _ in range(3):
        ids = new_ids(10)
        client.export(str(uuid.uuid4()), columns(ids))
        acked = time.monotonic()
        while True:
            con = connect(DataDir(collector.data))
            try:
                n = con.execute("SELECT count(*) FROM events WHERE id = ?", [ids[-1]]).fetchone()[0]
            except duckdb.IOException:
                n = 0
            finally:
                con.close()
            if n:
                break
            assert time.monotonic() - acked < 5, "not queryable after 5 s"
            time.sleep(0.02)
        worst = max(worst, time.monotonic() - acked)
        time.sleep(0.37)  # land at different points of the seal cycle
    client.close()
    assert worst < 2.0, f"acked events took {worst:.2f} s to become queryable"


def test_batch_id_must_be_printable(collector_factory: Callable[..., CollectorProcess]) -> None:
    collector = collector_factory()
    client = Client(collector.endpoint, ingest_key(collector.data, "acme"))
    with pytest.raises(grpc.RpcError) as err:
        client.export("bad\nid", columns(new_ids(1)))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    client.close()


def _wire_events(draw_text: list[str], n: int) -> list[dict[str, object]]:
    from auditlake.collector.schema import STRING_FIELDS

    return [
        {**{name: draw_text[(i * 7 + j) % len(draw_text)] for j, name in enumerate(STRING_FIELDS)},
         "created_at_us": 1_700_000_000_000_000 + i}
        for i in range(n)
    ]


@settings(max_examples=60, deadline=None)
@given(texts=st.lists(st.text(st.characters(exclude_categories=("Cs",)), max_size=40), min_size=1, max_size=12),
       n=st.integers(0, 30))
def test_packed_columns_decode_to_the_same_table_as_repeated_fields(texts: list[str], n: int) -> None:
    from auditlake.collector.ingest.receive import decode_request
    from tests.wire_client import request

    events = _wire_events(texts, n)
    packed, bad = decode_request(request(events, "b", form="packed"))
    plain, _ = decode_request(request(events, "b", form="columns"))
    assert bad == []
    assert packed.equals(plain)


_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


@settings(max_examples=80, deadline=None)
@given(ids=st.lists(st.one_of(
    st.uuids().map(str),
    st.uuids().map(lambda u: str(u).upper()),
    st.uuids().map(str).flatmap(lambda u: st.integers(0, 35).flatmap(
        lambda i: st.sampled_from("-gG0 xé").map(lambda c: u[:i] + c + u[i + 1:]))),
    st.text(max_size=40),
), min_size=1, max_size=20), trace=st.sampled_from(["", "0" * 32, "a" * 32, "A" * 32, "0" * 31, "g" * 32]))
def test_fast_id_and_trace_checks_agree_with_the_regex(ids: list[str], trace: str) -> None:
    from auditlake.collector.ingest.receive import decode_request
    from tests.wire_client import make_event, request

    events = [make_event(i, id=v, trace_id=trace) for i, v in enumerate(ids)]
    table, _ = decode_request(request(events, "b", form="packed"))
    problems = validate(normalize(table), int(time.time() * 1e6), Limits())
    trace_ok = re.fullmatch(r"([0-9a-f]{32})?", trace) is not None
    want = {i: "id" if not _UUID.fullmatch(v) else "trace_id"
            for i, v in enumerate(ids) if not _UUID.fullmatch(v) or not trace_ok}
    assert {p.index: p.field for p in problems} == want


# -- partly refused batches: which rows, said machine-readably, and said again --------------------


def refused_rows_on_the_wire(trailers: dict[str, str | bytes]) -> list[int]:
    """The refused rows as docs/architecture.md specifies the trailers, decoded
    independently of the collector's code: ranges or a little-endian bitmap."""
    if "auditlake-rejected-bin" in trailers:
        bitmap = trailers["auditlake-rejected-bin"]
        assert isinstance(bitmap, bytes) and "auditlake-rejected" not in trailers
        return [8 * i + b for i, byte in enumerate(bitmap) for b in range(8) if byte >> b & 1]
    text = trailers["auditlake-rejected"]
    assert isinstance(text, str) and re.fullmatch(r"[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*", text)
    rows: list[int] = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        rows += range(int(first), int(last or first) + 1)
    return rows


def refusal(client: WireClient, key: str, events: list[dict[str, object]],
            batch_id: str) -> tuple[dict[str, str | bytes], str]:
    """(trailers, message) of a batch the collector must refuse in part."""
    with pytest.raises(grpc.RpcError) as err:
        client.export(events, key, batch_id, form="packed")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    return dict(err.value.trailing_metadata() or ()), str(err.value.details())


def mixed_batch(total: int, bad: set[int]) -> list[dict[str, object]]:
    """``total`` events; those at ``bad`` have an action longer than allowed."""
    return [make_event(i, action="x" * 65 if i in bad else "read") for i in range(total)]


@pytest.mark.parametrize(("total", "bad", "trailer"), [
    (20, {3, 11, 17}, "3,11,17"),
    (10_000, set(range(1, 10_000, 2)), bytes([0b10101010]) * 1250),  # scattered: a bitmap
    (10_000, set(range(5_000, 10_000)), "5000-9999"),  # one run: ranges
], ids=["3-of-20", "5000-of-10000-scattered", "5000-of-10000-in-a-run"])
def test_a_partly_refused_batch_names_every_refused_row_and_a_retry_hears_it_again(
    collector_factory: Callable[..., CollectorProcess], total: int, bad: set[int], trailer: str | bytes,
) -> None:
    collector = collector_factory()
    key = collector.api_key("acme")
    events = mixed_batch(total, bad)
    client = WireClient(collector.endpoint)
    trailers, message = refusal(client, key, events, "partial-1")
    assert trailers[next(k for k in trailers if k.startswith("auditlake-rejected"))] == trailer
    assert refused_rows_on_the_wire(trailers) == sorted(bad)
    assert trailers["auditlake-accepted"] == str(total - len(bad))
    assert trailers["auditlake-duplicates"] == "0" and "auditlake-duplicate" not in trailers
    assert message.startswith(f"{len(bad)} of {total} events rejected ({total - len(bad)} valid events stored)")
    # The first answer was lost: the retry (same batch id) hears the same
    # answer, not "duplicate, all stored" ...
    again, again_message = refusal(client, key, events, "partial-1")
    assert again == {**trailers, "auditlake-duplicate": "true"} and again_message == message
    client.close()
    # ... also from a collector restarted since (the batch is sealed: from state/batches.log).
    collector.stop()
    collector.start()
    client = WireClient(collector.endpoint)
    after, after_message = refusal(client, key, events, "partial-1")
    assert after == again and after_message == message
    # The answer is the record's, not the resent events': the same batch id
    # with every event valid is still the batch first received.
    fixed = [{**e, "action": "read"} for e in events]
    record, record_message = refusal(client, key, fixed, "partial-1")
    client.close()
    assert refused_rows_on_the_wire(record) == sorted(bad)
    assert "was refused when the batch was first received" in record_message
    collector.stop()
    (outcome,) = [v for k, v in SealProgress(collector.data / "state").known_batches(10).items()
                  if k.endswith("/partial-1")]
    assert isinstance(outcome, BatchOutcome) and outcome.refused.rows() == sorted(bad)
    counts = lake_id_counts(collector.data)
    assert sorted(counts) == sorted(str(e["id"]) for i, e in enumerate(events) if i not in bad)
    assert set(counts.values()) == {1}


def test_a_retry_after_a_crash_before_sealing_hears_the_same_refusal(
    collector_factory: Callable[..., CollectorProcess],
) -> None:
    # A long seal interval: the batch is in the write-ahead log only when
    # the collector is killed, and is replayed from it at the restart.
    collector = collector_factory(seal_interval=60.0)
    key = collector.api_key("acme")
    bad = {0, 4, 5, 6, 9}
    events = mixed_batch(12, bad)
    client = WireClient(collector.endpoint)
    trailers, message = refusal(client, key, events, "crash-1")
    client.close()
    collector.kill()
    collector.start()
    client = WireClient(collector.endpoint)
    after, after_message = refusal(client, key, events, "crash-1")
    client.close()
    assert after == {**trailers, "auditlake-duplicate": "true"} and after_message == message
    assert refused_rows_on_the_wire(after) == sorted(bad) and after["auditlake-accepted"] == "7"
    # Sealed once, by a collector with a short interval: one restarted from
    # its WAL with a long interval sometimes misses a SIGTERM (its main
    # thread waits in Collector.wait() without a timeout, and a signal
    # delivered to a gRPC thread does not wake it).
    collector.kill()
    collector.seal_interval = 0.2
    collector.start()
    collector.stop()
    assert sorted(lake_id_counts(collector.data)) == sorted(
        str(e["id"]) for i, e in enumerate(events) if i not in bad)


def test_a_wholly_refused_batch_is_refused_again_when_retried(
    collector_factory: Callable[..., CollectorProcess],
) -> None:
    collector = collector_factory()
    key = collector.api_key("acme")
    events = mixed_batch(4, {0, 1, 2, 3})
    client = WireClient(collector.endpoint)
    first, _ = refusal(client, key, events, "all-bad")
    again, _ = refusal(client, key, events, "all-bad")  # not "duplicate, 0 accepted": that read as success
    client.close()
    assert first["auditlake-accepted"] == again["auditlake-accepted"] == "0"
    assert refused_rows_on_the_wire(first) == refused_rows_on_the_wire(again) == [0, 1, 2, 3]


def test_refusals_too_scattered_to_name_store_nothing_of_a_large_batch(
    collector_factory: Callable[..., CollectorProcess],
) -> None:
    from auditlake.collector.ingest.receive import ALWAYS_NAMED

    collector = collector_factory()
    key = collector.api_key("acme")
    total = ALWAYS_NAMED + 8_000
    events = mixed_batch(total, set(range(0, total, 2)))
    client = WireClient(collector.endpoint)
    with pytest.raises(grpc.RpcError) as err:
        client.export(events, key, "too-scattered", form="packed")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    trailers = dict(err.value.trailing_metadata() or ())
    assert not any(k.startswith("auditlake-") for k in trailers)  # not a partial refusal: nothing stored
    assert f"send batches of at most {ALWAYS_NAMED} events" in str(err.value.details())
    # Each half is small enough to be answered row by row.
    for part, rows in (("half-1", range(0, total // 2)), ("half-2", range(total // 2, total))):
        trailers, _ = refusal(client, key, [events[i] for i in rows], part)
        assert len(refused_rows_on_the_wire(trailers)) == len(rows) // 2
    client.close()
    collector.stop()
    assert len(lake_id_counts(collector.data)) == total // 2


def test_a_refusal_answer_fits_a_default_grpc_client_whatever_the_events_hold(
    collector_factory: Callable[..., CollectorProcess],
) -> None:
    collector = collector_factory()
    key = collector.api_key("acme")
    # Ids and service names of 64 four-byte characters: percent-encoded in
    # the status message, each reason is ~2 KB; 40 of them would be ~80 KB.
    wide = "\U0001f600" * 64
    events = [make_event(i, id=wide + str(i)) if i % 2 else make_event(i, service="auditlake" + wide)
              for i in range(40)] + [make_event(40)]
    client = WireClient(collector.endpoint)  # gRPC's default 8 KiB metadata limit
    trailers, message = refusal(client, key, events, "wide")
    client.close()
    assert refused_rows_on_the_wire(trailers) == list(range(40))
    assert message.startswith("40 of 41 events rejected") and message.endswith("more")


def test_the_batches_log_keeps_refused_rows_and_reads_older_lines(tmp_path: Path) -> None:
    from auditlake.collector.lake.batch import AcceptedBatch
    from auditlake.collector.lake.seal_progress import REFUSED_ROWS_KEY, RowSet

    progress = SealProgress(tmp_path)
    # Lines an older collector wrote (ids may hold spaces and end in digits).
    (tmp_path / "batches.log").write_text("k1/old 12\nk1/with space 7 5\nk1/torn 3 r:\n")
    table = pa.table({"x": [1, 2]})
    refused = RowSet.of([0, 3, 4, 5])
    progress.log_batches([
        AcceptedBatch("k1/new 9", 0, table.replace_schema_metadata({REFUSED_ROWS_KEY: refused.encode().encode()})),
        AcceptedBatch("k1/whole", 0, table),
    ], keep=100)
    known = progress.known_batches(keep=100)
    assert known == {"k1/old": 12, "k1/with space 7": 5, "k1/torn": 3, "k1/new 9": 2, "k1/whole": 2}
    assert [k for k, v in known.items() if isinstance(v, BatchOutcome)] == ["k1/new 9"]
    outcome = known["k1/new 9"]
    assert isinstance(outcome, BatchOutcome) and outcome.refused.rows() == [0, 3, 4, 5]
    # Compaction (down to the newest ids) keeps the refused rows.
    progress.known_batches(keep=2)
    assert (tmp_path / "batches.log").read_text() == f"k1/new 9 2 {refused.encode()}\nk1/whole 2\n"
    outcome = SealProgress(tmp_path).known_batches(keep=2)["k1/new 9"]
    assert isinstance(outcome, BatchOutcome) and outcome.refused == refused


@settings(max_examples=200, deadline=None)
@given(rows=st.sets(st.integers(0, 5000), max_size=600))
def test_a_row_set_keeps_its_rows_in_its_shorter_form(rows: set[int]) -> None:
    from auditlake.collector.lake.seal_progress import RowSet

    kept = RowSet.of(rows)
    assert kept.rows() == sorted(rows) and kept.count == len(rows)
    assert RowSet.decode(kept.encode()) == kept
    bitmap_size = (max(rows) + 8) // 8 if rows else 0
    assert kept.size <= max(64, bitmap_size)
    if kept.bitmap:
        assert refused_rows_on_the_wire({"auditlake-rejected-bin": kept.bitmap}) == sorted(rows)
    elif rows:
        assert refused_rows_on_the_wire({"auditlake-rejected": kept.ranges}) == sorted(rows)
