"""Metrics: what the collector process tells Prometheus, in one registry per
collector (never prometheus_client's global one, so several collectors in
one process, as in tests, keep apart).

Two kinds of numbers, gathered two ways:

- what the collector already keeps (the sealer's counters, the write-ahead
  log's size, the unsealed backlog, readiness) is read when Prometheus
  scrapes: ``WriterGauges`` is a prometheus_client ``Collector`` that turns a
  ``WriterSnapshot`` (built by server.py from the running collector) into
  metric families, so the write path carries no metric code at all;
- what only the gRPC boundary sees (each answer's status, the events it
  stored, refused or found stored before, how long the answer took) is
  counted once per call by ``MetricsInterceptor``, a gRPC server interceptor
  reading the answer and its trailers, and by the hooks the collector calls
  where it decides (``events_stored``, ``backpressure``, ``retention_run``).

Every name starts with ``auditlake_``.  No label carries a tenant, a user,
an ingest key or anything a client sent: /metrics is readable without a
login (docs/operations.md), so it says how much and how fast, never whose.
Labels are fixed vocabularies (gRPC status names, the service's method
names, backpressure reasons).

Other parts of the collector add families with ``add_source`` (the stream
lag per destination of SIEM streams will: ``auditlake_stream_lag_seconds``
and ``auditlake_stream_lag_events`` with a ``destination`` label).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from auditlake.collector.ingest.receive import REJECTED_BITMAP_TRAILER, REJECTED_TRAILER, SERVICE_NAME
from auditlake.collector.lake.seal_progress import RowSet

log = logging.getLogger(__name__)

#: The content type of ``exposition()``: Prometheus text format 0.0.4.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Why Export answered RESOURCE_EXHAUSTED (``auditlake_backpressure_total{reason}``).
BACKPRESSURE_REASONS = ("unsealed_events", "wal_bytes", "disk_free", "writer_lost")

#: Seconds, from a group-committed fsync on a fast disk to a struggling one.
ACK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_EXPORT = f"/{SERVICE_NAME}/Export"
#: gRPC services the interceptor leaves alone (health checks are not ingest).
_NOT_COUNTED = ("/grpc.health.v1.Health/", "/grpc.reflection.")
#: Whole-batch refusals of Export, by status: nothing of the batch is stored.
_BATCH_REFUSALS = {
    grpc.StatusCode.UNAUTHENTICATED: "unauthenticated",
    grpc.StatusCode.PERMISSION_DENIED: "permission_denied",
    grpc.StatusCode.INVALID_ARGUMENT: "invalid",
}


@dataclass(frozen=True)
class WriterSnapshot:
    """The collector's state at one scrape (server.py fills it in)."""

    writer_id: str
    #: Readiness (ingest/health.py): 1 ready, else 0; and the phase's name.
    ready: bool
    phase: str
    #: In a shared lake: another process holds this collector's writer id.
    writer_lost: bool
    #: Acknowledged events not sealed yet, and the limit past which Export answers RESOURCE_EXHAUSTED.
    unsealed_events: int
    unsealed_events_limit: int
    #: Write-ahead log bytes on disk; of those, not sealed yet; and that limit.
    wal_bytes: int
    wal_unsealed_bytes: int
    wal_unsealed_bytes_limit: int
    #: Seconds the oldest unsealed batch has waited (0: none waits).
    seal_lag_s: float
    #: Events sealed into Parquet since start, and events the seal dropped as stored before.
    events_sealed: int
    seal_duplicates: int
    #: Unix time of the last seal (0: none since start); whether the last seal attempt failed.
    last_seal_time: float
    seal_failing: bool
    #: Free bytes on the data directory's disk, and the limit below which Export answers RESOURCE_EXHAUSTED.
    disk_free_bytes: int
    disk_free_limit: int


