"""The running collector: the lake's write path (lake/writer.py) behind the
gRPC ingest service, plus the inbox, compaction and retention loops and, when
enabled, the admin HTTP server, until stopped.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc

from auditlake.collector.admin.process import AdminProcess
from auditlake.collector.config import CollectorConfig
from auditlake.collector.errors import ConfigError
from auditlake.collector.ingest.inbox import drain
from auditlake.collector.ingest.keys import IngestKeyStore
from auditlake.collector.ingest.receive import AuditService
from auditlake.collector.lake.writer import LakeWriter
from auditlake.collector.storage.datadir import DataDir
from auditlake.collector.storage.maintenance import MaintenanceBusy
from auditlake.collector.storage.tiers import fleet_state

log = logging.getLogger(__name__)


class Collector(LakeWriter):
    """One collector instance: the lake's write path (one writer over one data
    directory) serving gRPC ingest and, when enabled, the admin HTTP server."""

    def __init__(self, data: DataDir, config: CollectorConfig) -> None:
        super().__init__(data, config)
        # Shared by every collector of the lake (DIR/keys for a local one).
        self.keys = IngestKeyStore(fleet_state(data))
        self.grpc_server: grpc.Server | None = None
        self.grpc_port = 0
        self.http: AdminProcess | None = None
        #: The TOML file the admin process reads (None: DIR/auditlake.toml).
        self.config_file: Path | None = None
        self._stopped = threading.Event()
        self._stop_requested = threading.Event()

    def drain_inbox(self) -> int:
        """Ingest batches other commands dropped into DIR/inbox/; returns events taken."""
        return drain(self)

    def _inbox_loop(self) -> None:
        while not self._stopped.wait(self.config.seal_interval_s):
            try:
                self.drain_inbox()
            except Exception:  # noqa: BLE001 - the files stay; next tick retries
                log.exception("taking the inbox failed")

    def _maintenance_loop(self) -> None:
        interval = self.config.compact_interval_s
        next_compaction = time.monotonic()  # once at start, then every interval
        while not self._stopped.is_set():
            try:
                if interval > 0 and time.monotonic() >= next_compaction:
                    self.compact_now()
                    next_compaction = time.monotonic() + interval
                with self.maintenance_lock:
                    self.compactor.delete_expired()
            except MaintenanceBusy as exc:  # another collector of the lake holds the lease
                log.info("maintenance: %s", exc)
            except Exception:  # noqa: BLE001 - the job state lets the next run recover
                log.exception("compaction failed")
                next_compaction = time.monotonic() + min(interval, 300.0)
            self._stopped.wait(min(60.0, interval) if interval > 0 else 60.0)

    def start(self) -> None:
        """Start sealing and serving."""
        for what, address in (("gRPC ingest", self.config.grpc_listen), ("admin HTTP", self.config.http_listen)):
            if address and not _is_loopback(address):
                log.warning("%s listens on %s without TLS: API keys, passwords and audit events cross the "
                            "network in clear text; bind 127.0.0.1 behind a TLS-terminating proxy", what, address)
        # Retention hook (collector/retention.py): refuses a bad [retention]
        # policy before anything starts; runs the policy on its schedule.
        from auditlake.collector.retention.job import start_scheduler  # noqa: PLC0415

        self._stop_retention = start_scheduler(self)
        self.sealer.start()
        # What one message and all calls together may cost is bounded before
        # any work starts: the message size and the number of calls in flight
        # here, the event count on the wire and the key in AuditService.
        self.grpc_server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self.config.grpc_workers, thread_name_prefix="auditlake-grpc"),
            options=[
                ("grpc.max_receive_message_length", self.config.max_message_bytes),
                ("grpc.max_concurrent_streams", self.config.max_streams_per_connection),
                ("grpc.so_reuseport", 0),
            ],
            maximum_concurrent_rpcs=self.config.max_concurrent_rpcs,
        )
        service = AuditService(self.keys, self.store, self.batches, overloaded=self.overloaded,
                               seen=self.sealer.recent_ids.duplicate_rows)
        self.grpc_server.add_generic_rpc_handlers((service.handler(),))
        port = self.grpc_server.add_insecure_port(self.config.grpc_listen)
        if port == 0:
            raise ConfigError(f"cannot listen for gRPC on {self.config.grpc_listen}")
        self.grpc_port = port
        self.grpc_server.start()
        self.drain_inbox()
        threading.Thread(target=self._inbox_loop, name="auditlake-inbox", daemon=True).start()
        self._maintenance = threading.Thread(
            target=self._maintenance_loop, name="auditlake-compact", daemon=True
        )
        self._maintenance.start()
        if self.config.http_listen:
            self._start_http()
        log.info(
            "auditlake collector %s serving gRPC on %s (data %s)",
            self.sealer.writer_id,
            self.grpc_address,
            self.data.root,
        )

    def _start_http(self) -> None:
        # A process of its own: exports, searches and verification on the
        # HTTP side cannot take ingest's CPU, memory or interpreter lock.
        self.http = AdminProcess.start(self.data, self.config.http_listen, self.config_file)

    @property
    def grpc_address(self) -> str:
        host = self.config.grpc_listen.rpartition(":")[0]
        return f"{host}:{self.grpc_port}"

    def stop(self, grace: float = 5.0) -> None:
        """Stop accepting, answer in-flight requests, seal everything, stop."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._stop_requested.set()
        if self.http is not None:
            self.http.stop()
        if self.grpc_server is not None:
            self.grpc_server.stop(grace).wait()
        try:
            self.drain_inbox()  # what the admin process recorded as it stopped
        except Exception:  # noqa: BLE001 - the files stay; the next start takes them
            log.exception("taking the inbox at stop failed")
        stop_retention = getattr(self, "_stop_retention", None)  # retention hook
        if stop_retention is not None:
            stop_retention()
        maintenance = getattr(self, "_maintenance", None)
        self.close(before_unlock=maintenance.join if maintenance is not None else None)

    def request_stop(self) -> None:
        """Ask wait() to return (safe from a signal handler)."""
        self._stop_requested.set()

    def wait(self) -> None:
        """Block until request_stop() or stop() is called."""
        self._stop_requested.wait()


def _is_loopback(address: str) -> bool:
    """True when HOST:PORT binds only the loopback interface."""
    host = address.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def ready_file_write(path: str, address: str, http: str) -> None:
    """Write ``address`` (and the HTTP address) for whoever started us (tests, demo)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"{address}\n{http}\n")
    os.replace(tmp, path)
