"""No refused event is lost: the dead-letter spool, its replay, on_drop and
the shutdown summary, against a real `auditlake serve` (tests/conftest.py).

The refusals here come from the collector itself: an unknown API key, a
tenant the key may not write, fields it finds invalid.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest

from auditlake import sdk
from auditlake.sdk import BatchPolicy, DroppedEvents, RetryPolicy
from auditlake.sdk._event import decode_columns
from auditlake.sdk._exporter import ExportResult, ExportStatus, GrpcExporter, refused_events
from auditlake.v1 import audit_pb2

FAST = RetryPolicy(max_attempts=2, initial_backoff=0.05, max_backoff=0.2)
WRONG_KEY = "alk_000000000000_not-a-key-the-collector-knows"


def configure(collector: Any, spool: Path, key: str, **options: Any) -> list[DroppedEvents]:
    """The SDK against ``collector``; the list the on_drop hook fills."""
    dropped: list[DroppedEvents] = []
    options.setdefault("batch", BatchPolicy(schedule_delay=5.0, max_batch_size=100, export_timeout=5.0))
    sdk.configure(endpoint=collector.endpoint, api_key=key, service_name="dead-letter-tests",
                  spool_dir=spool, retry=FAST, on_drop=dropped.append, **options)
    return dropped


def dead_letters(spool: Path) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """(header, events) of every batch in the dead-letter spool, oldest first,
    read as docs/sdk.md describes the files."""
    out = []
    for path in sorted((spool / "dead-letter").glob("*.dead")):
        header, _, body = path.read_bytes().partition(b"\n")
        out.append((json.loads(header), decode_columns(audit_pb2.ExportRequest.FromString(body))))
    return out


def stored(collector: Any, tag: str, expected: int) -> list[dict[str, Any]]:
    """The lake's events of ``tag`` once ``expected`` are there (or the time is up)."""
    collector.wait_for_count(expected, f"resource_type = '{tag}'")
    return collector.query(
        f"SELECT id, tenant_id, resource_id FROM events WHERE resource_type = '{tag}' ORDER BY resource_id"
    )


