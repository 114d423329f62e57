"""The running collector: the lake's write path (lake/writer.py) behind the
gRPC ingest service, plus the inbox, compaction and retention loops and, when
enabled, the admin HTTP server, until stopped.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

from auditlake import __version__
from auditlake.collector.admin.process import AdminProcess
from auditlake.collector.config import CollectorConfig
from auditlake.collector.errors import ConfigError
from auditlake.collector.ingest.health import STARTING, IngestHealth, Readiness
from auditlake.collector.ingest.inbox import drain
from auditlake.collector.ingest.keys import IngestKeyStore
from auditlake.collector.ingest.metrics import IngestMetrics, WriterSnapshot
from auditlake.collector.ingest.otlp import SERVICE_NAME as OTLP_SERVICE_NAME
from auditlake.collector.ingest.otlp import OtlpLogsService
from auditlake.collector.ingest.receive import SERVICE_NAME, AuditService
from auditlake.collector.ingest.status_socket import StatusSocket
from auditlake.collector.ingest.tls import server_credentials
from auditlake.collector.lake.batch import AcceptedBatch
from auditlake.collector.lake.writer import LakeWriter
from auditlake.collector.storage.datadir import DataDir
from auditlake.collector.storage.maintenance import MaintenanceBusy
from auditlake.collector.storage.tiers import fleet_state

log = logging.getLogger(__name__)


class Collector(LakeWriter):
    """One collector instance: the lake's write path (one writer over one data
    directory) serving gRPC ingest and, when enabled, the admin HTTP server."""

    def __init__(self, data: DataDir, config: CollectorConfig) -> None:
        if config.tls is not None:
            config.tls.read()  # a missing or mismatched certificate file stops us before anything starts
        # Events appended to the WAL since start() (store()); with the
        # backlog replayed at start, they tell when recovery is over.
        self._rows_lock = threading.Lock()
        self._rows_appended = 0
        self._backlog_rows = 0
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
        self._started_at: float | None = None
        #: This process's Prometheus registry (/metrics of the admin listener).
        self.metrics = IngestMetrics(self._writer_snapshot, version=__version__)
        #: gRPC health on the ingest port; /readyz asks the same readiness.
        self.health = IngestHealth(self.readiness, (SERVICE_NAME, OTLP_SERVICE_NAME))
        self._status_socket: StatusSocket | None = None

    def drain_inbox(self) -> int:
        """Ingest batches other commands dropped into DIR/inbox/; returns events taken."""
        return drain(self)

    def store(self, batch: AcceptedBatch) -> Any:
        """LakeWriter.store, counted (metrics, and the end of recovery)."""
        rows = batch.table.num_rows
        with self._rows_lock:
            self._rows_appended += rows
        durable = super().store(batch)

        def count(done: Any) -> None:
            if not done.cancelled() and done.exception() is None:
                self.metrics.events_stored(rows)

        durable.add_done_callback(count)
        return durable

    def overloaded(self) -> tuple[float, str] | None:
        """LakeWriter.overloaded, each refusal counted by its reason."""
        busy = super().overloaded()
        if busy is not None:
            if self.claim is not None and self.claim.lost:
                reason = "writer_lost"
            elif self.sealer.pending_rows > self.config.max_unsealed_events:
                reason = "unsealed_events"
            elif self.wal.unsealed_bytes > self.config.max_wal_bytes:
                reason = "wal_bytes"
            else:
                reason = "disk_free"
            self.metrics.backpressure(reason)
        return busy

    # -- health and metrics ---------------------------------------------------------

    def readiness(self) -> Readiness:
        """Whether this collector should be sent events now (gRPC health,
        /readyz): not while starting, sealing the events replayed from its
        write-ahead log, cut off from its writer id, or stopping."""
        if self._stopped.is_set():
            return Readiness(False, "stopping", "the collector is stopping")
        if self._started_at is None:
            return STARTING
        if self.claim is not None and self.claim.lost:
            return Readiness(False, "writer_lost", f"writer id {self.claim.writer_id} is held by another "
                             f"process: {self.claim.lost}")
        left = self._backlog_left()
        if left > 0:
            failing = f"; the last seal failed: {self.sealer.last_error}" if self.sealer.last_error else ""
            return Readiness(False, "recovering",
                             f"sealing {left:,} events replayed from the write-ahead log{failing}")
        return Readiness(True, "serving")

    def _backlog_left(self) -> int:
        """Events replayed at start still waiting for a seal.  Seals take
        the WAL in order, so the backlog is sealed once no more events are
        pending than were stored since start."""
        if self._backlog_rows == 0:
            return 0
        with self._rows_lock:
            appended = self._rows_appended
        left = min(self._backlog_rows, self.sealer.pending_rows - appended)
        if left <= 0:
            self._backlog_rows = 0  # recovered, for good
        return max(left, 0)

    def _seal_lag_s(self) -> float:
        """About how long the oldest unsealed batch has waited (within a seal interval)."""
        if self.sealer.pending_rows <= 0:
            return 0.0
        now = time.time()
        # The queue's head says when its batch was received (replayed ones
        # keep their first arrival).
        head_us = self.sealer.oldest_pending_us()
        oldest = now - head_us / 1e6 if head_us is not None else 0.0
        # A seal in flight has taken the oldest batches off the queue.
        since_seal = now - (self.sealer.last_seal_time or self._started_at or now)
        return max(0.0, oldest, since_seal)

    def _writer_snapshot(self) -> WriterSnapshot:
        readiness = self.health.current
        try:
            free = shutil.disk_usage(self.data.root).free
        except OSError:
            free = 0
        return WriterSnapshot(
            writer_id=self.sealer.writer_id,
            ready=readiness.ready,
            phase=readiness.phase,
            writer_lost=bool(self.claim is not None and self.claim.lost),
            unsealed_events=self.sealer.pending_rows,
            unsealed_events_limit=self.config.max_unsealed_events,
            wal_bytes=self.wal.disk_bytes,
            wal_unsealed_bytes=self.wal.unsealed_bytes,
            wal_unsealed_bytes_limit=self.config.max_wal_bytes,
            seal_lag_s=self._seal_lag_s(),
            events_sealed=self.sealer.sealed_events,
            seal_duplicates=self.sealer.duplicate_events,
            last_seal_time=self.sealer.last_seal_time,
            seal_failing=self.sealer.last_error is not None,
            disk_free_bytes=free,
            disk_free_limit=self.config.min_free_disk_bytes,
        )

    def _status_answers(self) -> dict[str, Callable[[], bytes]]:
        """What the status socket answers the admin process."""
        return {
            "metrics": self.metrics.exposition,
            "health": lambda: json.dumps(self.health.refresh().to_json()).encode(),
        }

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
        # What the write-ahead log replayed (in the constructor) is the
        # backlog readiness waits for; nothing has been stored since.
        with self._rows_lock:
            self._rows_appended = 0
            self._backlog_rows = self.sealer.pending_rows
        for what, address in (("gRPC ingest", self.config.grpc_listen), ("admin HTTP", self.config.http_listen)):
            if address and not _is_loopback(address) and self.config.tls is None:
                log.warning("%s listens on %s without TLS: API keys, passwords and audit events cross the "
                            "network in clear text; set tls_cert and tls_key (docs/operations.md), or bind "
                            "127.0.0.1 behind a TLS-terminating proxy", what, address)
        # Retention hook (collector/retention.py): refuses a bad [retention]
        # policy before anything starts; runs the policy on its schedule.
        from auditlake.collector.retention.job import start_scheduler  # noqa: PLC0415

        self._stop_retention = start_scheduler(self)
        # Streams hook (collector/streams/): refuses bad [[streams]] tables; forwards sealed events.
        from auditlake.collector.streams.run import start_streams, stream_metrics  # noqa: PLC0415

        self.streams = start_streams(self)
        self.sealer.on_sealed.append(self.streams.wake)
        self.metrics.add_source(stream_metrics(self.streams.lags))
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
            interceptors=(self.metrics.interceptor(),),
        )
        self.health.register(self.grpc_server)
        service = AuditService(self.keys, self.store, self.batches, overloaded=self.overloaded,
                               seen=self.sealer.recent_ids.duplicate_rows)
        self.grpc_server.add_generic_rpc_handlers((service.handler(),))
        # OpenTelemetry's LogsService/Export on the same port (docs/otlp.md).
        otlp = OtlpLogsService(service.path)
        self.grpc_server.add_generic_rpc_handlers((otlp.handler(),))
        tls = self.config.tls
        port = (self.grpc_server.add_secure_port(self.config.grpc_listen, server_credentials(tls)) if tls
                else self.grpc_server.add_insecure_port(self.config.grpc_listen))
        if port == 0:
            raise ConfigError(f"cannot listen for gRPC on {self.config.grpc_listen}")
        self.grpc_port = port
        self.grpc_server.start()
        self._started_at = time.time()
        self.health.start()
        self.drain_inbox()
        threading.Thread(target=self._inbox_loop, name="auditlake-inbox", daemon=True).start()
        self._maintenance = threading.Thread(
            target=self._maintenance_loop, name="auditlake-compact", daemon=True
        )
        self._maintenance.start()
        if self.config.http_listen:
            self._start_http()
        log.info(
            "auditlake collector %s serving gRPC%s on %s (data %s)",
            self.sealer.writer_id,
            " over TLS" + (" (client certificates required)" if tls.client_ca else "") if tls else "",
            self.grpc_address,
            self.data.root,
        )

    def _start_http(self) -> None:
        # The admin process asks this one for metrics and readiness here.
        self._status_socket = StatusSocket(self.data.state, self._status_answers())
        self._status_socket.start()
        # It reads [collector] from the TOML file and AUDITLAKE_* itself;
        # certificate files given otherwise (command line, a CollectorConfig)
        # reach it, and the admin processes started again after a crash, as
        # those variables in its own environment.
        env = {f"AUDITLAKE_{name.upper()}": str(Path(value).resolve())
               for name in ("tls_cert", "tls_key") if (value := getattr(self.config, name))}
        # A process of its own: exports, searches and verification on the
        # HTTP side cannot take ingest's CPU, memory or interpreter lock.
        self.http = AdminProcess.start(self.data, self.config.http_listen, self.config_file, env=env)

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
        # NOT_SERVING first: balancers send new calls elsewhere while these finish.
        self.health.shut_down()
        if self.http is not None:
            self.http.stop()
        if self._status_socket is not None:
            self._status_socket.stop()
        if self.grpc_server is not None:
            self.grpc_server.stop(grace).wait()
        try:
            self.drain_inbox()  # what the admin process recorded as it stopped
        except Exception:  # noqa: BLE001 - the files stay; the next start takes them
            log.exception("taking the inbox at stop failed")
        stop_retention = getattr(self, "_stop_retention", None)  # retention hook
        if stop_retention is not None:
            stop_retention()
        if getattr(self, "streams", None) is not None:  # streams hook
            self.streams.stop()
        maintenance = getattr(self, "_maintenance", None)
        self.close(before_unlock=maintenance.join if maintenance is not None else None)

    def request_stop(self) -> None:
        """Ask wait() to return (safe from a signal handler)."""
        self._stop_requested.set()

    def wait(self) -> None:
        """Block until request_stop() or stop() is called.  Waits in short
        steps: Python runs a signal handler only on the main thread between
        bytecodes, and an untimed wait may never return to run it."""
        while not self._stop_requested.wait(1.0):
            pass


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
