"""One JSON document of the fleet state (ingest keys, admin users), read
and changed the same way by every collector of a lake.

A :class:`FleetDocument` is the one way such a document is read and changed:

- every change is a read-modify-write whose write is conditional
  (``put_if_version`` on the version read, ``put_if_absent`` for a new
  document), retried from a fresh read when another writer got there first,
  so two collectors or CLIs changing keys at once lose nothing;
- readers keep the parsed document in memory.  A local file is re-read when
  its ``stat`` changes (one stat per read: a change applies at once).  A
  document in an object store is re-read at most every ``refresh_s`` (2 s),
  in the background, so the ingest path does not wait for the store; a
  reader finding its copy older than ``stale_s`` (5 s: no reads for a while)
  waits for the re-read, at most ``wait_s`` (1 s).  A key created anywhere
  therefore works everywhere, and a revocation holds everywhere, within
  ~5 s.  While the store is unreachable readers keep the last copy they had
  (ingest goes on with the keys known; a revocation waits for the store).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from auditlake.collector.errors import StorageError
from auditlake.collector.storage.conditional import ConditionalWrites, PreconditionFailed
from auditlake.collector.storage.store import LocalStore, Store

log = logging.getLogger(__name__)

P = TypeVar("P")
T = TypeVar("T")


# -- one shared JSON document ----------------------------------------------------------


@dataclass(frozen=True)
class FreshnessPolicy:
    """How old a reader's copy of a fleet document in an object store may be:
    re-read in the background once older than ``refresh_s``; a reader
    finding it older than ``stale_s`` waits for the re-read, at most
    ``wait_s``.  A change that must not be lost retries for ``update_s``."""

    refresh_s: float = 2.0
    stale_s: float = 5.0
    wait_s: float = 1.0
    update_s: float = 30.0

    def __post_init__(self) -> None:
        for name in ("refresh_s", "stale_s", "wait_s", "update_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"FreshnessPolicy.{name} must not be negative")
        if self.stale_s < self.refresh_s:
            raise ValueError("FreshnessPolicy.stale_s must be at least refresh_s")


class FleetDocument(Generic[P]):
    """One JSON object under ``key`` of a fleet-state store, parsed with
    ``parse`` and kept in memory (see the module docstring for when it is
    re-read).  ``read()`` returns the parsed value, which callers must not
    change; ``update(change)`` applies ``change`` to a fresh copy of the raw
    JSON object and writes it back conditionally."""

    def __init__(self, store: Store, key: str, parse: Callable[[dict[str, Any]], P],
                 *, policy: FreshnessPolicy | None = None) -> None:
        self.store = store
        self.key = key
        self.policy = policy or FreshnessPolicy()
        self._parse = parse
        self._file = store.local_path(key) if isinstance(store, LocalStore) else None
        self._lock = threading.Lock()
        self._loaded = False
        self._value: P = parse({})
        self._version: str | None = None
        #: monotonic time the read behind the copy began (update: when its write returned)
        self._fetched = -math.inf
        #: the local file's stat when it was read; None: read it again
        self._signature: tuple[int, ...] | None = None
        self._refreshing: threading.Event | None = None
        self._refresh_started = 0.0
        self._retry_after = 0.0
        self._error: Exception | None = None

    # -- reading ---------------------------------------------------------------------

    def read(self, *, max_age_s: float | None = None) -> P:
        """The document as parsed (``parse({})`` when absent).  ``max_age_s``
        asks for a copy at most that old (a miss that a change made
        elsewhere a moment ago may explain), waiting at most ``wait_s``."""
        if self._file is not None:
            return self._read_local()
        return self._read_remote(max_age_s)

    def _read_local(self) -> P:
        signature = self._stat()
        with self._lock:
            if self._loaded and self._signature is not None and signature == self._signature:
                return self._value
        started = time.monotonic()
        version, raw = self._fetch()
        with self._lock:
            self._install(started, version, raw)
            self._signature = signature
            return self._value

    def _stat(self) -> tuple[int, ...]:
        # Every write is a rename of a new file: a new inode, whatever the
        # clock's granularity says about the modification time.
        assert self._file is not None
        try:
            st = os.stat(self._file)
        except FileNotFoundError:
            return (0,)
        return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)

    def _read_remote(self, max_age_s: float | None) -> P:
        p = self.policy
        now = time.monotonic()
        with self._lock:
            age = now - self._fetched
            wanted = p.refresh_s if max_age_s is None else min(p.refresh_s, max_age_s)
            if self._loaded and age < wanted:
                return self._value
            done, started = self._start_refresh_locked(now)
            must_wait = not self._loaded or age >= p.stale_s or (max_age_s is not None and age > max_age_s)
        if done is not None and must_wait:
            # Bounded from the start of the re-read, not from each caller's
            # arrival: while the store hangs, only the first second of
            # callers waits, the rest answer from the copy they have.
            done.wait(None if not self._loaded else max(0.0, started + p.wait_s - time.monotonic()))
        with self._lock:
            if not self._loaded:
                raise self._error if self._error is not None else StorageError(
                    f"{self.store.uri}: cannot read {self.key}")
            return self._value

    def _start_refresh_locked(self, now: float) -> tuple[threading.Event | None, float]:
        """The re-read in flight (starting one unless the last failed a moment ago)."""
        if self._refreshing is None and (now >= self._retry_after or not self._loaded):
            self._refreshing = threading.Event()
            self._refresh_started = now
            threading.Thread(target=self._refresh, args=(now, self._refreshing),
                             name=f"auditlake-fleet-{self.key}", daemon=True).start()
        return self._refreshing, self._refresh_started

    def _refresh(self, started: float, done: threading.Event) -> None:
        try:
            version, raw = self._fetch()
            with self._lock:
                self._install(started, version, raw)
                self._error = None
        except (OSError, ValueError) as exc:  # StorageError is an OSError; ValueError: not JSON
            with self._lock:
                first = self._error is None
                self._error = exc
                self._retry_after = time.monotonic() + self.policy.refresh_s
            if first:
                log.warning("cannot read %s from %s (keeping the copy read before): %s",
                            self.key, self.store.uri, exc)
        finally:
            with self._lock:
                self._refreshing = None
            done.set()

    def _fetch(self) -> tuple[str | None, dict[str, Any]]:
        """(version or None when absent, the JSON object)."""
        cond = self.store.conditional
        if cond is not None:
            got = cond.read_versioned(self.key)
            return (None, {}) if got is None else (got.version, _decode(got.data, self.key))
        try:
            data = self.store.read(self.key)
        except FileNotFoundError:
            return None, {}
        return hashlib.sha256(data).hexdigest(), _decode(data, self.key)

    def _install(self, started: float, version: str | None, raw: dict[str, Any]) -> None:
        """Keep a copy read at ``started`` unless a newer one is kept already."""
        if self._loaded and started < self._fetched:
            return  # read before the last change this process wrote
        if not self._loaded or version != self._version:
            self._value = self._parse(raw)
            self._version = version
        self._loaded = True
        self._fetched = started

    # -- changing ----------------------------------------------------------------------

    def update(self, change: Callable[[dict[str, Any]], T]) -> T:
        """Apply ``change`` to a fresh copy of the JSON object (it edits it in
        place and returns what ``update`` returns; an exception leaves the
        document as it was) and write it back if it changed, on the version
        read.  When another writer changed it first, read and apply again."""
        cond = self._conditional()
        deadline = time.monotonic() + self.policy.update_s
        attempt = 0
        while True:
            started = time.monotonic()
            got = cond.read_versioned(self.key)
            raw = _decode(got.data, self.key) if got is not None else {}
            before = _encode(raw)
            result = change(raw)
            after = _encode(raw)
            if after == before:
                with self._lock:
                    self._install(started, got.version if got else None, raw)
                return result
            try:
                version = (cond.put_if_version(self.key, after, got.version) if got is not None
                           else cond.put_if_absent(self.key, after))
            except PreconditionFailed:
                attempt += 1
                if time.monotonic() > deadline:
                    raise StorageError(f"{self.store.uri}: {self.key} kept changing under {attempt} "
                                       "attempts to change it; try again") from None
                # Jittered, growing: writers that collided do not collide again in step.
                time.sleep(random.uniform(0.0, min(0.5, 0.005 * 2 ** min(attempt, 10))))
                continue
            self._make_private()
            with self._lock:
                self._install(time.monotonic(), version, raw)
                self._signature = None  # a local reader stats the new file once more
            return result

    def _conditional(self) -> ConditionalWrites:
        cond = self.store.conditional
        if cond is None:
            raise StorageError(f"{self.store.uri}: this store has no conditional writes, which the "
                               "fleet state needs (an S3-compatible bucket or a local folder)")
        return cond

    def _make_private(self) -> None:
        # Hashes of secrets: 0600 in the 0700 keys folder, as always.
        if self._file is not None:
            with contextlib.suppress(FileNotFoundError):
                os.chmod(self._file, 0o600)


def _encode(raw: dict[str, Any]) -> bytes:
    return json.dumps(raw, indent=2).encode()


def _decode(data: bytes, key: str) -> dict[str, Any]:
    doc = json.loads(data) if data.strip() else {}
    if not isinstance(doc, dict):
        raise ValueError(f"{key} is not a JSON object")
    return doc


