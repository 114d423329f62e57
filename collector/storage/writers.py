"""The writers of a shared lake: which collector holds which writer id, and
each writer's public signing key.

Every collector of a fleet writes its own chain under its own writer id
(DIR/writer_id).  Two processes writing one chain would fork it, so in a
shared lake (``--lake``) a writer id is held under a lease,
``_auditlake/writers/<writer>/lease.json`` (storage/lease.py: conditional
writes, an expiry, renewed every third of it).  Its holder names the host and
data directory; a collector restarted on the same host and directory takes
its own lease back at once (the data directory's lock proves the earlier
process gone), while any other holder is refused at start until the lease
expires.

Beside the lease, ``writer.json`` records the writer's host, data directory
and public key, so that ``auditlake keys public`` can give an auditor every
key of the fleet.  The registry is a convenience, not a trust anchor:
``verify`` trusts only the keys an auditor passes in (docs/integrity.md).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import socket
import threading
from dataclasses import dataclass

from auditlake.collector.errors import ConfigError, StorageError
from auditlake.collector.storage.lease import Lease, LeaseLost
from auditlake.collector.storage.store import Store

log = logging.getLogger(__name__)

#: Folder of the registry inside the fleet state store.
WRITERS = "writers"

#: Seconds a writer's lease lasts without renewal: how long a collector whose
#: host died keeps its writer id from a replacement on another host.
WRITER_TTL_S = 30.0


@dataclass(frozen=True)
class WriterRecord:
    """One writer as the registry records it."""

    writer_id: str
    host: str
    data_dir: str
    public_key_pem: str
    registered: str

    def to_json(self) -> dict[str, str]:
        return {"writer_id": self.writer_id, "host": self.host, "data_dir": self.data_dir,
                "public_key_pem": self.public_key_pem, "registered": self.registered}


def holder_name(data_dir: str) -> str:
    """How a lease names this collector: host and data directory."""
    return f"{socket.gethostname()}:{data_dir}"


class WriterClaim:
    """This collector's hold on its writer id in a shared lake."""

    def __init__(self, fleet: Store, writer_id: str, data_dir: str, public_key_pem: bytes,
                 *, ttl_s: float = WRITER_TTL_S) -> None:
        self.fleet = fleet
        self.writer_id = writer_id
        self.data_dir = data_dir
        self.public_key_pem = public_key_pem.decode()
        self.lease = Lease(fleet.conditional, f"{WRITERS}/{writer_id}/lease.json", holder_name(data_dir),
                           ttl_s=ttl_s, margin_s=min(5.0, ttl_s / 3))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: Why the lease was lost (another holder took the writer id), while
        #: it is; the collector then refuses ingest (``LakeWriter.overloaded``).
        self.lost: str | None = None

    def acquire(self) -> None:
        """Hold the writer id, or ConfigError naming who holds it."""
        try:
            token = self.lease.acquire()
            if token is None:
                current = self.lease.current()
                if current is not None and current.holder == self.lease.holder:
                    # This data directory's earlier process: its lock is ours now, so it is gone.
                    token = self.lease.reclaim()
            if token is None:
                current = self.lease.current()
                holder = current.holder if current else "?"
                until = dt.datetime.fromtimestamp(current.expires_at, dt.UTC).isoformat(timespec="seconds") \
                    if current else "?"
                raise ConfigError(
                    f"writer id {self.writer_id} is in use by another collector ({holder}; its lease runs "
                    f"until {until}): each collector needs its own data directory. A copied data directory "
                    "keeps the writer id of its original; remove its writer_id file to get a new one")
            self._register()
        except StorageError as exc:
            raise ConfigError(f"cannot use the lake at {self.fleet.uri}: {exc}") from exc

    def _register(self) -> None:
        record = WriterRecord(self.writer_id, socket.gethostname(), self.data_dir, self.public_key_pem,
                              dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
        self.fleet.put(f"{WRITERS}/{self.writer_id}/writer.json",
                       json.dumps(record.to_json(), indent=1, sort_keys=True).encode())

    def start(self) -> None:
        """Renew the lease every third of its time, on a thread, until stop()."""
        self._thread = threading.Thread(target=self._renew_loop, name="auditlake-writer-lease", daemon=True)
        self._thread.start()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.lease.ttl_s / 3):
            try:
                self.lease.renew()
                self.lost = None
            except LeaseLost as exc:
                self.lost = str(exc)
                log.error("writer %s: %s; refusing ingest until it is ours again", self.writer_id, exc)
                try:
                    if self.lease.acquire() is not None:
                        self.lost = None
                except StorageError as again:
                    log.error("writer %s: %s", self.writer_id, again)
            except (StorageError, OSError) as exc:  # the store is unreachable: try again next round
                log.warning("writer %s: cannot renew its lease: %s", self.writer_id, exc)

    def stop(self) -> None:
        """Stop renewing and hand the writer id back."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        try:
            self.lease.release()
        except (StorageError, OSError) as exc:
            log.warning("writer %s: cannot release its lease: %s", self.writer_id, exc)


def list_writers(fleet: Store) -> list[WriterRecord]:
    """Every writer registered in the lake, by id."""
    out = []
    for obj in fleet.list(WRITERS):
        if obj.key.endswith("/writer.json"):
            doc = json.loads(fleet.read(obj.key))
            out.append(WriterRecord(str(doc["writer_id"]), str(doc.get("host", "")), str(doc.get("data_dir", "")),
                                    str(doc.get("public_key_pem", "")), str(doc.get("registered", ""))))
    return sorted(out, key=lambda r: r.writer_id)
