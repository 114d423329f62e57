"""record(): what an event carries, where its fields come from, its id."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from auditlake import sdk
from auditlake.sdk.testing import AuditEvents


def test_record_before_configure_raises_not_configured() -> None:
    with pytest.raises(sdk.NotConfiguredError):
        sdk.record("read", "doc", "1")


def test_event_carries_arguments_and_actor_scope(memory: AuditEvents) -> None:
    before = time.time_ns() // 1000
    with sdk.actor(user_id="u1", tenant_id="t1", ip_address="10.1.1.1", user_agent="ua/1",
                   request_id="req-1"):
        sdk.record("update", "invoice", 42, changes={"total": {"before": 1, "after": 2}},
                   metadata={"source": "api"})
    (event,) = memory.events
    assert event["action"] == "update"
    assert event["resource_type"] == "invoice"
    assert event["resource_id"] == "42"
    assert (event["user_id"], event["tenant_id"]) == ("u1", "t1")
    assert (event["ip_address"], event["user_agent"], event["request_id"]) == (
        "10.1.1.1", "ua/1", "req-1")
    assert json.loads(event["changes"]) == {"total": {"before": 1, "after": 2}}
    assert json.loads(event["metadata"]) == {"source": "api"}
    assert event["outcome"] == "success"
    assert event["service"] == "test"
    assert before <= event["created_at_us"] <= time.time_ns() // 1000
    assert (event["trace_id"], event["span_id"], event["reason"]) == ("", "", "")


def test_explicit_fields_win_over_the_actor_scope(memory: AuditEvents) -> None:
    with sdk.actor(user_id="outer", tenant_id="t1"), sdk.actor(user_id="inner"):
        sdk.record("read", "doc", "1")
        sdk.record("read", "doc", "2", user_id="explicit")
    first, second = memory.events
    assert (first["user_id"], first["tenant_id"]) == ("inner", "t1")
    assert (second["user_id"], second["tenant_id"]) == ("explicit", "t1")


def test_absent_strings_are_empty_never_none(memory: AuditEvents) -> None:
    sdk.record("read", "doc")
    (event,) = memory.events
    assert all(value is not None for value in event.values())
    assert event["changes"] == "" and event["metadata"] == ""


def test_invalid_outcome_or_empty_action_is_a_value_error(memory: AuditEvents) -> None:
    with pytest.raises(ValueError, match="outcome"):
        sdk.record("read", outcome="maybe")
    with pytest.raises(ValueError, match="action"):
        sdk.record("")


def test_mutating_a_dict_after_record_does_not_change_the_event(memory: AuditEvents) -> None:
    metadata = {"k": "before"}
    sdk.record("read", "doc", metadata=metadata)
    metadata["k"] = "after"
    assert json.loads(memory.events[0]["metadata"]) == {"k": "before"}


def test_ids_are_unique_time_ordered_uuid7(memory: AuditEvents) -> None:
    for i in range(3000):
        sdk.record("read", "doc", str(i))
    ids = [e["id"] for e in memory.events]
    assert len(set(ids)) == 3000
    assert ids == sorted(ids)
    parsed = uuid.UUID(ids[0])
    assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
    ms = int(ids[0].replace("-", "")[:12], 16)
    assert abs(ms - time.time() * 1000) < 60_000


def test_trace_ids_and_service_come_from_opentelemetry(memory: AuditEvents) -> None:
    provider = TracerProvider(resource=Resource.create({"service.name": "billing"}))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("op") as span:
        sdk.record("read", "doc", "1")
        context = span.get_span_context()
    (event,) = memory.events
    assert event["trace_id"] == format(context.trace_id, "032x")
    assert event["span_id"] == format(context.span_id, "016x")
    # The global provider was not set: the configured service name applies.
    assert event["service"] == "test"


def test_service_name_from_the_global_tracer_provider_resource(
    memory: AuditEvents, monkeypatch: pytest.MonkeyPatch
) -> None:
    from opentelemetry import trace

    provider = TracerProvider(resource=Resource.create({"service.name": "payments"}))
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)
    sdk.record("read", "doc")
    assert memory.events[0]["service"] == "payments"


def test_compliance_helpers_use_the_documented_action_names(memory: AuditEvents) -> None:
    with sdk.actor(user_id="admin", tenant_id="t1"):
        sdk.login("u1", method="password")
        sdk.logout("u1")
        sdk.login_failed("mallory", reason="bad password")
        sdk.permission_grant("u2", "billing:admin")
        sdk.permission_revoke("u2", "billing:admin")
        sdk.data_access("patient", "p-9", fields=["name", "dob"], purpose="treatment")
    events = memory.events
    assert [e["action"] for e in events] == [
        "login", "logout", "login_failed", "permission_grant", "permission_revoke", "read"]
    assert events[0]["user_id"] == "u1"
    assert json.loads(events[0]["metadata"]) == {"method": "password"}
    assert (events[2]["outcome"], events[2]["reason"]) == ("failure", "bad password")
    assert events[3]["user_id"] == "admin" and events[3]["resource_id"] == "u2"
    assert json.loads(events[3]["changes"]) == {
        "permission": {"before": None, "after": "billing:admin"}}
    assert json.loads(events[5]["metadata"]) == {"fields": ["name", "dob"], "purpose": "treatment"}


def test_stats_count_recorded_and_exported(memory: AuditEvents) -> None:
    for _ in range(10):
        sdk.record("read", "doc")
    assert sdk.flush(5)
    stats = sdk.stats()
    assert (stats.recorded, stats.exported, stats.queued, stats.dropped) == (10, 10, 0, 0)


def test_uuid7_layout_matches_rfc_9562() -> None:
    from auditlake.sdk._event import format_uuid7

    ms, seq, rand = 0x0123_4567_89AB, (0xABC << 30) | 0x2AAA_AAAA, 0xDEAD_BEEF
    value = (ms << 80) | (0x7 << 76) | (0xABC << 64) | (0b10 << 62) | (0x2AAA_AAAA << 32) | rand
    assert format_uuid7(ms, seq, rand) == str(uuid.UUID(int=value))


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(
    st.text(max_size=6),
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
    | st.lists(st.integers(), max_size=2),
    max_size=5,
))
def test_json_objects_are_exactly_what_the_json_module_writes(value: dict[str, object]) -> None:
    from auditlake.sdk._event import to_json_object

    text = to_json_object(value)
    assert json.loads(text) == value
    assert text == json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def test_changes_and_metadata_are_checked_at_the_call(memory: AuditEvents) -> None:
    """Refused here, with the field named, rather than by the collector after
    record() returned (the event would be gone)."""
    with pytest.raises(ValueError, match="^changes: not JSON"):
        sdk.record("update", "doc", changes="not json")
    with pytest.raises(ValueError, match="^changes: a JSON object is required, got list"):
        sdk.record("update", "doc", changes="[1, 2]")
    with pytest.raises(ValueError, match="^metadata: a dict or a JSON object string is required, got list"):
        sdk.record("read", "doc", metadata=[1, 2])  # type: ignore[arg-type]
    assert memory.events == []
    sdk.record("update", "doc", changes='{"title": {"before": "a", "after": "b"}}', metadata="")
    (event,) = memory.events
    assert json.loads(event["changes"]) == {"title": {"before": "a", "after": "b"}}
