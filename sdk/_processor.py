"""The export thread: batches captured events, exports, retries, spools.

Callers only append tuples to ``queue`` (see ``_record.py``); one daemon
thread wakes every ``schedule_delay`` (or at once when a batch is full, a
durable event or a flush waits), cuts batches, encodes them and exports.
Failures go to the disk spool; while anything is spooled, new batches are
spooled behind it so delivery stays in order.  Counters are kept per batch
under one lock, never on the caller's path.

No event goes without a trace, but what becomes of one the collector (or
the SDK) refuses, or that cannot be kept, is decided in ``_refusals.py``:
the processor hands each such batch or event to its ``Refusals``.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from auditlake.packing import event_count
from auditlake.sdk._event import WAITER, CapturedEvent, encode_batch, missing_required, new_id, new_sequence
from auditlake.sdk._exceptions import DeliveryError, DeliveryTimeout
from auditlake.sdk._exporter import Exporter, ExportResult, ExportStatus
from auditlake.sdk._policies import BatchPolicy, RetryPolicy, SpoolPolicy
from auditlake.sdk._refusals import REPLAY_HINT, Refusals, ReplayMarker
from auditlake.sdk._refusals import DroppedEvents as DroppedEvents  # re-exported: imported from here
from auditlake.sdk._refusals import ReplayResult as ReplayResult
from auditlake.sdk._spool import DEAD_LETTER_DIRECTORY, DEAD_LETTER_MAX_BYTES, DeadLetterSpool, DiskSpool, SpoolFull
from auditlake.v1 import audit_pb2

log = logging.getLogger("auditlake.sdk")

_RESCAN_INTERVAL = 30.0
_BACKLOG_BUDGET = 1.0
_DURABLE_RETRY_CAP = 0.25
_PARENT_EXPORTERS: list[Exporter] = []


@dataclass(frozen=True, slots=True)
class Stats:
    """Counters since configure(), in events (``spool_pending`` and
    ``dead_letter_pending`` in batches).

    Every event the collector did not store is in ``rejected`` (refused, by
    the collector or by the SDK) or ``dropped`` (lost for good), by reason in
    ``rejected_by_reason`` / ``dropped_by_reason``; refused events are kept in
    the dead-letter spool (``dead_lettered``) unless that is full or off, in
    which case they are dropped too (``dead_letter_full``, ``dead_letter_off``).
    """

    recorded: int
    queued: int
    exported: int
    retried: int
    spooled: int
    spool_pending: int
    dropped: int
    rejected: int
    dead_lettered: int = 0
    dead_letter_pending: int = 0
    rejected_by_reason: Mapping[str, int] = field(default_factory=dict)
    dropped_by_reason: Mapping[str, int] = field(default_factory=dict)


class Waiter:
    """The caller's side of a durable event: set once the batch is settled."""

    __slots__ = ("abandoned", "done", "error")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.error: DeliveryError | None = None
        self.abandoned = False  # the caller timed out and no longer waits


class _FlushMarker:
    __slots__ = ("deadline", "done", "ok")

    def __init__(self, deadline: float | None) -> None:
        self.done = threading.Event()
        self.deadline = deadline  # keep retrying the backlog until then
        self.ok = False


