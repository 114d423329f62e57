"""Fixtures for the fleet tests: an auditlake lake in a real S3-API bucket.

``s3_lake`` is the only thing the engine tests see: a bucket + prefix URL
whose ``events/date=YYYY-MM-DD/part-*.parquet`` objects a collector wrote,
the s3fs options to reach it, and what auditlake's own `auditlake query`
says the lake holds (count, distinct ids, id checksum, count per date).

Two real collectors write the bucket themselves (`auditlake serve --lake
s3://...`, each with its own data directory and chain), and `auditlake query
--lake URL` gives the expected digest.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import s3fs

from tests.conftest import CollectorProcess, S3Server, run_cli
from tests.wire_client import WireClient, make_event

DAY_US = 86_400 * 1_000_000
TENANTS = ("acme", "globex")
BATCHES = 6  # one seal each: several files per date, so readers see many objects per partition
BATCH_EVENTS = 500


@dataclass(frozen=True)
class LakeDigest:
    """What a reader must find in the lake: every engine computes these the
    same way (count(*), count(distinct id), sha256 of the ids sorted and
    joined with "\\n", count(*) per ``date`` partition)."""

    count: int
    distinct_ids: int
    id_sha256: str
    per_date: dict[str, int] = field(default_factory=dict)


def id_checksum(ids: list[str]) -> str:
    """sha256 (hex) of ``ids`` sorted and joined with "\\n": the checksum every engine reproduces."""
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()


@dataclass(frozen=True)
class S3Lake:
    """An auditlake lake in a bucket: ``url`` is the lake root (``s3://bucket/prefix``),
    its events under ``url + "/events/date=*/"``; ``storage_options`` are the
    fsspec/s3fs arguments that reach the test server."""

    url: str
    endpoint: str
    storage_options: dict[str, Any]
    expected: LakeDigest

    @property
    def events_url(self) -> str:
        """``s3://bucket/prefix/events``: the Hive-partitioned events table."""
        return f"{self.url}/events"

    def filesystem(self) -> s3fs.S3FileSystem:
        """A fresh s3fs filesystem on the test server (no cached listings)."""
        return s3fs.S3FileSystem(skip_instance_cache=True, **self.storage_options)


_DIGEST_SQL = ("SELECT count(*) AS n, count(DISTINCT id) AS distinct_ids,"
               " sha256(string_agg(id, chr(10) ORDER BY id)) AS id_sha256 FROM events")
_PER_DATE_SQL = "SELECT CAST(date AS VARCHAR) AS date, count(*) AS n FROM events GROUP BY ALL ORDER BY date"


def _auditlake_digest(data: Path, lake_url: str) -> LakeDigest:
    """The expected answer, from the `auditlake query` command itself."""
    def rows(sql: str) -> list[dict[str, Any]]:
        out = run_cli("query", "--lake", lake_url, "--format", "jsonl", sql, data=data).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    total = rows(_DIGEST_SQL)[0]
    return LakeDigest(count=int(total["n"]), distinct_ids=int(total["distinct_ids"]),
                      id_sha256=str(total["id_sha256"]),
                      per_date={r["date"]: int(r["n"]) for r in rows(_PER_DATE_SQL)})


def _events(start: int, day0_us: int) -> list[dict[str, Any]]:
    """One batch: two tenants, created on three past days in uneven shares
    (3:2:1), so a reader that drops or mislabels a partition shows up in the
    per-date counts."""
    events = []
    for i in range(start, start + BATCH_EVENTS):
        days_back = 1 + (i % 6 > 2) + (i % 6 > 4)
        events.append(make_event(i, tenant_id=TENANTS[i % 2], user_id=f"user-{i % 11}",
                                 created_at_us=day0_us - days_back * DAY_US + i * 1000))
    return events


def _collector_lake(folder: Path, lake_url: str) -> list[str]:
    """Run two real collectors on the lake ``lake_url``, send events through
    the gRPC wire to each in turn, wait until each batch is sealed, stop
    them; the ids sent."""
    collectors = [CollectorProcess(folder / name, extra_args=("--lake", lake_url)).start() for name in ("a", "b")]
    sent: list[str] = []
    try:
        key = collectors[0].api_key(*TENANTS)  # shared by the lake's collectors
        day0_us = time.time_ns() // 1000 // DAY_US * DAY_US  # today 00:00 UTC: every event is in the past
        for b in range(BATCHES):
            collector = collectors[b % 2]
            client = WireClient(collector.endpoint)
            try:
                batch = _events(b * BATCH_EVENTS, day0_us)
                client.export(batch, key=key)
            finally:
                client.close()
            sent += [e["id"] for e in batch]
            assert collector.wait_for_count(len(sent)) == len(sent), collector.log()[-5000:]
    finally:
        for c in collectors:
            assert c.stop() == 0, c.log()[-5000:]
    return sent


@pytest.fixture(scope="module")
def s3_lake(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Lake]:
    """A lake of 3,000 events (2 tenants, 3 days, several files a day) in
    ``s3://fleet-lake/lake`` on the module's moto server, with the digest
    `auditlake query` gives for it."""
    bucket = s3_server.bucket("fleet-lake")
    options: dict[str, Any] = {"key": "testing", "secret": "testing", "endpoint_url": s3_server.endpoint,
                               "client_kwargs": {"region_name": "us-east-1"}}
    url = f"s3://{bucket}/lake"
    folder = tmp_path_factory.mktemp("fleet")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)  # the collectors, and this process's queries
        sent = _collector_lake(folder, url)
        expected = _auditlake_digest(folder / "a", url)
    # auditlake's own answer must be the events sent, exactly once each, or
    # the engines would be compared with a wrong reference.
    assert expected == LakeDigest(len(sent), len(set(sent)), id_checksum(sent), expected.per_date)
    assert len(expected.per_date) == 3 and sum(expected.per_date.values()) == len(sent)
    lake = S3Lake(url=url, endpoint=s3_server.endpoint, storage_options=options, expected=expected)
    keys = [k for k in lake.filesystem().find(f"{bucket}/lake/events") if k.endswith(".parquet")]
    assert len(keys) >= 3 * BATCHES - 3, keys  # several objects per date partition
    assert len({k.rsplit("/", 1)[1].split("-")[1] for k in keys}) == 2  # both writers' files
    yield lake
