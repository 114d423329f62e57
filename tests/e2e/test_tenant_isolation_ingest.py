"""One tenant's ingest key cannot hide, replace or probe for another
tenant's events through ids it chooses (batch ids, event ids)."""

from __future__ import annotations

import pytest

from tests.wire_client import WireClient, make_event


@pytest.fixture
def client(collector):  # noqa: ANN001, ANN201
    c = WireClient(collector.endpoint)
    yield c
    c.close()


def test_a_batch_id_another_tenant_used_stores_this_tenants_events(collector, client) -> None:  # noqa: ANN001
    acme, globex = collector.api_key("acme"), collector.api_key("globex")
    first = client.export([make_event(i, resource_id=f"acme-{i}") for i in range(3)], key=acme, batch_id="shared")
    assert first.accepted == 3 and not first.duplicate
    theirs = [make_event(i, tenant_id="globex", resource_id=f"globex-{i}") for i in range(5)]
    second = client.export(theirs, key=globex, batch_id="shared")
    assert second.accepted == 5 and not second.duplicate, "globex's batch was taken for a retry of acme's"
    assert collector.wait_for_count(8) == 8
    rows = collector.query("SELECT tenant_id, count(*) AS n FROM events GROUP BY tenant_id ORDER BY tenant_id")
    assert [(r["tenant_id"], r["n"]) for r in rows] == [("acme", 3), ("globex", 5)]


def test_a_retry_under_the_same_key_is_still_stored_once(collector, client) -> None:  # noqa: ANN001
    acme = collector.api_key("acme")
    batch = [make_event(i, resource_id=f"r-{i}") for i in range(4)]
    assert client.export(batch, key=acme, batch_id="retry-me").accepted == 4
    again = client.export(batch, key=acme, batch_id="retry-me")
    assert again.duplicate and again.accepted == 4
    assert collector.wait_for_count(4) == 4


def test_a_tenant_cannot_send_events_in_the_collectors_own_name(collector, client) -> None:  # noqa: ANN001
    import grpc  # noqa: PLC0415

    acme = collector.api_key("acme")
    forged = make_event(0, service="auditlake-admin", user_id="root", action="export", resource_id="forged")
    honest = make_event(1, resource_id="honest")
    with pytest.raises(grpc.RpcError) as info:
        client.export([forged, honest], key=acme)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "field 'service'" in info.value.details() and "reserved" in info.value.details()
    assert collector.wait_for_count(1) == 1
    rows = collector.query("SELECT resource_id, service FROM events")
    assert [r["resource_id"] for r in rows] == ["honest"]


def test_no_ingest_key_can_be_made_for_the_collectors_own_tenant(collector) -> None:  # noqa: ANN001
    from tests.conftest import run_cli  # noqa: PLC0415

    with pytest.raises(AssertionError, match="holds the collector's own events"):
        run_cli("keys", "create", "--tenant", "_auditlake", data=collector.data)


def test_an_event_id_another_tenant_used_is_stored_for_this_tenant(collector, client) -> None:  # noqa: ANN001
    acme, globex = collector.api_key("acme"), collector.api_key("globex")
    event = make_event(0, resource_id="acme-original")
    assert client.export([event], key=acme).accepted == 1
    assert collector.wait_for_count(1) == 1  # sealed: in the event-id window now
    copy = {**event, "tenant_id": "globex", "resource_id": "globex-copy"}
    answer = client.export([copy], key=globex)
    assert answer.accepted == 1 and answer.duplicates == 0, "globex learnt that acme holds this id"
    assert collector.wait_for_count(2) == 2
    rows = collector.query("SELECT tenant_id, resource_id FROM events ORDER BY tenant_id")
    assert [(r["tenant_id"], r["resource_id"]) for r in rows] == [("acme", "acme-original"), ("globex", "globex-copy")]


def test_the_answer_counts_events_dropped_as_duplicates(collector, client) -> None:  # noqa: ANN001
    acme = collector.api_key("acme")
    one = make_event(0, resource_id="dup")
    triple = client.export([one, dict(one), dict(one), make_event(1, resource_id="other")], key=acme)
    assert (triple.accepted, triple.duplicates) == (2, 2)
    assert collector.wait_for_count(2) == 2
    resent = client.export([one], key=acme)  # a new batch id, an event already stored
    assert (resent.accepted, resent.duplicates, resent.duplicate) == (0, 1, False)
    assert collector.query("SELECT count(*) AS n FROM events")[0]["n"] == 2
