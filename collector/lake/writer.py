"""The lake's write path in one object: what `auditlake serve` runs under its
gRPC and HTTP servers, and what commands run on their own (compaction,
retention, an inbox drain) when no collector holds the data directory.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

from auditlake.collector.config import CollectorConfig, collector_config, load_toml
from auditlake.collector.errors import ConfigError
from auditlake.collector.integrity.signing import SigningKey
from auditlake.collector.lake.batch import AcceptedBatch, BatchIndex
from auditlake.collector.lake.compact import CompactionResult, Compactor
from auditlake.collector.lake.erasure import ERASE_BATCH_PREFIX, WriterErasure
from auditlake.collector.lake.seal import Sealer, SealPolicy, canonical_prefix
from auditlake.collector.lake.seal_progress import batch_outcome
from auditlake.collector.lake.wal import LogPosition, WriteAheadLog
from auditlake.collector.storage.datadir import DataDir, try_lock
from auditlake.collector.storage.lease import Lease, LeaseUnavailable
from auditlake.collector.storage.maintenance import MAINTENANCE_LEASE, MaintenanceBusy, MaintenanceLock
from auditlake.collector.storage.tiers import fleet_state, hot_tier
from auditlake.collector.storage.tiers import maintenance_lock as tiers_maintenance_lock
from auditlake.collector.storage.writers import WriterClaim, holder_name

log = logging.getLogger(__name__)


class LakeWriter:
    """The write path of one data directory: its lock, signing key, write-ahead
    log, batch index, sealer and compactor.  One writer (one chain) per data
    directory; ``close()`` seals what is durable and releases the lock."""

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
        self.signing_key = SigningKey.load_or_create(data.keys)
        #: In a shared lake, this collector's hold on its writer id (nothing
        #: is written to the lake before it is held).
        self.claim: WriterClaim | None = None
        if data.shared_lake:
            self.claim = self._claim_writer_id()
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
            # with the rows refused on receipt, so a retry gets the same answer
            self.batches.add(batch.batch_id, batch_outcome(batch))
        # After the sealer's recovery (which rewrites a committed checkpoint).
        self.compactor = Compactor(data, self.sealer)
        self.compactor.recover()
        #: Held by compaction and retention so they never touch the lake at
        #: once: the process-wide re-entrant lock retention also takes and,
        #: in a shared lake, the fleet's maintenance lease (storage/maintenance.py).
        self.maintenance_lock = MaintenanceLock(tiers_maintenance_lock, self._maintenance_lease())
        if self.maintenance_lock.lease is not None:
            self.sealer.fence = self.maintenance_lock.fence
        self._disk_checked = 0.0
        self._disk_low = False

    def _claim_writer_id(self) -> WriterClaim:
        lake = hot_tier(self.data)
        if lake.is_local and not Path(lake.root).is_dir():
            self._lock_file.close()
            raise ConfigError(f"--lake {self.data.lake_uri}: the folder does not exist (create it first; "
                              "a typo here would otherwise start a new, empty lake)")
        try:
            fleet = fleet_state(self.data)
            claim = WriterClaim(fleet, self.data.writer_id(), str(self.data.root), self.signing_key.public_pem())
        except LeaseUnavailable as exc:
            self._lock_file.close()
            raise ConfigError(f"--lake {self.data.lake_uri}: {exc}; a lake shared by several collectors "
                              "needs a store with conditional writes (S3 and S3-compatible stores, or a "
                              "folder)") from exc
        try:
            claim.acquire()
        except ConfigError:
            self._lock_file.close()
            raise
        claim.start()
        return claim

    def _maintenance_lease(self) -> Lease | None:
        if not self.data.shared_lake:
            return None
        holder = f"{holder_name(str(self.data.root))}:{self.sealer.writer_id}"
        ttl = self.config.maintenance_lease_s
        return Lease(fleet_state(self.data).conditional, MAINTENANCE_LEASE, holder, ttl_s=ttl,
                     margin_s=min(5.0, ttl / 3))

    def _durable(self, context: object, position: LogPosition) -> None:
        assert isinstance(context, AcceptedBatch)
        self.sealer.add(context, position)

    def store(self, batch: AcceptedBatch) -> Any:
        """Append an accepted batch to the WAL; the future resolves once fsynced."""
        # Erasure (off by default: then one attribute read per batch): the
        # personal fields are encrypted before anything is hashed, so the
        # chain and the proofs cover the ciphertext (lake/erasure.py).
        erasure = getattr(self, "_erasure", None)
        if erasure is None:
            erasure = self._erasure = WriterErasure.for_writer(self.data, getattr(self, "config_toml", None))
        if erasure.enabled:
            if batch.batch_id.startswith(ERASE_BATCH_PREFIX):  # `auditlake erase`, through the inbox
                erasure.carry_out(batch.batch_id, self.sealer.append_checkpoint, self.maintenance_lock)
            batch.table = erasure.encrypt(batch.table)
        # The bulk of the hash input is computed here, on the receiving
        # thread (Arrow releases the GIL), so the one sealer thread only adds
        # each row's seq and hashes.
        batch.canonical_prefix = canonical_prefix(batch.table, batch.received_at_us, self.sealer.writer_id,
                                                  batch.ingest_key_id)
        return self.wal.append(batch.encode(), batch)

    @classmethod
    def offline(cls, data: DataDir) -> Self:
        """A collector that does not serve, for commands run while no
        collector holds ``data`` (its checkpoint mirror and limits come from
        DIR/auditlake.toml and AUDITLAKE_* as for `auditlake serve`); call
        stop() when done."""
        return cls(data, collector_config(load_toml(data.config_file), http_listen=""))

    def overloaded(self) -> tuple[float, str] | None:
        """(seconds a client should wait before retrying, why), or None when there is room."""
        if self.claim is not None and self.claim.lost:
            # Another process holds this writer id now (this one was cut off
            # from the bucket past the lease): clients go to other collectors.
            return 5.0, f"writer id {self.claim.writer_id} is held by another process: {self.claim.lost}"
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
        """Compact closed days now (the maintenance thread calls this hourly);
        in a shared lake, nothing while another collector holds the lease."""
        try:
            with self.maintenance_lock:
                return self.compactor.run()
        except MaintenanceBusy as exc:
            log.info("compaction: %s", exc)
            return []

    def close(self, before_unlock: Callable[[], None] | None = None) -> None:
        """Seal everything durable, stop the sealer, release the data dir
        (after ``before_unlock``: the owner's maintenance thread finishing)."""
        self.wal.close()
        self.sealer.stop()
        if before_unlock is not None:
            before_unlock()
        if self.claim is not None:
            self.claim.stop()
        self._lock_file.close()

    def stop(self) -> None:
        """The same as close(): commands that ran the write path offline end with it."""
        self.close()
