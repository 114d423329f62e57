"""The export thread: batches captured events, exports, retries, spools.

Callers only append tuples to ``queue`` (see ``_record.py``); one daemon
thread wakes every ``schedule_delay`` (or at once when a batch is full, a
durable event or a flush waits), cuts batches, encodes them and exports.
Failures go to the disk spool; while anything is spooled, new batches are
spooled behind it so delivery stays in order.  Counters are kept per batch
under one lock, never on the caller's path.

No event goes without a trace: one the collector refuses (or the SDK, for a
missing tenant) is kept in the dead-letter spool, for
``replay_dead_letters()``; one that cannot be kept is counted as dropped.
Both reach ``configure(on_drop=...)`` (always called on the export thread)
and the summary ``shutdown()`` logs.
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
from typing import Any, NamedTuple

from auditlake.packing import event_count
from auditlake.sdk._event import (
    WAITER,
    CapturedEvent,
    decode_columns,
    encode_batch,
    fill_tenant,
    missing_required,
    new_id,
    new_sequence,
    select_rows,
    split_by_tenant,
    split_request,
    tenants_of,
)
from auditlake.sdk._exceptions import DeliveryError, DeliveryRejected, DeliveryTimeout
from auditlake.sdk._exporter import Exporter, ExportResult, ExportStatus
from auditlake.sdk._policies import BatchPolicy, RetryPolicy, SpoolPolicy
from auditlake.sdk._spool import (
    DEAD_LETTER_DIRECTORY,
    DEAD_LETTER_MAX_BYTES,
    DeadLetter,
    DeadLetterSpool,
    DiskSpool,
    SpoolFull,
    utc_now,
)
from auditlake.v1 import audit_pb2

log = logging.getLogger("auditlake.sdk")

_DROP_WARNING_INTERVAL = 10.0
_RESCAN_INTERVAL = 30.0
_BACKLOG_BUDGET = 1.0
_DURABLE_RETRY_CAP = 0.25
#: Export calls spent at most on finding which events of a partly refused
#: batch were refused, when the collector's message names only some (a
#: collector that does not list them all in ``auditlake-rejected``).
_LOCATE_ROUNDS = 32
_MAX_BATCH_ID = 128  # the collector's limit
_PARENT_EXPORTERS: list[Exporter] = []

#: The collector's refusals, by gRPC status: the reason they are counted under.
_REFUSAL_REASONS: Mapping[str, str] = {
    "UNAUTHENTICATED": "unauthenticated",
    "PERMISSION_DENIED": "permission_denied",
    "INVALID_ARGUMENT": "invalid_argument",
}
_REPLAY_HINT = "auditlake.sdk.replay_dead_letters() resends them once the cause is fixed"


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


@dataclass(frozen=True, slots=True)
class DroppedEvents:
    """Events that did not reach the collector, as ``configure(on_drop=...)`` gets them.

    ``reason``: refused by the collector (``unauthenticated``,
    ``permission_denied``, ``invalid_argument``) or by the SDK
    (``no_tenant``, ``missing_field``); or dropped (``queue_full``,
    ``spool_full``, ``spool_error``).  ``kept``: True when the events are in
    the dead-letter spool (``replay_dead_letters()`` resends them), False
    when they are gone.  ``message``: the collector's status and message, or
    the SDK's explanation.  ``events``: each event's columns, as the
    collector would have stored them (``created_at_us`` for the time);
    ``count`` is their number (larger than ``len(events)`` only when more
    drops than ``queue_max_size`` events waited for the hook at once).
    """

    reason: str
    message: str
    kept: bool
    count: int
    events: list[dict[str, Any]]


class ReplayResult(NamedTuple):
    """What ``replay_dead_letters()`` did, in events."""

    #: Acknowledged by the collector (stored now, or found stored before).
    delivered: int
    #: Refused again: still in the dead-letter spool, with the new refusal.
    refused: int
    #: Not delivered because the collector was unavailable: still in the
    #: dead-letter spool, or moved to the spool to be delivered with it.
    pending: int


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


class _ReplayMarker:
    __slots__ = ("delivered", "done", "pending", "refused", "replays", "written")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.delivered = self.refused = self.pending = 0
        # The dead letter being replayed: how often it was refused already,
        # and the files written back for it.
        self.replays = 0
        self.written: set[str] = set()


@dataclass(slots=True)
class _Notice:
    """A drop waiting for the on_drop hook (which runs on the export thread)."""

    reason: str
    message: str
    kept: bool
    count: int
    request: audit_pb2.ExportRequest | None = None
    events: Sequence[CapturedEvent] = ()


class BatchProcessor:
    """Owns the memory queue, the export thread, the exporter and the spools."""

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
        self._dead = self._open_dead_letters(announce=True)
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
                _REPLAY_HINT,
            )
        return dead

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
        self.dead_lettered = 0
        self._rejected_by: dict[str, int] = {}
        self._dropped_by: dict[str, int] = {}
        self._notices: deque[_Notice] = deque()
        self._notice_events = 0
        self._last_hook_error = -_DROP_WARNING_INTERVAL
        self._replay: _ReplayMarker | None = None  # set while a replay runs
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
        self._dead = self._open_dead_letters()
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

    def replay_dead_letters(self) -> ReplayResult:
        """Resend the dead-letter spool (on the export thread); what came of it.

        Each kept batch is sent once, oldest first, with its batch id and its
        events' ids (a batch stored before is acknowledged as a duplicate,
        not stored twice); events still naming no tenant get the configured
        ``tenant_id`` or ``anonymous_tenant``.  Delivered batches leave the
        dead-letter spool; refused ones stay (only the events refused again,
        with the new status); the first unavailable answer ends the replay.
        """
        if self._stopped or self._dead is None:
            return ReplayResult(0, 0, 0)
        marker = _ReplayMarker()
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
            self._deliver_notices()  # what shutdown itself could not keep
        self._log_summary()
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
                dead_lettered=self.dead_lettered,
                dead_letter_pending=len(self._dead) if self._dead is not None else 0,
                rejected_by_reason=dict(self._rejected_by),
                dropped_by_reason=dict(self._dropped_by),
            )

    def _log_summary(self) -> None:
        """One WARNING for the whole run: the per-batch lines are rate-limited."""
        with self._lock:
            rejected, dropped, kept = self.rejected, self.dropped, self.dead_lettered
            rejected_by, dropped_by = dict(self._rejected_by), dict(self._dropped_by)
        if not rejected and not dropped:
            return
        parts = []
        if rejected:
            where = (
                f"{kept} kept in the dead-letter spool {self._dead.directory}, {_REPLAY_HINT}"
                if self._dead is not None and kept
                else f"{kept} kept"
            )
            parts.append(f"{rejected} refused ({_by_reason(rejected_by)}; {where})")
        if dropped:
            parts.append(f"{dropped} dropped for good ({_by_reason(dropped_by)})")
        log.warning("auditlake: audit events not delivered during this run: %s", "; ".join(parts))

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
            self._drop(1, "queue_full", why, events=(event,))
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
                self._deliver_notices()
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
                if type(item) is _ReplayMarker:
                    self._replay_all(item)
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
        self._deliver_notices()  # the hook has seen every loss the flush reports
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
        """Keep apart (dead-letter) the events lacking a required field."""
        kept: list[CapturedEvent] = []
        refused: dict[str, list[CapturedEvent]] = {}
        for event in events:
            field_name = missing_required(event, self._default_tenant)
            if not field_name:
                kept.append(event)
                continue
            refused.setdefault(field_name, []).append(event)
            waiter = event[WAITER]
            if waiter is not None:
                waiter.error = DeliveryRejected(f"{field_name} is required")
                waiter.done.set()
        count = len(events) - len(kept)
        with self._lock:
            now = time.monotonic()
            report = now - self._last_refusal_warning >= _DROP_WARNING_INTERVAL
            if report:
                self._last_refusal_warning = now
        outcomes = []
        for field_name, group in sorted(refused.items()):
            request = encode_batch(
                group, new_id(time.time_ns()), self._service(), self._rng, self._default_tenant
            )
            reason = "no_tenant" if field_name == "tenant_id" else "missing_field"
            message = (
                "tenant_id is required: the event names no tenant (record(), actor()) and "
                "neither tenant_id nor anonymous_tenant is configured"
                if reason == "no_tenant"
                else f"{field_name} is required"
            )
            outcomes.append(self._refuse(request, len(group), "", reason, message, fresh=True))
        if report:
            log.error(
                "auditlake: %d audit events not sent, a required field is empty (%s); set it "
                "in record()/actor(), or configure(tenant_id=...) for a single-tenant service, "
                "or configure(anonymous_tenant=...) for traffic without a tenant (%s)",
                count,
                ", ".join(f"{name}: {len(group)}" for name, group in sorted(refused.items())),
                "; ".join(outcomes),
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
        """Act on the collector's final answer for a batch (not RETRY)."""
        batch_id = request.batch_id
        if result.status is ExportStatus.OK:
            with self._lock:
                self.exported += count
            if self._replay is not None:
                self._replay.delivered += count
            self._resolve(batch_id, None)
            return
        refused: audit_pb2.ExportRequest | None = request
        if result.partial:
            # The collector stored the valid events and refused the rest:
            # resending the batch would answer "duplicate", so the refused
            # events are kept apart, under a batch id of their own.
            with self._lock:
                self.exported += result.accepted
            if self._replay is not None:
                self._replay.delivered += result.accepted
            refused = self._refused_part(request, result)
        elif result.code == "INVALID_ARGUMENT" and count > 1:
            # A collector that refuses a whole batch for one bad event.
            self._resend_in_parts(request, result, split_request(request))
            return
        elif result.code == "PERMISSION_DENIED" and len(tenants_of(request)) > 1:
            # One tenant the key may not write (the anonymous one, say)
            # must not take the other tenants' events down with it.
            self._resend_in_parts(request, result, split_by_tenant(request))
            return
        if refused is None:  # the collector found none of it refused after all
            self._resolve(batch_id, None)
            return
        reason = _REFUSAL_REASONS.get(result.code, result.code.lower() or "refused")
        outcome = self._refuse(refused, event_count(refused), result.code, reason, result.message)
        self._report_refusal(batch_id, event_count(refused), result.message, outcome)
        self._resolve(batch_id, DeliveryRejected(result.message))

    def _report_refusal(self, batch_id: str, count: int, message: str, outcome: str) -> None:
        if self._replay is not None:
            return  # a replay reports its own result
        with self._lock:
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
                "since the last report, %d in total; %s): %s",
                batch_id,
                unreported,
                self.rejected,
                outcome,
                message,
            )

    def _resend_in_parts(
        self,
        request: audit_pb2.ExportRequest,
        result: ExportResult,
        parts: Sequence[audit_pb2.ExportRequest],
    ) -> None:
        """A batch refused as a whole: send its parts (halves, or one per
        tenant), down to the events that are really refused.

        For a collector that stores nothing of a batch with one invalid
        event (auditlake's stores the valid ones and says which it refused,
        see ``ExportResult.partial``), and for a batch of several tenants of
        which the key may not write one: the good events are isolated from
        the bad ones rather than kept back with them.
        """
        log.warning(
            "auditlake: the collector refused batch %s (%s); resending it in %d parts "
            "to deliver the events it would take",
            request.batch_id,
            result.message,
            len(parts),
        )
        with self._lock:
            waiters = self._waiters.pop(request.batch_id, None)
        complete = True
        pending = list(parts)
        while pending:
            part = pending.pop(0)
            count = event_count(part)
            outcome = self._export_with_retry(part, count)
            if outcome.status is ExportStatus.OK:
                self._settle(part, count, outcome)
                continue
            complete = False
            if outcome.status is ExportStatus.RETRY:
                if self._replay is not None:
                    self._replay.pending += count
                self._store(part, count)
                self._schedule_retry(outcome)
            elif outcome.code == "INVALID_ARGUMENT" and count > 1 and not outcome.partial:
                pending[:0] = split_request(part)  # depth first keeps the order
            elif outcome.code == "PERMISSION_DENIED" and len(tenants_of(part)) > 1:
                pending[:0] = split_by_tenant(part)
            else:
                self._settle(part, count, outcome)
        for waiter in waiters or ():
            waiter.error = None if complete else DeliveryRejected(result.message)
            waiter.done.set()

    def _refused_part(
        self, request: audit_pb2.ExportRequest, result: ExportResult
    ) -> audit_pb2.ExportRequest | None:
        """The events of a partly stored batch that the collector refused,
        under a batch id of their own (None when it refused none)."""
        rows = self._locate_refused(request, result)
        if rows is not None and not rows:
            return None
        if rows is None:
            # Which ones is unknown: keep the whole batch.  A replay resends
            # the stored ones with their ids, and the collector stores an id once.
            log.warning(
                "auditlake: cannot tell which events of batch %s the collector refused; "
                "keeping all %d",
                request.batch_id,
                event_count(request),
            )
            rows = list(range(event_count(request)))
        return select_rows(request, rows, _derived_id(request.batch_id, "r"))

    def _locate_refused(
        self, request: audit_pb2.ExportRequest, result: ExportResult
    ) -> list[int] | None:
        """Positions of the refused events of a partly stored batch (None: unknown).

        The collector lists every one in its trailers (``refused_listed``).
        An older collector's message names only the first 20: when it
        refused more, the rest are among the events after the last one
        named; when every one of those was refused, that is the answer;
        otherwise they are sent again (a new batch id; the collector stores
        an event id once, so the stored ones are not stored twice) for it to
        name the next 20.
        """
        if result.refused_listed:
            rows = sorted(set(result.refused_rows))
            total = event_count(request)
            # Rows past the batch, or more refused than were not stored, are
            # not this batch's answer: keep all of it rather than guess.
            if (rows and rows[-1] >= total) or len(rows) + result.accepted > total:
                return None
            return rows
        ids = [str(row["id"]) for row in decode_columns(request)]
        remaining = result.refused
        found: list[int] = []
        offsets = list(range(len(ids)))  # position in this round -> in the batch
        answer = result
        for round_number in range(_LOCATE_ROUNDS):
            named = [
                offsets[row]
                for row, event_id in zip(answer.refused_rows, answer.refused_ids, strict=True)
                if 0 <= row < len(offsets) and ids[offsets[row]] == event_id
            ]
            if remaining <= 0 or not named:
                return None
            found += named
            remaining -= len(named)
            if remaining == 0:
                return found
            tail = [i for i in offsets if i > max(named)]
            if len(tail) == remaining:
                return found + tail
            if len(tail) < remaining:
                return None
            offsets = tail
            part = select_rows(request, tail, _derived_id(request.batch_id, f"q{round_number}"))
            answer = self._export_once(part)
            if answer.status is ExportStatus.OK:
                return found  # none of the rest is refused now
            if not answer.partial:
                return None
            remaining = answer.refused
        return None

    # -- refused and dropped events ------------------------------------------

    def _refuse(
        self,
        request: audit_pb2.ExportRequest,
        count: int,
        code: str,
        reason: str,
        message: str,
        *,
        fresh: bool = False,
    ) -> str:
        """Keep refused events in the dead-letter spool (or count them as
        dropped when that cannot be); a phrase saying which, for the log.
        ``fresh``: newly recorded events (possibly refused on a recording
        thread while the export thread replays), never a replay's."""
        replay = None if fresh else self._replay
        dead = self._dead
        if replay is not None and dead is not None:
            # Refused again: back into the dead-letter spool (unbounded: it
            # replaces what the replay took out), not counted a second time.
            letter = DeadLetter(request, code, reason, message, utc_now(), replay.replays)
            replay.written.add(dead.keep(letter, bounded=False))
            replay.refused += count
            return "kept in the dead-letter spool"
        letter = DeadLetter(request, code, reason, message, utc_now())
        with self._lock:
            self.rejected += count
            self._rejected_by[reason] = self._rejected_by.get(reason, 0) + count
        lost = "dead_letter_off"
        why = "not kept: the dead-letter spool is off (the spool is disabled or unusable)"
        if dead is not None:
            try:
                dead.keep(letter)
            except SpoolFull:
                lost, why = "dead_letter_full", f"not kept: the dead-letter spool {dead.directory} is full"
            except OSError as error:
                lost, why = "dead_letter_error", f"not kept: writing the dead-letter spool failed: {error}"
            else:
                with self._lock:
                    self.dead_lettered += count
                self._notify(_Notice(reason, message, True, count, request))
                return f"kept in the dead-letter spool {dead.directory}, {_REPLAY_HINT}"
        with self._lock:
            self.dropped += count
            self._dropped_by[lost] = self._dropped_by.get(lost, 0) + count
        self._notify(_Notice(reason, f"{message} ({why})", False, count, request))
        return why

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
        self._drop(count, reason, why, request=request)

    def _hold(self, request: audit_pb2.ExportRequest, count: int) -> None:
        self._held.append((request, count))
        with self._lock:
            self._held_events += count

    def _drop(
        self,
        count: int,
        reason: str,
        why: str,
        *,
        request: audit_pb2.ExportRequest | None = None,
        events: Sequence[CapturedEvent] = (),
    ) -> None:
        with self._lock:
            self.dropped += count
            self._dropped_by[reason] = self._dropped_by.get(reason, 0) + count
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
        self._notify(_Notice(reason, why, False, count, request, events))
        if request is not None:
            self._resolve(request.batch_id, DeliveryError(f"dropped: {why}"))

    def _notify(self, notice: _Notice) -> None:
        """Queue a drop for the on_drop hook (called from any thread)."""
        if self._on_drop is None:
            return
        with self._lock:
            # Bounded: drops that pile up while the export thread is stuck
            # reach the hook as counts only.
            if self._notice_events + notice.count > self.max_queue:
                notice.request, notice.events = None, ()
            else:
                self._notice_events += notice.count
            self._notices.append(notice)

    def _deliver_notices(self) -> None:
        """Call the on_drop hook for each queued drop; it must not stop us."""
        hook = self._on_drop
        while hook is not None:
            try:
                notice = self._notices.popleft()
            except IndexError:
                return
            with self._lock:
                if notice.request is not None or notice.events:
                    self._notice_events -= notice.count
            try:
                if notice.request is not None:
                    events = decode_columns(notice.request)
                elif notice.events:
                    encoded = encode_batch(
                        notice.events, "", self._service(), self._rng, self._default_tenant
                    )
                    events = decode_columns(encoded)
                else:
                    events = []
                hook(DroppedEvents(notice.reason, notice.message, notice.kept, notice.count, events))
            except Exception:  # the hook is the application's: log, go on
                now = time.monotonic()
                if now - self._last_hook_error >= _DROP_WARNING_INTERVAL:
                    self._last_hook_error = now
                    log.exception("auditlake: the on_drop hook raised (reason %s)", notice.reason)

    # -- replaying the dead-letter spool -----------------------------------------

    def _replay_all(self, marker: _ReplayMarker) -> None:
        dead = self._dead
        if dead is None:
            marker.done.set()
            return
        dead.rescan()
        self._replay = marker
        try:
            names = dead.names()
            for position, name in enumerate(names):
                letter = dead.claim(name)
                if letter is None:
                    continue  # another process replays it, or it was unreadable
                if not self._replay_one(dead, name, letter):
                    # The collector is unavailable: the rest waits too.
                    marker.pending += sum(dead.events_in(n) for n in names[position + 1 :])
                    break
        finally:
            self._replay = None
            marker.done.set()
        log.warning(
            "auditlake: replayed the dead-letter spool %s: %d events delivered, %d refused "
            "again (kept), %d not delivered yet (the collector is unavailable)",
            dead.directory,
            marker.delivered,
            marker.refused,
            marker.pending,
        )

    def _replay_one(self, dead: DeadLetterSpool, name: str, letter: DeadLetter) -> bool:
        """Resend one claimed dead letter; False when the collector is unavailable."""
        marker = self._replay
        assert marker is not None
        marker.written.clear()
        marker.replays = letter.replays + 1
        request = fill_tenant(letter.request, self._default_tenant) or letter.request
        count = event_count(request)
        result = self._export_once(request)
        if result.status is ExportStatus.RETRY:
            dead.release(name)
            marker.pending += count
            return False
        try:
            self._settle(request, count, result)
        except OSError as error:
            # A refused part could not be written back: keep the batch as it
            # was (its delivered events are found stored when replayed again).
            log.error("auditlake: writing the dead-letter spool failed: %s", error)
            dead.release(name)
            return True
        if name in marker.written:
            dead.discard_claim(name)  # rewritten under the same name
        else:
            dead.done(name)
        return True

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
                # A marker goes back to the head: what it waits for (events
                # before it) is already in the spool.
                queue.appendleft(marker)
        return events


def _count_value(counter: itertools.count[int]) -> int:
    # itertools.count exposes its next value only through repr: "count(N)".
    return int(repr(counter)[6:-1])


def _chunks(events: list[CapturedEvent], size: int) -> list[list[CapturedEvent]]:
    return [events[i : i + size] for i in range(0, len(events), size)]


def _derived_id(batch_id: str, suffix: str) -> str:
    """``<batch_id>.<suffix>``: a part's id that says where it comes from,
    or a fresh id when that would pass the collector's limit."""
    derived = f"{batch_id}.{suffix}"
    return derived if len(derived) <= _MAX_BATCH_ID else new_id(time.time_ns())


def _by_reason(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{reason}: {n}" for reason, n in sorted(counts.items()))
