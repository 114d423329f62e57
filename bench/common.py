"""Shared pieces of the benchmarks: free ports, a collector process, the table."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


#: The ten attributes of an audit event that auditlake and the baseline both carry.
ATTRS = 10


def sample_event(i: int) -> dict[str, str]:
    """The i-th benchmark event: ten attributes, realistic sizes."""
    return {
        "action": "update" if i % 3 else "read",
        "resource_type": "patient",
        "resource_id": f"p-{i % 5000}",
        "user_id": f"user-{i % 500}",
        "tenant_id": "acme",
        "ip_address": f"10.0.{i % 250}.{i % 200}",
        "user_agent": "Mozilla/5.0 (bench)",
        "outcome": "success",
        "changes": json.dumps({"status": {"before": "open", "after": f"closed-{i % 7}"}}),
        "metadata": json.dumps({"route": "/patients/{id}"}),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_cli(*args: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "auditlake.collector", *args],
        capture_output=True, text=True, check=True,
    ).stdout


def start_collector(data: Path, tenant: str = "acme", extra: tuple[str, ...] = (),
                    seal_interval: float = 1.0) -> tuple[subprocess.Popen[bytes], str, str]:
    """`auditlake serve` on a free port: (process, endpoint, ingest key)."""
    key = run_cli("keys", "create", "--data", str(data), "--tenant", tenant).strip()
    port = free_port()
    ready = data / "bench.ready"
    proc = subprocess.Popen(
        [sys.executable, "-m", "auditlake.collector", "serve", "--data", str(data),
         "--grpc-listen", f"127.0.0.1:{port}", "--http-listen", "",
         "--seal-interval", str(seal_interval), "--ready-file", str(ready), *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_process(proc)
            raise RuntimeError("collector did not start")
        time.sleep(0.05)
    return proc, f"127.0.0.1:{port}", key


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def send_payloads(export: Any, metadata: list[tuple[str, str]], payloads: list[tuple[bytes, int]],
                  streams: int, *, rate: float = 0.0, batch: int = 1) -> dict[str, float]:
    """Send pre-serialised ExportRequests over ``streams`` concurrent calls,
    retrying RESOURCE_EXHAUSTED answers after 0.2 s; with ``rate`` (events/s),
    batch i waits until the schedule reaches its first event.  Returns
    {"start", "end", "acked", "busy"} (busy: refusals retried)."""
    import threading  # noqa: PLC0415

    import grpc  # noqa: PLC0415

    lock = threading.Lock()
    it = iter(enumerate(payloads))
    acked = busy = 0
    t0 = time.time()

    def worker() -> None:
        nonlocal acked, busy
        while True:
            with lock:
                item = next(it, None)
            if item is None:
                return
            i, (data, _count) = item
            if rate > 0:
                time.sleep(max(0.0, t0 + i * batch / rate - time.time()))
            while True:
                try:
                    resp = export(data, metadata=metadata, timeout=120)
                    break
                except grpc.RpcError as exc:
                    if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                        raise
                    with lock:
                        busy += 1
                    time.sleep(0.2)
            with lock:
                acked += resp.accepted

    threads = [threading.Thread(target=worker) for _ in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"start": t0, "end": time.time(), "acked": acked, "busy": busy}


def table_text(rows: list[tuple[str, str, str, str]]) -> str:
    """A Markdown table of (metric, auditlake, baseline, ratio) rows."""
    head = ("metric", "auditlake", "baseline (same run)", "ratio")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def print_table(rows: list[tuple[str, str, str, str]]) -> None:
    print(table_text(rows))


def machine() -> str:
    return f"{os.cpu_count()} cores, Python {sys.version.split()[0]}"
