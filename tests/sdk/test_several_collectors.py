"""The SDK in front of several collectors: one gRPC target naming them all
(``ipv4:a,b``), gRPC's round_robin spreads the batches, and when one
collector dies its traffic moves to the others with nothing lost.

(Each collector has its own data directory here; the shared lake is the
fleet issue's.  The ingest key is made valid at both by copying the key
file, as an operator would until keys are shared.)"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from auditlake import sdk
from auditlake.sdk import BatchPolicy, RetryPolicy, SpoolPolicy


def _events(collector, tag: str) -> list[str]:  # noqa: ANN001
    return [r["resource_id"] for r in collector.query(
        f"SELECT resource_id FROM events WHERE resource_type = '{tag}'")]


def test_batches_spread_over_collectors_and_move_off_a_dead_one(collector_factory, tmp_path: Path) -> None:  # noqa: ANN001
    a = collector_factory("a")
    b = collector_factory("b")
    key = a.api_key("t1")
    shutil.copy(a.data / "keys" / "ingest.json", b.data / "keys" / "ingest.json")  # re-read by b at once
    sdk.configure(
        endpoint=f"ipv4:{a.endpoint},{b.endpoint}",
        api_key=key,
        service_name="fleet-tests",
        batch=BatchPolicy(schedule_delay=0.02, max_batch_size=10, export_timeout=2.0),
        retry=RetryPolicy(max_attempts=20, initial_backoff=0.05, max_backoff=0.3),
        spool=SpoolPolicy(directory=tmp_path / "spool"),
    )
    try:
        with sdk.actor(user_id="u1", tenant_id="t1"):
            for i in range(150):
                sdk.record("read", "fleet", f"e-{i}")
                time.sleep(0.002)
            sdk.flush(timeout=30)
            # round_robin: both collectors took batches while both were up
            # (gRPC's default, pick_first, would have sent all to one).
            deadline = time.monotonic() + 20
            while not (_events(a, "fleet") and _events(b, "fleet")) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert _events(a, "fleet") and _events(b, "fleet")
            a.kill()  # the first collector dies; the application keeps recording
            started = time.perf_counter()
            for i in range(150, 300):
                sdk.record("read", "fleet", f"e-{i}")
            enqueue_s = time.perf_counter() - started
            sdk.flush(timeout=60)
    finally:
        sdk.shutdown()
    a.start()  # its acknowledged batches are in its WAL: sealed on start
    from_a, from_b = _events(a, "fleet"), _events(b, "fleet")
    deadline = time.monotonic() + 20
    while len(set(from_a) | set(from_b)) < 300 and time.monotonic() < deadline:
        time.sleep(0.2)
        from_a, from_b = _events(a, "fleet"), _events(b, "fleet")
    assert set(from_a) | set(from_b) == {f"e-{i}" for i in range(300)}
    assert all(int(r.split("-")[1]) < 150 for r in from_a), "nothing may reach the dead collector"
    # A batch whose answer was lost in the kill may be stored at both: at most one batch.
    assert len(from_a) + len(from_b) - 300 <= 10
    assert enqueue_s < 1.0  # record() stays an enqueue while a collector is down
