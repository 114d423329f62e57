"""The maintenance lease: one holder at a time, taken over only after it
expires, and a paused old holder's fence refuses its commit.  Against a
local directory and a real S3-API server (If-None-Match / If-Match)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from auditlake.collector.storage.conditional import (
    ConditionalWrites,
    LocalConditional,
    PreconditionFailed,
    S3Conditional,
)
from auditlake.collector.storage.lease import Lease, LeaseLost, LeaseUnavailable

KEY = "leases/maintenance.json"


class Clock:
    """A clock the test moves: leases compare expiry with it."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def cas(request: pytest.FixtureRequest, tmp_path: Path) -> ConditionalWrites:
    if request.param == "local":
        return LocalConditional(tmp_path / "lake")
    endpoint: str = request.getfixturevalue("s3_endpoint")
    import boto3  # noqa: PLC0415

    bucket = f"lease-{tmp_path.name.lower().replace('_', '-')}"[:63].rstrip("-")
    boto3.client("s3", endpoint_url=f"http://{endpoint}", region_name="us-east-1").create_bucket(Bucket=bucket)
    return S3Conditional(bucket, "lake", endpoint_url=f"http://{endpoint}", region="us-east-1")


def test_conditional_writes_refuse_a_stale_version_and_an_existing_key(cas: ConditionalWrites) -> None:
    v1 = cas.put_if_absent("x.json", b"one")
    with pytest.raises(PreconditionFailed):
        cas.put_if_absent("x.json", b"two")
    v2 = cas.put_if_version("x.json", b"two", v1)
    with pytest.raises(PreconditionFailed):
        cas.put_if_version("x.json", b"three", v1)  # v1 is stale now
    got = cas.read_versioned("x.json")
    assert got is not None and got.data == b"two" and got.version == v2
    assert cas.read_versioned("missing.json") is None


def test_one_holder_at_a_time_and_a_takeover_only_after_expiry(cas: ConditionalWrites) -> None:
    clock = Clock()
    a = Lease(cas, KEY, "collector-a", ttl_s=30, clock=clock)
    b = Lease(cas, KEY, "collector-b", ttl_s=30, clock=clock)
    assert a.acquire() == 1
    assert b.acquire() is None  # live: b waits
    clock.now += 20
    assert a.renew() == 1
    clock.now += 20
    assert b.acquire() is None  # a renewed: still live
    clock.now += 31  # a stopped renewing (killed, or paused)
    assert b.acquire() == 2  # taken over; the fencing token grows
    assert b.check() == 2
    with pytest.raises(LeaseLost):  # a wakes up and wants to commit: refused
        a.check()
    with pytest.raises(LeaseLost):
        a.renew()
    assert a.acquire() is None  # and cannot take it back while b's is live
    b.release()
    assert a.acquire() == 3  # released: free at once, token still growing


def test_the_fence_refuses_a_lease_about_to_expire(cas: ConditionalWrites) -> None:
    clock = Clock()
    a = Lease(cas, KEY, "a", ttl_s=30, margin_s=5, clock=clock)
    assert a.acquire() == 1
    clock.now += 26
    with pytest.raises(LeaseLost, match="about to expire"):
        a.check()
    a.renew()
    assert a.check() == 1


def test_simultaneous_acquirers_get_one_lease(cas: ConditionalWrites) -> None:
    clock = Clock()
    leases = [Lease(cas, KEY, f"c{i}", ttl_s=30, clock=clock) for i in range(8)]
    tokens: list[int | None] = [None] * len(leases)
    start = threading.Barrier(len(leases))

    def take(i: int) -> None:
        start.wait()
        tokens[i] = leases[i].acquire()

    threads = [threading.Thread(target=take, args=(i,)) for i in range(len(leases))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [t for t in tokens if t is not None] == [1]


def test_a_store_without_conditional_writes_cannot_hold_a_lease() -> None:
    with pytest.raises(LeaseUnavailable):
        Lease(None, KEY, "a")


def test_the_same_holder_takes_its_lease_back_at_once_and_others_wait_for_expiry(cas: ConditionalWrites) -> None:
    """A collector restarted on its own data directory (the same holder name)
    reclaims its writer lease before expiry; any other holder waits."""
    clock = Clock()
    first = Lease(cas, KEY, "host:/data/a", ttl_s=30, clock=clock)
    assert first.acquire() == 1
    restarted = Lease(cas, KEY, "host:/data/a", ttl_s=30, clock=clock)  # no version: a new process
    other = Lease(cas, KEY, "other:/data/a", ttl_s=30, clock=clock)
    assert restarted.acquire() is None and other.reclaim() is None
    assert restarted.reclaim() == 2
    with pytest.raises(LeaseLost):
        first.check()  # the old process's fence: the lease changed hands


def test_a_writer_cut_off_past_its_lease_refuses_ingest_until_it_holds_it_again(tmp_path: Path) -> None:
    from auditlake.collector.storage.store import LocalStore
    from auditlake.collector.storage.writers import WriterClaim

    fleet = LocalStore(tmp_path / "fleet", "fleet state")
    a = WriterClaim(fleet, "w1", "/data/a", b"-----BEGIN PUBLIC KEY-----\n", ttl_s=0.6)
    a.acquire()
    time.sleep(0.7)  # a paused past its lease (no renewals running)
    b = WriterClaim(fleet, "w1", "/data/copy", b"-----BEGIN PUBLIC KEY-----\n", ttl_s=30)
    b.acquire()  # the copy takes the expired writer id
    a.start()
    try:
        deadline = time.monotonic() + 5
        while a.lost is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert a.lost is not None and "taken over" in a.lost
    finally:
        a.stop()
        b.stop()
