"""A lease in the store: at most one holder of a lake-wide job at a time.

The lease is one small JSON object, ``{"holder", "token", "expires_at"}``,
changed only by conditional writes (``storage/conditional.py``):

- **acquire**: create it (If-None-Match), or take it over when it has
  expired (If-Match on the version read), raising the fencing ``token`` by
  one each time it changes hands;
- **renew**: extend it (If-Match on the holder's own version);
- **check** (the fence): before every commit, re-read it; if its version is
  no longer the one this holder wrote, someone took over (this holder was
  paused or cut off past the expiry) and ``LeaseLost`` stops the commit;
- **release**: hand it back early (expired at once, token kept).

The fencing token only grows, so whatever a holder writes can carry it and
a reader can tell a stale holder's late write from the current one's.  The
check and the commit are two requests: a holder paused between them for
longer than the lease's remaining time could still commit once, which is
why commits are themselves create-only writes of new, uniquely named
objects (nothing an old holder writes can replace what the new one wrote),
and why ``check`` refuses a lease with less than ``margin_s`` left.
Clocks: expiry compares the store's JSON ``expires_at`` with this machine's
clock; keep clocks within a few seconds (NTP) of each other, well under
``ttl_s``.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from auditlake.collector.errors import StorageError
from auditlake.collector.storage.conditional import ConditionalWrites, PreconditionFailed, Versioned


class LeaseLost(StorageError):
    """This holder no longer holds the lease (expired and taken over)."""


class LeaseUnavailable(StorageError):
    """The store cannot hold a lease (it has no conditional writes)."""


@dataclass(frozen=True)
class LeaseState:
    """What the lease object says."""

    holder: str
    token: int
    expires_at: float

    def encode(self) -> bytes:
        return json.dumps({"holder": self.holder, "token": self.token, "expires_at": self.expires_at},
                          sort_keys=True).encode()

    @classmethod
    def decode(cls, data: bytes) -> LeaseState:
        doc = json.loads(data)
        return cls(str(doc["holder"]), int(doc["token"]), float(doc["expires_at"]))


class Lease:
    """One named lease, as seen by one would-be holder."""

    def __init__(self, cas: ConditionalWrites | None, key: str, holder: str, *, ttl_s: float = 30.0,
                 margin_s: float = 5.0, clock: Callable[[], float] = time.time) -> None:
        if cas is None:
            raise LeaseUnavailable("this store has no conditional writes, so it cannot hold a lease")
        if not 0 < margin_s < ttl_s:
            raise ValueError("Lease: need 0 < margin_s < ttl_s")
        self._cas = cas
        self.key = key
        self.holder = holder
        self.ttl_s = ttl_s
        self.margin_s = margin_s
        self._clock = clock
        self._version: str | None = None
        self._state: LeaseState | None = None

    @property
    def token(self) -> int | None:
        """The fencing token while held, else None."""
        return self._state.token if self._version is not None and self._state else None

    def current(self) -> LeaseState | None:
        """What the store holds now (None: no lease object yet)."""
        got = self._cas.read_versioned(self.key)
        return LeaseState.decode(got.data) if got else None

    def acquire(self) -> int | None:
        """Take the lease if it is free or expired; the fencing token, or None
        while another holder's lease is live."""
        got = self._cas.read_versioned(self.key)
        now = self._clock()
        if got is None:
            return self._write(LeaseState(self.holder, 1, now + self.ttl_s), None)
        state = LeaseState.decode(got.data)
        if state.holder == self.holder and got.version == self._version:
            return self.renew()
        if state.expires_at > now:
            return None
        return self._write(LeaseState(self.holder, state.token + 1, now + self.ttl_s), got)

    def reclaim(self) -> int | None:
        """Take the lease back from an earlier process of this same holder
        (unexpired, so :meth:`acquire` refused), keeping its token; None
        when it is held by someone else or changed meanwhile."""
        got = self._cas.read_versioned(self.key)
        if got is None:
            return self.acquire()
        state = LeaseState.decode(got.data)
        if state.holder != self.holder:
            return None
        return self._write(LeaseState(self.holder, state.token + 1, self._clock() + self.ttl_s), got)

    def renew(self) -> int:
        """Extend the lease held; LeaseLost if it was taken over."""
        if self._version is None or self._state is None:
            raise LeaseLost(f"{self.holder} does not hold {self.key}")
        state = LeaseState(self.holder, self._state.token, self._clock() + self.ttl_s)
        try:
            self._version = self._cas.put_if_version(self.key, state.encode(), self._version)
        except PreconditionFailed as exc:
            self._version = self._state = None
            raise LeaseLost(f"{self.key} was taken over from {self.holder}") from exc
        self._state = state
        return state.token

    def check(self) -> int:
        """The fence, before a commit: the token, if this holder still holds
        the lease with at least ``margin_s`` left; else LeaseLost."""
        if self._version is None or self._state is None:
            raise LeaseLost(f"{self.holder} does not hold {self.key}")
        got = self._cas.read_versioned(self.key)
        if got is None or got.version != self._version:
            self._version = self._state = None
            raise LeaseLost(f"{self.key} was taken over from {self.holder}")
        if self._state.expires_at - self._clock() < self.margin_s:
            raise LeaseLost(f"{self.holder}'s lease on {self.key} is about to expire: renew before committing")
        return self._state.token

    def release(self) -> None:
        """Give the lease up now (others may take it at once)."""
        if self._version is None or self._state is None:
            return
        state = LeaseState(self.holder, self._state.token, 0.0)
        with contextlib.suppress(PreconditionFailed):  # taken over already: nothing to release
            self._cas.put_if_version(self.key, state.encode(), self._version)
        self._version = self._state = None

    def _write(self, state: LeaseState, previous: Versioned | None) -> int | None:
        try:
            if previous is None:
                self._version = self._cas.put_if_absent(self.key, state.encode())
            else:
                self._version = self._cas.put_if_version(self.key, state.encode(), previous.version)
        except PreconditionFailed:
            return None  # another would-be holder won the race
        self._state = state
        return state.token
