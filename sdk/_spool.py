"""Batches on disk: the spool (not delivered yet) and the dead-letter spool
(refused by the collector, kept for a replay).

The spool holds one file per batch, ``<first created_at_us>-<batch_id>.batch``,
holding the serialised ExportRequest (so a spooled batch keeps its batch id).
The dead-letter spool, ``<spool>/dead-letter/``, holds one file per refused
batch, ``<first created_at_us>-<batch_id>.dead``: a first line of JSON saying
why and when it was refused, then the serialised ExportRequest.

Files are written to a temp name, fsynced and renamed (and the directory
fsynced), so a crash never leaves half a batch.  A sender claims a file by
renaming it to ``<name>.<pid>.sending``; several processes (pre-fork
workers) can share one directory safely, and a claim left by a dead process
is taken back on the next scan.
"""

from __future__ import annotations

import bisect
import json
import logging
import os
import threading
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Generic, TypeVar

from google.protobuf.message import DecodeError

from auditlake.packing import event_count, first_created_at_us
from auditlake.v1 import audit_pb2

log = logging.getLogger("auditlake.sdk")

SUFFIX = ".batch"
DEAD_SUFFIX = ".dead"
SENDING = ".sending"
#: The dead-letter spool's directory, inside the spool directory.
DEAD_LETTER_DIRECTORY = "dead-letter"
#: The dead-letter spool's default bound (setting ``dead_letter_max_bytes``).
DEAD_LETTER_MAX_BYTES = 64 * 1024 * 1024

_Item = TypeVar("_Item")
_Data = bytes  # the classes below have a ``bytes`` property


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


class _BatchFiles(Generic[_Item]):
    """A bounded, ordered, crash-safe directory of files, one per batch."""

    suffix: ClassVar[str] = SUFFIX

    def __init__(self, directory: Path, max_bytes: int, *, create: bool = True) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self._lazy = not create  # the directory is made by the first write
        if create:
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

    def names(self) -> list[str]:
        """The waiting batches' file names, oldest first."""
        with self._lock:
            return list(self._names)

    def rescan(self) -> None:
        """Re-read the directory: take back stale claims, forget temp leftovers."""
        with self._lock:
            names: list[str] = []
            sizes: dict[str, int] = {}
            try:
                entries = list(os.scandir(self.directory))
            except FileNotFoundError:
                if not self._lazy:
                    raise
                entries = []
            for entry in entries:
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
                if not name.endswith(self.suffix):
                    continue
                try:
                    sizes[name] = (self.directory / name).stat().st_size
                except OSError:
                    continue
                names.append(name)
            names.sort()
            self._names, self._sizes, self._bytes = names, sizes, sum(sizes.values())

    def _name(self, request: audit_pb2.ExportRequest) -> str:
        return f"{first_created_at_us(request):017d}-{request.batch_id}{self.suffix}"

    def _put(self, name: str, data: _Data, *, bounded: bool = True) -> None:
        """Store one file durably; SpoolFull when ``bounded`` and it does not fit."""
        with self._lock:
            if bounded and self._bytes + len(data) > self.max_bytes:
                raise SpoolFull(f"spool {self.directory} is full ({self._bytes} bytes)")
            self._bytes += len(data)
        if self._lazy:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Never named like a batch (a reader globbing "*.batch" must not see it).
        temp = self.directory / f".tmp-{os.getpid()}-{name.removesuffix(self.suffix)}"
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
            old = self._sizes.get(name)
            if old is None:
                bisect.insort(self._names, name)
            else:  # the same batch again (rewritten): one file
                self._bytes -= old
            self._sizes[name] = len(data)

    def _parse(self, data: _Data) -> _Item:
        raise NotImplementedError

    def claim(self, name: str) -> _Item | None:
        """Claim one waiting batch by name (None when another process took it,
        or when it was unreadable: then it is set aside as ``<name>.bad``)."""
        path = self.directory / name
        claimed = self.directory / f"{name}.{os.getpid()}{SENDING}"
        try:
            os.rename(path, claimed)
        except FileNotFoundError:
            # Another process took it (shared directory).
            with self._lock:
                self._forget(name)
            return None
        try:
            return self._parse(claimed.read_bytes())
        except (OSError, ValueError, DecodeError) as error:
            log.error("auditlake: unreadable spool file %s set aside: %s", name, error)
            with suppress(OSError):
                os.rename(claimed, self.directory / f"{name}.bad")
            with self._lock:
                self._forget(name)
            return None

    def claim_next(self) -> tuple[str, _Item] | None:
        """Claim the oldest waiting batch (None when empty)."""
        while True:
            with self._lock:
                if not self._names:
                    return None
                name = self._names[0]
            item = self.claim(name)
            if item is not None:
                return name, item

    def discard_claim(self, name: str) -> None:
        """Delete a claimed batch's file, keeping ``name`` waiting (a new
        file of that name replaced it)."""
        with suppress(OSError):
            os.unlink(self.directory / f"{name}.{os.getpid()}{SENDING}")

    def release(self, name: str) -> None:
        """Give a claimed batch back (it keeps its place)."""
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


