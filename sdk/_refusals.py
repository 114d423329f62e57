"""Refused and dropped events: the dead-letter spool, the on_drop hook, replays.

No event goes without a trace: one the collector refuses (or the SDK, for a
missing tenant or required field) is kept in the dead-letter spool, for
``replay_dead_letters()``; one that cannot be kept is counted as dropped.
Both reach ``configure(on_drop=...)`` (always called on the export thread)
and the summary ``shutdown()`` logs.

``Refusals`` owns all of that for one ``BatchProcessor``: the dead-letter
spool, the refused/dropped counters, the notices waiting for the hook, the
replay in progress, and the work of narrowing a refused batch down to the
events really refused (the collector's ``auditlake-rejected`` trailers,
resending per tenant or in halves).  It is apart from ``_processor`` because
it is a policy with state of its own, idle while the collector takes
everything, and it had grown to a third of the processor; the processor
keeps the queue, the thread, retries and the spool, and is called back
(``Delivery``) only to export, settle, spool and resolve waiters.  The
processor owns one ``Refusals`` (made afresh in a forked child) and shares
its lock with it, so that ``stats()`` reads every counter at one instant.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from auditlake.packing import event_count
from auditlake.sdk._event import (
    WAITER,
    CapturedEvent,
    decode_columns,
    encode_batch,
    fill_tenant,
    missing_required,
    new_id,
    select_rows,
    split_by_tenant,
    split_request,
    tenants_of,
)
from auditlake.sdk._exceptions import DeliveryError, DeliveryRejected
from auditlake.sdk._exporter import ExportResult, ExportStatus
from auditlake.sdk._spool import DeadLetter, DeadLetterSpool, SpoolFull, utc_now
from auditlake.v1 import audit_pb2

if TYPE_CHECKING:
    from auditlake.sdk._processor import Waiter

log = logging.getLogger("auditlake.sdk")

_DROP_WARNING_INTERVAL = 10.0
#: Export calls spent at most on finding which events of a partly refused
#: batch were refused, when the collector's message names only some (a
#: collector that does not list them all in ``auditlake-rejected``).
_LOCATE_ROUNDS = 32
_MAX_BATCH_ID = 128  # the collector's limit

#: The collector's refusals, by gRPC status: the reason they are counted under.
_REFUSAL_REASONS: Mapping[str, str] = {
    "UNAUTHENTICATED": "unauthenticated",
    "PERMISSION_DENIED": "permission_denied",
    "INVALID_ARGUMENT": "invalid_argument",
}
REPLAY_HINT = "auditlake.sdk.replay_dead_letters() resends them once the cause is fixed"


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


class ReplayMarker:
    """A ``replay_dead_letters()`` call in the queue, and what came of it."""

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


class Delivery(Protocol):
    """What the refusals need of the processor that owns them (its own
    methods, by their names there): it owns the exporter, retries, the spool
    and the callers waiting on a batch."""

    def _export_once(self, request: audit_pb2.ExportRequest) -> ExportResult: ...

    def _export_with_retry(self, request: audit_pb2.ExportRequest, count: int) -> ExportResult: ...

    def _settle(self, request: audit_pb2.ExportRequest, count: int, result: ExportResult) -> None: ...

    def _store(self, request: audit_pb2.ExportRequest, count: int, *, last_resort: bool = False) -> None: ...

    def _schedule_retry(self, result: ExportResult) -> None: ...

    def _resolve(self, batch_id: str, error: DeliveryError | None) -> None: ...

    def _take_waiters(self, batch_id: str) -> list[Waiter] | None: ...


class Refusals:
    """Refused and dropped events of one processor: counted, dead-lettered,
    reported, handed to on_drop, and replayed (see the module docstring)."""

    def __init__(
        self,
        delivery: Delivery,
        *,
        lock: threading.Lock,
        dead: DeadLetterSpool | None,
        on_drop: Callable[[DroppedEvents], object] | None,
        max_queue: int,
        service: Callable[[], str],
        rng: random.Random,
        default_tenant: str,
    ) -> None:
        self._delivery = delivery
        self._lock = lock  # the processor's: stats() reads all counters at once
        self.dead = dead
        self._on_drop = on_drop
        self._max_queue = max_queue
        self._service = service
        self._rng = rng
        self._default_tenant = default_tenant
        self.dropped = self.rejected = self.dead_lettered = 0
        self.rejected_by: dict[str, int] = {}
        self.dropped_by: dict[str, int] = {}
        self._drops_unreported = 0
        self._last_drop_warning = -_DROP_WARNING_INTERVAL
        self._last_refusal_warning = -_DROP_WARNING_INTERVAL
        self._last_rejection_log = -_DROP_WARNING_INTERVAL
        self._refusals_unreported = 0
        self._notices: deque[_Notice] = deque()
        self._notice_events = 0
        self._last_hook_error = -_DROP_WARNING_INTERVAL
        self._replay: ReplayMarker | None = None  # set while a replay runs

    def delivered(self, count: int) -> None:
        """Count events the collector stored toward the replay running, if any."""
        if self._replay is not None:
            self._replay.delivered += count

    def settle_refused(self, request: audit_pb2.ExportRequest, count: int, result: ExportResult) -> None:
        """Act on the collector's final answer for a batch it did not store
        whole (the processor has counted what it did store)."""
        batch_id = request.batch_id
        refused: audit_pb2.ExportRequest | None = request
        if result.partial:
            # The collector stored the valid events and refused the rest:
            # resending the batch would answer "duplicate", so the refused
            # events are kept apart, under a batch id of their own.
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
            self._delivery._resolve(batch_id, None)
            return
        reason = _REFUSAL_REASONS.get(result.code, result.code.lower() or "refused")
        outcome = self._refuse(refused, event_count(refused), result.code, reason, result.message)
        self._report_refusal(batch_id, event_count(refused), result.message, outcome)
        self._delivery._resolve(batch_id, DeliveryRejected(result.message))

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
        waiters = self._delivery._take_waiters(request.batch_id)
        complete = True
        pending = list(parts)
        while pending:
            part = pending.pop(0)
            count = event_count(part)
            outcome = self._delivery._export_with_retry(part, count)
            if outcome.status is ExportStatus.OK:
                self._delivery._settle(part, count, outcome)
                continue
            complete = False
            if outcome.status is ExportStatus.RETRY:
                if self._replay is not None:
                    self._replay.pending += count
                self._delivery._store(part, count)
                self._delivery._schedule_retry(outcome)
            elif outcome.code == "INVALID_ARGUMENT" and count > 1 and not outcome.partial:
                pending[:0] = split_request(part)  # depth first keeps the order
            elif outcome.code == "PERMISSION_DENIED" and len(tenants_of(part)) > 1:
                pending[:0] = split_by_tenant(part)
            else:
                self._delivery._settle(part, count, outcome)
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
            answer = self._delivery._export_once(part)
            if answer.status is ExportStatus.OK:
                return found  # none of the rest is refused now
            if not answer.partial:
                return None
            remaining = answer.refused
        return None

    # -- refused and dropped events ------------------------------------------

    def refuse_incomplete(self, events: Sequence[CapturedEvent]) -> list[CapturedEvent]:
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
        dead = self.dead
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
            self.rejected_by[reason] = self.rejected_by.get(reason, 0) + count
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
                return f"kept in the dead-letter spool {dead.directory}, {REPLAY_HINT}"
        with self._lock:
            self.dropped += count
            self.dropped_by[lost] = self.dropped_by.get(lost, 0) + count
        self._notify(_Notice(reason, f"{message} ({why})", False, count, request))
        return why

    def drop(
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
            self.dropped_by[reason] = self.dropped_by.get(reason, 0) + count
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
            self._delivery._resolve(request.batch_id, DeliveryError(f"dropped: {why}"))

    def _notify(self, notice: _Notice) -> None:
        """Queue a drop for the on_drop hook (called from any thread)."""
        if self._on_drop is None:
            return
        with self._lock:
            # Bounded: drops that pile up while the export thread is stuck
            # reach the hook as counts only.
            if self._notice_events + notice.count > self._max_queue:
                notice.request, notice.events = None, ()
            else:
                self._notice_events += notice.count
            self._notices.append(notice)

    def deliver_notices(self) -> None:
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

    def log_summary(self) -> None:
        """One WARNING for the whole run: the per-batch lines are rate-limited."""
        with self._lock:
            rejected, dropped, kept = self.rejected, self.dropped, self.dead_lettered
            rejected_by, dropped_by = dict(self.rejected_by), dict(self.dropped_by)
        if not rejected and not dropped:
            return
        parts = []
        if rejected:
            where = (
                f"{kept} kept in the dead-letter spool {self.dead.directory}, {REPLAY_HINT}"
                if self.dead is not None and kept
                else f"{kept} kept"
            )
            parts.append(f"{rejected} refused ({_by_reason(rejected_by)}; {where})")
        if dropped:
            parts.append(f"{dropped} dropped for good ({_by_reason(dropped_by)})")
        log.warning("auditlake: audit events not delivered during this run: %s", "; ".join(parts))

    # -- replaying the dead-letter spool -----------------------------------------

    def replay_all(self, marker: ReplayMarker) -> None:
        dead = self.dead
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
        result = self._delivery._export_once(request)
        if result.status is ExportStatus.RETRY:
            dead.release(name)
            marker.pending += count
            return False
        try:
            self._delivery._settle(request, count, result)
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


def _derived_id(batch_id: str, suffix: str) -> str:
    """``<batch_id>.<suffix>``: a part's id that says where it comes from,
    or a fresh id when that would pass the collector's limit."""
    derived = f"{batch_id}.{suffix}"
    return derived if len(derived) <= _MAX_BATCH_ID else new_id(time.time_ns())


def _by_reason(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{reason}: {n}" for reason, n in sorted(counts.items()))
