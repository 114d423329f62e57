"""SDK overhead on the application's side, each figure next to its baseline
measured in the same run:

* ``record()`` per-call cost (p50, p99) against the OpenTelemetry SDK's log
  ``emit`` with the same ten attributes through a BatchLogRecordProcessor;
  both export threads run and discard what they export (no network);
* ``@audited`` on an empty function against the plain function;
* the ASGI middleware (a matching route rule, so one event per request):
  requests per CPU-second (process time, both threads) of a minimal
  Starlette app with and without it, driven in-process (no network, no HTTP
  client): with the actor scope only, and with one audit event per request.

    .venv/bin/python bench/sdk_bench.py [--quick]
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ATTRS, sample_event  # noqa: E402


class _Discard:
    """An auditlake exporter that acknowledges and throws away."""

    def export(self, request: Any, timeout: float) -> Any:
        from auditlake.packing import event_count
        from auditlake.sdk import ExportResult, ExportStatus

        return ExportResult(ExportStatus.OK, accepted=event_count(request))

    def close(self) -> None:
        pass


def _percentiles(samples: list[int]) -> tuple[float, float]:
    samples.sort()
    return samples[len(samples) // 2] / 1000, samples[int(len(samples) * 0.99)] / 1000


def _time_calls(call: Callable[[dict[str, str]], object], events: Sequence[dict[str, str]]) -> list[int]:
    clock = time.perf_counter_ns
    out = [0] * len(events)
    for i, event in enumerate(events):
        t0 = clock()
        call(event)
        out[i] = clock() - t0
    return out


def record_latencies(n: int) -> tuple[float, float]:
    """auditlake record(): (p50, p99) in µs over n calls."""
    from auditlake import sdk
    from auditlake.sdk import BatchPolicy, SpoolPolicy

    sdk.configure(service_name="bench", exporter=_Discard(),
                  batch=BatchPolicy(max_queue_size=n + 1),
                  spool=SpoolPolicy(enabled=False))
    events = [sample_event(i) for i in range(n)]
    record: Callable[..., None] = sdk.record
    try:
        return _percentiles(_time_calls(lambda e: record(**e), events))
    finally:
        sdk.shutdown(timeout=30)


def otel_latencies(n: int) -> tuple[float, float]:
    """OpenTelemetry logger.emit(): (p50, p99) in µs over n calls."""
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import (
        BatchLogRecordProcessor,
        LogRecordExporter,
        LogRecordExportResult,
    )
    from opentelemetry.sdk.resources import Resource

    class Discard(LogRecordExporter):
        def export(self, batch: Any) -> LogRecordExportResult:
            return LogRecordExportResult.SUCCESS

        def shutdown(self) -> None:
            pass

        def force_flush(self, timeout_millis: int = 30_000) -> bool:
            return True

    provider = LoggerProvider(resource=Resource.create({"service.name": "bench"}))
    provider.add_log_record_processor(
        BatchLogRecordProcessor(Discard(), max_queue_size=n + 1, max_export_batch_size=512,
                                schedule_delay_millis=200)
    )
    logger = provider.get_logger("bench")
    events = [sample_event(i) for i in range(n)]
    try:
        return _percentiles(_time_calls(lambda e: logger.emit(body="audit", attributes=e), events))
    finally:
        provider.shutdown()


def audited_overhead(n: int) -> tuple[float, float]:
    """(decorated, plain) p50 µs per call of an empty function, caller's thread."""
    from auditlake import sdk
    from auditlake.sdk import BatchPolicy, SpoolPolicy

    sdk.configure(service_name="bench", exporter=_Discard(), tenant_id="acme",
                  batch=BatchPolicy(max_queue_size=5 * n + 1), spool=SpoolPolicy(enabled=False))

    def plain(document_id: str) -> None:
        pass

    decorated = sdk.audited("read", "document", resource_id="document_id")(plain)
    calls = [{"document_id": f"d-{i}"} for i in range(n)]
    try:
        ours = _percentiles(_time_calls(lambda a: decorated(**a), calls))[0]
        theirs = _percentiles(_time_calls(lambda a: plain(**a), calls))[0]
        return ours, theirs
    finally:
        sdk.shutdown(timeout=30)


