"""Retry, spool, overflow, durable mode and flush, with a scripted exporter.

These drive the export thread through the in-memory exporter, whose answers
a test scripts; test_collector_delivery.py repeats the essentials against a
real collector process.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auditlake import sdk
from auditlake.sdk import BatchPolicy, ExportResult, ExportStatus, RetryPolicy, SpoolPolicy
from auditlake.sdk._event import decode_columns
from auditlake.sdk._exporter import retry_delay
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
            return ExportResult(ExportStatus.REJECTED, "PERMISSION_DENIED: wrong tenant")
        return ExportResult(ExportStatus.OK)


def start(collector: Collector, spool_dir: Path | None, **policies: object) -> None:
    sdk.configure(
        service_name="svc",
        tenant_id="t1",
        exporter=collector.exporter,
        batch=policies.get("batch", BatchPolicy(schedule_delay=0.01, max_batch_size=50)),  # type: ignore[arg-type]
        retry=policies.get("retry", FAST_RETRY),  # type: ignore[arg-type]
        spool=policies.get(  # type: ignore[arg-type]
            "spool", SpoolPolicy(directory=spool_dir, enabled=spool_dir is not None)
        ),
    )


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
    assert len(collector.attempted) == 1
    stats = sdk.stats()
    assert (stats.rejected, stats.spooled, stats.retried) == (1, 0, 0)
    assert spool_files(tmp_path) == []


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
    sdk.configure(service_name="svc", exporter=collector.exporter,
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
    assert sdk.stats().rejected == 2
    assert "required field is empty (tenant_id: " in caplog.text


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
