"""Receive: idempotency by batch id and by event id, concurrent retries,
JSON-object validation, and freshness (acked -> queryable within 2 s)."""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Callable

import duckdb
import grpc
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from auditlake.collector.ingest.receive import Limits, normalize, validate
from auditlake.collector.lake.query import connect
from auditlake.collector.lake.seal import RecentEventIds
from auditlake.collector.storage.datadir import DataDir
from tests.collector.durability_client import Client, columns, ingest_key, new_ids, wait_sealed
from tests.collector.test_durability import lake_id_counts
from tests.conftest import CollectorProcess


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
