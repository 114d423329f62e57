"""Every malformed field is rejected with a message naming it; valid events
beside it in the same batch are stored."""

from __future__ import annotations

import time

import grpc
import pytest

from tests.wire_client import WireClient, make_event

HOUR_US = 3600 * 1_000_000

BAD_FIELDS = [
    ("id", {"id": ""}, "'id' is required"),
    ("id", {"id": "not-a-uuid"}, "'id' is not a UUID"),
    ("tenant_id", {"tenant_id": ""}, "'tenant_id' is required"),
    ("action", {"action": ""}, "'action' is required"),
    ("resource_type", {"resource_type": ""}, "'resource_type' is required"),
    ("action", {"action": "x" * 65}, "'action' is longer than 64 bytes"),
    ("user_agent", {"user_agent": "é" * 513}, "'user_agent' is longer than 1024 bytes"),
    ("outcome", {"outcome": "maybe"}, "'outcome' must be one of denied, failure, success"),
    ("trace_id", {"trace_id": "XYZ"}, "'trace_id' must be lowercase hex"),
    ("span_id", {"span_id": "0" * 15}, "'span_id' must be lowercase hex"),
    ("changes", {"changes": "{not json"}, "'changes' must be a JSON object"),
    ("metadata", {"metadata": "[1, 2]"}, "'metadata' must be a JSON object"),
    ("created_at", {"created_at_us": 0}, "'created_at' is missing"),
    ("created_at", {"created_at_us": int(time.time() * 1e6) + 48 * HOUR_US}, "'created_at' is more than 24 h ahead"),
]


@pytest.fixture(scope="module")
def running(tmp_path_factory):  # noqa: ANN001, ANN201
    from tests.conftest import CollectorProcess

    c = CollectorProcess(tmp_path_factory.mktemp("validation") / "data").start()
    client = WireClient(c.endpoint)
    yield c, client, c.api_key("acme")
    client.close()
    c.stop()


@pytest.mark.parametrize("form", ["columns", "packed"])
@pytest.mark.parametrize(("field", "override", "message"), BAD_FIELDS,
                         ids=[f"{f}-{i}" for i, (f, _, _) in enumerate(BAD_FIELDS)])
def test_malformed_field_is_named_and_neighbours_are_stored(running, field, override, message, form) -> None:  # noqa: ANN001
    collector, client, key = running
    marker = f"v-{field}-{time.monotonic_ns()}"
    batch = [make_event(0, resource_id=marker), make_event(1, **override), make_event(2, resource_id=marker)]
    if "resource_id" not in override:
        batch[1]["resource_id"] = marker
    with pytest.raises(grpc.RpcError) as info:
        client.export(batch, key=key, form=form)
    err = info.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "event 1" in err.details() and message in err.details(), err.details()
    assert "1 of 3 events rejected (2 valid events stored)" in err.details()
    assert dict(err.trailing_metadata())["auditlake-accepted"] == "2"
    collector.wait_for_count(2, where=f"resource_id = '{marker}'")
    rows = collector.query(f"SELECT id FROM events WHERE resource_id = '{marker}' ORDER BY id")
    assert sorted(r["id"] for r in rows) == sorted([batch[0]["id"], batch[2]["id"]])


def test_columns_of_different_lengths_are_refused(running) -> None:  # noqa: ANN001
    from tests.wire_client import request

    _, client, key = running
    req = request([make_event(), make_event()])
    del req.columns.user_id[1]
    with pytest.raises(grpc.RpcError) as info:
        client.stub.Export(req, metadata=[("authorization", f"Bearer {key}")])
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "columns.user_id has 1 values" in info.value.details()


def _packed(events: list[dict], **replace: bytes):  # noqa: ANN202 - an ExportRequest
    from tests.wire_client import request

    req = request(events, form="packed")
    for path, value in replace.items():
        target = req.packed
        *parents, leaf = path.split("__")
        for name in parents:
            target = getattr(target, name)
        setattr(target, leaf, value)
    return req


