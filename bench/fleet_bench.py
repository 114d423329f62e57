"""Fleet benchmark: several collectors writing one lake in an S3 bucket
(moto's S3 server on loopback), every row next to its baseline measured in
the same run.

Rows:

- ingest with 1, 2 and 3 collectors on one S3 lake: acknowledged events/s
  and events per CPU-second of collector work (user+sys CPU of the
  collector processes from /proc/PID/stat, from "go" until every
  acknowledged event is sealed); 2 and 3 collectors as a ratio to 1;
- S3 requests per sealed event and per seal over the same window, counted
  from moto's request log (one werkzeug line per request; nothing but the
  collectors talks to the server during the window), with where they go;
- freshness: acknowledgement -> visible in the ``events`` view of a
  long-lived reader (the admin search's LakeReader, a cursor per poll), and acknowledgement ->
  listed in the lake (a child tails the listing: what the collectors
  publish, whatever a query engine then costs); probes at a steady rate
  under a steady background load, on the S3 lake and on a local folder
  lake shared the same way (same collectors, same view);
- a last-week query and a one-user-year query on the S3 lake and on the same
  files on local disk (a year of synthetic events, bench/query_bench.py's
  generator), through the same ``events`` view; DuckDB alone on the same
  S3 objects beside them.

    .venv/bin/python bench/fleet_bench.py [--quick]

The machine has two cores shared by the collectors, the load clients, the
S3 server and the reader: figures are for comparing the rows of one run.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from common import free_port, send_payloads, stop_process  # noqa: E402

BUCKET = "fleet-bench"
#: Every tenant the load generator writes (ingest_bench.make_events: tenant-0..19).
TENANTS = tuple(f"tenant-{i}" for i in range(20))
SEAL_INTERVAL = 1.0  # the collector's default
#: The ingest load: client processes x concurrent calls each, events per call.
CLIENTS = 2
STREAMS = 2
BATCH = 2000
#: Days of the query lake a quick run keeps (a full run: query_bench's 365).
QUICK_DAYS = 30
#: How often the freshness reader polls the events view (seconds).
POLL_S = 0.1

_CLK_TCK = os.sysconf("SC_CLK_TCK")
#: One request line of werkzeug's log: method and path (query string included).
_REQUEST = re.compile(r'"([A-Z]+) (\S+) HTTP/1\.[01]"')
#: werkzeug colours the lines of 3xx/4xx/5xx answers (a 404 HEAD is a miss
#: the client asked about, as much a request as any other).
_COLOUR = re.compile(r"\x1b\[[0-9;]*m")


# -- the S3 server ---------------------------------------------------------------


class MotoServer:
    """moto's S3 server on a free loopback port, its request log in a file
    (werkzeug writes one line per request to stderr)."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.log_path = workdir / "moto.log"
        exe = Path(sys.executable).with_name("moto_server")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(self.port)],
                                         stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.05)

    @property
    def endpoint(self) -> str:
        """The server's URL (what AWS_ENDPOINT_URL names)."""
        return f"http://127.0.0.1:{self.port}"

    def mark(self) -> int:
        """A position in the request log (its size in bytes)."""
        return self.log_path.stat().st_size

    def quiet_mark(self, quiet_s: float = 0.5, limit_s: float = 5.0) -> int:
        """The log position once no request has arrived for ``quiet_s``: the
        end of a seal that committed (state/seal.json) but still publishes."""
        deadline = time.monotonic() + limit_s
        last = self.mark()
        while time.monotonic() < deadline:
            time.sleep(quiet_s)
            now = self.mark()
            if now == last:
                break
            last = now
        return last

    def requests(self, start: int, end: int) -> list[tuple[str, str]]:
        """(method, path) of every request logged between two marks."""
        with open(self.log_path, "rb") as f:
            f.seek(start)
            text = _COLOUR.sub("", f.read(end - start).decode(errors="replace"))
        return [(m.group(1), m.group(2)) for m in _REQUEST.finditer(text)]

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not exit."""
        stop_process(self.proc)


@contextlib.contextmanager
def aws_environment(endpoint: str) -> Iterator[None]:
    """The test server's endpoint and dummy credentials in os.environ, for
    this process (the reader) and the collectors and CLI commands it starts."""
    wanted = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
              "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    saved = {k: os.environ.get(k) for k in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def create_bucket(name: str) -> None:
    """Create the bucket ``name`` on the server AWS_ENDPOINT_URL names."""
    import boto3  # noqa: PLC0415

    boto3.client("s3").create_bucket(Bucket=name)


def request_area(path: str) -> str:
    """Which part of the lake a request touched, for the breakdown."""
    key = path.split("?", 1)[0]
    if "?" in path and "list-type" in path:
        return "listing"
    if key.endswith("/"):
        return "folder marker"
    if "/events/" in key:
        return "events (.tmp stage)" if key.endswith(".tmp") else "events"
    if "/checkpoints/" in key:
        return "checkpoints"
    if "/_auditlake/" in key:
        if key.endswith("lease.json") or "/leases/" in key:
            return "leases"
        return "fleet state"
    return "other"


def request_kind(method: str, path: str) -> str:
    """A request as S3 names it (multipart upload parts, copies included)."""
    if "uploads" in path.split("?", 1)[-1].split("&") and method == "POST":
        return "CreateMultipartUpload"
    if "partNumber=" in path:
        return "UploadPart"
    if "uploadId=" in path and method == "POST":
        return "CompleteMultipartUpload"
    if "list-type" in path:
        return "ListObjectsV2"
    return {"GET": "GetObject", "HEAD": "HeadObject", "DELETE": "DeleteObject", "PUT": "PutObject/CopyObject"}.get(
        method, method)


# -- collectors ------------------------------------------------------------------


def _proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime (fields 14, 15)


@dataclass
class Fleet:
    """Running collectors on one lake, each with its own data directory."""

    procs: list[subprocess.Popen[bytes]]
    endpoints: list[str]
    data_dirs: list[Path]
    lake: str
    key: str

    @property
    def target(self) -> str:
        """A gRPC target naming every collector (``ipv4:a,b,c``)."""
        return "ipv4:" + ",".join(self.endpoints)

    def cpu_s(self) -> float:
        """User + system CPU seconds of all the collectors so far."""
        return sum(_proc_cpu_s(p.pid) for p in self.procs)

    def sealed(self) -> tuple[int, int]:
        """(events, seals) sealed so far by all the collectors, from each
        one's DIR/state/seal.json (local files: reading them sends nothing
        to the S3 server)."""
        events = seals = 0
        for d in self.data_dirs:
            with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
                state = json.loads((d / "state" / "seal.json").read_text())
                events += int(state["seq"])
                seals += int(state["seal"])
        return events, seals

    def stop(self) -> None:
        """Stop every collector (SIGTERM: each seals what it holds)."""
        for p in self.procs:  # all at once: each seals what it holds while the others do
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            stop_process(p)


def start_fleet(workdir: Path, n: int, lake: str, started: list[subprocess.Popen[bytes]]) -> Fleet:
    """``n`` collectors on ``lake`` (each process also appended to
    ``started``, so that the caller stops it whatever happens) and an
    ingest key for every bench tenant, valid at all of them."""
    from auditlake.collector.ingest.keys import IngestKeyStore  # noqa: PLC0415
    from auditlake.collector.storage.datadir import DataDir  # noqa: PLC0415
    from auditlake.collector.storage.tiers import fleet_state  # noqa: PLC0415

    dirs = [workdir / f"collector-{i}" for i in range(n)]
    # What `auditlake keys create --data DIR --lake URL` does, without a
    # process start per fleet: the key goes to the lake's shared state,
    # which every collector of the lake reads.
    first = DataDir.resolve(dirs[0], lake)
    first.create()
    key = IngestKeyStore(fleet_state(first)).create(list(TENANTS), "fleet bench")
    procs, endpoints = [], []
    for d in dirs:
        port = free_port()
        endpoints.append(f"127.0.0.1:{port}")
        d.mkdir(parents=True, exist_ok=True)
        with open(workdir / f"{d.name}.log", "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "auditlake.collector", "serve", "--data", str(d), "--lake", lake,
                 "--grpc-listen", f"127.0.0.1:{port}", "--http-listen", "",
                 "--seal-interval", str(SEAL_INTERVAL), "--ready-file", str(d / "bench.ready")],
                stdout=log, stderr=subprocess.STDOUT)
        started.append(proc)
        procs.append(proc)
    deadline = time.monotonic() + 60
    for d, proc in zip(dirs, procs, strict=True):
        while not (d / "bench.ready").exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                log_text = (workdir / f"{d.name}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"collector {d.name} did not start:\n{log_text}")
            time.sleep(0.05)
    return Fleet(procs, endpoints, dirs, lake, key)


# -- load clients (child processes) ------------------------------------------------


def _ready_export(target: str, key: str) -> tuple[Any, Any, list[tuple[str, str]]]:
    """(channel, Export call, metadata) once connected; then "ready" is
    printed and the parent's go line awaited on stdin."""
    import grpc  # noqa: PLC0415

    from auditlake.v1 import audit_pb2  # noqa: PLC0415

    channel = _channel(target)
    export = channel.unary_unary("/auditlake.v1.AuditService/Export", request_serializer=None,
                                 response_deserializer=audit_pb2.ExportResponse.FromString)
    grpc.channel_ready_future(channel).result(timeout=30)
    print("ready", flush=True)
    sys.stdin.readline()
    return channel, export, [("authorization", "Bearer " + key)]