def test_a_wrong_key_keeps_every_event_then_a_replay_stores_each_once(
    collector: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = tmp_path / "spool"
    dropped = configure(collector, spool, WRONG_KEY)
    with sdk.actor(user_id="u1", tenant_id="t1"):
        for i in range(150):  # two batches
            sdk.record("read", "rotated", f"{i:03d}")
    assert sdk.flush() is False  # refused: not delivered

    stats = sdk.stats()
    assert (stats.rejected, stats.dead_lettered, stats.dropped, stats.spooled) == (150, 150, 0, 0)
    assert stats.rejected_by_reason == {"unauthenticated": 150}
    assert stats.dead_letter_pending == 2
    letters = dead_letters(spool)
    assert [h["code"] for h, _ in letters] == ["UNAUTHENTICATED"] * 2
    assert all(h["reason"] == "unauthenticated" and "unknown API key" in h["message"] for h, _ in letters)
    assert all(h["refused_at"].endswith("Z") for h, _ in letters)
    kept = [e for _, events in letters for e in events]
    assert [e["resource_id"] for e in kept] == [f"{i:03d}" for i in range(150)]
    # The hook saw the same events, with the same ids, and where they are.
    assert {(d.reason, d.kept) for d in dropped} == {("unauthenticated", True)}
    assert [e["id"] for d in dropped for e in d.events] == [e["id"] for e in kept]

    with caplog.at_level(logging.WARNING, logger="auditlake.sdk"):
        sdk.shutdown()
    (summary,) = [r.getMessage() for r in caplog.records if "not delivered during this run" in r.getMessage()]
    assert "150 refused (unauthenticated: 150; 150 kept in the dead-letter spool" in summary
    assert str(spool / "dead-letter") in summary and "replay_dead_letters()" in summary

    # The key is fixed; the next start says what waits, and a replay delivers it.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="auditlake.sdk"):
        configure(collector, spool, collector.api_key("t1"))
    assert "2 refused batches" in caplog.text
    before = list((spool / "dead-letter").glob("*.dead"))
    copies = [(p, p.read_bytes()) for p in before]
    assert sdk.replay_dead_letters() == sdk.ReplayResult(delivered=150, refused=0, pending=0)
    assert sdk.stats().dead_letter_pending == 0 and not list((spool / "dead-letter").glob("*.dead"))
    assert sdk.replay_dead_letters() == (0, 0, 0)

    # A replay whose answer was lost is sent again: the collector stores it once.
    for path, data in copies:
        path.write_bytes(data)
    assert sdk.replay_dead_letters().delivered == 150
    rows = stored(collector, "rotated", 150)
    assert sorted(r["id"] for r in rows) == sorted(e["id"] for e in kept)  # the original ids, once each
    assert len(rows) == 150


def test_a_tenant_the_key_may_not_write_does_not_hold_back_the_others(
    collector: Any, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    dropped = configure(collector, spool, collector.api_key("t1"))
    for i in range(10):  # one batch, the two tenants interleaved
        sdk.record("read", "foreign", f"{i:02d}", tenant_id="t1" if i % 2 else "t2", user_id="u")
    assert sdk.flush() is False
    assert [r["resource_id"] for r in stored(collector, "foreign", 5)] == ["01", "03", "05", "07", "09"]
    stats = sdk.stats()
    assert (stats.exported, stats.rejected, stats.dead_lettered) == (5, 5, 5)
    assert stats.rejected_by_reason == {"permission_denied": 5}
    ((header, events),) = dead_letters(spool)
    assert header["code"] == "PERMISSION_DENIED" and "may not write tenant 't2'" in header["message"]
    assert [e["resource_id"] for e in events] == ["00", "02", "04", "06", "08"]
    assert [d.count for d in dropped] == [5]

    configure(collector, spool, collector.api_key("t1", "t2"))  # the key is granted t2
    assert sdk.replay_dead_letters() == (5, 0, 0)
    rows = stored(collector, "foreign", 10)
    assert [(r["resource_id"], r["tenant_id"]) for r in rows] == [
        (f"{i:02d}", "t1" if i % 2 else "t2") for i in range(10)
    ]


class CountingExporter:
    """The SDK's gRPC exporter, keeping the batch id of every export call:
    what reached the collector."""

    def __init__(self, collector: Any, key: str) -> None:
        self.inner = GrpcExporter(collector.endpoint, key)
        self.batch_ids: list[str] = []

    def export(self, request: audit_pb2.ExportRequest, timeout: float) -> ExportResult:
        self.batch_ids.append(request.batch_id)
        return self.inner.export(request, timeout)

    def close(self) -> None:
        self.inner.close()


class OlderCollector(CountingExporter):
    """Answers as a collector before the ``auditlake-rejected`` trailers:
    the refused events named in the message only (the first 20)."""

    def export(self, request: audit_pb2.ExportRequest, timeout: float) -> ExportResult:
        result = super().export(request, timeout)
        if not result.refused_listed:
            return result
        refused, rows, ids = refused_events(result.message.partition(": ")[2])
        return dataclasses.replace(result, refused=refused, refused_rows=rows, refused_ids=ids,
                                   refused_listed=False)


class LosesTheFirstAnswer(CountingExporter):
    """The first call reaches the collector, but its answer is lost (a
    timeout, a connection reset): the SDK retries the same batch id."""

    def export(self, request: audit_pb2.ExportRequest, timeout: float) -> ExportResult:
        result = super().export(request, timeout)
        if len(self.batch_ids) == 1:
            return ExportResult(ExportStatus.RETRY, "DEADLINE_EXCEEDED: the answer was lost",
                                code="DEADLINE_EXCEEDED")
        return result


@pytest.mark.parametrize(
    ("total", "bad", "exporter", "calls"),
    [
        (20, {3, 11, 17}, CountingExporter, 1),
        # 30 of 60: more than the collector's message names
        (60, {i for i in range(40) if i % 5 != 0} - {7, 23}, CountingExporter, 1),
        (10_000, set(range(1, 10_000, 2)), CountingExporter, 1),  # scattered: a bitmap trailer
        # An older collector: found from its messages, a round per 20 events.
        (60, {i for i in range(40) if i % 5 != 0} - {7, 23}, OlderCollector, 2),
    ],
    ids=["3-of-20", "30-of-60", "5000-of-10000", "30-of-60-older-collector"],
)
def test_a_partly_refused_batch_keeps_exactly_the_refused_events(
    collector: Any, tmp_path: Path, total: int, bad: set[int], exporter: type[CountingExporter], calls: int,
) -> None:
    spool = tmp_path / "spool"
    key = collector.api_key("t1")
    sent = exporter(collector, key)
    dropped = configure(collector, spool, key, exporter=sent,
                        batch=BatchPolicy(schedule_delay=5.0, max_batch_size=total, export_timeout=30.0))
    width = len(str(total))
    for i in range(total):
        action = "x" * 200 if i in bad else "read"  # longer than the collector allows
        sdk.record(action, "partial", f"{i:0{width}d}", tenant_id="t1", user_id="u")
    assert sdk.flush(60) is False
    # One batch, and as many export calls as it takes to find the refused
    # events: one when the collector lists them.
    assert len(sent.batch_ids) == calls and len(set(sent.batch_ids)) == calls
    good = [f"{i:0{width}d}" for i in range(total) if i not in bad]
    assert [r["resource_id"] for r in stored(collector, "partial", len(good))] == good
    ((header, events),) = dead_letters(spool)
    assert header["code"] == "INVALID_ARGUMENT"
    assert [e["resource_id"] for e in events] == [f"{i:0{width}d}" for i in sorted(bad)]
    stats = sdk.stats()
    assert (stats.exported, stats.rejected, stats.dead_lettered) == (len(good), len(bad), len(bad))
    assert [(d.reason, d.count) for d in dropped] == [("invalid_argument", len(bad))]
    # Replaying cannot fix an invalid field: refused again, still kept, not stored twice.
    assert sdk.replay_dead_letters() == (0, len(bad), 0)
    ((_, again),) = dead_letters(spool)
    assert [e["id"] for e in again] == [e["id"] for e in events]
    assert len(stored(collector, "partial", len(good))) == len(good)


def test_a_partly_refused_batch_whose_answer_was_lost_keeps_the_refused_events(
    collector: Any, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    key = collector.api_key("t1")
    sent = LosesTheFirstAnswer(collector, key)
    dropped = configure(collector, spool, key, exporter=sent)
    bad = {2, 5, 6}
    for i in range(10):
        sdk.record("x" * 200 if i in bad else "read", "lost-answer", f"{i}", tenant_id="t1", user_id="u")
    assert sdk.flush(30) is False
    # The retry (same batch id) hears the first answer again, not "duplicate":
    # the refused events are kept, not taken as stored.
    assert len(sent.batch_ids) == 2 and len(set(sent.batch_ids)) == 1
    ((header, events),) = dead_letters(spool)
    assert header["code"] == "INVALID_ARGUMENT"
    assert [e["resource_id"] for e in events] == ["2", "5", "6"]
    assert [(d.reason, d.count) for d in dropped] == [("invalid_argument", 3)]
    assert [r["resource_id"] for r in stored(collector, "lost-answer", 7)] == ["0", "1", "3", "4", "7", "8", "9"]


def test_a_large_batch_with_refusals_too_scattered_to_list_is_sent_in_halves(
    collector: Any, tmp_path: Path
) -> None:
    from auditlake.collector.ingest.receive import ALWAYS_NAMED

    spool = tmp_path / "spool"
    key = collector.api_key("t1")
    sent = CountingExporter(collector, key)
    total = ALWAYS_NAMED + 2  # every other event refused: no list of them fits the answer
    configure(collector, spool, key, exporter=sent,
              batch=BatchPolicy(schedule_delay=5.0, max_batch_size=total, export_timeout=60.0))
    for i in range(total):
        sdk.record("x" * 200 if i % 2 else "read", "halves", f"{i:05d}", tenant_id="t1", user_id="u")
    assert sdk.flush(120) is False
    # Refused whole (nothing stored), then each half settled in one call.
    (first, *halves) = sent.batch_ids
    assert halves == [f"{first}.0", f"{first}.1"]
    kept = [e["resource_id"] for _, events in dead_letters(spool) for e in events]
    assert kept == [f"{i:05d}" for i in range(1, total, 2)]
    assert collector.wait_for_count(total // 2, "resource_type = 'halves'", timeout=60) == total // 2
    stats = sdk.stats()
    assert (stats.exported, stats.rejected, stats.dead_lettered) == (total // 2, total // 2, total // 2)


def test_anonymous_traffic_goes_to_the_anonymous_tenant_or_waits_for_it(
    collector: Any, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    configure(collector, spool, collector.api_key("t1"))  # a key that may not write it yet
    sdk.record("login_failed", "anon", "probe-1", outcome="failure")  # no tenant anywhere
    sdk.record("read", "anon", "tenant-event", tenant_id="t1")
    assert sdk.flush() is False
    assert [r["resource_id"] for r in stored(collector, "anon", 1)] == ["tenant-event"]
    ((header, events),) = dead_letters(spool)
    assert header["code"] == "PERMISSION_DENIED"
    assert [(e["resource_id"], e["tenant_id"]) for e in events] == [("probe-1", "anonymous")]

    configure(collector, spool, collector.api_key("t1", "anonymous"))
    assert sdk.replay_dead_letters().delivered == 1
    sdk.record("login_failed", "anon", "probe-2", outcome="failure")
    assert sdk.flush(10)
    rows = stored(collector, "anon", 3)
    assert {(r["resource_id"], r["tenant_id"]) for r in rows} == {
        ("probe-1", "anonymous"), ("probe-2", "anonymous"), ("tenant-event", "t1")}


def test_dead_letters_left_by_another_process_are_replayed(collector: Any, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    configure(collector, spool, WRONG_KEY)
    sdk.record("read", "moved", "1", tenant_id="t1")
    sdk.shutdown()
    other = tmp_path / "other"
    shutil.copytree(spool, other)  # e.g. the spool of a host being retired
    configure(collector, other, collector.api_key("t1"))
    assert sdk.replay_dead_letters() == (1, 0, 0)
    assert [r["resource_id"] for r in stored(collector, "moved", 1)] == ["1"]
