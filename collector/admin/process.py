"""The admin server in a process of its own, so nothing on the HTTP side
(exports, heavy searches, verification, many connections) can take the
collector's CPU, memory, file descriptors or interpreter lock from ingest.

`auditlake serve` starts ``python -m auditlake.collector admin-serve`` as a
child at a lower CPU priority (``[admin] priority``, default ``idle``: Linux
SCHED_IDLE, so it runs on the CPU time ingest leaves; DuckDB's threads
inherit it).  The child reads the same data directory, signs export
manifests with the same key, and records every read of the log through the
inbox (``ingest/inbox.py``): each record is an fsynced file the collector
takes into its WAL and chain within a seal interval, so "on record before
the first byte" holds across the two processes.  The child exits when its
parent does (it watches the pipe on its stdin).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from auditlake.collector.admin.listener import address_of, bind_listener
from auditlake.collector.config import CollectorConfig, add_data_arg, load_toml
from auditlake.collector.errors import ConfigError
from auditlake.collector.ingest.inbox import write_item
from auditlake.collector.integrity.signing import SigningKey
from auditlake.collector.lake.batch import AcceptedBatch
from auditlake.collector.storage.datadir import DataDir

log = logging.getLogger(__name__)


class AdminProcess:
    """A running admin child process, as the collector sees it.  A child that
    dies on its own (a crash, the kernel's OOM killer) is started again on
    the same address, at most once every few seconds."""

    def __init__(self, proc: subprocess.Popen[bytes], listener: socket.socket, data: DataDir,
                 config_file: Path | None, env: dict[str, str] | None = None) -> None:
        self.proc = proc
        self._listener = listener
        #: ``host:port`` the child serves on.
        self.address = address_of(listener)
        self._data = data
        self._config_file = config_file
        #: Variables the child is started with (again, after a crash).
        self._env = env
        self._stopping = threading.Event()
        self._watch = threading.Thread(target=self._keep_running, name="auditlake-admin-watch", daemon=True)
        self._watch.start()

    @classmethod
    def start(cls, data: DataDir, listen: str, config_file: Path | None, timeout_s: float = 30.0,
              env: dict[str, str] | None = None) -> AdminProcess:
        """Bind ``listen`` here, start the child on that socket and wait until
        it serves (ConfigError if either fails).  ``env``: variables set for
        the child only (e.g. certificate files given on the command line)."""
        listener = bind_listener(listen)
        try:
            proc = _spawn(data, listener, config_file, timeout_s, env)
        except BaseException:
            listener.close()
            raise
        return cls(proc, listener, data, config_file, env)

    def _keep_running(self) -> None:
        while not self._stopping.is_set():
            code = self.proc.wait()
            if self._stopping.is_set():
                return
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            log.error("the admin server exited (%s); starting it again on %s", code, self.address)
            self._stopping.wait(3.0)
            try:
                self.proc = _spawn(self._data, self._listener, self._config_file, 30.0, self._env)
            except ConfigError:
                log.exception("the admin server could not be started again; the admin UI is down")
                return

    def stop(self, timeout_s: float = 15.0) -> None:
        """Stop the child (in-flight requests get a few seconds; queued read
        records are written to the inbox first)."""
        self._stopping.set()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("the admin server did not stop in %g s; killing it", timeout_s)
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self._listener.close()


def _spawn(data: DataDir, listener: socket.socket, config_file: Path | None,
           timeout_s: float, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start ``admin-serve`` on the inherited ``listener``; the process once it serves."""
    ready = data.state / f"admin-{os.getpid()}.ready"
    ready.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "auditlake.collector", "admin-serve", "--data", str(data.root),
           "--fd", str(listener.fileno()), "--ready-file", str(ready)]
    if data.lake_uri:
        cmd += ["--lake", data.lake_uri]
    if config_file is not None:
        cmd += ["--config", str(config_file)]
    # stdin is a pipe the child watches: when this process dies, it sees
    # EOF and exits too (no orphaned admin server).
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, pass_fds=(listener.fileno(),),
                            env={**os.environ, **env} if env else None)
    deadline = time.monotonic() + timeout_s
    while not ready.exists():
        if proc.poll() is not None:
            raise ConfigError(f"the admin server did not start (exit {proc.returncode}); see the log above")
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise ConfigError(f"the admin server did not start within {timeout_s:g} s")
        time.sleep(0.02)
    ready.unlink(missing_ok=True)
    return proc


class InboxHost:
    """What AdminServer needs from a collector, in the admin child: the data
    directory, settings, the signing key, and ``store`` writing to the inbox."""

    def __init__(self, data: DataDir, listen: str, toml: dict[str, Any]) -> None:
        self.data = data
        self.config = CollectorConfig(http_listen=listen)
        self.config_toml = toml
        self.signing_key = SigningKey.load_or_create(data.keys)

    def store(self, batch: AcceptedBatch) -> None:
        """Durably hand ``batch`` to the collector (returns once fsynced)."""
        write_item(self.data, batch)


def cmd_admin_serve(args: argparse.Namespace) -> int:
    """The child: serve until SIGTERM or until the parent goes away."""
    from auditlake.collector.admin.server import AdminConfig, AdminServer  # noqa: PLC0415

    data = DataDir.from_args(args)
    toml = load_toml(Path(args.config) if args.config else data.config_file)
    config = AdminConfig.from_toml(toml)
    _lower_priority(config.priority)
    listener = socket.socket(fileno=args.fd)
    server = AdminServer(InboxHost(data, address_of(listener), toml), toml=toml)
    server.start(listener)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: done.set())
    signal.signal(signal.SIGINT, lambda signum, frame: done.set())

    def watch_parent() -> None:
        sys.stdin.buffer.read()  # returns at EOF: the parent closed the pipe or died
        done.set()

    threading.Thread(target=watch_parent, name="auditlake-parent-watch", daemon=True).start()
    tmp = Path(args.ready_file + ".tmp")
    tmp.write_text(server.address + "\n")
    os.replace(tmp, args.ready_file)
    done.wait()
    server.stop()
    return 0


def _lower_priority(priority: str) -> None:
    """Set this process's CPU priority before any thread starts (threads,
    DuckDB's included, inherit it)."""
    if priority == "idle" and hasattr(os, "SCHED_IDLE"):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    elif priority in ("idle", "low"):
        os.nice(10)  # no SCHED_IDLE on this platform: the next best thing


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``auditlake admin-serve`` (internal: started by `auditlake serve`)."""
    p = sub.add_parser("admin-serve", help="(internal) the admin server process that `serve` starts")
    add_data_arg(p)
    p.add_argument("--fd", type=int, required=True, help="the listening socket, inherited")
    p.add_argument("--ready-file", required=True)
    p.add_argument("--config", default=None)
    p.set_defaults(func=cmd_admin_serve)
