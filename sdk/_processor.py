"""The export thread: batches captured events, exports, retries, spools.

Callers only append tuples to ``queue`` (see ``_record.py``); one daemon
thread wakes every ``schedule_delay`` (or at once when a batch is full, a
durable event or a flush waits), cuts batches, encodes them and exports.
Failures go to the disk spool; while anything is spooled, new batches are
spooled behind it so delivery stays in order.  Counters are kept per batch
under one lock, never on the caller's path.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from auditlake.packing import event_count
from auditlake.sdk._event import (
    WAITER,
    CapturedEvent,
    encode_batch,
    missing_required,
    new_id,
    new_sequence,
    split_request,
)
from auditlake.sdk._exceptions import DeliveryError, DeliveryRejected, DeliveryTimeout
from auditlake.sdk._exporter import Exporter, ExportResult, ExportStatus
from auditlake.sdk._policies import BatchPolicy, RetryPolicy, SpoolPolicy
from auditlake.sdk._spool import DiskSpool, SpoolFull
from auditlake.v1 import audit_pb2

log = logging.getLogger("auditlake.sdk")

_DROP_WARNING_INTERVAL = 10.0
_RESCAN_INTERVAL = 30.0
_BACKLOG_BUDGET = 1.0
_DURABLE_RETRY_CAP = 0.25
_PARENT_EXPORTERS: list[Exporter] = []


@dataclass(frozen=True, slots=True)
class Stats:
    """Counters since configure(), in events (``spool_pending`` in batches)."""

    recorded: int
    queued: int
    exported: int
    retried: int
    spooled: int
    spool_pending: int
    dropped: int
    rejected: int


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
    """Owns the memory queue, the export thread, the exporter and the spool."""

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
    ) -> None:
        self._exporter_factory = exporter_factory
        self._exporter: Exporter | None = None
        self._batch = batch
        self._retry = retry
        self._spool_policy = spool
        self._spool_dir = spool_dir
        self._service = service
        self._default_tenant = default_tenant
        self.batch_size = batch.max_batch_size
        self.max_queue = batch.max_queue_size
        self._spool = self._open_spool()
        self._stopped = False
        self._setup_runtime()
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

    def _setup_runtime(self) -> None:
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
        self._drops_unreported = 0
        self._last_drop_warning = -_DROP_WARNING_INTERVAL
        self._losses_reported = 0
        self._last_refusal_warning = -_DROP_WARNING_INTERVAL
        self._last_rejection_log = -_DROP_WARNING_INTERVAL
        self._refusals_unreported = 0
        self._waiting_flushes: list[_FlushMarker] = []
        self._inflight: tuple[audit_pb2.ExportRequest, int] | None = None
        self.exported = self.retried = self.spooled = self.dropped = self.rejected = 0
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
        self._setup_runtime()
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

    def shutdown(self, timeout: float | None = 5.0) -> bool:
        """Flush, stop the thread, spool whatever is still in memory."""
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
        return ok and not leftover

    def stats(self) -> Stats:
        """A snapshot of the counters."""
        with self._lock:
            return Stats(
                recorded=_count_value(self.seq) - self._seq_start,
                queued=sum(1 for item in list(self.queue) if type(item) is tuple)
                + self._held_events,
                exported=self.exported,
                retried=self.retried,
                spooled=self.spooled,
                spool_pending=len(self._spool) if self._spool is not None else 0,
                dropped=self.dropped,
                rejected=self.rejected,
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
            self._drop("", 1, why)
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
            events = self._refuse_incomplete(events)
            if not events:
                return None
        batch_id = new_id(time.time_ns())
        waiters = [event[WAITER] for event in events if event[WAITER] is not None]
        if waiters:
            with self._lock:
                self._waiters[batch_id] = waiters
        return encode_batch(events, batch_id, self._service(), self._rng, default_tenant)

    def _refuse_incomplete(self, events: Sequence[CapturedEvent]) -> list[CapturedEvent]:
        kept: list[CapturedEvent] = []
        refused: dict[str, int] = {}
        for event in events:
            field = missing_required(event, self._default_tenant)
            if not field:
                kept.append(event)
                continue
            refused[field] = refused.get(field, 0) + 1
            waiter = event[WAITER]
            if waiter is not None:
                waiter.error = DeliveryRejected(f"{field} is required")
                waiter.done.set()
        count = len(events) - len(kept)
        with self._lock:
            self.rejected += count
            now = time.monotonic()
            report = now - self._last_refusal_warning >= _DROP_WARNING_INTERVAL
            if report:
                self._last_refusal_warning = now
        if report:
            log.error(
                "auditlake: %d audit events not sent, a required field is empty (%s); set it "
                "in record()/actor(), or configure(tenant_id=...) for a single-tenant service",
                count,
                ", ".join(f"{name}: {n}" for name, n in sorted(refused.items())),
            )
        return kept

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
        batch_id = request.batch_id
        if result.status is ExportStatus.OK:
            with self._lock:
                self.exported += count
            self._resolve(batch_id, None)
            return
        if result.partial:
            # The collector stored the valid events and named the invalid
            # ones: nothing to resend (resending would store them twice).
            with self._lock:
                self.exported += result.accepted
            count -= result.accepted
        elif result.code == "INVALID_ARGUMENT" and count > 1:
            # A collector that refuses a whole batch for one bad event.
            self._bisect(request, result)
            return
        with self._lock:
            self.rejected += count
            # Loud, but not once per batch when every batch is refused (a
            # wrong key): the first refusal, then a summary every 10 s.
            self._refusals_unreported += count
            now = time.monotonic()
            report = now - self._last_rejection_log >= _DROP_WARNING_INTERVAL
            if report:
                unreported, self._refusals_unreported = self._refusals_unreported, 0
                self._last_rejection_log = now
        if report:
            log.error(
                "auditlake: the collector refused batch %s, not retried (%d events refused "
                "since the last report, %d in total): %s",
                batch_id,
                unreported,
                self.rejected,
                result.message,
            )
        self._resolve(batch_id, DeliveryRejected(result.message))

    def _bisect(self, request: audit_pb2.ExportRequest, result: ExportResult) -> None:
        """A batch refused as invalid: send its halves, down to the bad events.

        Only for a collector that stores nothing of a batch with one invalid
        event (auditlake's stores the valid ones and says how many, see
        ``ExportResult.partial``): the good events are isolated from the bad
        ones rather than lost.
        """
        log.warning(
            "auditlake: the collector refused batch %s as invalid (%s); "
            "resending it in halves to keep its valid events",
            request.batch_id,
            result.message,
        )
        with self._lock:
            waiters = self._waiters.pop(request.batch_id, None)
        complete = True
        pending = list(split_request(request))
        while pending:
            part = pending.pop(0)
            count = event_count(part)
            outcome = self._export_with_retry(part, count)
            if outcome.status is ExportStatus.OK:
                with self._lock:
                    self.exported += count
                continue
            complete = False
            if outcome.status is ExportStatus.RETRY:
                self._store(part, count)
                self._schedule_retry(outcome)
            elif outcome.code == "INVALID_ARGUMENT" and count > 1 and not outcome.partial:
                pending[:0] = split_request(part)  # depth first keeps the order
            else:
                self._settle(part, count, outcome)
        for waiter in waiters or ():
            waiter.error = None if complete else DeliveryRejected(result.message)
            waiter.done.set()

    def _resolve(self, batch_id: str, error: DeliveryError | None) -> None:
        with self._lock:
            waiters = self._waiters.pop(batch_id, None)
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

    def _store(
        self, request: audit_pb2.ExportRequest, count: int, *, last_resort: bool = False
    ) -> None:
        if self._spool is not None:
            try:
                self._spool.write(request)
            except SpoolFull:
                pass
            except OSError as error:
                log.error("auditlake: writing the spool failed: %s", error)
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
        self._drop(
            request.batch_id,
            count,
            "the spool is full" if self._spool is not None else "memory is full (spool disabled)",
        )

    def _hold(self, request: audit_pb2.ExportRequest, count: int) -> None:
        self._held.append((request, count))
        with self._lock:
            self._held_events += count

    def _drop(self, batch_id: str, count: int, why: str = "the spool is full") -> None:
        with self._lock:
            self.dropped += count
            self._drops_unreported += count
            now = time.monotonic()
            report = now - self._last_drop_warning >= _DROP_WARNING_INTERVAL
            if report:
                unreported, self._drops_unreported = self._drops_unreported, 0
                self._last_drop_warning = now
        if report:
            log.warning(
                "auditlake: %s: dropped %d audit events (%d in total)",
                why,
                unreported,
                self.dropped,
            )
        self._resolve(batch_id, DeliveryError(f"dropped: {why}"))

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
            else:
                break
            self._settle(request, count, result)
            if deadline is not None and time.monotonic() > deadline:
                self.wake.set()  # come back soon; let the memory queue move meanwhile
                return not self._has_backlog()
        self._next_retry = None
        self._retry_level = 0
        self._blocked = False
        return True

    def _losses(self) -> int:
        # Spooled events are not losses once the backlog is delivered.
        return self.dropped + self.rejected

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
                # A flush marker goes back to the head: what it waits for
                # (events before it) is already in the spool.
                queue.appendleft(marker)
        return events


def _count_value(counter: itertools.count[int]) -> int:
    # itertools.count exposes its next value only through repr: "count(N)".
    return int(repr(counter)[6:-1])


def _chunks(events: list[CapturedEvent], size: int) -> list[list[CapturedEvent]]:
    return [events[i : i + size] for i in range(0, len(events), size)]
