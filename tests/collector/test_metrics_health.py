"""Metrics and health: Prometheus text on the admin listener's /metrics
counting what ingest answered (and never naming a tenant), the gRPC health
service on the ingest port, /healthz and /readyz, and readiness held back
while the collector seals what its write-ahead log replayed, or while
another process holds its writer id."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import prometheus_client
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from auditlake.collector.config import CollectorConfig
from auditlake.collector.lake.seal import Sealer
from auditlake.collector.server import Collector
from auditlake.collector.storage.datadir import DataDir
from tests.collector.durability_client import Client, columns, ingest_key, new_ids
from tests.conftest import CollectorProcess

EXPORT = "/auditlake.v1.AuditService/Export"
#: A tenant name that must never show in /metrics.
TENANT = "tenant-acme-confidential"

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text page, by (name, sorted labels)."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(text: str, name: str, **labels: str) -> float | None:
    """One sample's value (None when the page has no such sample)."""
    return samples(text).get((name, tuple(sorted(labels.items()))))


def health(endpoint: str, service: str = "") -> int:
    """The gRPC health service's answer for ``service``."""
    with grpc.insecure_channel(endpoint) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                            timeout=5)
        return int(response.status)


def wait_until(check: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.1)


def refusing_batch(n: int, bad: set[int], tenant: str) -> Any:
    """``n`` events of ``tenant``, those at ``bad`` without an action (refused one by one)."""
    cols = columns(new_ids(n), tenant=tenant)
    for i in bad:
        cols.action[i] = ""
    return cols


# -- /metrics -------------------------------------------------------------------------


def test_metrics_count_what_ingest_answered_and_name_no_tenant(
    collector_factory: Callable[..., CollectorProcess],
) -> None:
    c = collector_factory(http=True)
    client = Client(c.endpoint, c.api_key(TENANT))
    try:
        client.export("batch-a", columns(new_ids(20), tenant=TENANT))
        again = client.export("batch-a", columns(new_ids(20), tenant=TENANT))  # a retry: stored before
        assert again.duplicate
        with pytest.raises(grpc.RpcError) as partial:
            client.export("batch-b", refusing_batch(10, {2, 5, 7}, TENANT))
        assert partial.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        stranger = Client(c.endpoint, "not-a-key")
        with pytest.raises(grpc.RpcError) as unknown:
            stranger.export("batch-c", columns(new_ids(4), tenant=TENANT))
        assert unknown.value.code() == grpc.StatusCode.UNAUTHENTICATED
        stranger.close()
    finally:
        client.close()

    def scrape() -> str:
        response = httpx.get(f"{c.http_url}/metrics", timeout=10)  # no login: Prometheus has none
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        return response.text

    # Sealing and the first integrity verification run in the background.
    wait_until(lambda: value(scrape(), "auditlake_events_sealed_total") == 27
               and (value(scrape(), "auditlake_integrity_last_verify_timestamp_seconds") or 0) > 0,
               what="27 events sealed and a verification done")
    text = scrape()
    assert TENANT not in text and "acme" not in text
    assert value(text, "auditlake_events_received_total") == 20 + 20 + 10
    assert value(text, "auditlake_events_stored_total") == 20 + 7
    assert value(text, "auditlake_events_duplicate_total", stage="ingest") == 20
    assert value(text, "auditlake_events_rejected_total", reason="invalid") == 3
    assert value(text, "auditlake_batches_rejected_total", reason="unauthenticated") == 1
    assert value(text, "auditlake_ingest_requests_total", method=EXPORT, code="OK") == 2
    assert value(text, "auditlake_ingest_requests_total", method=EXPORT, code="INVALID_ARGUMENT") == 1
    assert value(text, "auditlake_ingest_requests_total", method=EXPORT, code="UNAUTHENTICATED") == 1
    # The three answers that stored (or had stored) events were timed.
    assert value(text, "auditlake_ack_latency_seconds_count", method=EXPORT) == 3
    assert 0 < (value(text, "auditlake_ack_latency_seconds_sum", method=EXPORT) or 0) < 30
    assert (value(text, "auditlake_wal_bytes") or 0) > 0
    assert value(text, "auditlake_unsealed_events") == 0 and value(text, "auditlake_seal_lag_seconds") == 0
    assert value(text, "auditlake_backpressure_total", reason="unsealed_events") == 0
    assert value(text, "auditlake_ready") == 1 and value(text, "auditlake_phase", phase="serving") == 1
    assert value(text, "auditlake_integrity_ok") == 1 and value(text, "auditlake_integrity_problems") == 0
    assert value(text, "auditlake_collector_reachable") == 1
    assert value(text, "auditlake_retention_runs_total", outcome="ok") == 0
    names = {s[0] for s in samples(text)}
    assert all(name.startswith("auditlake_") for name in names), sorted(n for n in names if "auditlake" not in n)


# -- health ---------------------------------------------------------------------------


def test_grpc_health_and_the_http_probes_say_a_running_collector_is_ready(
    collector_factory: Callable[..., CollectorProcess],
) -> None:
    c = collector_factory(http=True)
    assert health(c.endpoint) == SERVING
    assert health(c.endpoint, "auditlake.v1.AuditService") == SERVING
    assert health(c.endpoint, "opentelemetry.proto.collector.logs.v1.LogsService") == SERVING
    with pytest.raises(grpc.RpcError) as unknown:
        health(c.endpoint, "no.such.Service")
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    live = httpx.get(f"{c.http_url}/healthz", timeout=10)
    ready = httpx.get(f"{c.http_url}/readyz", timeout=10)
    assert live.status_code == 200 and live.json() == {"ok": True}
    assert ready.status_code == 200 and ready.json() == {"ready": True, "phase": "serving", "reason": ""}
    assert httpx.post(f"{c.http_url}/readyz", timeout=10).status_code == 405