def _channel(target: str) -> Any:
    import grpc  # noqa: PLC0415

    # gRPC's own round_robin over every address of the target, as the SDK
    # configures it for a fleet: each call goes to the next collector.
    return grpc.insecure_channel(target, options=[("grpc.max_send_message_length", 64 << 20),
                                                  ("grpc.lb_policy_name", "round_robin")])


def _load_client(target: str, key: str, n: int, seed: int, rate: float, batch: int) -> None:
    """In a fresh process: pre-serialize ``n`` events (ingest_bench's rows)
    as ``batch``-event calls, wait for 'go' on stdin, send them over STREAMS
    concurrent calls (paced to ``rate`` events/s when > 0), print JSON."""

    from ingest_bench import make_events, packed_payloads  # noqa: PLC0415

    payloads = packed_payloads(make_events(n, seed), batch)
    channel, export, md = _ready_export(target, key)
    result = send_payloads(export, md, payloads, STREAMS, rate=rate, batch=batch)
    print(json.dumps(result), flush=True)
    channel.close()


def _probe_client(target: str, key: str, count: int, interval: float, tag: str) -> None:
    """In a fresh process: send ``count`` one-event calls ``interval`` apart
    (resource_type 'probe', resource_id '<tag>-<i>'), then print each
    probe's acknowledgement time (wall clock, as JSON)."""
    from ingest_bench import make_events, packed_payloads  # noqa: PLC0415

    cols = make_events(count, 4242)
    cols["resource_type"] = ["probe"] * count
    cols["resource_id"] = [f"{tag}-{i}" for i in range(count)]
    payloads = [data for data, _ in packed_payloads(cols, 1)]
    channel, export, md = _ready_export(target, key)
    acks: dict[str, float] = {}
    t0 = time.time()
    for i, data in enumerate(payloads):
        time.sleep(max(0.0, t0 + i * interval - time.time()))
        export(data, metadata=md, timeout=60)
        acks[f"{tag}-{i}"] = time.time()
    print(json.dumps(acks), flush=True)
    channel.close()