def _requests_per_second(app: Any, n: int, settle: Callable[[], object] | None = None) -> float:
    """Requests/s of ``app`` driven in-process; ``settle`` (a flush) is inside
    the timing, so the export thread's work for these requests is counted."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": "/patients/42", "raw_path": b"/patients/42",
        "query_string": b"", "root_path": "",
        "headers": [(b"host", b"bench"), (b"user-agent", b"bench/1"),
                    (b"authorization", b"Bearer u1@acme")],
        "client": ("10.1.2.3", 5000), "server": ("bench", 80),
    }
    request = {"type": "http.request", "body": b"", "more_body": False}

    async def receive() -> dict[str, Any]:
        return request

    async def send(message: dict[str, Any]) -> None:
        pass

    async def drive() -> float:
        for _ in range(200):  # warm up
            await app(dict(scope), receive, send)
        if settle is not None:
            settle()
        # Process CPU time (both threads), not wall time: on a shared machine
        # other processes' load would otherwise swamp the difference; on an
        # idle one the two agree, the export thread being GIL-bound.
        t0 = time.process_time()
        for _ in range(n):
            await app(dict(scope), receive, send)
        if settle is not None:
            settle()
        return n / (time.process_time() - t0)

    return asyncio.run(drive())


def _starlette_app() -> Any:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def patient(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/patients/{id}", patient)])


def _fastapi_app() -> Any:
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/patients/{patient_id}")
    async def patient(patient_id: str) -> dict[str, str]:
        return {"id": patient_id}

    return app


def middleware_ratio(bare: Any, n: int, rounds: int) -> tuple[float, float, float]:
    """Requests per CPU-second of ``bare``: (with the actor scope only, with one
    event per request, without the middleware).  The event's cost includes
    the export thread's encoding, which runs under the same GIL."""
    from auditlake import sdk
    from auditlake.sdk import BatchPolicy, SpoolPolicy
    from auditlake.sdk.asgi import AuditMiddleware, RouteRule

    def resolver(scope: Any) -> dict[str, str]:
        return {"user_id": "u1", "tenant_id": "acme"}

    scoped = AuditMiddleware(bare, resolver=resolver, trusted_proxies=["10.0.0.0/8"])
    audited = AuditMiddleware(
        bare,
        resolver=resolver,
        trusted_proxies=["10.0.0.0/8"],
        routes=[RouteRule("GET", "/patients/{id}", "read", "patient")],
    )
    sdk.configure(service_name="bench", exporter=_Discard(),
                  batch=BatchPolicy(max_queue_size=10 * n * rounds + 1),
                  spool=SpoolPolicy(enabled=False))
    try:
        scope_only, with_event, without = [], [], []
        for _ in range(rounds):  # alternate so all see the same machine noise
            without.append(_requests_per_second(bare, n, sdk.flush))
            scope_only.append(_requests_per_second(scoped, n, sdk.flush))
            with_event.append(_requests_per_second(audited, n, sdk.flush))
        return (statistics.median(scope_only), statistics.median(with_event),
                statistics.median(without))
    finally:
        sdk.shutdown(timeout=30)


def _middleware_rows(name: str, figures: tuple[float, float, float]) -> list[tuple[str, str, str, str]]:
    scope_only, with_event, without = figures
    return [
        (f"ASGI middleware, actor scope only: minimal {name} app, in-process",
         f"{scope_only:,.0f} req/CPU-s", f"without: {without:,.0f} req/CPU-s",
         f"{scope_only / without:.2f}"),
        (f"ASGI middleware + route rule, 1 audit event/request ({name}, export thread included)",
         f"{with_event:,.0f} req/CPU-s", f"without: {without:,.0f} req/CPU-s",
         f"{with_event / without:.2f} (+{(1 / with_event - 1 / without) * 1e6:.0f} µs/request)"),
    ]


def bench_rows(quick: bool = False) -> list[tuple[str, str, str, str]]:
    """Rows (metric, auditlake, baseline, ratio) for bench/run.py."""
    n = 20_000 if quick else 100_000
    rounds = 1 if quick else 3
    gc.collect()
    ours, theirs = [], []
    for _ in range(rounds):  # alternate so both see the same machine noise
        gc.collect()
        ours.append(record_latencies(n))
        gc.collect()
        theirs.append(otel_latencies(n))
    our50 = statistics.median(p[0] for p in ours)
    our99 = statistics.median(p[1] for p in ours)
    their50 = statistics.median(p[0] for p in theirs)
    their99 = statistics.median(p[1] for p in theirs)
    decorated, plain = audited_overhead(20_000 if quick else 100_000)
    small = 2_000 if quick else 10_000
    starlette = middleware_ratio(_starlette_app(), small, rounds)
    fastapi = middleware_ratio(_fastapi_app(), small // 4, rounds)
    return [
        (f"record() p50, caller's thread ({ATTRS} attributes, {n:,} calls, median of {rounds})",
         f"{our50:.2f} µs", f"OTel logger.emit p50: {their50:.2f} µs",
         f"{their50 / our50:.1f}× faster"),
        ("record() p99, caller's thread", f"{our99:.2f} µs",
         f"OTel logger.emit p99: {their99:.2f} µs", f"{their99 / our99:.1f}× faster"),
        ("@audited overhead on an empty function (p50, caller's thread)",
         f"{decorated - plain:.2f} µs/call", f"plain call p50: {plain:.2f} µs", "-"),
        *_middleware_rows("Starlette", starlette),
        *_middleware_rows("FastAPI", fastapi),
    ]


if __name__ == "__main__":
    from common import print_table

    print_table(bench_rows(quick="--quick" in sys.argv))
