"""Ingest authentication and tenant scoping, against a real collector."""

from __future__ import annotations

import grpc
import pytest

from tests.wire_client import WireClient, make_event


@pytest.fixture
def client(collector):  # noqa: ANN001, ANN201
    c = WireClient(collector.endpoint)
    yield c
    c.close()


def _status(call) -> grpc.RpcError:  # noqa: ANN001
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def test_missing_key_is_unauthenticated_and_stores_nothing(collector, client) -> None:  # noqa: ANN001
    err = _status(lambda: client.export([make_event(resource_id="no-key")], key=None))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "missing API key" in err.details()


def test_unknown_key_is_unauthenticated(collector, client) -> None:  # noqa: ANN001
    real = collector.api_key("acme")
    forged = real[:-4] + ("AAAA" if not real.endswith("AAAA") else "BBBB")
    err = _status(lambda: client.export([make_event(resource_id="forged")], key=forged))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "unknown API key" in err.details()
    err = _status(lambda: client.export([make_event()], key="not-a-key"))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED


def test_wrong_tenant_is_permission_denied_and_the_whole_batch_is_refused(collector, client) -> None:  # noqa: ANN001
    key = collector.api_key("acme")
    batch = [make_event(i, resource_id=f"mixed-{i}") for i in range(5)]
    batch[3]["tenant_id"] = "globex"
    err = _status(lambda: client.export(batch, key=key))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "event 3" in err.details() and "'globex'" in err.details()


def test_valid_batch_next_to_rejected_ones_is_stored(collector, client) -> None:  # noqa: ANN001
    key = collector.api_key("acme")
    _status(lambda: client.export([make_event(resource_id="no-key")], key=None))
    bad = [make_event(resource_id="mixed"), make_event(tenant_id="globex", resource_id="mixed")]
    _status(lambda: client.export(bad, key=key))
    good = [make_event(i, resource_id=f"good-{i}") for i in range(10)]
    resp = client.export(good, key=key)
    assert resp.accepted == 10 and not resp.duplicate
    assert collector.wait_for_count(10) == 10
    rows = collector.query("SELECT resource_id FROM events ORDER BY resource_id")
    assert [r["resource_id"] for r in rows] == sorted(f"good-{i}" for i in range(10))


def test_key_for_several_tenants_writes_each_of_them(collector, client) -> None:  # noqa: ANN001
    key = collector.api_key("acme", "globex")
    resp = client.export([make_event(tenant_id="acme"), make_event(tenant_id="globex")], key=key)
    assert resp.accepted == 2
    collector.wait_for_count(2)
    rows = collector.query("SELECT tenant_id FROM events ORDER BY tenant_id")
    assert [r["tenant_id"] for r in rows] == ["acme", "globex"]
    err = _status(lambda: client.export([make_event(tenant_id="initech")], key=key))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED


def test_revoked_key_is_refused(collector, client) -> None:  # noqa: ANN001
    from tests.conftest import run_cli

    key = collector.api_key("acme")
    assert client.export([make_event()], key=key).accepted == 1
    key_id = key.split("_")[1]
    run_cli("keys", "revoke", key_id, data=collector.data)
    err = _status(lambda: client.export([make_event()], key=key))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