class DiskSpool(_BatchFiles[audit_pb2.ExportRequest]):
    """Batches the collector could not take yet, delivered oldest first."""

    suffix = SUFFIX

    def write(self, request: audit_pb2.ExportRequest) -> None:
        """Store one batch durably; raise SpoolFull when it does not fit."""
        self._put(self._name(request), request.SerializeToString())

    def claim_head(self) -> tuple[str, audit_pb2.ExportRequest] | None:
        """Claim the oldest waiting batch for sending (None when empty)."""
        return self.claim_next()

    def _parse(self, data: _Data) -> audit_pb2.ExportRequest:
        request: audit_pb2.ExportRequest = audit_pb2.ExportRequest.FromString(data)
        return request


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One refused batch as the dead-letter spool keeps it."""

    request: audit_pb2.ExportRequest
    #: Why it is here: the gRPC status name (``UNAUTHENTICATED``,
    #: ``PERMISSION_DENIED``, ``INVALID_ARGUMENT``), or ``""`` when the SDK
    #: itself refused it (an event naming no tenant).
    code: str
    reason: str  # a DroppedEvents reason: unauthenticated, no_tenant, ...
    message: str  # the collector's status message, or the SDK's
    refused_at: str  # ISO 8601, UTC
    #: Replays refused again since it was first kept.
    replays: int = 0

    def header(self) -> _Data:
        """The file's first line."""
        return json.dumps(
            {
                "batch_id": self.request.batch_id,
                "events": event_count(self.request),
                "code": self.code,
                "reason": self.reason,
                "message": self.message,
                "refused_at": self.refused_at,
                "replays": self.replays,
            },
            ensure_ascii=False,
        ).encode() + b"\n"


def utc_now() -> str:
    """The time now, ISO 8601 in UTC with microseconds (``...Z``)."""
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"


class DeadLetterSpool(_BatchFiles[DeadLetter]):
    """Refused batches, kept (bounded) until ``replay_dead_letters()`` resends them.

    When full, a newly refused batch is not kept (the processor counts it
    as dropped): what is already kept is never pushed out by what comes
    later, so the first refusals, the ones that say what went wrong, stay.
    """

    suffix = DEAD_SUFFIX

    def __init__(self, directory: Path, max_bytes: int) -> None:
        # The directory is made when the first batch is refused: most
        # applications never have one.
        super().__init__(directory, max_bytes, create=False)

    def keep(self, letter: DeadLetter, *, bounded: bool = True) -> str:
        """Store a refused batch durably; its file name.  SpoolFull when it does
        not fit (``bounded=False``: a replay rewriting what it took out)."""
        name = self._name(letter.request)
        self._put(name, letter.header() + letter.request.SerializeToString(), bounded=bounded)
        return name

    def _parse(self, data: _Data) -> DeadLetter:
        header, newline, body = data.partition(b"\n")
        if not newline:
            raise ValueError("no header line")
        fields = json.loads(header)
        return DeadLetter(
            request=audit_pb2.ExportRequest.FromString(body),
            code=str(fields.get("code", "")),
            reason=str(fields.get("reason", "")),
            message=str(fields.get("message", "")),
            refused_at=str(fields.get("refused_at", "")),
            replays=int(fields.get("replays", 0)),
        )

    def events_in(self, name: str) -> int:
        """The number of events of a waiting batch, from its header (0 when
        it cannot be read)."""
        try:
            with open(self.directory / name, "rb") as handle:
                return int(json.loads(handle.readline()).get("events", 0))
        except (OSError, ValueError, AttributeError):
            return 0
