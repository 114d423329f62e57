"""SIEM streams: can a stream keep up with ingest, and how long does a
destination that was down take to catch up?

- encoding rate per format (json, ocsf, hec, syslog) over stored rows of
  the ingest benchmark's shape, next to the collector's acknowledged ingest
  rate measured in the same run (bench/ingest_bench.py ``run_ingest``);
- catch-up: a collector with a webhook stream whose receiver answers 503
  while N events are ingested; the time from the receiver coming back until
  the stream's cursor reaches the lake's head (every event delivered),
  against the time the same collector took to ingest them.

    .venv/bin/python bench/streams_bench.py [--quick] [--events N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from common import run_cli, send_payloads, start_collector, stop_process  # noqa: E402
from ingest_bench import make_events, packed_payloads, run_ingest  # noqa: E402

FORMATS = ("json", "ocsf", "hec", "syslog")


def stored_table(n: int) -> pa.Table:
    """``n`` events of the ingest benchmark's shape as the lake stores them."""
    from auditlake.collector.schema import EVENT_SCHEMA, TIMESTAMP

    cols = make_events(n, seed=7)
    now = int(time.time() * 1_000_000)
    arrays: dict[str, pa.Array] = {}
    for f in EVENT_SCHEMA:
        if f.name == "created_at":
            arrays[f.name] = pa.array(cols["created_at_us"], pa.int64()).cast(TIMESTAMP)
        elif f.name == "received_at":
            arrays[f.name] = pa.array([now + i for i in range(n)], pa.int64()).cast(TIMESTAMP)
        elif f.name in ("changes", "metadata"):
            arrays[f.name] = pa.array([v or "{}" for v in cols[f.name]], pa.string())
        elif f.name in cols:
            arrays[f.name] = pa.array(cols[f.name], pa.string())
        elif f.name == "seq":
            arrays[f.name] = pa.array(range(1, n + 1), pa.int64())
        elif f.type == pa.bool_():
            arrays[f.name] = pa.array([False] * n)
        elif f.name == "chain_hash":
            arrays[f.name] = pa.array([f"{i:064x}" for i in range(n)])
        else:
            arrays[f.name] = pa.array(["w-bench"] * n if f.name == "writer_id" else ["k1"] * n)
    return pa.table(arrays, schema=EVENT_SCHEMA)


def encode_rates(n: int, batch: int = 5000) -> dict[str, float]:
    """Events/s of each format, encoding ``n`` rows as a stream does: reads
    of ENCODE_ROWS events, each encoded by one query and cut into requests
    of ``batch`` (the default ``batch_events``); best of three passes."""
    from auditlake.collector.streams.encode import Encoder
    from auditlake.collector.streams.run import ENCODE_ROWS

    table = stored_table(n)
    out = {}
    for fmt in FORMATS:
        enc = Encoder(fmt, host="bench")
        enc.encode(table.slice(0, 100))  # warm up (SQL planning)
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            for start in range(0, n, ENCODE_ROWS):
                for _request in enc.requests(table.slice(start, ENCODE_ROWS), batch):
                    pass
            best = min(best, time.perf_counter() - t0)
        enc.close()
        out[fmt] = n / best
    return out


class Sink:
    """A webhook receiver counting events by the batch header (no parsing:
    the receiver is not what is measured); answers 503 while ``down``."""

    def __init__(self) -> None:
        self.down = True
        self.events = 0
        self.first_at = 0.0
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                return

            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                status = 503 if sink.down else 200
                if not sink.down:
                    first, _, last = self.headers["X-Auditlake-Batch"].rpartition(":")[2].partition("-")
                    sink.events += int(last) - int(first) + 1
                    sink.first_at = sink.first_at or time.monotonic()
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/in"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _status(data: Path) -> dict[str, Any]:
    path = data / "state" / "streams" / "hook.status.json"
    return dict(json.loads(path.read_text())) if path.exists() else {}


