"""Shared fixtures: a real collector process on a free loopback port.

``collector_factory(...)`` starts `auditlake serve` as a subprocess with a
fresh data directory; every process is stopped (and, if need be, killed)
when the test ends, so no process outlives its test.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import pytest

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_cli(*args: str, data: Path | None = None, input: str | None = None,
            check: bool = True, env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the `auditlake` command (``python -m auditlake.collector``)."""
    cmd = [sys.executable, "-m", "auditlake.collector", *args]
    if data is not None:
        cmd += ["--data", str(data)]
    proc = subprocess.run(cmd, capture_output=True, text=True, input=input,
                          env={**os.environ, **(env or {})}, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


class CollectorProcess:
    """A running `auditlake serve` subprocess and its data directory."""

    def __init__(self, data: Path, *, http: bool = False, extra_args: tuple[str, ...] = (),
                 seal_interval: float = 0.2, env: dict[str, str] | None = None) -> None:
        self.data = data
        self.http_enabled = http
        self.extra_args = extra_args
        self.seal_interval = seal_interval
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.grpc_port = free_port()
        self.http_port = free_port() if http else 0
        self.log_path = data.parent / f"{data.name}-collector.log"
        self._keys: dict[str, str] = {}

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def lake(self) -> str | None:
        """The ``--lake`` URL among ``extra_args``, if any."""
        args = list(self.extra_args)
        return args[args.index("--lake") + 1] if "--lake" in args else None

    @property
    def lake_args(self) -> tuple[str, ...]:
        """``("--lake", URL)`` for commands run on this collector's lake, or ()."""
        return ("--lake", self.lake) if self.lake else ()

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout: float = 30.0) -> CollectorProcess:
        """Start the process and wait until it listens."""
        ready = self.data.parent / f"{self.data.name}.ready"
        ready.unlink(missing_ok=True)
        cmd = [
            sys.executable, "-m", "auditlake.collector", "serve",
            "--data", str(self.data),
            "--grpc-listen", self.endpoint,
            "--http-listen", f"127.0.0.1:{self.http_port}" if self.http_enabled else "",
            "--seal-interval", str(self.seal_interval),
            "--ready-file", str(ready),
            *self.extra_args,
        ]
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **self.env})
        log.close()
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if self.proc.poll() is not None:
                raise AssertionError(f"collector exited {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"collector did not start in {timeout} s:\n{self.log()}")
            time.sleep(0.05)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, wait for a clean exit (everything sealed)."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                # Ask for every thread's stack (faulthandler, SIGUSR1) before
                # killing, and show the log: the test's output says what hung.
                self.proc.send_signal(signal.SIGUSR1)
                time.sleep(1.0)
                self.proc.kill()
                self.proc.wait()
                print(f"collector did not stop in {timeout} s; its log:\n{self.log()[-20000:]}",
                      file=sys.stderr)
        code = self.proc.returncode
        self.proc = None
        return code

    def kill(self) -> None:
        """kill -9: no chance to seal or clean up."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def api_key(self, *tenants: str) -> str:
        """A new ingest key for ``tenants`` (cached per tenant set)."""
        wanted = ",".join(sorted(tenants))
        if wanted not in self._keys:
            args = ["keys", "create", *self.lake_args]
            for t in tenants:
                args += ["--tenant", t]
            self._keys[wanted] = run_cli(*args, data=self.data).stdout.strip()
        return self._keys[wanted]

    def query(self, sql: str) -> list[dict[str, Any]]:
        """Rows of ``sql`` over this collector's lake, exactly as
        `auditlake query --format jsonl` prints them (run in this process:
        a CLI subprocess per poll made the suite slow; the CLI itself is
        tested in tests/e2e/test_demo_and_cli.py)."""
        from auditlake.collector.config import load_toml
        from auditlake.collector.lake.query import run_query
        from auditlake.collector.storage.datadir import DataDir

        data = DataDir.resolve(self.data, self.lake)
        toml = load_toml(data.config_file)
        out = run_query(data, sql, "jsonl", toml=toml)
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def query_cli(self, sql: str) -> list[dict[str, Any]]:
        """Rows of ``sql`` through the `auditlake query` command itself."""
        out = run_cli("query", *self.lake_args, "--format", "jsonl", sql, data=self.data).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def wait_for_count(self, expected: int, where: str = "true", timeout: float = 30.0) -> int:
        """Poll until ``count(*)`` of events matching ``where`` reaches ``expected``."""
        deadline = time.monotonic() + timeout
        n = -1
        while time.monotonic() < deadline:
            n = int(self.query(f"SELECT count(*) AS n FROM events WHERE {where}")[0]["n"])
            if n >= expected:
                return n
            time.sleep(0.2)
        return n


@pytest.fixture
def collector_factory(tmp_path: Path) -> Iterator[Callable[..., CollectorProcess]]:
    """Start collectors: ``collector_factory(http=False, extra_args=(), name="data")``."""
    started: list[CollectorProcess] = []

    def make(name: str = "data", **kwargs: Any) -> CollectorProcess:
        c = CollectorProcess(tmp_path / name, **kwargs)
        started.append(c)
        return c.start()

    yield make
    for c in started:
        c.stop()


@pytest.fixture
def collector(collector_factory: Callable[..., CollectorProcess]) -> CollectorProcess:
    """One running collector (gRPC only) with a fresh data directory."""
    return collector_factory()


# -- a real S3-API server (moto's) on loopback ----------------------------------


@dataclass
class S3Server:
    """A running moto S3-API server."""

    proc: subprocess.Popen[bytes]
    port: int

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def filesystem(self) -> pafs.S3FileSystem:
        return pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{self.port}", scheme="http",
                                 access_key="testing", secret_key="testing", region="us-east-1",
                                 allow_bucket_creation=True)

    def bucket(self, name: str) -> str:
        self.filesystem().create_dir(name)
        return name

    def pause(self) -> None:
        """Freeze the server (requests hang, as with a network outage); state is kept."""
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    """moto_server on a free 127.0.0.1 port with dummy AWS credentials in the
    environment (inherited by the `auditlake` subprocesses); stopped after."""
    port = free_port()
    exe = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
                                            "AWS_EC2_METADATA_DISABLED")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                      AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("moto_server did not start") from None
                time.sleep(0.05)
        yield S3Server(proc, port)
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