@pytest.mark.parametrize(("replace", "message"), [
    ({"user_id__lengths": b"\x01\x00\x00\x00"}, "packed.user_id.lengths holds 4 bytes; count=2 needs 8"),
    ({"user_id__lengths": b"\x01\x00\x00\x00\x01\x00\x00\x00"},
     "packed.user_id: the lengths add up to 2 bytes but data holds 12"),
    ({"created_at_us": b"\x00" * 12}, "packed.created_at_us holds 12 bytes; count=2 needs 16"),
], ids=["lengths-short", "lengths-sum", "created-short"])
def test_packed_buffers_that_do_not_add_up_are_refused(running, replace, message) -> None:  # noqa: ANN001
    _, client, key = running
    req = _packed([make_event(0, user_id="user-a"), make_event(1, user_id="user-b")], **replace)
    assert req.packed.user_id.data == b"user-auser-b"
    with pytest.raises(grpc.RpcError) as info:
        client.stub.Export(req, metadata=[("authorization", f"Bearer {key}")])
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in info.value.details(), info.value.details()


def test_a_packed_value_that_is_not_utf8_is_rejected_alone(running) -> None:  # noqa: ANN001
    collector, client, key = running
    marker = f"utf8-{time.monotonic_ns()}"
    events = [make_event(i, resource_id=marker, user_agent="agent") for i in range(3)]
    req = _packed(events, user_agent__data=b"agent" + b"ag\xffnt" + b"agent")
    with pytest.raises(grpc.RpcError) as info:
        client.stub.Export(req, metadata=[("authorization", f"Bearer {key}")])
    err = info.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"event 1 (id={events[1]['id']}): field 'user_agent' is not valid UTF-8" in err.details(), err.details()
    assert dict(err.trailing_metadata())["auditlake-accepted"] == "2"
    collector.wait_for_count(2, where=f"resource_id = '{marker}'")
    rows = collector.query(f"SELECT id, user_agent FROM events WHERE resource_id = '{marker}'")
    assert sorted(r["id"] for r in rows) == sorted([events[0]["id"], events[2]["id"]])
    assert {r["user_agent"] for r in rows} == {"agent"}


def test_packed_values_keep_every_character(running) -> None:  # noqa: ANN001
    collector, client, key = running
    marker = f"chars-{time.monotonic_ns()}"
    texts = ["", "plain", "é à ü", "日本語のユーザー", "emoji \U0001f512", "tab\tnew\nline", "nul\x00byte"]
    events = [make_event(i, resource_id=marker, user_id=t, reason=t[::-1]) for i, t in enumerate(texts)]
    assert client.export(events, key=key, form="packed").accepted == len(texts)
    collector.wait_for_count(len(texts), where=f"resource_id = '{marker}'")
    rows = collector.query(f"SELECT id, user_id, reason FROM events WHERE resource_id = '{marker}'")
    got = {r["id"]: (r["user_id"], r["reason"]) for r in rows}
    assert got == {e["id"]: (e["user_id"], e["reason"]) for e in events}


def test_missing_batch_id_is_refused(running) -> None:  # noqa: ANN001
    from tests.wire_client import request

    _, client, key = running
    req = request([make_event()], batch_id="")
    req.batch_id = ""
    with pytest.raises(grpc.RpcError) as info:
        client.stub.Export(req, metadata=[("authorization", f"Bearer {key}")])
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "batch_id is required" in info.value.details()


def test_event_messages_columns_and_packed_columns_are_all_stored(running) -> None:  # noqa: ANN001
    from auditlake.v1 import audit_pb2
    from tests.wire_client import request

    collector, client, key = running
    marker = f"both-{time.monotonic_ns()}"
    req = request([make_event(resource_id=marker)])
    e = make_event(resource_id=marker)
    req.events.append(audit_pb2.AuditEvent(**{k: v for k, v in e.items()}))
    req.packed.CopyFrom(request([make_event(i, resource_id=marker) for i in range(2)], form="packed").packed)
    resp = client.stub.Export(req, metadata=[("authorization", f"Bearer {key}")])
    assert resp.accepted == 4
    assert collector.wait_for_count(4, where=f"resource_id = '{marker}'") == 4


def test_retried_batch_id_is_stored_once(running) -> None:  # noqa: ANN001
    collector, client, key = running
    marker = f"retry-{time.monotonic_ns()}"
    events = [make_event(i, resource_id=marker) for i in range(4)]
    first = client.export(events, key=key, batch_id=marker)
    again = client.export(events, key=key, batch_id=marker)
    assert (first.accepted, first.duplicate) == (4, False)
    assert (again.accepted, again.duplicate) == (4, True)
    collector.wait_for_count(4, where=f"resource_id = '{marker}'")
    time.sleep(0.5)
    assert collector.query(f"SELECT count(*) AS n FROM events WHERE resource_id = '{marker}'")[0]["n"] == 4
