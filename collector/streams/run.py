"""Running streams: one thread per destination, reading the lake after its
cursor, filtering, encoding, sending, and moving the cursor only once the
destination took the batch.

Order: a writer's events are sent in seq order, one batch after another
(the next batch is read only after the cursor moved), so a destination
sees each writer's events in chain order, with repeats only after a crash
or a lost answer.  Writers are taken in turn.  A failed send is retried
with exponential backoff (``retry_initial_s`` doubling to ``retry_max_s``,
±20 % jitter) forever: an outage only grows the lag, and the stream
catches up from its cursor when the destination answers again.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from auditlake.collector.config import load_toml
from auditlake.collector.storage.datadir import DataDir
from auditlake.collector.streams.cursor import StreamCursor, read_statuses, streams_dir, write_status
from auditlake.collector.streams.destinations import DeliveryFailed, Destination, destination
from auditlake.collector.streams.encode import Encoder
from auditlake.collector.streams.feed import LakeFeed
from auditlake.collector.streams.settings import StreamSettings, load_streams

log = logging.getLogger(__name__)

#: Events read and encoded at once (then cut into requests of ``batch_events``):
#: one encoding query's planning is paid per read, not per request.
ENCODE_ROWS = 50_000
#: Seconds between status files while nothing changes.
_STATUS_EVERY_S = 1.0


@dataclass(frozen=True)
class StreamLag:
    """How far a destination is behind the lake (what metrics export)."""

    name: str
    type: str
    #: Stored events (all tenants, before the filter) not yet past the cursor.
    events_behind: int
    #: Age of the oldest such event (its received_at), 0 when caught up.
    seconds_behind: float
    #: Events the destination took since this collector started.
    delivered: int
    #: Failed sends in a row (0 while healthy).
    failures: int


def select(rows: pa.Table, settings: StreamSettings) -> pa.Table:
    """The rows the stream's filter lets through."""
    f = settings.filter
    if f.everything:
        return rows
    mask = None
    for column, wanted in (("tenant_id", f.tenants), ("action", f.actions), ("outcome", f.outcomes)):
        if wanted:
            m = pc.is_in(rows.column(column), value_set=pa.array(wanted, pa.string()))
            mask = m if mask is None else pc.and_(mask, m)
    return rows.filter(mask) if mask is not None else rows


