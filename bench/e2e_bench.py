"""End-to-end ingest: events/s from ``record()`` until queryable in DuckDB,
next to the OpenTelemetry Python SDK sending the same events as OTLP log
records over gRPC to a minimal receiver (bench/otlp_receiver.py), same run.

    .venv/bin/python bench/e2e_bench.py [--quick]
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from common import free_port, sample_event, start_collector, stop_process  # noqa: E402


def _auditlake_child(endpoint: str, key: str, n: int) -> None:
    """In a fresh process: record n events, flush; prints seconds."""
    from auditlake import sdk
    from auditlake.sdk import BatchPolicy

    # A memory queue as large as the burst, as for the baseline below: the
    # default (50,000) would spill most of a 100k burst to the disk spool.
    sdk.configure(endpoint=endpoint, api_key=key, service_name="bench",
                  batch=BatchPolicy(max_queue_size=n + 1))
    events = [sample_event(i) for i in range(n)]
    t0 = time.monotonic()
    for e in events:
        sdk.record(**e)
    ok = sdk.flush(timeout=300)
    t1 = time.monotonic()
    print(json.dumps({"start": t0, "acked": t1, "ok": ok}), flush=True)
    sdk.shutdown()


def _otel_child(port: int, n: int) -> None:
    """In a fresh process: emit n OTLP log records with the same attributes."""
    from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
    from opentelemetry.sdk.resources import Resource

    provider = LoggerProvider(resource=Resource.create({"service.name": "bench"}))
    # A queue as large as the burst: with the default (2048) the burst is
    # silently dropped in part, which would flatter the baseline's speed.
    provider.add_log_record_processor(
        BatchLogRecordProcessor(
            OTLPLogExporter(endpoint=f"127.0.0.1:{port}", insecure=True),
            max_queue_size=n + 1,
            max_export_batch_size=512,
            schedule_delay_millis=200,
        )
    )
    logger = provider.get_logger("bench")
    events = [sample_event(i) for i in range(n)]
    t0 = time.monotonic()
    for e in events:
        logger.emit(body="audit", attributes=e)
    provider.force_flush(300_000)
    t1 = time.monotonic()
    print(json.dumps({"start": t0, "acked": t1}), flush=True)
    provider.shutdown()


def run_auditlake(n: int) -> float:
    """Events/s from the first record() until all n are queryable."""
    from auditlake.collector.lake.query import connect
    from auditlake.collector.storage.datadir import DataDir

    tmp = Path(tempfile.mkdtemp(prefix="al-bench-"))
    try:
        proc, endpoint, key = start_collector(tmp / "data", tenant="acme")
        try:
            child = subprocess.run(
                [sys.executable, __file__, "--child-auditlake", endpoint, key, str(n)],
                capture_output=True, text=True, timeout=600, check=True,
            )
            start = json.loads(child.stdout.strip().splitlines()[-1])["start"]
            data = DataDir.resolve(tmp / "data")
            while True:
                con = connect(data)
                count = con.execute("SELECT count(*) FROM events").fetchone()[0]  # type: ignore[index]
                con.close()
                if count >= n:
                    break
                time.sleep(0.02)
            return n / (time.monotonic() - start)
        finally:
            stop_process(proc)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_otel(n: int) -> float:
    """Records/s from the first emit until the receiver holds all n."""
    port = free_port()
    recv = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "otlp_receiver.py"), "--port", str(port), "--expect", str(n)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert recv.stdout is not None
        assert recv.stdout.readline().strip() == "ready"
        child = subprocess.run(
            [sys.executable, __file__, "--child-otel", str(port), str(n)],
            capture_output=True, text=True, timeout=600, check=True,
        )
        start = json.loads(child.stdout.strip().splitlines()[-1])["start"]
        line = recv.stdout.readline().strip()
        if not line.startswith("done"):
            raise RuntimeError(f"OTLP receiver did not get {n} records: {line!r}")
        return n / (float(line.split()[1]) - start)
    finally:
        if recv.stdin:
            recv.stdin.close()
        recv.wait(10)


def bench_rows(quick: bool = False) -> list[tuple[str, str, str, str]]:
    n = 20_000 if quick else 100_000
    rounds = 1 if quick else 3
    ours, theirs = [], []
    for _ in range(rounds):  # alternate so both see the same machine noise
        ours.append(run_auditlake(n))
        theirs.append(run_otel(n))
    a, b = statistics.median(ours), statistics.median(theirs)
    return [
        (
            f"end-to-end ingest, record() → queryable ({n:,} events, median of {rounds})",
            f"{a:,.0f} ev/s",
            f"OTel SDK → OTLP/gRPC: {b:,.0f} rec/s",
            f"{a / b:.1f}×",
        )
    ]


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child-auditlake":
        _auditlake_child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--child-otel":
        _otel_child(int(sys.argv[2]), int(sys.argv[3]))
    else:
        from common import print_table

        print_table(bench_rows(quick="--quick" in sys.argv))