class _Counts:
    """Counters the collector keeps for metrics alone, behind one lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: Counter[tuple[str, str]] = Counter()
        self.events: Counter[str] = Counter()
        self.rejected_events: Counter[str] = Counter()
        self.rejected_batches: Counter[str] = Counter({r: 0 for r in _BATCH_REFUSALS.values()})
        self.backpressure: Counter[str] = Counter({r: 0 for r in BACKPRESSURE_REASONS})
        self.retention: Counter[str] = Counter({"ok": 0, "failed": 0})
        self.retention_last = 0.0


class IngestMetrics:
    """The Prometheus registry of one collector process and the hooks that
    feed it.  ``exposition()`` is the text /metrics serves."""

    def __init__(self, snapshot: Callable[[], WriterSnapshot], *, version: str) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._counts = _Counts()
        self._sources: list[Callable[[], Iterable[Metric]]] = []
        self.ack_latency = Histogram(
            "auditlake_ack_latency_seconds",
            "Seconds from receiving a batch to answering it, for answers that stored it (durable first)",
            ["method"], buckets=ACK_BUCKETS, registry=self.registry,
        )
        self.registry.register(WriterGauges(snapshot, self._counts, self._sources, version))

    # -- hooks -------------------------------------------------------------------

    def interceptor(self) -> grpc.ServerInterceptor:
        """The gRPC server interceptor counting every answer (pass it to grpc.server)."""
        return MetricsInterceptor(self)

    def events_stored(self, n: int) -> None:
        """``n`` events became durable in the write-ahead log (any path:
        gRPC, OTLP, the inbox, the collector's own events)."""
        with self._counts.lock:
            self._counts.events["stored"] += n

    def backpressure(self, reason: str) -> None:
        """Export answered RESOURCE_EXHAUSTED for ``reason`` (one of BACKPRESSURE_REASONS)."""
        with self._counts.lock:
            self._counts.backpressure[reason] += 1

    def retention_run(self, ok: bool, finished_at: float | None = None) -> None:
        """A retention run ended (retention calls this through the collector)."""
        with self._counts.lock:
            self._counts.retention["ok" if ok else "failed"] += 1
            self._counts.retention_last = finished_at if finished_at is not None else time.time()

    def add_source(self, source: Callable[[], Iterable[Metric]]) -> None:
        """Add families computed at each scrape by another part of the
        collector (names prefixed ``auditlake_``, no tenant in any label)."""
        self._sources.append(source)

    def answered(self, method: str, code: grpc.StatusCode, seconds: float, response: object,
                 trailers: Sequence[tuple[str, Any]] | None) -> None:
        """Count one answer of ``method`` (the interceptor calls this)."""
        c = self._counts
        stored_any = code == grpc.StatusCode.OK
        with c.lock:
            c.requests[(method, code.name)] += 1
            if method == _EXPORT:
                stored_any = _count_export(c, code, response, dict(trailers or ())) or stored_any
        if stored_any:
            self.ack_latency.labels(method).observe(seconds)

    def exposition(self) -> bytes:
        """Every family of this registry, as Prometheus text (``CONTENT_TYPE``)."""
        return generate_latest(self.registry)


def _count_export(c: _Counts, code: grpc.StatusCode, response: Any, trailers: dict[str, Any]) -> bool:
    """Count the events of one Export answer (caller holds ``c.lock``);
    True when the answer says events are stored."""
    if code == grpc.StatusCode.OK and response is not None:
        accepted, duplicates = int(response.accepted), int(getattr(response, "duplicates", 0))
        if response.duplicate:  # a retried batch, stored before: nothing new
            accepted, duplicates = 0, accepted
        c.events["received"] += accepted + duplicates
        c.events["duplicate"] += duplicates
        return True
    accepted_text = str(trailers.get("auditlake-accepted", ""))
    if code == grpc.StatusCode.INVALID_ARGUMENT and accepted_text.isdigit():
        # A batch stored in part: its refused rows are in a trailer.
        refused = _refused_count(trailers)
        duplicates = int(str(trailers.get("auditlake-duplicates", "0")) or 0)
        accepted = int(accepted_text)
        if str(trailers.get("auditlake-duplicate", "")) == "true":  # the same answer again
            accepted, duplicates = 0, duplicates + accepted
        c.events["received"] += accepted + duplicates + refused
        c.events["duplicate"] += duplicates
        c.rejected_events["invalid"] += refused
        return True
    reason = _BATCH_REFUSALS.get(code)
    if reason is not None:
        c.rejected_batches[reason] += 1
    return False


def _refused_count(trailers: dict[str, Any]) -> int:
    try:
        bitmap = trailers.get(REJECTED_BITMAP_TRAILER)
        if isinstance(bitmap, bytes) and bitmap:
            return RowSet.from_bitmap(bitmap).count
        return RowSet.from_ranges(str(trailers.get(REJECTED_TRAILER, ""))).count
    except ValueError:
        return 0


class MetricsInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]  # grpc has no type hints
    """Times and counts every unary call of the port (health checks aside),
    reading the status and trailers the servicer answered with."""

    def __init__(self, metrics: IngestMetrics) -> None:
        self._metrics = metrics

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
                          handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        """The method's handler, wrapped when it is a unary call of ours."""
        handler = continuation(handler_call_details)
        method = str(handler_call_details.method)
        if handler is None or handler.unary_unary is None or method.startswith(_NOT_COUNTED):
            return handler
        inner = handler.unary_unary
        metrics = self._metrics

        def counted(request: object, context: grpc.ServicerContext) -> object:
            started = time.perf_counter()
            response = None
            try:
                response = inner(request, context)
                return response
            finally:
                _record(metrics, method, context, time.perf_counter() - started, response)

        return grpc.unary_unary_rpc_method_handler(counted, request_deserializer=handler.request_deserializer,
                                                   response_serializer=handler.response_serializer)