@pytest.fixture
def in_process(tmp_path: Path) -> Iterator[list[Collector]]:
    """Collectors run in this process (stopped at the end, whatever happened)."""
    started: list[Collector] = []
    yield started
    for collector in started:
        collector.stop()


def _config(http: bool) -> CollectorConfig:
    return CollectorConfig(grpc_listen="127.0.0.1:0", http_listen="127.0.0.1:0" if http else "",
                           seal_interval_s=0.1, compact_interval_s=0)


def test_readiness_waits_until_the_replayed_write_ahead_log_is_sealed(
    tmp_path: Path, in_process: list[Collector], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = DataDir(tmp_path / "data")
    key = ingest_key(data.root, "acme")
    # A first run that never seals: its acknowledged events stay in the WAL.
    monkeypatch.setattr(Sealer, "seal_pending", lambda self: 0)
    first = Collector(data, _config(http=False))
    first.start()
    client = Client(first.grpc_address, key)
    client.export(str(uuid.uuid4()), columns(new_ids(50)))
    client.close()
    first.stop()

    # The second run replays them; its sealer waits for the test.
    gate = threading.Event()
    monkeypatch.setattr(Sealer, "seal_pending", lambda self: gate.wait() and real_seal_pending(self))
    second = Collector(data, _config(http=True))
    in_process.append(second)
    try:
        second.start()
        assert second.http is not None
        url = f"http://{second.http.address}"
        assert health(second.grpc_address) == NOT_SERVING
        ready = httpx.get(f"{url}/readyz", timeout=10)
        assert ready.status_code == 503
        assert ready.json()["phase"] == "recovering" and "sealing 50 events" in ready.json()["reason"]
        assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200  # alive, just not ready
        text = httpx.get(f"{url}/metrics", timeout=10).text
        assert value(text, "auditlake_ready") == 0 and value(text, "auditlake_phase", phase="recovering") == 1
        assert value(text, "auditlake_unsealed_events") == 50
        assert (value(text, "auditlake_seal_lag_seconds") or 0) > 0
        # Not ready is advice to balancers: a client that comes anyway is served.
        client = Client(second.grpc_address, key)
        client.export(str(uuid.uuid4()), columns(new_ids(5)))
        client.close()
    finally:
        gate.set()
    wait_until(lambda: health(second.grpc_address) == SERVING, what="SERVING once the backlog is sealed")
    assert httpx.get(f"{url}/readyz", timeout=10).status_code == 200
    # A collector process that stops answering the admin process: not alive, not ready, said so.
    assert second._status_socket is not None
    second._status_socket.stop()
    assert httpx.get(f"{url}/healthz", timeout=10).status_code == 503
    unreachable = httpx.get(f"{url}/readyz", timeout=10)
    assert unreachable.status_code == 503 and unreachable.json()["phase"] == "unreachable"
    text = httpx.get(f"{url}/metrics", timeout=10).text
    assert value(text, "auditlake_collector_reachable") == 0 and value(text, "auditlake_ready") is None
    assert value(text, "auditlake_integrity_last_verify_timestamp_seconds") is not None  # its own families remain


real_seal_pending = Sealer.seal_pending


class _Claim:
    """A writer-id claim whose loss the test decides."""

    writer_id = "w-test"
    lost: str | None = None

    def stop(self) -> None:
        pass


def test_a_collector_cut_off_from_its_writer_id_is_not_serving_and_counts_the_refusals(
    tmp_path: Path, in_process: list[Collector]
) -> None:
    cut, other = (Collector(DataDir(tmp_path / name), _config(http=False)) for name in ("cut", "other"))
    in_process += [cut, other]
    claim = _Claim()
    cut.claim = claim  # type: ignore[assignment]
    for collector in (cut, other):
        collector.start()
    assert health(cut.grpc_address) == SERVING
    claim.lost = "another process on host-b took it"
    wait_until(lambda: health(cut.grpc_address) == NOT_SERVING, timeout=5, what="NOT_SERVING")
    assert "another process on host-b" in cut.readiness().reason
    client = Client(cut.grpc_address, ingest_key(cut.data.root, "acme"))
    with pytest.raises(grpc.RpcError) as busy:
        client.export("b1", columns(new_ids(3)))
    client.close()
    assert busy.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # One registry per collector: the other one neither saw the refusal nor lost its id.
    cut_text, other_text = cut.metrics.exposition().decode(), other.metrics.exposition().decode()
    assert value(cut_text, "auditlake_backpressure_total", reason="writer_lost") == 1
    assert value(cut_text, "auditlake_writer_lost") == 1 and value(cut_text, "auditlake_ready") == 0
    assert value(other_text, "auditlake_backpressure_total", reason="writer_lost") == 0
    assert value(other_text, "auditlake_ready") == 1 and health(other.grpc_address) == SERVING
    assert not any(name.startswith("auditlake_") for name in prometheus_client.REGISTRY._names_to_collectors)
