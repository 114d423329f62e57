"""Retry, spool, overflow, durable mode and flush, with a scripted exporter.

These drive the export thread through the in-memory exporter, whose answers
a test scripts; test_collector_delivery.py repeats the essentials against a
real collector process.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auditlake import sdk
from auditlake.sdk import BatchPolicy, ExportResult, ExportStatus, RetryPolicy, SpoolPolicy
from auditlake.sdk._event import decode_columns
from auditlake.sdk._exporter import result_from_error, retry_delay
from auditlake.sdk.testing import InMemoryExporter
from auditlake.v1 import audit_pb2

DOWN = ExportResult(ExportStatus.RETRY, "UNAVAILABLE: collector down")
FAST_RETRY = RetryPolicy(max_attempts=2, initial_backoff=0.01, max_backoff=0.05)


class Collector:
    """The in-memory exporter with a switch: up, down or refusing."""

    def __init__(self) -> None:
        self.exporter = InMemoryExporter()
        self.state = "up"
        self.attempted: list[str] = []
        self.exporter.answer = self._answer

    def _answer(self, request: audit_pb2.ExportRequest) -> ExportResult:
        self.attempted.append(request.batch_id)
        if self.state == "down":
            return DOWN
        if self.state == "refusing":
            return ExportResult(ExportStatus.REJECTED, "PERMISSION_DENIED: wrong tenant",
                                code="PERMISSION_DENIED")
        return ExportResult(ExportStatus.OK)


def start(collector: Collector, spool_dir: Path | None, **options: Any) -> list[sdk.DroppedEvents]:
    """Configure against ``collector``; the list the on_drop hook fills."""
    dropped: list[sdk.DroppedEvents] = []
    options.setdefault("batch", BatchPolicy(schedule_delay=0.01, max_batch_size=50))
    options.setdefault("retry", FAST_RETRY)
    options.setdefault("spool", SpoolPolicy(directory=spool_dir, enabled=spool_dir is not None))
    options.setdefault("tenant_id", "t1")
    sdk.configure(service_name="svc", exporter=collector.exporter, on_drop=dropped.append, **options)
    return dropped


def dead_letter_files(spool_dir: Path) -> list[Path]:
    return sorted((spool_dir / "dead-letter").glob("*.dead"))


def dead_letter_events(spool_dir: Path) -> list[dict[str, Any]]:
    """The events kept in the dead-letter spool (header line, then the request)."""
    events: list[dict[str, Any]] = []
    for path in dead_letter_files(spool_dir):
        body = path.read_bytes().partition(b"\n")[2]
        events += decode_columns(audit_pb2.ExportRequest.FromString(body))
    return events


def resource_ids(request: audit_pb2.ExportRequest) -> list[str]:
    return [e["resource_id"] for e in decode_columns(request)]


def spool_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.batch"))


def test_a_retried_batch_keeps_its_batch_id_and_is_stored_once(tmp_path: Path) -> None:
    collector = Collector()
    failures = iter([DOWN])
    collector.exporter.answer = lambda request: (
        collector.attempted.append(request.batch_id) or next(failures, ExportResult(ExportStatus.OK))
    )
    start(collector, tmp_path, batch=BatchPolicy(schedule_delay=5.0))  # one batch, at flush
    for i in range(10):
        sdk.record("read", "doc", str(i))
    assert sdk.flush(5)
    assert len(collector.attempted) == 2 and len(set(collector.attempted)) == 1
    assert [e["resource_id"] for e in collector.exporter.events] == [str(i) for i in range(10)]
    assert sdk.stats().retried == 10


def test_collector_down_then_back_loses_nothing_and_duplicates_nothing(tmp_path: Path) -> None:
    collector = Collector()
    collector.state = "down"
    start(collector, tmp_path)
    for i in range(1000):
        sdk.record("read", "doc", str(i))
        if i % 250 == 0:
            time.sleep(0.05)  # several batches, spooled one after the other
    assert sdk.flush() is False
    stats = sdk.stats()
    assert stats.spooled == 1000 and stats.exported == 0 and stats.spool_pending > 1
    assert len(spool_files(tmp_path)) == stats.spool_pending
    collector.state = "up"
    assert sdk.flush(10)
    ids = [e["resource_id"] for e in collector.exporter.events]
    assert ids == [str(i) for i in range(1000)]  # in order, each once
    assert spool_files(tmp_path) == []
    assert sdk.stats().exported == 1000


def test_a_restarted_application_delivers_the_spool_it_left(tmp_path: Path) -> None:
    first = Collector()
    first.state = "down"
    start(first, tmp_path)
    for i in range(120):
        sdk.record("update", "doc", str(i))
    sdk.shutdown(timeout=5)
    spooled = spool_files(tmp_path)
    assert spooled, "shutdown must leave undelivered batches in the spool"
    batch_ids = {p.stem.split("-", 1)[1] for p in spooled}

    second = Collector()  # a new process would start the same way
    start(second, tmp_path)
    assert sdk.flush(10)
    assert [e["resource_id"] for e in second.exporter.events] == [str(i) for i in range(120)]
    assert set(second.exporter.batch_ids) == batch_ids  # each kept its batch id
    assert spool_files(tmp_path) == []


def test_a_non_retryable_status_is_rejected_loudly_and_never_spooled(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    collector = Collector()
    collector.state = "refusing"
    start(collector, tmp_path)
    with caplog.at_level(logging.ERROR, logger="auditlake.sdk"):
        sdk.record("read", "doc", "1", tenant_id="not-mine")
        assert sdk.flush() is False
    assert "PERMISSION_DENIED: wrong tenant" in caplog.text
    assert f"kept in the dead-letter spool {tmp_path / 'dead-letter'}" in caplog.text
    assert len(collector.attempted) == 1
    stats = sdk.stats()
    assert (stats.rejected, stats.spooled, stats.retried, stats.dead_lettered) == (1, 0, 0, 1)
    assert spool_files(tmp_path) == []
    assert [e["resource_id"] for e in dead_letter_events(tmp_path)] == ["1"]


def test_a_full_spool_drops_newest_with_a_counter_and_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    collector = Collector()
    collector.state = "down"
    start(collector, tmp_path, spool=SpoolPolicy(directory=tmp_path, max_bytes=20_000))
    with caplog.at_level(logging.WARNING, logger="auditlake.sdk"):
        for i in range(2000):
            sdk.record("read", "doc", str(i))
        assert sdk.flush() is False
    stats = sdk.stats()
    assert stats.dropped > 0
    assert stats.spooled + stats.dropped == 2000
    assert sum(p.stat().st_size for p in spool_files(tmp_path)) <= 20_000
    assert caplog.text.count("the spool is full: dropped") == 1
    collector.state = "up"
    assert sdk.flush(10)  # what was spooled is delivered; the drops were reported
    assert len(collector.exporter.events) == stats.spooled


def test_a_full_memory_queue_spills_to_the_spool_instead_of_dropping(tmp_path: Path) -> None:
    collector = Collector()
    release = threading.Event()

    def slow(request: audit_pb2.ExportRequest) -> ExportResult:
        release.wait(10)  # the collector hangs; the export thread is stuck
        return ExportResult(ExportStatus.OK)

    collector.exporter.answer = slow
    start(collector, tmp_path,
          batch=BatchPolicy(schedule_delay=0.01, max_batch_size=10, max_queue_size=100))
    for i in range(1000):
        sdk.record("read", "doc", str(i))
    stats = sdk.stats()
    assert stats.dropped == 0 and stats.spooled > 0 and stats.queued <= 100
    release.set()
    assert sdk.flush(10)
    ids = [e["resource_id"] for e in collector.exporter.events]
    assert sorted(ids, key=int) == [str(i) for i in range(1000)]  # all once
    assert spool_files(tmp_path) == []


def test_block_policy_makes_record_wait_instead_of_dropping(tmp_path: Path) -> None:
    collector = Collector()
    collector.state = "down"
    start(collector, None, batch=BatchPolicy(schedule_delay=0.01, max_batch_size=10,
                                             max_queue_size=20),
          spool=SpoolPolicy(enabled=False, full="block"))
    done = threading.Event()

    def producer() -> None:
        for i in range(100):
            sdk.record("read", "doc", str(i))
        done.set()

    thread = threading.Thread(target=producer, daemon=True)
    thread.start()
    assert not done.wait(0.5), "record() should block while nothing can be delivered or kept"
    collector.state = "up"
    assert done.wait(10)
    assert sdk.flush(10)
    assert sorted(int(e["resource_id"]) for e in collector.exporter.events) == list(range(100))
    assert sdk.stats().dropped == 0


def test_durable_record_returns_after_the_ack(tmp_path: Path) -> None:
    collector = Collector()
    start(collector, tmp_path, batch=BatchPolicy(schedule_delay=5.0))
    started = time.monotonic()
    sdk.record("export", "report", "r1", durable=True)
    assert time.monotonic() - started < 2.0  # woke the export thread, did not wait 5 s
    assert [e["resource_id"] for e in collector.exporter.events] == ["r1"]


def test_durable_record_raises_when_the_collector_refuses(tmp_path: Path) -> None:
    collector = Collector()
    collector.state = "refusing"
    start(collector, tmp_path)
    with pytest.raises(sdk.DeliveryRejected, match="PERMISSION_DENIED"):
        sdk.record("export", "report", "r1", durable=True)


def test_durable_audited_function_raises_delivery_timeout_when_down(tmp_path: Path) -> None:
    collector = Collector()
    collector.state = "down"
    start(collector, tmp_path)

    @sdk.audited("export", "report", durable=True, timeout=0.5)
    def export_all() -> str:
        return "data"

    with pytest.raises(sdk.DeliveryTimeout):
        export_all()
    collector.state = "up"
    assert sdk.flush(5)  # the event was kept and delivered later
    assert [e["action"] for e in collector.exporter.events] == ["export"]


def test_retry_info_in_trailing_metadata_is_decoded() -> None:
    from google.protobuf import any_pb2, duration_pb2
    from google.rpc import error_details_pb2, status_pb2

    info = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=2, nanos=500_000_000))
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(code=8, message="slow down", details=[detail])
    trailing = (("grpc-status-details-bin", status.SerializeToString()),)
    assert retry_delay(trailing) == pytest.approx(2.5)
    assert retry_delay((("other", "x"),)) is None
    assert retry_delay((("grpc-status-details-bin", b"\xff\xff"),)) is None
    policy = RetryPolicy(max_backoff=2.0)
    import random

    assert policy.backoff(0, random.Random(), hint=2.5) == 2.0
    assert 0.08 <= policy.backoff(0, random.Random()) <= 0.12


def test_without_a_spool_a_full_memory_queue_drops_newest_and_counts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    collector = Collector()
    release = threading.Event()
    collector.exporter.answer = lambda request: (release.wait(10), ExportResult(ExportStatus.OK))[1]
    start(collector, None, batch=BatchPolicy(schedule_delay=0.01, max_batch_size=10,
                                             max_queue_size=100))
    with caplog.at_level(logging.WARNING, logger="auditlake.sdk"):
        for i in range(300):
            sdk.record("read", "doc", str(i))
    release.set()
    assert sdk.flush(10) is False  # some were dropped
    stats = sdk.stats()
    assert stats.dropped > 0 and stats.exported + stats.dropped == 300
    assert "spool is disabled: dropped" in caplog.text


def test_the_collectors_retry_info_delay_is_honoured(tmp_path: Path) -> None:
    collector = Collector()
    times: list[float] = []

    def answer(request: audit_pb2.ExportRequest) -> ExportResult:
        times.append(time.monotonic())
        if len(times) == 1:
            return ExportResult(ExportStatus.RETRY, "RESOURCE_EXHAUSTED", retry_after=0.4)
        return ExportResult(ExportStatus.OK)

    collector.exporter.answer = answer
    start(collector, tmp_path, retry=RetryPolicy(initial_backoff=0.01, max_backoff=1.0))
    sdk.record("read", "doc", "1")
    assert sdk.flush(5)
    assert len(times) == 2 and times[1] - times[0] >= 0.38


def test_shutdown_keeps_the_batch_of_a_call_that_never_returns(tmp_path: Path) -> None:
    collector = Collector()
    hang = threading.Event()
    collector.exporter.answer = lambda request: (hang.wait(10), DOWN)[1]
    # The fifth event fills the batch and wakes the export thread.
    start(collector, tmp_path, batch=BatchPolicy(schedule_delay=5.0, max_batch_size=5))
    for i in range(5):
        sdk.record("read", "doc", str(i))
    time.sleep(0.3)  # the export thread is now stuck in its call
    assert sdk.shutdown(timeout=0.5) is False
    hang.set()
    (spooled,) = spool_files(tmp_path)
    request = audit_pb2.ExportRequest.FromString(spooled.read_bytes())
    assert resource_ids(request) == [str(i) for i in range(5)]


def test_events_left_at_interpreter_exit_are_spooled(tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys

    with socket.socket() as s:  # a port nobody listens on: the collector is down
        s.bind(("127.0.0.1", 0))
        endpoint = f"127.0.0.1:{s.getsockname()[1]}"
    code = (
        "from auditlake import sdk\n"
        f"sdk.configure(endpoint={endpoint!r}, spool_dir={str(tmp_path)!r}, service_name='x')\n"
        "for i in range(10):\n"
        "    sdk.record('read', 'doc', str(i), tenant_id='t1')\n"
    )  # no flush, no shutdown: atexit does it
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    ids = []
    for path in spool_files(tmp_path):
        ids += resource_ids(audit_pb2.ExportRequest.FromString(path.read_bytes()))
    assert ids == [str(i) for i in range(10)]


def test_an_event_without_tenant_is_refused_alone_not_with_its_batch(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    collector = Collector()
    sdk.configure(service_name="svc", exporter=collector.exporter, anonymous_tenant="",
                  batch=BatchPolicy(schedule_delay=0.01), spool=SpoolPolicy(enabled=False))
    with caplog.at_level(logging.ERROR, logger="auditlake.sdk"):
        sdk.record("read", "doc", "1", tenant_id="t1")
        sdk.record("read", "doc", "no-tenant")
        with sdk.actor(tenant_id="t2"):
            sdk.record("read", "doc", "3")
        with pytest.raises(sdk.DeliveryRejected, match="tenant_id"):
            sdk.record("read", "doc", "durable-no-tenant", durable=True)
        assert sdk.flush(5) is False
    assert [e["resource_id"] for e in collector.exporter.events] == ["1", "3"]
    stats = sdk.stats()
    assert stats.rejected_by_reason == {"no_tenant": 2}
    # No spool, so no dead-letter spool: counted as lost, and said so.
    assert stats.dropped_by_reason == {"dead_letter_off": 2}
    assert "required field is empty (tenant_id: " in caplog.text
    assert "not kept: the dead-letter spool is off" in caplog.text


def test_an_invalid_event_is_isolated_and_the_rest_of_its_batch_stored(tmp_path: Path) -> None:
    collector = Collector()

    def strict(request: audit_pb2.ExportRequest) -> ExportResult:
        collector.attempted.append(request.batch_id)
        if "bad" in resource_ids(request):
            return ExportResult(ExportStatus.REJECTED, "INVALID_ARGUMENT: event ... resource_id",
                                code="INVALID_ARGUMENT")
        return ExportResult(ExportStatus.OK)

    collector.exporter.answer = strict
    start(collector, tmp_path, batch=BatchPolicy(schedule_delay=5.0, max_batch_size=64))
    for i in range(20):
        sdk.record("read", "doc", "bad" if i == 13 else str(i))
    assert sdk.flush(5) is False
    stored = [e["resource_id"] for e in collector.exporter.events]
    assert stored == [str(i) for i in range(20) if i != 13]  # in order, 19 of 20
    stats = sdk.stats()
    assert (stats.exported, stats.rejected) == (19, 1)
    first = collector.attempted[0]
    assert all(b == first or b.startswith(first + ".") for b in collector.attempted)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    outages=st.lists(st.tuples(st.integers(1, 60), st.booleans()), min_size=1, max_size=6),
)
def test_property_any_pattern_of_outages_delivers_everything_once_in_order(
    tmp_path_factory: pytest.TempPathFactory, outages: list[tuple[int, bool]]
) -> None:
    collector = Collector()
    start(collector, tmp_path_factory.mktemp("spool"),
          batch=BatchPolicy(schedule_delay=0.005, max_batch_size=16))
    recorded = 0
    for count, down in outages:
        collector.state = "down" if down else "up"
        for _ in range(count):
            sdk.record("read", "doc", str(recorded))
            recorded += 1
        time.sleep(0.01)
    collector.state = "up"
    assert sdk.flush(20)
    assert [e["resource_id"] for e in collector.exporter.events] == [
        str(i) for i in range(recorded)
    ]
    sdk.shutdown()


def test_refusals_are_logged_once_then_summarised_not_per_batch(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    collector = Collector()
    collector.state = "refusing"  # e.g. a wrong API key: every batch refused
    start(collector, tmp_path)
    with caplog.at_level(logging.ERROR, logger="auditlake.sdk"):
        for i in range(5):
            sdk.record("read", "doc", str(i))
            sdk.flush()
    assert len(collector.attempted) == 5
    assert caplog.text.count("the collector refused batch") == 1
    assert sdk.stats().rejected == 5


# -- nothing lost silently: dead letters, on_drop, the summary, anonymous traffic --


def test_an_event_naming_no_tenant_goes_to_the_anonymous_tenant(tmp_path: Path) -> None:
    collector = Collector()
    start(collector, tmp_path, tenant_id=None)
    sdk.record("login_failed", "session", "probe", outcome="failure")  # a 401 probe
    sdk.record("read", "doc", "empty-tenant", tenant_id="")  # "" is no tenant too
    with sdk.actor(tenant_id="t2"):
        sdk.record("read", "doc", "scoped", tenant_id="")
    sdk.record("read", "doc", "named", tenant_id="t3")
    assert sdk.flush(5)
    assert [(e["resource_id"], e["tenant_id"]) for e in collector.exporter.events] == [
        ("probe", "anonymous"), ("empty-tenant", "anonymous"), ("scoped", "t2"), ("named", "t3")]
    sdk.shutdown()
    start(collector, tmp_path, tenant_id="single", anonymous_tenant="unused")
    sdk.record("read", "doc", "single-tenant")
    assert sdk.flush(5)
    assert collector.exporter.events[-1]["tenant_id"] == "single"  # tenant_id comes first


def test_without_an_anonymous_tenant_a_tenantless_event_waits_in_the_dead_letter_spool(
    tmp_path: Path,
) -> None:
    collector = Collector()
    dropped = start(collector, tmp_path, tenant_id=None, anonymous_tenant="")
    sdk.record("login_failed", "session", "probe", outcome="failure", user_id="mallory")
    sdk.record("read", "doc", "1", tenant_id="t1")
    assert sdk.flush(5) is False
    assert [e["resource_id"] for e in collector.exporter.events] == ["1"]
    (path,) = dead_letter_files(tmp_path)
    header = json.loads(path.read_bytes().partition(b"\n")[0])
    assert (header["code"], header["reason"], header["events"]) == ("", "no_tenant", 1)
    assert [(d.reason, d.kept, [e["user_id"] for e in d.events]) for d in dropped] == [
        ("no_tenant", True, ["mallory"])]
    probe_id = dropped[0].events[0]["id"]

    start(collector, tmp_path, tenant_id=None, anonymous_tenant="public")
    assert sdk.replay_dead_letters() == (1, 0, 0)
    event = collector.exporter.events[-1]
    assert (event["id"], event["tenant_id"], event["user_id"]) == (probe_id, "public", "mallory")
    assert dead_letter_files(tmp_path) == []


def test_a_refused_durable_event_is_kept_and_raises(tmp_path: Path) -> None:
    collector = Collector()
    collector.state = "refusing"
    start(collector, tmp_path)
    with pytest.raises(sdk.DeliveryRejected, match="PERMISSION_DENIED"):
        sdk.record("export", "report", "r1", durable=True)
    assert [e["resource_id"] for e in dead_letter_events(tmp_path)] == ["r1"]


def test_the_dead_letter_spool_is_bounded_and_what_does_not_fit_is_dropped_and_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    collector = Collector()
    collector.state = "refusing"
    dropped = start(collector, tmp_path, dead_letter_max_bytes=3000,
                    batch=BatchPolicy(schedule_delay=5.0, max_batch_size=10))
    for round_number in range(5):
        for i in range(10):
            sdk.record("read", "doc", f"{round_number}-{i}")
        sdk.flush()
    stats = sdk.stats()
    kept = dead_letter_events(tmp_path)
    assert 0 < len(kept) < 50
    assert sum(p.stat().st_size for p in dead_letter_files(tmp_path)) <= 3000
    # The first refusals are kept (they say what went wrong); later ones are not.
    assert [e["resource_id"] for e in kept] == [f"{r}-{i}" for r in range(len(kept) // 10) for i in range(10)]
    assert (stats.rejected, stats.dead_lettered, stats.dropped) == (50, len(kept), 50 - len(kept))
    assert stats.dropped_by_reason == {"dead_letter_full": 50 - len(kept)}
    assert [d.kept for d in dropped] == [True] * (len(kept) // 10) + [False] * (5 - len(kept) // 10)
    assert "dead-letter spool" in dropped[-1].message and "is full" in dropped[-1].message
    with caplog.at_level(logging.WARNING, logger="auditlake.sdk"):
        sdk.shutdown()
    assert (
        f"50 refused (permission_denied: 50; {len(kept)} kept in the dead-letter spool" in caplog.text
    )
    assert f"{50 - len(kept)} dropped for good (dead_letter_full: {50 - len(kept)})" in caplog.text


def test_on_drop_gets_the_events_a_full_queue_or_spool_drops(tmp_path: Path) -> None:
    collector = Collector()
    release = threading.Event()
    collector.exporter.answer = lambda request: (release.wait(10), ExportResult(ExportStatus.OK))[1]
    threads: set[str] = set()
    dropped: list[sdk.DroppedEvents] = []

    def on_drop(drop: sdk.DroppedEvents) -> None:
        threads.add(threading.current_thread().name)
        dropped.append(drop)

    sdk.configure(service_name="svc", tenant_id="t1", exporter=collector.exporter, on_drop=on_drop,
                  batch=BatchPolicy(schedule_delay=0.01, max_batch_size=10, max_queue_size=100),
                  spool=SpoolPolicy(enabled=False))
    for i in range(300):
        sdk.record("read", "doc", str(i))
    release.set()
    assert sdk.flush(10) is False
    stats = sdk.stats()
    assert stats.dropped > 100 and sum(d.count for d in dropped) == stats.dropped
    assert {d.reason for d in dropped} == {"queue_full"} and not any(d.kept for d in dropped)
    # The events themselves, up to queue_max_size of them while the export
    # thread was stuck (memory stays bounded); the rest as counts.
    lost = [e["resource_id"] for d in dropped for e in d.events]
    delivered = [e["resource_id"] for e in collector.exporter.events]
    assert len(lost) == 100 and not set(lost) & set(delivered)
    assert len(delivered) + stats.dropped == 300
    assert threads == {"auditlake-export"}  # never the recording thread


def test_a_full_spool_hands_its_drops_to_on_drop(tmp_path: Path) -> None:
    collector = Collector()
    collector.state = "down"
    dropped = start(collector, tmp_path, spool=SpoolPolicy(directory=tmp_path, max_bytes=20_000))
    for i in range(2000):
        sdk.record("read", "doc", str(i))
    assert sdk.flush() is False
    stats = sdk.stats()
    assert stats.dropped_by_reason == {"spool_full": stats.dropped}
    assert sum(len(d.events) for d in dropped if d.reason == "spool_full") == stats.dropped


def test_an_on_drop_hook_that_raises_is_logged_and_delivery_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    collector = Collector()
    collector.state = "refusing"

    def broken(drop: sdk.DroppedEvents) -> None:
        raise RuntimeError("the hook is broken")

    sdk.configure(service_name="svc", tenant_id="t1", exporter=collector.exporter, on_drop=broken,
                  batch=BatchPolicy(schedule_delay=0.01), spool=SpoolPolicy(directory=tmp_path))
    with caplog.at_level(logging.ERROR, logger="auditlake.sdk"):
        sdk.record("read", "doc", "refused")
        assert sdk.flush(5) is False
    assert "on_drop hook raised" in caplog.text and "the hook is broken" in caplog.text
    collector.state = "up"
    sdk.record("read", "doc", "after")
    assert sdk.flush(5)
    assert [e["resource_id"] for e in collector.exporter.events] == ["after"]


def test_a_partial_refusal_keeps_the_events_the_collector_names(tmp_path: Path) -> None:
    # The collector's own message, as ingest/receive.py words it.
    collector = Collector()

    def partial(request: audit_pb2.ExportRequest) -> ExportResult:
        rows = decode_columns(request)
        if request.batch_id.endswith(".r"):
            return ExportResult(ExportStatus.OK, accepted=len(rows))
        named = "; ".join(f"event {i} (id={rows[i]['id']}): field 'x' is wrong" for i in (2, 5))
        collector.exporter.events.extend(r for i, r in enumerate(rows) if i not in (2, 5))
        return result_from_error(_Refusal(f"2 of {len(rows)} events rejected "
                                          f"({len(rows) - 2} valid events stored): {named}",
                                          accepted=len(rows) - 2))

    collector.exporter.answer = partial
    start(collector, tmp_path, batch=BatchPolicy(schedule_delay=5.0))
    for i in range(8):
        sdk.record("read", "doc", str(i))
    assert sdk.flush(5) is False
    assert [e["resource_id"] for e in dead_letter_events(tmp_path)] == ["2", "5"]
    assert sdk.replay_dead_letters() == (2, 0, 0)
    assert sorted(e["resource_id"] for e in collector.exporter.events) == [str(i) for i in range(8)]


class _Refusal(grpc.RpcError):
    """A gRPC error as the collector sends a partial refusal."""

    def __init__(self, details: str, accepted: int) -> None:
        self._details, self._accepted = details, accepted

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.INVALID_ARGUMENT

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("auditlake-accepted", str(self._accepted)),)