class Stream:
    """One destination's delivery thread."""

    def __init__(self, data: DataDir, settings: StreamSettings, *, poll_s: float = 1.0,
                 dest: Destination | None = None) -> None:
        self.settings = settings
        self.poll_s = poll_s
        self.folder = streams_dir(data.root)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.cursor = StreamCursor(self.folder, settings.name)
        self.feed = LakeFeed(data)
        self.dest = dest if dest is not None else destination(settings)
        self.delivered = 0
        self.failures = 0
        self.last_error = ""
        self.last_delivery_at = ""
        self._pending_since: dict[str, float] = {}  # writer -> received_at (s) of its oldest unsent event
        self._heads: dict[str, tuple[int, int]] = {}
        self._gaps: dict[tuple[str, int], float] = {}  # (writer, after) -> first seen (monotonic)
        self._status_at = 0.0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._encoder: Encoder | None = None

    # -- the thread --------------------------------------------------------------------

    def start(self) -> None:
        """Start delivering on a thread of its own."""
        self._thread = threading.Thread(target=self._run, name=f"auditlake-stream-{self.settings.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the request in flight (its batch is sent again on the next start)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.dest.close()

    def wake(self) -> None:
        """New events were sealed: look now instead of at the next poll."""
        self._wake.set()

    def _run(self) -> None:
        self._encoder = Encoder(self.settings.format, sourcetype=self.settings.sourcetype, index=self.settings.index)
        try:
            while not self._stop.is_set():
                try:
                    moved = self.step()
                except Exception:  # noqa: BLE001 - a lake read failed: the cursor is intact, try again
                    log.exception("stream %s: reading the lake failed", self.settings.name)
                    moved = False
                self._publish()
                if not moved:
                    self._wake.wait(self.poll_s)
                    self._wake.clear()
        finally:
            self._encoder.close()
            self._publish(force=True)

    # -- one pass ----------------------------------------------------------------------

    def step(self) -> bool:
        """Send what the lake holds after the cursor, one batch per writer;
        True when a cursor moved."""
        self._look_at_heads()
        moved = False
        for writer in sorted(self._heads):
            if self._stop.is_set():
                break
            after = self.cursor.after(writer)
            if after >= self._heads[writer][1]:
                self._pending_since.pop(writer, None)
                continue
            got = self.feed.read_after(writer, after, max(self.settings.batch_events, ENCODE_ROWS))
            if got.rows.num_rows == 0:
                if got.resumes_at is not None:
                    moved |= self._step_over_gap(writer, after, got.resumes_at)
                continue
            rows = got.rows
            seqs = rows.column("seq")
            last = int(seqs[-1].as_py())
            received = rows.column("received_at")[0].as_py()
            self._pending_since[writer] = received.timestamp() if received is not None else time.time()
            chosen = select(rows, self.settings)
            chosen_seqs = chosen.column("seq").to_numpy()
            assert self._encoder is not None
            done = 0
            for request in self._encoder.requests(chosen, self.settings.batch_events):
                low, high = int(chosen_seqs[done]), int(chosen_seqs[done + request.count - 1])
                if not self._deliver(request.body, f"{writer}:{low}-{high}"):
                    return moved  # stopping: this request was not taken
                done += request.count
                self.delivered += request.count
                self.last_delivery_at = dt.datetime.now(dt.UTC).isoformat()
                self.cursor.advance(writer, high)
                moved = True
                if done < chosen.num_rows:  # the lag's age: the next event not yet taken
                    next_received = chosen.column("received_at")[done].as_py()
                    self._pending_since[writer] = next_received.timestamp()
                self._publish()
            if self.cursor.after(writer) != last:  # the rows after the last one chosen
                self.cursor.advance(writer, last)
                moved = True
            if last >= self._heads[writer][1]:
                self._pending_since.pop(writer, None)
        return moved

    def _look_at_heads(self) -> None:
        """Refresh each writer's head (for the lag) without reading events."""
        try:
            self.feed.refresh()
            self._heads = self.feed.heads()
        except Exception:  # noqa: BLE001 - only the lag figure is stale; the next pass retries
            log.exception("stream %s: listing the lake failed", self.settings.name)

    def _step_over_gap(self, writer: str, after: int, resumes_at: int) -> bool:
        """A hole after the cursor: wait ``gap_grace_s`` (a seal being
        published), then step over it (expired or moved to the cold tier)."""
        key = (writer, after)
        seen = self._gaps.setdefault(key, time.monotonic())
        if time.monotonic() - seen < self.settings.gap_grace_s:
            return False
        log.warning("stream %s: events %d-%d of writer %s are not in the hot lake (expired, or moved to the "
                    "cold tier before the stream read them): not sent", self.settings.name, after + 1,
                    resumes_at - 1, writer)
        del self._gaps[key]
        self.cursor.advance(writer, resumes_at - 1)
        return True

    def _deliver(self, body: bytes, batch_id: str) -> bool:
        """Send until the destination takes the batch (True) or the stream stops (False)."""
        delay = self.settings.retry_initial_s
        while not self._stop.is_set():
            try:
                self.dest.send(body, batch_id)
            except DeliveryFailed as exc:
                self.failures += 1
                self.last_error = self._scrub(str(exc))
                self._look_at_heads()  # the lag keeps growing while the destination is away: show it
                log.warning("stream %s: send failed (%d in a row), retrying in %.1f s: %s",
                            self.settings.name, self.failures, delay, self.last_error)
                self._publish(force=True)
                if self._stop.wait(delay * random.uniform(0.8, 1.2)):  # noqa: S311 - jitter, not a secret
                    return False
                delay = min(delay * 2, self.settings.retry_max_s)
                continue
            if self.failures:
                log.info("stream %s: %s answers again after %d failed sends", self.settings.name,
                         self.settings.endpoint, self.failures)
            self.failures = 0
            self.last_error = ""
            return True
        return False

    def _scrub(self, text: str) -> str:
        """``text`` without the stream's credential (a receiver could echo it back)."""
        secret = self.settings.secret.reveal()
        return text.replace(secret, "***") if secret else text

    # -- lag and status ------------------------------------------------------------------

    def lag(self) -> StreamLag:
        """How far behind the destination is, as of the last pass."""
        behind = sum(max(0, hi - self.cursor.after(w)) for w, (_lo, hi) in self._heads.items())
        oldest = min(self._pending_since.copy().values(), default=None)  # another thread may be adding
        seconds = max(0.0, time.time() - oldest) if behind and oldest is not None else 0.0
        return StreamLag(self.settings.name, self.settings.type, behind, round(seconds, 3), self.delivered,
                         self.failures)

    def status(self) -> dict[str, Any]:
        """The status file's content."""
        return {
            **asdict(self.lag()),
            "format": self.settings.format,
            "endpoint": self.settings.endpoint,
            "last_error": self.last_error,
            "last_delivery_at": self.last_delivery_at,
            "writers": {w: {"acknowledged_seq": self.cursor.after(w), "head_seq": hi}
                        for w, (_lo, hi) in sorted(self._heads.items())},
            "updated_at": dt.datetime.now(dt.UTC).isoformat(),
        }

    def _publish(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._status_at >= _STATUS_EVERY_S:
            self._status_at = now
            try:
                write_status(self.folder, self.settings.name, self.status())
            except OSError:
                log.exception("stream %s: writing its status failed", self.settings.name)


class StreamService:
    """Every configured stream of a running collector."""

    def __init__(self, streams: list[Stream]) -> None:
        self.streams = streams

    def start(self) -> None:
        """Start each stream's thread."""
        for s in self.streams:
            s.start()
            log.info("stream %s: %s events to %s", s.settings.name, s.settings.format, s.settings.endpoint)

    def stop(self) -> None:
        """Stop every stream (each finishes or abandons its request in flight)."""
        for s in self.streams:
            s.stop()

    def wake(self) -> None:
        """Tell every stream that new events were sealed."""
        for s in self.streams:
            s.wake()

    def lags(self) -> list[StreamLag]:
        """Each destination's lag (the metrics hook of a collector process)."""
        return [s.lag() for s in self.streams]


def start_streams(collector: Any) -> StreamService:
    """Start the ``[[streams]]`` of a running collector (configuration from
    ``collector.config_toml``, else DIR/auditlake.toml), polling the lake
    every seal interval.  Raises ConfigError for a bad table, so `auditlake
    serve` refuses to start."""
    toml = getattr(collector, "config_toml", None)
    if toml is None:
        toml = load_toml(collector.data.config_file)
    data: DataDir = collector.data
    poll_s = max(0.2, float(collector.config.seal_interval_s))
    service = StreamService([Stream(data, s, poll_s=poll_s) for s in load_streams(toml)])
    service.start()
    return service


def stream_metrics(lags: Callable[[], list[StreamLag]]) -> Callable[[], Iterable[Metric]]:
    """The ``/metrics`` families of each destination's lag, computed at
    scrape time from ``lags`` (labels: the stream's configured name and type;
    never a tenant)."""

    def families() -> Iterable[Metric]:
        behind = GaugeMetricFamily("auditlake_stream_events_behind",
                                   "Stored events a stream has not yet delivered", labels=["stream", "type"])
        age = GaugeMetricFamily("auditlake_stream_seconds_behind",
                                "Age of the oldest event a stream has not yet delivered (0 when caught up)",
                                labels=["stream", "type"])
        delivered = CounterMetricFamily("auditlake_stream_delivered_events",
                                        "Events a stream's destination took since the collector started",
                                        labels=["stream", "type"])
        failures = GaugeMetricFamily("auditlake_stream_failures",
                                     "Failed sends in a row to a stream's destination (0 while healthy)",
                                     labels=["stream", "type"])
        for lag in lags():
            labels = [lag.name, lag.type]
            behind.add_metric(labels, lag.events_behind)
            age.add_metric(labels, lag.seconds_behind)
            delivered.add_metric(labels, lag.delivered)
            failures.add_metric(labels, lag.failures)
        return [behind, age, delivered, failures]

    return families


def lags_from_status(root: Path) -> list[StreamLag]:
    """Each stream's lag as its thread last published it in data directory
    ``root`` (for a process other than the collector's, like the admin's)."""
    fields = set(StreamLag.__dataclass_fields__)
    return [StreamLag(**{k: v for k, v in s.items() if k in fields}) for s in read_statuses(root)]
