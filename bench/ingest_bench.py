"""Collector ingest: sustained events/s from client processes sending
pre-built columnar batches over raw gRPC to `auditlake serve` (fsync'd
write-ahead log, hash chain, zstd Parquet), the collector's peak RSS, and
bytes per stored event — next to pyarrow alone writing the same rows to zstd
Parquet and JSON lines + gzip of the same events, measured in the same run.

    .venv/bin/python bench/ingest_bench.py [--quick] [--profile | --columns [--requests]]

``--profile`` runs py-spy on the collector (if installed) and prints its
top functions.  ``--columns`` prints the lake's compressed bytes per event of
each column, and what the chain hash would cost stored other ways
(``--requests``: on request-shaped rows, see SHAPES).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from common import send_payloads, start_collector, stop_process  # noqa: E402

BATCH = 4000
CLIENTS = 2
STREAMS = 4  # concurrent requests per client process

_ACTIONS = ("read", "update", "create", "delete", "login", "export")
_TYPES = ("document", "patient", "payment", "user")


def _uuid7(ms: int, rnd: random.Random) -> str:
    """A UUIDv7 string (time-ordered), cheap enough for bulk generation."""
    a = rnd.getrandbits(12)
    b = rnd.getrandbits(62)
    value = (ms << 80) | (0x7 << 76) | (a << 64) | (0b10 << 62) | b
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


#: Row shapes.  "independent": every event carries its own random trace,
#: span and request ids and a random address (the worst case for size).
#: "requests": events come from requests of 1-3 events (2 on average) that
#: share the request's trace id, request id, user and address; each user
#: works from one address (one request in ten from another); each event
#: still has its own id and span id.
SHAPES = ("independent", "requests")


def packed_payloads(cols: dict[str, list], batch: int) -> list[tuple[bytes, int]]:
    """``cols`` as serialised ExportRequests of ``batch`` events in packed
    columns (the SDK's wire form, auditlake.packing), with their event counts."""
    from auditlake.packing import pack_columns
    from auditlake.v1 import audit_pb2

    payloads = []
    for start in range(0, len(cols["id"]), batch):
        part = {k: v[start:start + batch] for k, v in cols.items()}
        req = audit_pb2.ExportRequest(batch_id=str(uuid.uuid4()), packed=pack_columns(part))
        payloads.append((req.SerializeToString(), len(part["id"])))
    return payloads


def make_events(n: int, seed: int, shape: str = "independent") -> dict[str, list]:
    """``n`` synthetic audit events as columns (the wire's column names)."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r} ({', '.join(SHAPES)})")
    rnd = random.Random(seed)
    now_ms = int(time.time() * 1000)
    cols: dict[str, list] = {k: [] for k in (
        "id", "tenant_id", "user_id", "action", "resource_type", "resource_id", "changes",
        "ip_address", "user_agent", "created_at_us", "outcome", "reason", "service",
        "trace_id", "span_id", "request_id", "metadata")}
    left = 0  # events still to come from the current request ("requests")
    tenant = user = ip = trace = request_id = ""
    for i in range(n):
        ms = now_ms + i // 50
        action = _ACTIONS[rnd.randrange(len(_ACTIONS))]
        if shape == "independent":
            tenant, user = f"tenant-{rnd.randrange(20)}", rnd.randrange(2000)
            ip = f"10.{rnd.randrange(4)}.{rnd.randrange(256)}.{rnd.randrange(256)}"
            trace, request_id = f"{rnd.getrandbits(128):032x}", f"req-{rnd.getrandbits(40):010x}"
        elif left == 0:
            left = rnd.randrange(1, 4)
            tenant, user = f"tenant-{rnd.randrange(20)}", rnd.randrange(2000)
            ip = (f"10.{user % 4}.{user // 4 % 256}.{user * 7 % 256}" if rnd.random() < 0.9
                  else f"10.{rnd.randrange(4)}.{rnd.randrange(256)}.{rnd.randrange(256)}")
            trace, request_id = f"{rnd.getrandbits(128):032x}", f"req-{rnd.getrandbits(40):010x}"
        left = max(left - 1, 0)
        cols["id"].append(_uuid7(ms, rnd))
        cols["tenant_id"].append(tenant)
        cols["user_id"].append(f"user-{user}")
        cols["action"].append(action)
        cols["resource_type"].append(_TYPES[rnd.randrange(len(_TYPES))])
        cols["resource_id"].append(f"r-{rnd.randrange(100000)}")
        cols["changes"].append(
            json.dumps({"status": {"before": "open", "after": f"closed-{rnd.randrange(9)}"}})
            if action == "update" else "")
        cols["ip_address"].append(ip)
        cols["user_agent"].append("Mozilla/5.0 (X11; Linux x86_64) bench/1.0")
        cols["created_at_us"].append(ms * 1000 + rnd.randrange(1000))
        cols["outcome"].append("success" if rnd.random() < 0.95 else "denied")
        cols["reason"].append("")
        cols["service"].append("billing")
        cols["trace_id"].append(trace)
        cols["span_id"].append(f"{rnd.getrandbits(64):016x}")
        cols["request_id"].append(request_id)
        cols["metadata"].append(json.dumps({"route": "/api/v1/items/{id}"}))
    return cols


def _client(endpoint: str, key: str, n: int, seed: int, shape: str) -> None:
    """In a fresh process: pre-serialize the batches, wait for 'go' on stdin,
    send them over STREAMS concurrent calls, print timings as JSON."""

    import grpc

    from auditlake.v1 import audit_pb2

    payloads = packed_payloads(make_events(n, seed, shape), BATCH)
    channel = grpc.insecure_channel(endpoint, options=[("grpc.max_send_message_length", 64 << 20)])
    export = channel.unary_unary(
        "/auditlake.v1.AuditService/Export",
        request_serializer=None,
        response_deserializer=audit_pb2.ExportResponse.FromString,
    )
    md = [("authorization", "Bearer " + key)]
    print("ready", flush=True)
    sys.stdin.readline()
    print(json.dumps(send_payloads(export, md, payloads, STREAMS)), flush=True)


def _vm_hwm_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def _lake_bytes(data: Path) -> int:
    return sum(p.stat().st_size for p in (data / "lake" / "events").glob("date=*/*.parquet"))


def _count(data: Path) -> int:
    """Rows sealed so far (Parquet footers: cheap enough to poll)."""
    import pyarrow.parquet as pq

    n = 0
    for p in (data / "lake" / "events").glob("date=*/*.parquet"):
        with contextlib.suppress(OSError):  # renamed away by compaction meanwhile
            n += pq.ParquetFile(p).metadata.num_rows
    return n


def run_ingest(total: int, profile: bool = False, compact: bool = False,
               columns: bool = False, shape: str = "independent") -> dict[str, float]:
    """One run: CLIENTS processes, ``total`` events of ``shape``; returns the figures."""
    tmp = Path(tempfile.mkdtemp(prefix="auditlake-ingest-"))
    data = tmp / "data"
    data.mkdir()
    debug = bool(os.environ.get("INGEST_BENCH_DEBUG"))
    if debug:  # the collector's DEBUG log (one line per seal) to stderr
        from common import free_port, run_cli

        run_cli("keys", "create", "--data", str(data), "--tenant", "tenant-0")
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "auditlake.collector", "--log-level", "DEBUG", "serve", "--data", str(data),
             "--grpc-listen", f"127.0.0.1:{port}", "--http-listen", "", "--ready-file", str(data / "r")],
            stderr=open(tmp / "collector.log", "wb"))  # noqa: SIM115
        while not (data / "r").exists():
            time.sleep(0.05)
        endpoint = f"127.0.0.1:{port}"
    else:
        proc, endpoint, key = start_collector(data, tenant="tenant-0", seal_interval=1.0)
    # the bench key must write all 20 tenants: create one that can
    key = subprocess.run(
        [sys.executable, "-m", "auditlake.collector", "keys", "create", "--data", str(data),
         *[a for i in range(20) for a in ("--tenant", f"tenant-{i}")]],
        capture_output=True, text=True, check=True).stdout.strip()
    spy = None
    clients = []
    try:
        per = total // CLIENTS
        for i in range(CLIENTS):
            clients.append(subprocess.Popen(
                [sys.executable, __file__, "--client", endpoint, key, str(per), str(i), shape],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        for c in clients:
            assert c.stdout is not None and c.stdout.readline().strip() == "ready"
        if profile and shutil.which("py-spy", path=str(Path(sys.executable).parent)):
            spy = subprocess.Popen(
                [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(proc.pid),
                 "--format", "raw", "--output", str(tmp / "profile.txt"), "--rate", "50",
                 "--nonblocking", "--threads"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)
        for c in clients:
            assert c.stdin is not None
            c.stdin.write("go\n")
            c.stdin.flush()
        results = []
        for c in clients:
            assert c.stdout is not None
            results.append(json.loads(c.stdout.readline()))
            c.wait(60)
        start = min(r["start"] for r in results)
        end = max(r["end"] for r in results)
        acked = sum(r["acked"] for r in results)
        # until everything acknowledged is sealed and queryable
        progress = []
        while (n := _count(data)) < acked and time.time() - end < 120:
            progress.append((round(time.time() - end, 2), n))
            time.sleep(0.05)
        if os.environ.get("INGEST_BENCH_DEBUG"):
            print(progress[::5], file=sys.stderr)
        sealed_end = time.time()
        rss_kb = _vm_hwm_kb(proc.pid)
        if spy is not None:
            spy.send_signal(2)
            spy.wait(30)
    finally:
        for c in clients:
            if c.poll() is None:
                c.kill()
                c.wait()
        stop_process(proc)
    stored_jsonl = _stored_jsonl_gzip_bytes(data)
    if columns:
        print(_column_breakdown(data, acked), file=sys.stderr)
    out = {
        "stored_jsonl_gzip_bytes": stored_jsonl,
        "events": acked,
        "acked_per_s": acked / (end - start),
        "sealed_per_s": acked / (sealed_end - start),
        "rss_mb": rss_kb / 1024,
        "bytes_per_event": _lake_bytes(data) / max(acked, 1),
        "busy": sum(r["busy"] for r in results),
    }
    if compact:  # the same lake after `auditlake compact` (closed days are compacted so)
        days = sorted(p.name[5:] for p in (data / "lake" / "events").glob("date=*"))
        t0 = time.perf_counter()
        for day in days:
            subprocess.run([sys.executable, "-m", "auditlake.collector", "compact", "--data", str(data),
                            "--day", day, "--delete-now"], check=True, capture_output=True)
        out["compact_s"] = time.perf_counter() - t0
        out["compacted_bytes_per_event"] = _lake_bytes(data) / max(acked, 1)
    if debug:
        print("".join(line for line in (tmp / "collector.log").read_text().splitlines(True)
                      if "sealed" in line), file=sys.stderr)
    if profile and (tmp / "profile.txt").exists():
        print(_profile_summary(tmp / "profile.txt"), file=sys.stderr)
    shutil.rmtree(tmp, ignore_errors=True)
    return out


def _stored_jsonl_gzip_bytes(data: Path, rows: int = 100_000) -> float:
    """Bytes per event of JSON lines + gzip holding the same stored rows as
    the lake (every column, chain hash included; timestamps as integers):
    the like-for-like baseline for the lake's bytes per event."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables, n = [], 0
    for p in sorted((data / "lake" / "events").glob("date=*/*.parquet")):
        t = pq.read_table(p)
        tables.append(t)
        n += t.num_rows
        if n >= rows:
            break
    table = pa.concat_tables(tables).slice(0, rows)
    for name in ("created_at", "received_at"):
        i = table.schema.get_field_index(name)
        table = table.set_column(i, name, table.column(name).cast(pa.int64()))
    jsonl = "".join(json.dumps(r) + "\n" for r in table.to_pylist()).encode()
    return len(gzip.compress(jsonl, 6)) / table.num_rows


def _column_breakdown(data: Path, events: int) -> str:
    """Compressed bytes per event of each stored column (Parquet column-chunk
    sizes over the whole lake), and what the chain hash column would cost
    stored otherwise (the same files rewritten with lake.PARQUET_OPTIONS):
    raw 32 bytes instead of 64 hex digits, and a 16-byte (32 hex) prefix.
    Figures for a storage decision; nothing here changes the format."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from auditlake.collector.lake.files import PARQUET_OPTIONS

    files = sorted((data / "lake" / "events").glob("date=*/*.parquet"))
    per: dict[str, int] = {}
    footer = 0
    for p in files:
        md = pq.ParquetFile(p).metadata
        chunks = 0
        for rg in range(md.num_row_groups):
            for c in range(md.num_columns):
                col = md.row_group(rg).column(c)
                per[col.path_in_schema] = per.get(col.path_in_schema, 0) + col.total_compressed_size
                chunks += col.total_compressed_size
        footer += p.stat().st_size - chunks
    lines = [f"{'column':<14} bytes/event   ({events:,} events, {len(files)} files)"]
    for name, size in sorted(per.items(), key=lambda kv: -kv[1]):
        lines.append(f"{name:<14} {size / events:8.2f}")
    lines.append(f"{'(footers)':<14} {footer / events:8.2f}")
    lines.append(f"{'total':<14} {_lake_bytes(data) / events:8.2f}")

    def rewritten(transform) -> float:
        total = 0
        for p in files:
            t = pq.read_table(p)
            i = t.schema.get_field_index("chain_hash")
            t = t.set_column(i, "chain_hash", transform(t.column("chain_hash")))
            sink = pa.BufferOutputStream()
            pq.write_table(t, sink, **PARQUET_OPTIONS)
            total += sink.getvalue().size
        return total / events

    def raw(col: pa.ChunkedArray) -> pa.Array:
        return pa.array([bytes.fromhex(h) for h in col.to_pylist()], pa.binary(32))

    lines.append(f"what if chain_hash were raw 32 bytes: {rewritten(raw):.2f} bytes/event")
    lines.append("what if chain_hash were a 16-byte prefix (32 hex): "
                 f"{rewritten(lambda c: pc.utf8_slice_codeunits(c, 0, 32)):.2f} bytes/event")
    lines.append(f"what if no chain_hash column: {rewritten(lambda c: pc.utf8_slice_codeunits(c, 0, 0)):.2f} "
                 "bytes/event")
    return "\n".join(lines)


def _profile_summary(path: Path, top: int = 25) -> str:
    """Self and inclusive sample counts per function from py-spy's raw output."""
    incl: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        if "idle" in frames[-1] or frames[-1].startswith(("wait (threading", "select", "_wait_once")):
            continue
        total += n
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for f in set(frames):
            incl[f] = incl.get(f, 0) + n
    lines = [f"busy samples: {total}", "-- inclusive --"]
    lines += [f"{v / total:6.1%} {k}" for k, v in sorted(incl.items(), key=lambda x: -x[1])[:top]]
    lines += ["-- self --"]
    lines += [f"{v / total:6.1%} {k}" for k, v in sorted(own.items(), key=lambda x: -x[1])[:top]]
    return "\n".join(lines)


def baselines(n: int, shape: str = "independent") -> dict[str, float]:
    """pyarrow alone: the same rows to zstd Parquet (rows/s, bytes/row); JSONL+gzip bytes/row."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = make_events(n, 99, shape)
    table = pa.table({**{k: pa.array(v, pa.string()) for k, v in cols.items() if k != "created_at_us"},
                      "created_at": pa.array(cols["created_at_us"], pa.int64()).cast(pa.timestamp("us", "UTC"))})
    times = []
    size = 0
    for _ in range(3):
        sink = io.BytesIO()
        t0 = time.perf_counter()
        pq.write_table(table, sink, compression="zstd")
        times.append(time.perf_counter() - t0)
        size = sink.tell()
    rows = [dict(zip(cols, vals, strict=True)) for vals in zip(*cols.values(), strict=True)]
    jsonl = "".join(json.dumps(r) + "\n" for r in rows).encode()
    gz = gzip.compress(jsonl, 6)
    return {"pyarrow_rows_per_s": n / sorted(times)[1], "pyarrow_bytes": size / n,
            "jsonl_gzip_bytes": len(gz) / n}


def bench_rows(quick: bool = False) -> list[tuple[str, str, str, str]]:
    """Rows for `make bench` (medians of the runs)."""
    total = 120_000 if quick else 400_000
    runs = 1 if quick else 3
    load = os.getloadavg()[0]  # the machine may be shared: say how busy it was
    # Measure the baseline next to each run (before it) and take medians of both.
    got, bases = [], []
    for i in range(runs):
        bases.append(baselines(50_000 if quick else 100_000))
        got.append(run_ingest(total, compact=(i == runs - 1)))
    base = {k: sorted(b[k] for b in bases)[len(bases) // 2] for k in bases[0]}
    # Size only (one run): the same pipeline on request-shaped rows.
    req_base = baselines(50_000 if quick else 100_000, "requests")
    req = run_ingest(total, shape="requests")

    def med(k: str) -> float:
        return sorted(g[k] for g in got)[len(got) // 2]

    acked, sealed, bpe = med("acked_per_s"), med("sealed_per_s"), med("bytes_per_event")
    rss = max(g["rss_mb"] for g in got)
    py = base["pyarrow_rows_per_s"]
    return [
        (f"collector ingest, {CLIENTS} client procs x {STREAMS} streams, {BATCH}-event batches "
         f"(acked: fsync'd WAL; events/s; load avg {load:.1f} at start)",
         f"{acked:,.0f}", f"{py:,.0f} (pyarrow zstd write alone)",
         f"{acked / py:.2f}x"),
        ("collector ingest until sealed + queryable (events/s)", f"{sealed:,.0f}",
         f"{py:,.0f} (pyarrow zstd write alone)", f"{sealed / py:.2f}x"),
        (f"collector peak RSS during ingest ({total:,} events)", f"{rss:,.0f} MB", "-", "-"),
        ("bytes per stored event after compaction (one sorted file per day)",
         f"{got[-1]['compacted_bytes_per_event']:.1f}",
         f"{base['jsonl_gzip_bytes']:.1f} (JSONL+gzip)",
         f"{got[-1]['compacted_bytes_per_event'] / base['jsonl_gzip_bytes']:.2f}x"),
        (f"compaction of the {total:,} events (auditlake compact, s)", f"{got[-1]['compact_s']:.1f}", "-", "-"),
        ("bytes per stored event (zstd Parquet, all columns + chain; independent rows: every event "
         "its own random trace, span and request id, the worst case)", f"{bpe:.1f}",
         f"{med('stored_jsonl_gzip_bytes'):.1f} (JSONL+gzip of the same stored rows, chain included); "
         f"{base['jsonl_gzip_bytes']:.1f} (JSONL+gzip, wire columns only); "
         f"{base['pyarrow_bytes']:.1f} (pyarrow zstd, wire columns only)",
         f"{bpe / med('stored_jsonl_gzip_bytes'):.2f}x"),
        ("bytes per stored event, request-shaped rows (1-3 events per request share its trace id, "
         "request id and address; own id and span id)", f"{req['bytes_per_event']:.1f}",
         f"{req['stored_jsonl_gzip_bytes']:.1f} (JSONL+gzip of the same stored rows, chain included); "
         f"{req_base['jsonl_gzip_bytes']:.1f} (JSONL+gzip, wire columns only); "
         f"{req_base['pyarrow_bytes']:.1f} (pyarrow zstd, wire columns only)",
         f"{req['bytes_per_event'] / req['stored_jsonl_gzip_bytes']:.2f}x"),
    ]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        _client(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6])
        return
    quick = "--quick" in sys.argv
    shape = "requests" if "--requests" in sys.argv else "independent"
    if "--columns" in sys.argv:  # per-column bytes of the sealed lake, to stderr
        print(json.dumps(run_ingest(200_000 if quick else 400_000, columns=True, shape=shape)))
        return
    if "--profile" in sys.argv:
        print(json.dumps(run_ingest(200_000 if quick else 1_000_000, profile=True)))
        return
    from common import print_table

    print_table(bench_rows(quick=quick))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