class BatchProcessor:
    """Owns the memory queue, the export thread, the exporter and the spool;
    its ``Refusals`` own the dead-letter spool and what was refused or dropped."""

    def __init__(
        self,
        exporter_factory: Callable[[], Exporter],
        *,
        batch: BatchPolicy,
        retry: RetryPolicy,
        spool: SpoolPolicy,
        spool_dir: Path | None,
        service: Callable[[], str],
        default_tenant: str = "",
        anonymous_tenant: str = "",
        dead_letter_max_bytes: int = DEAD_LETTER_MAX_BYTES,
        on_drop: Callable[[DroppedEvents], object] | None = None,
    ) -> None:
        self._exporter_factory = exporter_factory
        self._exporter: Exporter | None = None
        self._batch = batch
        self._retry = retry
        self._spool_policy = spool
        self._spool_dir = spool_dir
        self._service = service
        # An event naming no tenant gets the service's own (single-tenant
        # services), else the one for anonymous traffic.
        self._default_tenant = default_tenant or anonymous_tenant
        self._dead_letter_max_bytes = dead_letter_max_bytes
        self._on_drop = on_drop
        self.batch_size = batch.max_batch_size
        self.max_queue = batch.max_queue_size
        self._spool = self._open_spool()
        dead = self._open_dead_letters(announce=True)
        self._stopped = False
        self._setup_runtime(dead)
        self._thread.start()

    # -- lifecycle ---------------------------------------------------------

    def _open_spool(self) -> DiskSpool | None:
        if not self._spool_policy.enabled or self._spool_dir is None:
            return None
        try:
            return DiskSpool(self._spool_dir, self._spool_policy.max_bytes)
        except OSError as error:
            log.error(
                "auditlake: cannot use spool directory %s (%s); undelivered batches "
                "will be kept in memory only",
                self._spool_dir,
                error,
            )
            return None

    def _open_dead_letters(self, *, announce: bool = False) -> DeadLetterSpool | None:
        if self._spool_dir is None or not self._spool_policy.enabled:
            return None
        if self._dead_letter_max_bytes <= 0:
            return None
        directory = self._spool_dir / DEAD_LETTER_DIRECTORY
        try:
            dead = DeadLetterSpool(directory, self._dead_letter_max_bytes)
        except OSError as error:
            log.error(
                "auditlake: cannot use dead-letter directory %s (%s); events the collector "
                "refuses will be counted and dropped",
                directory,
                error,
            )
            return None
        if announce and len(dead):  # once per configure(), not per forked worker
            log.warning(
                "auditlake: %d refused batches (%d bytes) wait in the dead-letter spool %s; %s",
                len(dead),
                dead.bytes,
                directory,
                REPLAY_HINT,
            )
        return dead

    def _setup_runtime(self, dead: DeadLetterSpool | None) -> None:
        # Everything a forked child must not share with its parent.
        self.queue: deque[Any] = deque()
        self.wake = threading.Event()
        self.seq = new_sequence()
        self._seq_start = _count_value(self.seq)
        self._lock = threading.Lock()
        self._spill_lock = threading.Lock()
        self._space = threading.Condition(threading.Lock())
        self._stop = threading.Event()
        self._held: deque[tuple[audit_pb2.ExportRequest, int]] = deque()
        self._held_events = 0
        self._blocked = False
        self._waiters: dict[str, list[Waiter]] = {}
        self._stopping = False
        self._next_retry: float | None = None
        self._retry_level = 0
        self._last_rescan = time.monotonic()
        self._rng = random.Random(int.from_bytes(os.urandom(16), "big"))
        self._losses_reported = 0
        self._waiting_flushes: list[_FlushMarker] = []
        self._inflight: tuple[audit_pb2.ExportRequest, int] | None = None
        self.exported = self.retried = self.spooled = 0
        self._refusals = Refusals(
            self,
            lock=self._lock,
            dead=dead,
            on_drop=self._on_drop,
            max_queue=self.max_queue,
            service=self._service,
            rng=self._rng,
            default_tenant=self._default_tenant,
        )
        self._thread = threading.Thread(target=self._run, name="auditlake-export", daemon=True)

    def after_fork_in_child(self) -> None:
        """Start afresh in a forked child: the parent's queued events stay the parent's."""
        if self._stopped:
            return
        # The parent's gRPC channel is unusable here.  Keep it referenced,
        # never closed or collected in the child: its teardown would touch
        # state that belongs to the parent's gRPC threads.
        if self._exporter is not None:
            _PARENT_EXPORTERS.append(self._exporter)
        self._exporter = None
        self._spool = self._open_spool()
        self._setup_runtime(self._open_dead_letters())
        self._thread.start()

    def flush(self, timeout: float | None = None, *, persist: bool = True) -> bool:
        """Wait until everything recorded before the call is acknowledged.

        Without a timeout, one attempt is made to deliver the backlog; with
        one, delivery is retried until it passes.  False when events are
        still spooled (the collector is away), when the timeout passed, or
        when events were dropped or refused since the previous flush.
        """
        if self._stopped:
            return False
        deadline = None
        if timeout is not None and persist:
            deadline = time.monotonic() + timeout
        marker = _FlushMarker(deadline)
        self.queue.append(marker)
        self.wake.set()
        if not marker.done.wait(timeout):
            return False
        return marker.ok

    def replay_dead_letters(self) -> ReplayResult:
        """Resend the dead-letter spool (on the export thread); what came of it.

        Each kept batch is sent once, oldest first, with its batch id and its
        events' ids (a batch stored before is acknowledged as a duplicate,
        not stored twice); events still naming no tenant get the configured
        ``tenant_id`` or ``anonymous_tenant``.  Delivered batches leave the
        dead-letter spool; refused ones stay (only the events refused again,
        with the new status); the first unavailable answer ends the replay.
        """
        if self._stopped or self._refusals.dead is None:
            return ReplayResult(0, 0, 0)
        marker = ReplayMarker()
        self.queue.append(marker)
        self.wake.set()
        # Bounded: one export call per kept batch, each bounded by export_timeout.
        while not marker.done.wait(0.5):
            if not self._thread.is_alive():
                break
        return ReplayResult(marker.delivered, marker.refused, marker.pending)

    def shutdown(self, timeout: float | None = 5.0) -> bool:
        """Flush, stop the thread, spool whatever is still in memory; log
        one summary of what was refused or dropped during the run."""
        if self._stopped:
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        ok = self.flush(timeout, persist=False)
        self._stopping = True
        self._stop.set()
        self.wake.set()
        self._thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        inflight = self._inflight
        if self._thread.is_alive() and inflight is not None:
            # The export thread is stuck in a call (a collector that does not
            # answer): keep a copy of its batch.  Should the call still
            # succeed, the collector stores the batch id once.
            self._store(inflight[0], inflight[1], last_resort=True)
        leftover = self._take_queued()
        for chunk in _chunks(leftover, self.batch_size):
            request = self._encode(chunk)
            if request is not None:
                self._store(request, event_count(request), last_resort=True)
        while self._held:
            request, count = self._held.popleft()
            self._store(request, count, last_resort=True)
        self._stopped = True
        if self._exporter is not None:
            self._exporter.close()
        with self._space:
            self._space.notify_all()
        if not self._thread.is_alive():
            self._refusals.deliver_notices()  # what shutdown itself could not keep
        self._refusals.log_summary()
        return ok and not leftover

    def stats(self) -> Stats:
        """A snapshot of the counters."""
        refusals = self._refusals
        with self._lock:
            return Stats(
                recorded=_count_value(self.seq) - self._seq_start,
                queued=sum(1 for item in list(self.queue) if type(item) is tuple)
                + self._held_events,
                exported=self.exported,
                retried=self.retried,
                spooled=self.spooled,
                spool_pending=len(self._spool) if self._spool is not None else 0,
                dropped=refusals.dropped,
                rejected=refusals.rejected,
                dead_lettered=refusals.dead_lettered,
                dead_letter_pending=len(refusals.dead) if refusals.dead is not None else 0,
                rejected_by_reason=dict(refusals.rejected_by),
                dropped_by_reason=dict(refusals.dropped_by),
            )

    # -- the caller's rare paths -------------------------------------------

    def overflow(self, event: CapturedEvent) -> None:
        """The memory queue is full: spill it to the spool (or wait, policy block)."""
        if self._spool_policy.full == "block":
            with self._space:
                while len(self.queue) >= self.max_queue and not self._stopped:
                    self.wake.set()
                    self._space.wait(0.05)
            self.queue.append(event)
            return
        if self._spool is None:
            # Nowhere to spill: memory is the limit, drop the newest.
            why = "the memory queue is full and the spool is disabled"
            self._refusals.drop(1, "queue_full", why, events=(event,))
            waiter = event[WAITER]
            if waiter is not None:
                waiter.error = DeliveryError(f"dropped: {why}")
                waiter.done.set()
            return
        with self._spill_lock:
            if len(self.queue) < self.max_queue:
                self.queue.append(event)
                return
            # Move the oldest tenth to the spool: room for many more calls,
            # at a bounded pause for this one.  The spool is delivered first,
            # so order is kept.
            events = self._take_queued(max(self.batch_size, self.max_queue // 10))
            for chunk in _chunks(events, self.batch_size):
                request = self._encode(chunk)
                if request is not None:
                    self._store(request, event_count(request))
            self.queue.append(event)
            self.wake.set()

    def wait_durable(self, waiter: Waiter, timeout: float) -> None:
        """Block the caller until its durable event is acknowledged or refused."""
        self.wake.set()
        if not waiter.done.wait(timeout):
            waiter.abandoned = True
            raise DeliveryTimeout(
                f"the collector did not acknowledge the event within {timeout:g}s "
                "(it stays queued or spooled and may still be delivered)"
            )
        if waiter.error is not None:
            raise waiter.error

    # -- the export thread -------------------------------------------------

    def _run(self) -> None:
        delay = self._batch.schedule_delay
        while True:
            timeout = delay
            if self._next_retry is not None:
                timeout = min(timeout, max(0.0, self._next_retry - time.monotonic()))
            self.wake.wait(timeout)
            self.wake.clear()
            try:
                self._deliver_backlog(force=False)
                self._drain_queue()
                self._check_flushes()
                self._refusals.deliver_notices()
            except Exception:  # the thread must survive anything
                log.exception("auditlake: unexpected error in the export thread")
            if self._stopping and not self.queue:
                return

    def _drain_queue(self) -> None:
        queue = self.queue
        batch: list[CapturedEvent] = []
        while not (self._blocked and self._held):
            try:
                item = queue.popleft()
            except IndexError:
                break
            if type(item) is tuple:
                batch.append(item)
                if len(batch) >= self.batch_size:
                    self._process(batch)
                    batch = []
            else:
                if batch:
                    self._process(batch)
                    batch = []
                if type(item) is ReplayMarker:
                    self._refusals.replay_all(item)
                else:
                    self._complete(item)
        if batch:
            self._process(batch)
        with self._space:
            self._space.notify_all()

    def _complete(self, marker: _FlushMarker) -> None:
        delivered = self._deliver_backlog(force=True, budget=None)
        if not delivered and marker.deadline is not None and not self._stopping:
            self._waiting_flushes.append(marker)  # settled by _check_flushes
            return
        self._settle_flush(marker, delivered)

    def _check_flushes(self) -> None:
        if not self._waiting_flushes:
            return
        delivered = not self._has_backlog()
        now = time.monotonic()
        for marker in list(self._waiting_flushes):
            if delivered or self._stopping or (marker.deadline or 0) <= now:
                self._waiting_flushes.remove(marker)
                self._settle_flush(marker, delivered)

    def _settle_flush(self, marker: _FlushMarker, delivered: bool) -> None:
        self._refusals.deliver_notices()  # the hook has seen every loss the flush reports
        losses = self._losses()
        marker.ok = delivered and losses == self._losses_reported
        self._losses_reported = losses
        marker.done.set()

    def _process(self, events: list[CapturedEvent]) -> None:
        request = self._encode(events)
        if request is None:
            return
        count = event_count(request)
        if self._has_backlog():
            self._store(request, count)
            return
        self._inflight = (request, count)
        try:
            result = self._export_with_retry(request, count)
            if result.status is ExportStatus.RETRY:
                self._store(request, count)
                self._schedule_retry(result)
            else:
                self._settle(request, count, result)
        finally:
            self._inflight = None

    def _encode(self, events: Sequence[CapturedEvent]) -> audit_pb2.ExportRequest | None:
        """The batch for ``events``, minus those the collector would refuse
        for a missing required field (they would sink the whole batch)."""
        default_tenant = self._default_tenant
        if any(missing_required(event, default_tenant) for event in events):
            events = self._refusals.refuse_incomplete(events)
            if not events:
                return None
        batch_id = new_id(time.time_ns())
        waiters = [event[WAITER] for event in events if event[WAITER] is not None]
        if waiters:
            with self._lock:
                self._waiters[batch_id] = waiters
        return encode_batch(events, batch_id, self._service(), self._rng, default_tenant)

    def _export_once(self, request: audit_pb2.ExportRequest) -> ExportResult:
        exporter = self._exporter
        if exporter is None:
            exporter = self._exporter = self._exporter_factory()
        try:
            return exporter.export(request, self._batch.export_timeout)
        except Exception as error:  # an exporter must not kill the thread
            log.exception("auditlake: exporter raised")
            return ExportResult(ExportStatus.RETRY, f"{type(error).__name__}: {error}")

    def _export_with_retry(self, request: audit_pb2.ExportRequest, count: int) -> ExportResult:
        attempts = self._retry.max_attempts
        result = ExportResult(ExportStatus.RETRY)
        for attempt in range(attempts):
            result = self._export_once(request)
            if result.status is not ExportStatus.RETRY:
                return result
            with self._lock:
                self.retried += count
            if attempt + 1 == attempts or self._stopping:
                break
            self._stop.wait(self._retry.backoff(attempt, self._rng, result.retry_after))
        log.warning(
            "auditlake: collector unavailable (%s); spooling and retrying in the background",
            result.message,
        )
        return result

    def _settle(self, request: audit_pb2.ExportRequest, count: int, result: ExportResult) -> None:
        """Act on the collector's final answer for a batch (not RETRY): what
        it stored is counted here, what it refused is the refusals' to keep."""
        if result.status is ExportStatus.OK:
            with self._lock:
                self.exported += count
            self._refusals.delivered(count)
            self._resolve(request.batch_id, None)
            return
        if result.partial:
            with self._lock:
                self.exported += result.accepted
            self._refusals.delivered(result.accepted)
        self._refusals.settle_refused(request, count, result)

    def _store(
        self, request: audit_pb2.ExportRequest, count: int, *, last_resort: bool = False
    ) -> None:
        reason, why = "spool_full", "memory is full (spool disabled)"
        if self._spool is not None:
            try:
                self._spool.write(request)
            except SpoolFull:
                why = "the spool is full"
            except OSError as error:
                log.error("auditlake: writing the spool failed: %s", error)
                reason, why = "spool_error", f"writing the spool failed ({error})"
            else:
                with self._lock:
                    self.spooled += count
                return
        if not last_resort:
            if self._spool is None and self._held_events + count <= self.max_queue:
                self._hold(request, count)
                return
            if self._spool_policy.full == "block":
                self._blocked = True
                self._hold(request, count)
                return
        self._refusals.drop(count, reason, why, request=request)

    def _hold(self, request: audit_pb2.ExportRequest, count: int) -> None:
        self._held.append((request, count))
        with self._lock:
            self._held_events += count

    def _take_waiters(self, batch_id: str) -> list[Waiter] | None:
        with self._lock:
            return self._waiters.pop(batch_id, None)

    def _resolve(self, batch_id: str, error: DeliveryError | None) -> None:
        waiters = self._take_waiters(batch_id)
        for waiter in waiters or ():
            waiter.error = error
            waiter.done.set()

    def _schedule_retry(self, result: ExportResult) -> None:
        delay = self._retry.backoff(self._retry_level, self._rng, result.retry_after)
        self._retry_level += 1
        if self._waiting_flushes or self._someone_waits():
            # A caller is blocked on this delivery: try again soon.
            delay = min(delay, _DURABLE_RETRY_CAP)
        self._next_retry = time.monotonic() + delay

    # -- the backlog: spool on disk, then batches held in memory -------------

    def _someone_waits(self) -> bool:
        with self._lock:
            return any(
                not waiter.abandoned for waiters in self._waiters.values() for waiter in waiters
            )

    def _has_backlog(self) -> bool:
        return bool(self._held) or (self._spool is not None and len(self._spool) > 0)

    def _deliver_backlog(self, *, force: bool, budget: float | None = _BACKLOG_BUDGET) -> bool:
        """Send spooled, then held, batches in order; True when none is left."""
        now = time.monotonic()
        if self._spool is not None and now - self._last_rescan > _RESCAN_INTERVAL:
            self._last_rescan = now
            if not len(self._spool):
                self._spool.rescan()
        if not self._has_backlog():
            self._next_retry = None
            self._retry_level = 0
            return True
        if not force and self._next_retry is not None and now < self._next_retry:
            return False
        deadline = None if budget is None else now + budget
        while True:
            claimed = self._spool.claim_head() if self._spool is not None else None
            if claimed is not None:
                name, request = claimed
                count = event_count(request)
                result = self._export_once(request)
                if result.status is ExportStatus.RETRY:
                    self._spool.release(name)  # type: ignore[union-attr]
                    with self._lock:
                        self.retried += count
                    self._schedule_retry(result)
                    return False
                # Settled (refused events are in the dead-letter spool) before
                # the spooled copy goes: a crash in between sends it again.
                self._settle(request, count, result)
                self._spool.done(name)  # type: ignore[union-attr]
            elif self._held:
                request, count = self._held[0]
                result = self._export_once(request)
                if result.status is ExportStatus.RETRY:
                    with self._lock:
                        self.retried += count
                    self._schedule_retry(result)
                    return False
                self._held.popleft()
                with self._lock:
                    self._held_events -= count
                self._settle(request, count, result)
            else:
                break
            if deadline is not None and time.monotonic() > deadline:
                self.wake.set()  # come back soon; let the memory queue move meanwhile
                return not self._has_backlog()
        self._next_retry = None
        self._retry_level = 0
        self._blocked = False
        return True

    def _losses(self) -> int:
        # Spooled events are not losses once the backlog is delivered.
        return self._refusals.dropped + self._refusals.rejected

    def _take_queued(self, limit: int | None = None) -> list[CapturedEvent]:
        """Pop up to ``limit`` events from the head of the queue (all by default)."""
        events: list[CapturedEvent] = []
        markers: list[Any] = []
        queue = self.queue
        while limit is None or len(events) < limit:
            try:
                item = queue.popleft()
            except IndexError:
                break
            (events if type(item) is tuple else markers).append(item)
        for marker in reversed(markers):
            if self._stopping:
                marker.done.set()
            else:
                # A marker goes back to the head: what it waits for (events
                # before it) is already in the spool.
                queue.appendleft(marker)
        return events


def _count_value(counter: itertools.count[int]) -> int:
    # itertools.count exposes its next value only through repr: "count(N)".
    return int(repr(counter)[6:-1])


def _chunks(events: list[CapturedEvent], size: int) -> list[list[CapturedEvent]]:
    return [events[i : i + size] for i in range(0, len(events), size)]
