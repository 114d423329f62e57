"""Who may change the lake's files now: compaction, retention moves and
expiry replace or remove sealed files, so two of them must never run at once.

On one machine a process-wide lock is enough.  In a lake shared by a fleet
(``--lake``) the lock is also a lease in the bucket,
``_auditlake/leases/maintenance.json`` (storage/lease.py): the collector that
holds it runs its step, the others skip theirs until the next round.  While
held, a thread renews it every third of its time; before each maintenance
checkpoint is committed, :meth:`MaintenanceLock.fence` re-reads it, so a
holder that was paused past the expiry (and taken over) stops instead of
committing, and the checkpoint records the lease's fencing token.
"""

from __future__ import annotations

import logging
import threading
from types import TracebackType
from typing import Any

from auditlake.collector.errors import StorageError
from auditlake.collector.storage.lease import Lease, LeaseLost

log = logging.getLogger(__name__)

#: The lease's key in the fleet state store.
MAINTENANCE_LEASE = "leases/maintenance.json"


class MaintenanceBusy(StorageError):
    """Another collector holds the lake's maintenance lease: skip this round."""


class MaintenanceLock:
    """Re-entrant: a process-wide lock, plus the lake's lease when given."""

    def __init__(self, local: Any, lease: Lease | None = None) -> None:
        self._local = local
        self.lease = lease
        self._depth = 0
        self._owner: int | None = None
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def __enter__(self) -> MaintenanceLock:
        self._local.acquire()
        if self._owner == threading.get_ident():
            self._depth += 1
            return self
        try:
            if self.lease is not None:
                self._take_lease(self.lease)
        except BaseException:
            self._local.release()
            raise
        self._owner = threading.get_ident()
        self._depth = 1
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._depth -= 1
        if self._depth == 0:
            self._owner = None
            if self.lease is not None:
                self._stop.set()
                if self._renewer is not None:
                    self._renewer.join(10)
                try:
                    self.lease.release()
                except (StorageError, OSError) as err:
                    log.warning("cannot release the maintenance lease: %s", err)
        self._local.release()

    def _take_lease(self, lease: Lease) -> None:
        token = lease.acquire()
        if token is None:
            current = lease.current()
            raise MaintenanceBusy(f"{current.holder if current else 'another collector'} is running lake "
                                  "maintenance; this step waits for the next round")
        self._stop = threading.Event()
        self._renewer = threading.Thread(target=self._renew, args=(lease, self._stop),
                                         name="auditlake-maintenance-lease", daemon=True)
        self._renewer.start()

    @staticmethod
    def _renew(lease: Lease, stop: threading.Event) -> None:
        while not stop.wait(lease.ttl_s / 3):
            try:
                lease.renew()
            except LeaseLost as exc:
                log.error("maintenance lease lost: %s; the step in progress will not commit", exc)
                return
            except (StorageError, OSError) as exc:
                log.warning("cannot renew the maintenance lease: %s", exc)

    def fence(self) -> dict[str, Any]:
        """Before a maintenance checkpoint commits: the lease's fencing token
        to record in it ({} without a lease); LeaseLost when this collector no
        longer holds it."""
        if self.lease is None:
            return {}
        return {"lease_token": self.lease.check()}