def catch_up(n: int, fmt: str = "json") -> dict[str, float]:
    """Ingest ``n`` events while the webhook is down; then time the catch-up."""
    import grpc

    from auditlake.v1 import audit_pb2

    tmp = Path(tempfile.mkdtemp(prefix="auditlake-streams-"))
    data = tmp / "data"
    data.mkdir()
    sink = Sink()
    (data / "auditlake.toml").write_text(
        f'[[streams]]\nname = "hook"\ntype = "webhook"\nformat = "{fmt}"\nurl = "{sink.url}"\n'
        'secret_env = "BENCH_HOOK_SECRET"\nretry_initial_s = 0.2\nretry_max_s = 1.0\n')
    os.environ["BENCH_HOOK_SECRET"] = "bench-secret"
    proc, endpoint, _ = start_collector(data, tenant="tenant-0")
    key = run_cli("keys", "create", "--data", str(data),
                  *[a for i in range(20) for a in ("--tenant", f"tenant-{i}")]).strip()
    try:
        payloads = packed_payloads(make_events(n, seed=11), 4000)
        channel = grpc.insecure_channel(endpoint, options=[("grpc.max_send_message_length", 64 << 20)])
        export = channel.unary_unary("/auditlake.v1.AuditService/Export", request_serializer=None,
                                     response_deserializer=audit_pb2.ExportResponse.FromString)
        sent = send_payloads(export, [("authorization", "Bearer " + key)], payloads, 4)
        channel.close()
        ingest_s = sent["end"] - sent["start"]
        # every event sealed: the stream's view of the heads reaches n
        deadline = time.monotonic() + 600
        while _status(data).get("events_behind", 0) < sent["acked"] and time.monotonic() < deadline:
            time.sleep(0.2)
        behind = int(_status(data).get("events_behind", 0))
        t0 = time.monotonic()
        sink.down = False
        while time.monotonic() < deadline:
            st = _status(data)
            if st.get("events_behind", 1) == 0 and sink.events >= behind:
                break
            time.sleep(0.05)
        took = time.monotonic() - t0
    finally:
        stop_process(proc)
        sink.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return {"events": float(behind), "delivered": float(sink.events), "catch_up_s": took,
            "first_after_s": sink.first_at - t0 if sink.first_at else float("nan"),
            "ingest_s": ingest_s, "acked_per_s": sent["acked"] / ingest_s}


def bench_rows(quick: bool = False, events: int | None = None) -> list[tuple[str, str, str, str]]:
    """Rows for `make bench`."""
    ingest = run_ingest(120_000 if quick else 400_000)["acked_per_s"]
    rates = encode_rates(100_000 if quick else 300_000)
    n = events or (100_000 if quick else 1_000_000)
    caught = catch_up(n)
    rows = [(f"stream encoding, {fmt} (events/s, one core, 50,000-event reads cut into 5,000-event requests)",
             f"{rate:,.0f}",
             f"{ingest:,.0f} (collector ingest acked, same run)", f"{rate / ingest:.2f}x")
            for fmt, rate in rates.items()]
    rate = caught["events"] / caught["catch_up_s"]
    rows.append((f"stream catch-up after an outage of {caught['events']:,.0f} events (webhook json to a "
                 "loopback receiver; s from receiver up to cursor at head; retry_max_s 1)",
                 f"{caught['catch_up_s']:.1f} s ({rate:,.0f} events/s)",
                 f"{caught['ingest_s']:.1f} s (ingesting them, {caught['acked_per_s']:,.0f} events/s)",
                 f"{caught['catch_up_s'] / caught['ingest_s']:.2f}x"))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--events", type=int, default=None, help="events in the outage (default 1,000,000)")
    p.add_argument("--encode-only", action="store_true", help="only the encoding rates")
    args = p.parse_args()
    if args.encode_only:
        print(json.dumps(encode_rates(100_000 if args.quick else 300_000), indent=1))
        return
    if args.events:
        print(json.dumps(catch_up(args.events), indent=1))
        return
    from common import print_table

    print_table(bench_rows(args.quick))


if __name__ == "__main__":
    main()
