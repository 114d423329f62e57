"""The disk spool: batches the collector could not take yet, in order, on disk.

One file per batch, ``<first created_at_us>-<batch_id>.batch``, holding the
serialised ExportRequest (so a spooled batch keeps its batch id).  Files are
written to a temp name, fsynced and renamed, so a crash never leaves half a
batch.  A sender claims a file by renaming it to ``<name>.<pid>.sending``;
several processes (pre-fork workers) can share one directory safely, and a
claim left by a dead process is taken back on the next scan.
"""

from __future__ import annotations

import bisect
import logging
import os
import threading
from contextlib import suppress
from pathlib import Path

from google.protobuf.message import DecodeError

from auditlake.packing import first_created_at_us
from auditlake.v1 import audit_pb2

log = logging.getLogger("auditlake.sdk")

SUFFIX = ".batch"
SENDING = ".sending"


class SpoolFull(Exception):
    """The spool has no room for this batch (internal; the processor applies policy)."""


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class DiskSpool:
    """A bounded, ordered, crash-safe directory of pending batches."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.Lock()
        self._names: list[str] = []
        self._sizes: dict[str, int] = {}
        self._bytes = 0
        self.rescan()

    def __len__(self) -> int:
        return len(self._names)

    @property
    def bytes(self) -> int:
        """Bytes of the batches this process knows are waiting."""
        return self._bytes

    def rescan(self) -> None:
        """Re-read the directory: take back stale claims, forget temp leftovers."""
        with self._lock:
            names: list[str] = []
            sizes: dict[str, int] = {}
            for entry in os.scandir(self.directory):
                name = entry.name
                if name.endswith(SENDING):
                    base, _, pid = name[: -len(SENDING)].rpartition(".")
                    if pid.isdigit() and not _pid_alive(int(pid)):
                        try:
                            os.rename(entry.path, self.directory / base)
                        except OSError:
                            continue
                        name = base
                    else:
                        continue
                elif name.startswith(".tmp-"):
                    pid = name.split("-", 2)[1]
                    if pid.isdigit() and not _pid_alive(int(pid)):
                        with suppress(OSError):
                            os.unlink(entry.path)
                    continue
                if not name.endswith(SUFFIX):
                    continue
                try:
                    sizes[name] = (self.directory / name).stat().st_size
                except OSError:
                    continue
                names.append(name)
            names.sort()
            self._names, self._sizes, self._bytes = names, sizes, sum(sizes.values())

    def write(self, request: audit_pb2.ExportRequest) -> None:
        """Store one batch durably; raise SpoolFull when it does not fit."""
        data = request.SerializeToString()
        first = first_created_at_us(request)
        name = f"{first:017d}-{request.batch_id}{SUFFIX}"
        with self._lock:
            if self._bytes + len(data) > self.max_bytes:
                raise SpoolFull(f"spool {self.directory} is full ({self._bytes} bytes)")
            self._bytes += len(data)
        temp = self.directory / f".tmp-{os.getpid()}-{request.batch_id}"
        try:
            # Audit data: readable by this user only.
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with open(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, self.directory / name)
            self._fsync_directory()
        except BaseException:
            with self._lock:
                self._bytes -= len(data)
            with suppress(OSError):
                os.unlink(temp)
            raise
        with self._lock:
            if name not in self._sizes:
                self._sizes[name] = len(data)
                bisect.insort(self._names, name)

    def claim_head(self) -> tuple[str, audit_pb2.ExportRequest] | None:
        """Claim the oldest waiting batch for sending (None when empty)."""
        with self._lock:
            while self._names:
                name = self._names[0]
                path = self.directory / name
                claimed = self.directory / f"{name}.{os.getpid()}{SENDING}"
                try:
                    os.rename(path, claimed)
                except FileNotFoundError:
                    # Another process took it (shared directory).
                    self._forget(name)
                    continue
                try:
                    request = audit_pb2.ExportRequest.FromString(claimed.read_bytes())
                except (OSError, DecodeError) as error:
                    log.error("auditlake: unreadable spool file %s set aside: %s", name, error)
                    with suppress(OSError):
                        os.rename(claimed, self.directory / f"{name}.bad")
                    self._forget(name)
                    continue
                return name, request
            return None

    def release(self, name: str) -> None:
        """Give a claimed batch back (it stays at the head)."""
        with suppress(OSError):
            os.rename(self.directory / f"{name}.{os.getpid()}{SENDING}", self.directory / name)

    def done(self, name: str) -> None:
        """Delete a claimed batch that was delivered (or refused for good)."""
        with suppress(OSError):
            os.unlink(self.directory / f"{name}.{os.getpid()}{SENDING}")
        with self._lock:
            self._forget(name)

    def _forget(self, name: str) -> None:
        size = self._sizes.pop(name, None)
        if size is not None:
            self._bytes -= size
            index = bisect.bisect_left(self._names, name)
            if index < len(self._names) and self._names[index] == name:
                del self._names[index]

    def _fsync_directory(self) -> None:
        try:
            fd = os.open(self.directory, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)

