"""Ingest latency while the HTTP side is busy: a client sending one-event
batches, measured alone and while 20 clients export the whole lake over
the admin API (each re-requesting as soon as it is done, waiting out 429s).

The baseline is the same collector with nothing else to do, measured in the
same run; the ratio is p99 under exports / p99 alone (1.0 = unaffected).

    .venv/bin/python bench/isolation_bench.py [--quick]
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import free_port, print_table, sample_event, start_collector, stop_process  # noqa: E402

from auditlake.collector.admin.users import UserStore  # noqa: E402
from tests.wire_client import WireClient, make_event  # noqa: E402

EXPORTERS = 20


def _load(endpoint: str, key: str, n: int) -> None:
    client = WireClient(endpoint)
    try:
        for start in range(0, n, 2000):
            client.export([make_event(i, **sample_event(i)) for i in range(start, min(n, start + 2000))], key=key)
    finally:
        client.close()


def _latencies(endpoint: str, key: str, seconds: float) -> list[float]:
    """Milliseconds of each one-event batch sent back to back for ``seconds``."""
    client = WireClient(endpoint)
    out: list[float] = []
    try:
        deadline = time.monotonic() + seconds
        i = 0
        while time.monotonic() < deadline:
            event = make_event(i, **sample_event(i))
            t0 = time.perf_counter()
            client.export([event], key=key)
            out.append((time.perf_counter() - t0) * 1000)
            i += 1
            time.sleep(0.005)
    finally:
        client.close()
    return out


def _exporters(url: str, tokens: list[str], stop: Any, exports: Any, refused: Any) -> None:
    """In a child process: one thread per token, each exporting the tenant
    over and over, waiting out 429 answers as Retry-After says.  At the
    lowest priority: on this 2-core machine they stand for clients on other
    machines, and must not take the collector's CPU themselves."""
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))

    def one(token: str) -> None:
        with httpx.Client(base_url=url, timeout=120, headers={"Authorization": f"Bearer {token}"}) as client:
            while not stop.is_set():
                with client.stream("GET", "/api/v1/export", params={"format": "csv", "tenant": "acme"}) as r:
                    if r.status_code == 429:
                        with refused.get_lock():
                            refused.value += 1
                        stop.wait(float(r.headers.get("Retry-After", "1")))
                        continue
                    for _ in r.iter_bytes():
                        if stop.is_set():
                            break
                    with exports.get_lock():
                        exports.value += 1

    threads = [threading.Thread(target=one, args=(t,), daemon=True) for t in tokens]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) >= 100 else max(values)


def bench_rows(quick: bool = False) -> list[tuple[str, str, str, str]]:
    n = 50_000 if quick else 300_000
    seconds = 8.0 if quick else 20.0
    with tempfile.TemporaryDirectory(prefix="auditlake-isolation-bench-") as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        store = UserStore(data / "keys")
        for name in ("ops", *(f"auditor{i}" for i in range(EXPORTERS))):
            store.add(name, "auditor", ("acme",), "bench password 1234")
        tokens = [store.create_token(f"auditor{i}") for i in range(EXPORTERS)]
        port = free_port()
        proc, endpoint, key = start_collector(data, extra=("--http-listen", f"127.0.0.1:{port}"), seal_interval=0.5)
        try:
            _load(endpoint, key, n)
            time.sleep(2)  # sealed
            alone = _latencies(endpoint, key, seconds)
            # The exporting clients run in another process: their reading
            # must not take this process's interpreter lock from the
            # latency measurement.
            ctx = multiprocessing.get_context("spawn")
            stop = ctx.Event()
            exports, refused = ctx.Value("i", 0), ctx.Value("i", 0)
            clients = ctx.Process(target=_exporters, args=(f"http://127.0.0.1:{port}", tokens, stop, exports, refused))
            clients.start()
            time.sleep(1.5)  # the exports are running
            busy = _latencies(endpoint, key, seconds)
            stop.set()
            clients.join(60)
            counts = {"exports": exports.value, "refused": refused.value}
        finally:
            stop_process(proc)
    print(f"isolation_bench: {n:,} events in the lake; {counts['exports']} exports finished and "
          f"{counts['refused']} refused (429) while measuring", file=sys.stderr)
    rows = []
    for q in (50, 99):
        a, b = _p(alone, q), _p(busy, q)
        rows.append((f"ingest p{q}, 1-event batches, during {EXPORTERS} clients' full CSV exports "
                     f"({n // 1000}k events)", f"{b:.1f} ms", f"{a:.1f} ms with no export", f"{b / a:.2f}x"))
    return rows


if __name__ == "__main__":
    print_table(bench_rows(quick="--quick" in sys.argv))