def _spawn(*commands: list[str], started: list[subprocess.Popen[bytes]]) -> list[subprocess.Popen[str]]:
    """Client children of this script (started together: each builds its
    batches meanwhile), once every one has said 'ready'."""
    procs: list[subprocess.Popen[str]] = []
    for args in commands:
        proc: subprocess.Popen[str] = subprocess.Popen([sys.executable, __file__, *args], stdin=subprocess.PIPE,
                                                       stdout=subprocess.PIPE, text=True)
        started.append(proc)  # type: ignore[arg-type]
        procs.append(proc)
    for args, proc in zip(commands, procs, strict=True):
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"client {args[0]} did not start (said {line!r})")
    return procs


def _go(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()


def _result(proc: subprocess.Popen[str], timeout: float = 300) -> Any:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    proc.wait(timeout)
    if proc.returncode != 0 or not line.strip():
        raise RuntimeError(f"client exited {proc.returncode}")
    return json.loads(line)


# -- 1 and 2: ingest with 1, 2, 3 collectors; requests per sealed event --------------


@dataclass(frozen=True)
class IngestRun:
    """One ingest run of a fleet: what was acknowledged, sealed, spent and asked of S3."""

    collectors: int
    acked: int
    acked_per_s: float
    cpu_s: float
    #: CPU-seconds per second of the idle fleet (all collectors), before the load.
    idle_cpu: float
    sealed: int
    seals: int
    requests: list[tuple[str, str]]

    @property
    def events_per_cpu_s(self) -> float:
        """Acknowledged events per CPU-second of collector work."""
        return self.acked / self.cpu_s

    @classmethod
    def pooled(cls, runs: list[IngestRun]) -> IngestRun:
        """Several runs of one fleet size as one: events, CPU, seals and
        requests summed (so the ratios weigh each run by its events)."""
        return cls(runs[0].collectors, sum(r.acked for r in runs), statistics.mean(r.acked_per_s for r in runs),
                   sum(r.cpu_s for r in runs), statistics.mean(r.idle_cpu for r in runs),
                   sum(r.sealed for r in runs), sum(r.seals for r in runs), [q for r in runs for q in r.requests])


def run_ingest(moto: MotoServer, workdir: Path, n: int, rate: float, seconds: float, idle_s: float,
               started: list[subprocess.Popen[bytes]]) -> IngestRun:
    """``rate`` events/s for ``seconds`` from CLIENTS processes over ``n`` fresh
    collectors on a fresh prefix of the bucket; the collectors are stopped after.
    The window of CPU and requests runs from 'go' until every acknowledged
    event is sealed and the S3 server has gone quiet."""
    tag = f"{n}-{uuid.uuid4().hex[:6]}"
    fleet = start_fleet(workdir / f"ingest-{tag}", n, f"s3://{BUCKET}/ingest-{tag}", started)
    try:
        per_client = int(rate * seconds) // CLIENTS
        clients = _spawn(*[["--load", fleet.target, fleet.key, str(per_client), str(i), str(rate / CLIENTS),
                            str(BATCH)] for i in range(CLIENTS)], started=started)
        # Past the collectors' start-up work; what the idle fleet burns is
        # part of every figure below, so measure it on its own too.
        time.sleep(0.5)
        idle0, t_idle = fleet.cpu_s(), time.monotonic()
        time.sleep(idle_s)
        idle_cpu = (fleet.cpu_s() - idle0) / (time.monotonic() - t_idle)
        events0, seals0 = fleet.sealed()
        cpu0, mark0 = fleet.cpu_s(), moto.mark()
        _go(clients)
        results = [_result(c) for c in clients]
        acked = sum(r["acked"] for r in results)
        start, end = min(r["start"] for r in results), max(r["end"] for r in results)
        deadline = time.monotonic() + 120
        while fleet.sealed()[0] - events0 < acked:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{n} collectors: sealed {fleet.sealed()[0] - events0} of {acked} in 120 s")
            time.sleep(0.05)
        mark1 = moto.quiet_mark()
        cpu = fleet.cpu_s() - cpu0
        events1, seals1 = fleet.sealed()
    finally:
        fleet.stop()
    return IngestRun(n, acked, acked / (end - start), cpu, idle_cpu, events1 - events0, seals1 - seals0,
                     moto.requests(mark0, mark1))


# -- 3: freshness ------------------------------------------------------------------


def _tail_lake(lake: str, tag: str, count: int, seconds: float) -> None:
    """In a fresh process: list the lake's events every POLL_S (one
    ListObjectsV2, or a glob on disk), read each new file's probe rows, and
    print when each of the ``count`` probes tagged ``tag`` was first listed
    (JSON): when the collector had published it, whatever a query engine
    then costs."""
    import io  # noqa: PLC0415

    import pyarrow.parquet as pq  # noqa: PLC0415

    if lake.startswith("s3://"):
        import boto3  # noqa: PLC0415

        s3 = boto3.client("s3")
        bucket, _, prefix = lake[len("s3://"):].partition("/")

        def listing() -> list[str]:
            pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/events/")
            return [o["Key"] for page in pages for o in page.get("Contents", [])]

        def read(key: str) -> Any:
            body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            return pq.read_table(io.BytesIO(body), columns=["resource_type", "resource_id"])
    else:
        def listing() -> list[str]:
            return [str(p) for p in Path(lake, "events").glob("date=*/*")]

        def read(key: str) -> Any:
            return pq.read_table(key, columns=["resource_type", "resource_id"])

    listing()
    print("ready", flush=True)
    done: set[str] = set()
    seen: dict[str, float] = {}
    deadline = time.monotonic() + seconds
    while len(seen) < count and time.monotonic() < deadline:
        t0 = time.time()
        keys = [k for k in listing() if k.endswith(".parquet") and k not in done]
        listed = time.time()
        for key in keys:
            done.add(key)
            with contextlib.suppress(FileNotFoundError):  # compacted away meanwhile
                table = read(key).to_pydict()
                for rtype, rid in zip(table["resource_type"], table["resource_id"], strict=True):
                    if rtype == "probe" and rid.startswith(f"{tag}-"):
                        seen.setdefault(rid, listed)
        time.sleep(max(0.0, t0 + POLL_S - time.time()))
    print(json.dumps(seen), flush=True)


@dataclass(frozen=True)
class Freshness:
    """Seconds from acknowledgement to visible, per probe: in the events view
    of a polling reader, and in the bucket's listing; the reader's poll times."""

    view: list[float]
    listed: list[float]
    polls: list[float]
    missing: int


def run_freshness(workdir: Path, lake: str, collectors: int, probes: int, interval: float, background: float,
                  started: list[subprocess.Popen[bytes]]) -> Freshness:
    """Probes ``interval`` apart while a client sends ``background`` events/s,
    over ``collectors`` collectors on ``lake``; this process polls the events
    view every POLL_S the way the admin UI and API do (a long-lived
    LakeReader, a cursor per query), a child process tails the lake's listing."""
    from auditlake.collector.admin.search import LakeReader  # noqa: PLC0415
    from auditlake.collector.storage.datadir import DataDir  # noqa: PLC0415
    from auditlake.collector.storage.tiers import hot_tier  # noqa: PLC0415

    fleet = start_fleet(workdir, collectors, lake, started)
    reader_dir = workdir / "reader"
    reader_dir.mkdir()
    data = DataDir.resolve(reader_dir, lake)
    reader = None
    try:
        duration = probes * interval
        tag = f"p{uuid.uuid4().hex[:8]}"
        load, probe, tail = _spawn(
            ["--load", fleet.target, fleet.key, str(int(background * (duration + 6))), "7", str(background), "200"],
            ["--probe", fleet.target, fleet.key, str(probes), str(interval), tag],
            ["--tail", data.lake_uri, tag, str(probes), str(duration + 30)], started=started)
        _go([load])
        deadline = time.monotonic() + 60
        while not hot_tier(data).folders("events"):  # something sealed
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing sealed to {lake} in 60 s")
            time.sleep(0.2)
        reader = LakeReader(data)
        sql = f"SELECT resource_id FROM events WHERE resource_type = 'probe' AND starts_with(resource_id, '{tag}-')"

        def poll() -> list[Any]:
            cur = reader.cursor()
            try:
                return cur.execute(sql).fetchall()
            finally:
                cur.close()

        poll()  # warm the reader before the first probe
        _go([probe])
        seen: dict[str, float] = {}
        polls: list[float] = []
        deadline = time.monotonic() + duration + 30
        while (probe.poll() is None or len(seen) < probes) and time.monotonic() < deadline:
            t0 = time.time()
            rows = poll()
            t1 = time.time()
            polls.append(t1 - t0)
            for (rid,) in rows:
                seen.setdefault(rid, t1)  # the query's end: visible no later than this
            # A reader polling every POLL_S, not flat out: a busy loop would
            # take the CPU the collectors share with it on two cores.
            time.sleep(max(0.0, t0 + POLL_S - time.time()))
        acks = _result(probe)
        listed = _result(tail)
        _result(load)
    finally:
        if reader is not None:
            reader.close()
        fleet.stop()
    return Freshness([seen[k] - t for k, t in acks.items() if k in seen],
                     [listed[k] - t for k, t in acks.items() if k in listed], polls,
                     len(acks) - min(len(seen), len(listed)))


# -- 4: queries, S3 lake vs the same files on local disk --------------------------------


def query_lake(quick: bool, workdir: Path) -> Path:
    """A year of synthetic events in the lake layout (one file per day):
    query_bench's cached 1-million-event lake; quick: a small one whose
    first days are dropped, so that a quick run lists fewer partitions."""
    import query_bench  # noqa: PLC0415

    if not quick:
        return query_bench.ensure_lake(True) / "lake"
    root = workdir / "query-lake"
    query_bench.generate(root, 36_500)  # 100 events a day
    days = sorted((root / "lake" / "events").glob("date=*"))
    for old in days[:-QUICK_DAYS]:
        shutil.rmtree(old)
    return root / "lake"


def upload_lake(lake: Path, prefix: str) -> int:
    """Copy ``lake/events/**`` to ``s3://BUCKET/prefix/events/**`` (same relative keys); bytes sent."""
    import boto3  # noqa: PLC0415

    s3 = boto3.client("s3")
    files = sorted(p for p in (lake / "events").rglob("*.parquet"))

    def put(p: Path) -> int:
        s3.upload_file(str(p), BUCKET, f"{prefix}/events/{p.relative_to(lake / 'events').as_posix()}")
        return p.stat().st_size

    with ThreadPoolExecutor(4) as pool:
        return sum(pool.map(put, files))


@dataclass(frozen=True)
class QueryTimes:
    """Median seconds of one query per reader, and the S3 requests one run
    made (readers of the S3 lake only)."""

    seconds: dict[str, float]
    requests: dict[str, int]
    rows: int


def time_query(moto: MotoServer, readers: dict[str, Any], sql: str, runs: int) -> QueryTimes:
    """Run ``sql`` on every reader (name -> DuckDB connection) in turn, the
    order rotating from run to run (the machine is shared: load from other
    processes then hits each alike); a warm-up run each first, whose answers
    must all be the same."""
    answers = {name: con.execute(sql).fetchall() for name, con in readers.items()}
    first = next(iter(answers.values()))
    for name, rows in answers.items():
        if rows != first:
            raise RuntimeError(f"readers disagree on {sql!r}: {name} has {len(rows)} rows, not {len(first)}")
    times: dict[str, list[float]] = {name: [] for name in readers}
    requests: dict[str, int] = {}
    names = list(readers)
    for i in range(runs):
        for name in names[i % len(names):] + names[:i % len(names)]:
            mark = moto.mark()
            t0 = time.perf_counter()
            readers[name].execute(sql).fetchall()
            times[name].append(time.perf_counter() - t0)
            n = len(moto.requests(mark, moto.quiet_mark(0.1, 1.0)))
            if n:
                requests[name] = n
    return QueryTimes({k: statistics.median(v) for k, v in times.items()}, requests, len(first))


def run_queries(moto: MotoServer, workdir: Path, quick: bool) -> dict[str, Any]:
    """Upload the query lake; time the two queries through the events view on
    S3 and on local disk, and with DuckDB alone on the same S3 objects."""
    import datetime as dt  # noqa: PLC0415

    import duckdb  # noqa: PLC0415
    import query_bench  # noqa: PLC0415
    import s3fs  # noqa: PLC0415

    from auditlake.collector.lake.query import connect  # noqa: PLC0415
    from auditlake.collector.storage.datadir import DataDir  # noqa: PLC0415

    lake = query_lake(quick, workdir)
    days = sum(1 for _ in (lake / "events").glob("date=*"))
    t0 = time.perf_counter()
    uploaded = upload_lake(lake, "query")
    upload_s = time.perf_counter() - t0
    for name in ("reader-s3", "reader-local"):
        (workdir / name).mkdir()
    # Both readers see the lake as a fleet's (--lake): the same view, one
    # copy per event, so that only where the files are differs.
    s3 = DataDir.resolve(workdir / "reader-s3", f"s3://{BUCKET}/query")
    local = DataDir.resolve(workdir / "reader-local", str(lake))
    t0 = time.perf_counter()
    mark = moto.mark()
    s3_con = connect(s3)
    s3_connect = time.perf_counter() - t0
    connect_requests = len(moto.requests(mark, moto.quiet_mark(0.1, 1.0)))
    t0 = time.perf_counter()
    local_con = connect(local)
    local_connect = time.perf_counter() - t0
    # DuckDB alone on the same objects through the same fsspec filesystem:
    # one recursive listing (``**``), no union_by_name, no one-copy window.
    raw = duckdb.connect()
    raw.execute("SET TimeZone = 'UTC'")
    raw.register_filesystem(s3fs.S3FileSystem(endpoint_url=os.environ["AWS_ENDPOINT_URL"], use_listings_cache=False,
                                              skip_instance_cache=True))
    raw.execute(f"CREATE VIEW events AS SELECT * FROM read_parquet('s3://{BUCKET}/query/events/**/*.parquet', "
                "hive_partitioning = true, hive_types = {'date': DATE})")
    last_day = query_bench.END_DAY - dt.timedelta(days=1)
    week = (f"SELECT action, count(*) AS n FROM events WHERE date >= DATE '{last_day - dt.timedelta(days=6)}' "
            "GROUP BY action ORDER BY action")
    user = ("SELECT id, created_at, action, resource_type, resource_id FROM events "
            "WHERE user_id = 'user-0407@example.com' ORDER BY created_at, id")
    readers = {"s3": s3_con, "local": local_con, "raw_s3": raw}
    runs = 3  # a full run: several seconds per S3 query of the year lake
    try:
        out = {"week": time_query(moto, readers, week, runs), "user": time_query(moto, readers, user, runs)}
    finally:
        for con in readers.values():
            con.close()
    return {**out, "days": days, "bytes": uploaded, "upload_s": upload_s, "s3_connect": s3_connect,
            "local_connect": local_connect, "connect_requests": connect_requests}


# -- the rows ------------------------------------------------------------------------


def _breakdown(run: IngestRun) -> str:
    """Requests per seal by lake area, largest first."""
    areas = Counter(request_area(p) for _, p in run.requests)
    return ", ".join(f"{area} {n / max(run.seals, 1):.1f}" for area, n in areas.most_common())


def _print_detail(runs: list[IngestRun]) -> None:
    """Where the requests went, to stderr (the table has room for a summary)."""
    for run in runs:
        kinds = Counter((request_area(p), request_kind(m, p)) for m, p in run.requests)
        print(f"-- {run.collectors} collector(s): {len(run.requests)} requests, {run.seals} seals, "
              f"{run.sealed:,} events sealed, {run.cpu_s:.1f} CPU-s", file=sys.stderr)
        for (area, kind), n in kinds.most_common():
            print(f"   {n:6d}  {n / max(run.seals, 1):6.2f}/seal  {area:20s} {kind}", file=sys.stderr)
        # What is listed, by prefix with the writer ids and dates blanked out.
        listed = [dict(urllib.parse.parse_qsl(p.split("?", 1)[1])).get("prefix", "")
                  for _, p in run.requests if request_area(p) == "listing"]
        prefixes = Counter(re.sub(r"w[0-9a-f]{12}|\d{4}-\d{2}-\d{2}|ingest-[0-9a-f-]+", "*", p) for p in listed)
        for prefix, n in prefixes.most_common(5):
            print(f"   {n:6d}  listing prefix={prefix}", file=sys.stderr)


def _phase(what: str, t0: float) -> None:
    print(f"  fleet_bench: {what}: {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)


def _quantile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def one_copy_rows(quick: bool) -> list[tuple[str, str, str, str]]:
    """What the fleet's one-copy rule costs a query: the same local lake read
    through the view with the rule (a lake with several writers) and without
    it (one writer), in this run."""
    import datetime as dt  # noqa: PLC0415

    import duckdb  # noqa: PLC0415
    import query_bench  # noqa: PLC0415

    from auditlake.collector.lake.query import create_events_view, events_view_sql, lake_globs  # noqa: PLC0415
    from auditlake.collector.storage.datadir import DataDir  # noqa: PLC0415

    root = query_bench.ensure_lake(True)  # the 1M-event year (the 10M one: ~10x each figure)
    glob = lake_globs(DataDir.resolve(root))
    last = query_bench.END_DAY - dt.timedelta(days=1)
    queries = {
        "one user, all year": "SELECT count(*) FROM events WHERE user_id = 'user-0407@example.com'",
        "last 3 days by created_at": f"SELECT count(*) FROM events WHERE created_at >= TIMESTAMPTZ '{last}' "
                                     "- INTERVAL 2 DAY",
        "last week by action (date filter)": f"SELECT action, count(*) FROM events WHERE date >= DATE "
                                             f"'{last - dt.timedelta(days=6)}' GROUP BY 1",
        "count of the whole lake": "SELECT count(*) FROM events",
    }
    cons = {}
    for one in (False, True):
        con = duckdb.connect()
        con.execute("SET TimeZone = 'UTC'")
        create_events_view(con, events_view_sql(glob), one_copy=one)
        cons[one] = con
    rows = []
    try:
        events = cons[False].execute("SELECT count(*) FROM events").fetchone()[0]
        for name, sql in queries.items():
            med = {}
            for one, con in cons.items():
                con.execute(sql).fetchall()  # warm
                times = []
                for _ in range(3 if quick else 5):
                    t0 = time.perf_counter()
                    con.execute(sql).fetchall()
                    times.append(time.perf_counter() - t0)
                med[one] = statistics.median(times)
            rows.append((f"one-copy view (a fleet's lake) vs one writer's view, same local files "
                         f"({events:,} events, {query_bench.DAYS} days): {name} (median)",
                         f"{med[True] * 1000:,.0f} ms", f"{med[False] * 1000:,.0f} ms",
                         f"{med[True] / med[False]:.1f}x"))
    finally:
        for con in cons.values():
            con.close()
    return rows


def bench_rows(quick: bool = False) -> list[tuple[str, str, str, str]]:
    """Rows (metric, auditlake, baseline, ratio), every baseline from this run."""
    rate, seconds, idle_s = 40_000.0, (2.0 if quick else 6.0), (1.0 if quick else 2.0)
    rounds = 1 if quick else 2
    probes, interval = (20, 0.1) if quick else (240, 0.05)
    background = 2000.0
    load = os.getloadavg()[0]
    workdir = Path(tempfile.mkdtemp(prefix="auditlake-fleet-bench-"))
    started: list[subprocess.Popen[bytes]] = []
    moto = MotoServer(workdir)
    try:
        with aws_environment(moto.endpoint):
            create_bucket(BUCKET)
            t0 = time.monotonic()
            # Rounds of 1, 2, 3 collectors in turn, so that load from other
            # processes on the shared machine falls on every size alike.
            each = [[run_ingest(moto, workdir, n, rate, seconds, idle_s, started) for n in (1, 2, 3)]
                    for _ in range(rounds)]
            runs = [IngestRun.pooled([r[i] for r in each]) for i in range(3)]
            _phase("ingest with 1, 2, 3 collectors", t0)
            t0 = time.monotonic()
            fresh_s3 = run_freshness(workdir / "fresh-s3", f"s3://{BUCKET}/fresh-{uuid.uuid4().hex[:6]}", 2, probes,
                                     interval, background, started)
            fresh_local = run_freshness(workdir / "fresh-local", str(workdir / "fresh-local-lake"), 2, probes,
                                        interval, background, started)
            _phase("freshness, S3 and local", t0)
            t0 = time.monotonic()
            queries = run_queries(moto, workdir, quick)
            _phase("queries", t0)
    finally:
        for p in started:  # whatever failed: no process outlives the benchmark
            if p.poll() is None:
                p.kill()
                p.wait()
        moto.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    _print_detail(runs)
    one = runs[0]
    rows: list[tuple[str, str, str, str]] = []
    for run in runs:
        name = (f"fleet ingest on one S3 lake (moto), {run.collectors} collector{'s' if run.collectors > 1 else ''}: "
                f"events per collector CPU-second, go -> all sealed (acked ev/s; idle fleet CPU). Modest load for "
                f"2 shared cores: {rate:,.0f} ev/s offered for {seconds:.0f} s by {CLIENTS} client procs x {STREAMS} "
                f"calls, round-robin, {BATCH}-event batches; {rounds} round(s) pooled; load avg {load:.1f} at start")
        rows.append((name, f"{run.events_per_cpu_s:,.0f} ({run.acked_per_s:,.0f} ev/s; idle {run.idle_cpu:.1%})",
                     "-" if run is one else f"{one.events_per_cpu_s:,.0f} (1 collector)",
                     "1.00x" if run is one else
                     f"{run.events_per_cpu_s / one.events_per_cpu_s:.2f}x (goal >= 0.90x)"))
    base = len(one.requests) / max(one.sealed, 1)
    for run in runs:
        per_event = len(run.requests) / max(run.sealed, 1)
        rows.append((f"S3 requests per sealed event, {run.collectors} collector(s), same window "
                     "(per seal; seals; requests)",
                     f"{per_event:.5f} ({len(run.requests) / max(run.seals, 1):.1f}/seal; {run.seals} seals; "
                     f"{len(run.requests)})",
                     "-" if run is one else f"{base:.5f} (1 collector)",
                     "1.00x" if run is one else f"{per_event / base:.2f}x"))
    rows.append(("S3 requests per seal by lake area (3 collectors)", _breakdown(runs[-1]), "-", "-"))
    s3_poll, local_poll = statistics.median(fresh_s3.polls), statistics.median(fresh_local.polls)
    setup = (f"2 collectors; {len(fresh_s3.view)} probes at {1 / interval:.0f}/s under {background:,.0f} ev/s of "
             "background load")
    rows.append((f"freshness, ack -> visible in the events view, p50 / p99 ({setup}; this process polls "
                 f"the admin reader's view every {POLL_S:g} s, a poll takes {s3_poll * 1000:,.0f} ms median, "
                 f"{_quantile(fresh_s3.polls, 0.9) * 1000:,.0f} ms p90 on S3 and {local_poll * 1000:,.0f} ms local)",
                 f"S3 lake: {_quantile(fresh_s3.view, 0.5):.2f} s / {_quantile(fresh_s3.view, 0.99):.2f} s",
                 f"local folder lake: {_quantile(fresh_local.view, 0.5):.2f} s / "
                 f"{_quantile(fresh_local.view, 0.99):.2f} s",
                 f"{_quantile(fresh_s3.view, 0.99) / _quantile(fresh_local.view, 0.99):.2f}x p99 (goal p99 <= 3 s)"))
    rows.append((f"freshness, ack -> published (listed in the lake), p50 / p99 ({setup}; a child lists the "
                 f"lake every {POLL_S:g} s and reads each new file)",
                 f"S3 lake: {_quantile(fresh_s3.listed, 0.5):.2f} s / {_quantile(fresh_s3.listed, 0.99):.2f} s",
                 f"local folder lake: {_quantile(fresh_local.listed, 0.5):.2f} s / "
                 f"{_quantile(fresh_local.listed, 0.99):.2f} s",
                 f"{_quantile(fresh_s3.listed, 0.99) / _quantile(fresh_local.listed, 0.99):.2f}x p99"))
    if fresh_s3.missing or fresh_local.missing:
        rows.append(("freshness: probes never seen (S3 / local)", f"{fresh_s3.missing} / {fresh_local.missing}",
                     "-", "-"))
    lake_text = f"{queries['days']} daily files, {queries['bytes'] / 1e6:.0f} MB"
    for q, what in ((queries["week"], f"last week (count by action over 7 days of date; {lake_text})"),
                    (queries["user"], f"one user over {queries['days']} days ({queries['user'].rows} events)")):
        t = q.seconds
        rows.append((f"query, {what}: S3 lake vs the same files on local disk, same events view "
                     f"(median of 3; {q.requests.get('s3', 0):,} S3 requests a run; DuckDB alone on the S3 "
                     f"objects, ** glob: {q.requests.get('raw_s3', 0):,})",
                     f"{t['s3'] * 1000:,.0f} ms",
                     f"{t['local'] * 1000:,.0f} ms (local disk); {t['raw_s3'] * 1000:,.0f} ms (DuckDB alone on S3)",
                     f"{t['s3'] / t['local']:.1f}x"))
    rows.append((f"open a reader (query.connect: list files, bind the view; {queries['connect_requests']:,} S3 "
                 f"requests; uploading the {lake_text} took {queries['upload_s']:.1f} s)",
                 f"{queries['s3_connect'] * 1000:,.0f} ms",
                 f"{queries['local_connect'] * 1000:,.0f} ms (local disk)",
                 f"{queries['s3_connect'] / queries['local_connect']:.1f}x"))
    rows += one_copy_rows(quick)
    return rows


def main() -> None:
    """The table (``--quick``: a smoke run), or a child's role (``--load``, ``--probe``, ``--tail``)."""
    if len(sys.argv) > 1 and sys.argv[1] == "--load":
        _load_client(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6]),
                     int(sys.argv[7]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--tail":
        _tail_lake(sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--probe":
        _probe_client(sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]), sys.argv[6])
        return
    from common import print_table  # noqa: PLC0415

    print_table(bench_rows(quick="--quick" in sys.argv))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
