"""The running collector: wires receive -> WAL -> seal, and serves gRPC (and,
when enabled, the admin HTTP server) until stopped.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Any, TextIO

import grpc

from auditlake.collector.compact import CompactionResult, Compactor
from auditlake.collector.config import CollectorConfig, collector_config, load_toml
from auditlake.collector.datadir import DataDir
from auditlake.collector.errors import ConfigError
from auditlake.collector.keys import IngestKeyStore, SigningKey
from auditlake.collector.receive import AcceptedBatch, AuditService, BatchIndex
from auditlake.collector.seal import Sealer, SealPolicy, canonical_prefix
from auditlake.collector.tiers import maintenance_lock as tiers_maintenance_lock
from auditlake.collector.wal import LogPosition, WriteAheadLog
from auditlake.v1 import audit_pb2_grpc

log = logging.getLogger(__name__)


class Collector:
    """One collector instance (one writer) over one data directory."""

    def __init__(self, data: DataDir, config: CollectorConfig) -> None:
        self.data = data
        self.config = config
        data.create()
        lock = try_lock(data)
        if lock is None:
            raise ConfigError(
                f"another collector is running on {data.root}: each collector needs "
                "its own data directory"
            )
        self._lock_file = lock
        self.keys = IngestKeyStore(data.keys)
        self.signing_key = SigningKey.load_or_create(data.keys)
        mirrors = (Path(config.checkpoint_mirror),) if config.checkpoint_mirror else ()
        self.sealer = Sealer(
            data,
            data.wal,
            self.signing_key,
            policy=SealPolicy(
                interval_s=config.seal_interval_s,
                dedupe_batches=config.dedupe_batches,
                dedupe_window_events=config.dedupe_window_events,
            ),
            checkpoint_mirrors=mirrors,
        )
        self.batches = BatchIndex(self.sealer.known_batches(), keep=config.dedupe_batches)
        self.wal = WriteAheadLog(
            data.wal, on_durable=self._durable, first_segment=self.sealer.state.wal_segment
        )
        for batch in self.sealer.recover(self.wal):
            self.batches.add(batch.batch_id, batch.table.num_rows)
        # After the sealer's recovery (which rewrites a committed checkpoint).
        self.compactor = Compactor(data, self.sealer)
        self.compactor.recover()
        #: Held by compaction and retention so they never touch the lake at
        #: once (the process-wide re-entrant lock retention also takes).
        self.maintenance_lock = tiers_maintenance_lock
        self.grpc_server: grpc.Server | None = None
        self.grpc_port = 0
        self.http: Any = None
        self._stopped = threading.Event()
        self._stop_requested = threading.Event()
        self._disk_checked = 0.0
        self._disk_low = False

    def _durable(self, context: object, position: LogPosition) -> None:
        assert isinstance(context, AcceptedBatch)
        self.sealer.add(context, position)

    def store(self, batch: AcceptedBatch) -> Any:
        """Append an accepted batch to the WAL; the future resolves once fsynced."""
        # The bulk of the hash input is computed here, on the receiving
        # thread (Arrow releases the GIL), so the one sealer thread only adds
        # each row's seq and hashes.
        batch.canonical_prefix = canonical_prefix(batch.table, batch.received_at_us, self.sealer.writer_id)
        return self.wal.append(batch.encode(), batch)

    def drain_inbox(self) -> int:
        """Ingest batches other commands dropped into DIR/inbox/; returns events taken."""
        from auditlake.collector.inbox import pending_items  # noqa: PLC0415

        taken = 0
        for item in pending_items(self.data):
            batch = item.load()
            owned, _ = self.batches.claim(batch.batch_id)
            if owned:
                try:
                    self.store(batch).result()
                except BaseException:
                    self.batches.finish(batch.batch_id, None)
                    raise
                self.batches.finish(batch.batch_id, batch.table.num_rows)
                taken += batch.table.num_rows
            item.path.unlink()
        return taken

    def _inbox_loop(self) -> None:
        while not self._stopped.wait(self.config.seal_interval_s):
            try:
                self.drain_inbox()
            except Exception:  # noqa: BLE001 - the files stay; next tick retries
                log.exception("taking the inbox failed")

    @classmethod
    def offline(cls, data: DataDir) -> Collector:
        """A collector that does not serve, for commands run while no
        collector holds ``data`` (its checkpoint mirror and limits come from
        DIR/auditlake.toml and AUDITLAKE_* as for `auditlake serve`); call
        stop() when done."""
        return cls(data, collector_config(load_toml(data.config_file), http_listen=""))

    @classmethod
    def ingest_offline(cls, data: DataDir) -> int:
        """With no collector running: take the inbox, seal, stop."""
        collector = cls.offline(data)
        try:
            return collector.drain_inbox()
        finally:
            collector.stop()

    def overloaded(self) -> tuple[float, str] | None:
        """(seconds a client should wait before retrying, why), or None when there is room."""
        if self.sealer.pending_rows > self.config.max_unsealed_events:
            # a seal or two clears it: retry soon
            return 0.25, f"over {self.config.max_unsealed_events} unsealed events"
        if self.wal.unsealed_bytes > self.config.max_wal_bytes:
            return 0.25, f"write-ahead log over {self.config.max_wal_bytes} bytes"
        now = time.monotonic()
        if now - self._disk_checked > 1.0:  # a statvfs per request is wasted work
            self._disk_checked = now
            self._disk_low = shutil.disk_usage(self.data.root).free < self.config.min_free_disk_bytes
        if self._disk_low:
            return 30.0, f"free disk below {self.config.min_free_disk_bytes} bytes"
        return None

    def compact_now(self) -> list[CompactionResult]:
        """Compact closed days now (the maintenance thread calls this hourly)."""
        with self.maintenance_lock:
            return self.compactor.run()

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
            except Exception:  # noqa: BLE001 - the job state lets the next run recover
                log.exception("compaction failed")
                next_compaction = time.monotonic() + min(interval, 300.0)
            self._stopped.wait(min(60.0, interval) if interval > 0 else 60.0)

    def start(self) -> None:
        """Start sealing and serving."""
        # Retention hook (collector/retention.py): refuses a bad [retention]
        # policy before anything starts; runs the policy on its schedule.
        from auditlake.collector.retention import start_scheduler  # noqa: PLC0415

        self._stop_retention = start_scheduler(self)
        self.sealer.start()
        self.grpc_server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self.config.grpc_workers, thread_name_prefix="auditlake-grpc"),
            options=[
                ("grpc.max_receive_message_length", 64 * 1024 * 1024),
                ("grpc.so_reuseport", 0),
            ],
        )
        service = AuditService(self.keys, self.store, self.batches, overloaded=self.overloaded)
        audit_pb2_grpc.add_AuditServiceServicer_to_server(service, self.grpc_server)  # type: ignore[no-untyped-call]
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
        # Imported here so a collector without --http-listen never loads the web stack.
        from auditlake.collector.admin import AdminServer  # noqa: PLC0415

        self.http = AdminServer(self)
        self.http.start()

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
        stop_retention = getattr(self, "_stop_retention", None)  # retention hook
        if stop_retention is not None:
            stop_retention()
        self.wal.close()
        self.sealer.stop()
        maintenance = getattr(self, "_maintenance", None)
        if maintenance is not None:
            maintenance.join()  # a compaction in progress finishes first
        self._lock_file.close()

    def request_stop(self) -> None:
        """Ask wait() to return (safe from a signal handler)."""
        self._stop_requested.set()

    def wait(self) -> None:
        """Block until request_stop() or stop() is called."""
        self._stop_requested.wait()


def try_lock(data: DataDir) -> TextIO | None:
    """Take the data dir's collector lock; None when another process holds it."""
    data.root.mkdir(parents=True, exist_ok=True)
    f = open(data.root / ".lock", "w")  # noqa: SIM115 - held while running
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    return f


def ready_file_write(path: str, address: str, http: str) -> None:
    """Write ``address`` (and the HTTP address) for whoever started us (tests, demo)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"{address}\n{http}\n")
    os.replace(tmp, path)
