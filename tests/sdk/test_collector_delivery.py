"""Delivery against a real `auditlake serve` process (tests/conftest.py fixtures).

Collector down, then back: every event stored exactly once; an application
restart delivers its spool; durable mode; refused batches; fork.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path

import pytest

from auditlake import sdk
from auditlake.sdk import BatchPolicy, RetryPolicy, SpoolPolicy

FAST = RetryPolicy(max_attempts=2, initial_backoff=0.05, max_backoff=0.2)


def configure(collector, spool_dir: Path, key: str, delay: float = 0.05) -> None:  # noqa: ANN001
    sdk.configure(
        endpoint=collector.endpoint,
        api_key=key,
        service_name="sdk-tests",
        batch=BatchPolicy(schedule_delay=delay, max_batch_size=100, export_timeout=2.0),
        retry=FAST,
        spool=SpoolPolicy(directory=spool_dir),
    )


def counts(collector, tag: str, expected: int, timeout: float = 30.0) -> tuple[int, int]:  # noqa: ANN001
    """(events, distinct ids) of ``tag`` once at least ``expected`` are queryable."""
    deadline = time.monotonic() + timeout
    while True:
        row = collector.query(
            "SELECT count(*) AS n, count(DISTINCT id) AS d FROM events "
            f"WHERE resource_type = '{tag}'"
        )[0]
        if int(row["n"]) >= expected or time.monotonic() > deadline:
            return int(row["n"]), int(row["d"])
        time.sleep(0.2)


def test_collector_down_app_restarted_then_back_every_event_stored_once(
    collector, tmp_path: Path  # noqa: ANN001
) -> None:
    # One outage covers the three promises: a durable event fails closed
    # while the collector is away, the spool survives an application restart,
    # and once the collector is back everything is there exactly once.
    key = collector.api_key("t1")
    collector.stop()
    spool = tmp_path / "spool"
    configure(collector, spool, key)  # the application's first run
    with sdk.actor(user_id="u1", tenant_id="t1"):
        for i in range(200):
            sdk.record("read", "outage", f"first-{i}")
        with pytest.raises(sdk.DeliveryTimeout):
            sdk.record("export", "outage", "durable-down", durable=True, timeout=1.0)
    sdk.shutdown(timeout=5)  # it exits while the collector is away
    assert list(spool.glob("*.batch"))

    configure(collector, spool, key)  # the second run finds the spool
    with sdk.actor(user_id="u2", tenant_id="t1"):
        for i in range(300):
            sdk.record("read", "outage", f"second-{i}")
    assert sdk.flush() is False  # one attempt: still down, all spooled

    collector.start()
    assert sdk.flush(30)
    sdk.record("export", "outage", "durable-up", tenant_id="t1", durable=True)
    assert sdk.stats().spool_pending == 0
    assert counts(collector, "outage", 502) == (502, 502)
    assert list(spool.glob("*.batch")) == []


def test_refused_batches_are_logged_counted_and_dead_lettered_not_spooled(
    collector, tmp_path: Path, caplog: pytest.LogCaptureFixture  # noqa: ANN001
) -> None:
    configure(collector, tmp_path / "spool", collector.api_key("t1"))
    with caplog.at_level(logging.ERROR, logger="auditlake.sdk"):
        sdk.record("read", "refused", "1", tenant_id="someone-else")
        assert sdk.flush() is False
    assert "PERMISSION_DENIED" in caplog.text
    stats = sdk.stats()
    assert (stats.rejected, stats.spooled, stats.dead_lettered) == (1, 0, 1)
    assert list((tmp_path / "spool").glob("*.batch")) == []
    # Not retried, but kept apart for a replay (tests/sdk/test_dead_letter.py).
    assert len(list((tmp_path / "spool" / "dead-letter").glob("*.dead"))) == 1
    with pytest.raises(sdk.DeliveryRejected, match="UNAUTHENTICATED"):
        sdk.configure(endpoint=collector.endpoint, api_key="wrong", service_name="x",
                      spool=SpoolPolicy(directory=tmp_path / "spool2"))
        sdk.record("read", "refused", "2", tenant_id="t1", durable=True)


def test_events_queued_before_fork_are_sent_once_by_the_parent(collector, tmp_path: Path) -> None:  # noqa: ANN001
    configure(collector, tmp_path / "spool", collector.api_key("t1"), delay=30.0)
    sdk.record("read", "fork", "warm-up", tenant_id="t1", durable=True)  # a live channel
    for i in range(20):
        sdk.record("read", "fork", f"parent-{i}", tenant_id="t1")  # still queued
    assert sdk.stats().queued == 20
    reader, writer = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # the child: a pre-fork worker
        code = 1
        try:
            assert sdk.stats().queued == 0
            for i in range(5):
                sdk.record("read", "fork", f"child-{i}", tenant_id="t1")
            code = 0 if sdk.flush(20) else 2
        finally:
            writer.send(bytes([code]))
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert reader.recv(1) == b"\x00" and os.WEXITSTATUS(status) == 0
    assert sdk.flush(20)
    assert counts(collector, "fork", 26) == (26, 26)
    rows = collector.query(
        "SELECT resource_id, count(*) AS n FROM events WHERE resource_type = 'fork' "
        "GROUP BY resource_id"
    )
    assert {r["resource_id"]: r["n"] for r in rows} == {
        "warm-up": 1, **{f"parent-{i}": 1 for i in range(20)}, **{f"child-{i}": 1 for i in range(5)}
    }


def test_one_invalid_event_does_not_sink_its_batch(collector, tmp_path: Path) -> None:  # noqa: ANN001
    configure(collector, tmp_path / "spool", collector.api_key("t1"), delay=5.0)
    for i in range(20):
        action = "x" * 200 if i == 7 else "read"  # longer than the collector allows
        sdk.record(action, "bisect", str(i), tenant_id="t1")
    assert sdk.flush(20) is False
    stats = sdk.stats()
    assert (stats.exported, stats.rejected) == (19, 1)
    assert counts(collector, "bisect", 19) == (19, 19)
