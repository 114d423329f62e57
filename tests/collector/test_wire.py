"""The wire scanner both services on the gRPC port use before parsing
(collector/ingest/wire.py): it counts and locates exactly what protobuf
itself finds, and on any bytes it either does that or raises ValueError,
never reading past the message."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from auditlake.collector.ingest.receive import wire_event_count
from auditlake.collector.ingest.wire import fields
from auditlake.v1 import audit_pb2

EVENTS = st.lists(st.builds(audit_pb2.AuditEvent, id=st.text(max_size=20), tenant_id=st.text(max_size=10),
                            created_at_us=st.integers(min_value=0, max_value=2**62)), max_size=30)


@settings(max_examples=100, deadline=None)
@given(events=EVENTS, batch_id=st.text(max_size=40))
def test_counts_and_locates_what_protobuf_parses(events: list[audit_pb2.AuditEvent], batch_id: str) -> None:
    raw = audit_pb2.ExportRequest(batch_id=batch_id, events=events).SerializeToString()
    assert wire_event_count(raw, 1_000) == len(events)
    found = [audit_pb2.AuditEvent.FromString(raw[a:b]) for number, a, b in fields(raw, 0, len(raw)) if number == 2]
    assert found == events
    assert wire_event_count(raw, 3) == min(len(events), 4)  # stops once past the limit


@settings(max_examples=200, deadline=None)
@given(events=EVENTS.filter(bool), cut=st.integers(min_value=1), noise=st.binary(max_size=16))
def test_any_cut_or_noise_is_a_value_error_or_a_scan_within_bounds(
        events: list[audit_pb2.AuditEvent], cut: int, noise: bytes) -> None:
    whole = audit_pb2.ExportRequest(events=events).SerializeToString()
    raw = whole[:cut % len(whole)] + noise
    try:
        spans = list(fields(raw, 0, len(raw)))
    except ValueError as exc:
        assert str(exc).startswith("malformed request")
        return
    assert all(0 <= a <= b <= len(raw) for _, a, b in spans)


@pytest.mark.parametrize("raw", [b"\x12", b"\x12\x05ab", b"\x80" * 11, b"\x0f", b"\x02\x00"])
def test_malformed_bytes_are_named(raw: bytes) -> None:
    with pytest.raises(ValueError, match="malformed request"):
        wire_event_count(raw, 10)
