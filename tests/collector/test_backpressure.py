"""Backpressure: over its limits the collector answers RESOURCE_EXHAUSTED
with a google.rpc.RetryInfo delay, stores nothing of that batch, and takes
the batch once there is room again."""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from tests.collector.durability_client import Client, columns, ingest_key, new_ids, wait_sealed
from tests.collector.test_durability import lake_id_counts
from tests.conftest import CollectorProcess


def retry_info(err: grpc.RpcError) -> error_details_pb2.RetryInfo:
    """The RetryInfo carried in the call's grpc-status-details-bin trailer."""
    details = dict(err.trailing_metadata() or ())["grpc-status-details-bin"]
    status = status_pb2.Status.FromString(details)
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    info = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(info)
    return info


def export_honouring_retry_info(client: Client, batch_id: str, cols: object, timeout: float = 20.0) -> int:
    """Export, waiting as each RESOURCE_EXHAUSTED answer's RetryInfo says."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return int(client.export(batch_id, cols).accepted)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or time.monotonic() > deadline:
                raise
            delay = retry_info(exc).retry_delay
            time.sleep(delay.seconds + delay.nanos / 1e9)


def test_over_unsealed_event_limit_answers_resource_exhausted_with_retry_info(
    collector_factory: Callable[..., CollectorProcess],
) -> None:
    # a long seal interval keeps the first batch unsealed; the env var sets the limit
    collector = collector_factory(seal_interval=4, env={"AUDITLAKE_MAX_UNSEALED_EVENTS": "10"})
    client = Client(collector.endpoint, ingest_key(collector.data, "acme"))
    first = new_ids(50)
    assert client.export("first", columns(first)).accepted == 50
    refused = new_ids(5)
    with pytest.raises(grpc.RpcError) as err:
        client.export("second", columns(refused))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "unsealed events" in (err.value.details() or "")
    info = retry_info(err.value)
    assert info.retry_delay.seconds * 1e9 + info.retry_delay.nanos > 0
    # a retry of a batch already stored is still answered, even when busy
    assert client.export("first", columns(first)).duplicate
    # once sealed there is room: the same batch id goes through
    wait_sealed(collector.data, 50)
    assert export_honouring_retry_info(client, "second", columns(refused)) == 5
    client.close()
    collector.stop()
    assert sorted(lake_id_counts(collector.data)) == sorted(first + refused)


def test_over_wal_byte_limit_from_toml_answers_resource_exhausted(
    collector_factory: Callable[..., CollectorProcess], tmp_path: object
) -> None:
    collector = collector_factory(seal_interval=3)
    collector.stop()
    (collector.data / "auditlake.toml").write_text("[collector]\nmax_wal_bytes = 2000\n")
    collector.start()
    client = Client(collector.endpoint, ingest_key(collector.data, "acme"))
    client.export("big", columns(new_ids(100)))  # > 2000 bytes of WAL, unsealed for a while
    with pytest.raises(grpc.RpcError) as err:
        client.export("next", columns(new_ids(1)))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "write-ahead log over 2000 bytes" in (err.value.details() or "")
    delay = retry_info(err.value).retry_delay
    assert delay.seconds * 1e9 + delay.nanos >= 0.1e9
    wait_sealed(collector.data, 100)  # sealed: the log's unsealed bytes are back to 0
    assert export_honouring_retry_info(client, "next", columns(new_ids(1))) == 1
    client.close()


def test_low_free_disk_answers_resource_exhausted(
    collector_factory: Callable[..., CollectorProcess],
) -> None:
    collector = collector_factory(env={"AUDITLAKE_MIN_FREE_DISK_BYTES": str(10**18)})
    client = Client(collector.endpoint, ingest_key(collector.data, "acme"))
    with pytest.raises(grpc.RpcError) as err:
        client.export("any", columns(new_ids(1)))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "free disk" in (err.value.details() or "")
    assert retry_info(err.value).retry_delay.seconds == 30
    client.close()