def _record(metrics: IngestMetrics, method: str, context: grpc.ServicerContext, seconds: float,
            response: object) -> None:
    """Count one answer; a failure here is logged, never the client's."""
    try:
        # abort() sets the status before it raises; an exception without
        # one reaches the client as UNKNOWN.
        code = context.code() or (grpc.StatusCode.OK if response is not None else grpc.StatusCode.UNKNOWN)
        metrics.answered(method, code, seconds, response, context.trailing_metadata())
    except Exception:  # noqa: BLE001 - metrics must never fail a call
        log.exception("counting a gRPC answer failed")


class WriterGauges(Collector):
    """The families read at each scrape: the writer's state, and the
    counters the hooks keep."""

    def __init__(self, snapshot: Callable[[], WriterSnapshot], counts: _Counts,
                 sources: list[Callable[[], Iterable[Metric]]], version: str) -> None:
        self._snapshot = snapshot
        self._counts = counts
        self._sources = sources
        self._version = version

    def describe(self) -> Iterable[Metric]:
        """Nothing up front: the families are known at the first scrape."""
        return ()

    def collect(self) -> Iterator[Metric]:
        """Every family, from the collector's state now."""
        s = self._snapshot()
        info = GaugeMetricFamily("auditlake_build_info", "The collector's version and writer id (always 1)",
                                 labels=["version", "writer_id"])
        info.add_metric([self._version, s.writer_id], 1)
        yield info
        yield _gauge("auditlake_ready", "1 when the collector takes events (gRPC health SERVING, /readyz 200)",
                     int(s.ready))
        phase = GaugeMetricFamily("auditlake_phase", "The collector's phase: 1 for the current one",
                                  labels=["phase"])
        for name in ("starting", "recovering", "serving", "writer_lost", "stopping"):
            phase.add_metric([name], int(s.phase == name))
        yield phase
        yield _gauge("auditlake_writer_lost", "1 when another process holds this collector's writer id "
                     "(a shared lake): ingest is refused", int(s.writer_lost))
        yield _gauge("auditlake_unsealed_events", "Acknowledged events not sealed into Parquet yet",
                     s.unsealed_events)
        yield _gauge("auditlake_unsealed_events_limit", "Unsealed events past which Export answers "
                     "RESOURCE_EXHAUSTED ([collector] max_unsealed_events)", s.unsealed_events_limit)
        yield _gauge("auditlake_wal_bytes", "Bytes of the write-ahead log on disk", s.wal_bytes)
        yield _gauge("auditlake_wal_unsealed_bytes", "Write-ahead log bytes not sealed yet (a crash replays them)",
                     s.wal_unsealed_bytes)
        yield _gauge("auditlake_wal_unsealed_bytes_limit", "Unsealed write-ahead log bytes past which Export "
                     "answers RESOURCE_EXHAUSTED ([collector] max_wal_bytes)", s.wal_unsealed_bytes_limit)
        yield _gauge("auditlake_seal_lag_seconds", "Seconds the oldest unsealed batch has waited to be sealed",
                     s.seal_lag_s)
        yield _gauge("auditlake_last_seal_timestamp_seconds", "Unix time of the last seal (0: none since start)",
                     s.last_seal_time)
        yield _gauge("auditlake_seal_failing", "1 when the last seal attempt failed (the batches stay in the "
                     "write-ahead log and are sealed again)", int(s.seal_failing))
        yield _gauge("auditlake_disk_free_bytes", "Free bytes on the data directory's disk", s.disk_free_bytes)
        yield _gauge("auditlake_disk_free_bytes_limit", "Free bytes below which Export answers "
                     "RESOURCE_EXHAUSTED ([collector] min_free_disk_bytes)", s.disk_free_limit)
        c = self._counts
        with c.lock:
            requests = dict(c.requests)
            events = dict(c.events)
            rejected_events = dict(c.rejected_events)
            rejected_batches = dict(c.rejected_batches)
            backpressure = dict(c.backpressure)
            retention = dict(c.retention)
            retention_last = c.retention_last
        yield _counter("auditlake_events_received", "Events in the batches gRPC Export answered "
                       "(stored, refused and found stored before)", events.get("received", 0))
        yield _counter("auditlake_events_stored", "Events made durable in the write-ahead log, by any path",
                       events.get("stored", 0))
        yield _counter("auditlake_events_sealed", "Events sealed into signed Parquet files", s.events_sealed)
        duplicate = CounterMetricFamily("auditlake_events_duplicate", "Events not stored again because "
                                        "they were stored before, by where that was found", labels=["stage"])
        duplicate.add_metric(["ingest"], events.get("duplicate", 0))
        duplicate.add_metric(["seal"], s.seal_duplicates)
        yield duplicate
        yield _labelled_counter("auditlake_events_rejected", "Events refused one by one (the rest of their "
                                "batch stored), by reason", "reason", {"invalid": 0, **rejected_events})
        yield _labelled_counter("auditlake_batches_rejected", "Batches refused whole (nothing stored), "
                                "by reason", "reason", rejected_batches)
        yield _labelled_counter("auditlake_backpressure", "RESOURCE_EXHAUSTED answers (the client retries "
                                "later), by reason", "reason", backpressure)
        calls = CounterMetricFamily("auditlake_ingest_requests", "gRPC calls answered, by method and status",
                                    labels=["method", "code"])
        for (method, code), n in sorted(requests.items()):
            calls.add_metric([method, code], n)
        yield calls
        yield _labelled_counter("auditlake_retention_runs", "Retention runs, by outcome", "outcome", retention)
        yield _gauge("auditlake_retention_last_run_timestamp_seconds", "Unix time the last retention run ended "
                     "(0: none since start)", retention_last)
        for source in list(self._sources):
            try:
                yield from source()
            except Exception:  # noqa: BLE001 - one broken source must not hide the rest
                log.exception("a metrics source failed")


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def _labelled_counter(name: str, documentation: str, label: str, values: dict[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=[label])
    for key, n in sorted(values.items()):
        family.add_metric([key], n)
    return family
