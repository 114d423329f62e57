"""The storage seam behaves the same on local disk and on object storage:
create never overwrites, put replaces, stage + publish puts a file in place
once and is harmless to repeat.  The object store runs against a real S3-API
server (moto's standalone server on a free loopback port)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from auditlake.collector.storage.conditional import S3Conditional
from auditlake.collector.storage.store import LocalStore, ObjectExistsError, ObjectStore, Store


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3),
                        pytest.param("s3-staged", marks=pytest.mark.s3)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    """A store over a fresh local directory, or over a fresh S3 bucket prefix
    (``s3-staged``: as a collector's lake in a bucket is, staging on local
    disk and publishing with If-None-Match)."""
    if request.param == "local":
        return LocalStore(tmp_path / "lake", "hot")
    endpoint: str = request.getfixturevalue("s3_endpoint")
    fs = pafs.S3FileSystem(endpoint_override=endpoint, scheme="http", access_key="testing",
                           secret_key="testing", region="us-east-1", allow_bucket_creation=True)
    bucket = f"store-{tmp_path.name.lower().replace('_', '-')}"[:63].rstrip("-")
    fs.create_dir(bucket)
    if request.param == "s3":
        return ObjectStore(fs, f"{bucket}/lake", "cold", f"s3://{bucket}/lake")
    conditional = S3Conditional(bucket, "lake", endpoint_url=f"http://{endpoint}", region="us-east-1")
    return ObjectStore(fs, f"{bucket}/lake", "hot", f"s3://{bucket}/lake", conditional).with_staging(tmp_path / "st")


KEY = "events/date=2026-01-02/part-w1-0000000001.parquet"


def _keys(store: Store, prefix: str = "") -> list[str]:
    return [o.key for o in store.list(prefix)]


def test_create_refuses_an_existing_key_and_keeps_the_first_object(store: Store) -> None:
    store.create(KEY, b"first")
    with pytest.raises(ObjectExistsError):
        store.create(KEY, b"second")
    with pytest.raises(FileExistsError):  # the stdlib class, for callers that catch that
        store.create(KEY, b"second")
    assert store.read(KEY) == b"first"
    assert _keys(store) == [KEY]


def test_put_replaces_what_is_there(store: Store) -> None:
    store.put("index/cold.json", b"{}")
    store.put("index/cold.json", b'{"a": 1}')
    assert store.read_text("index/cold.json") == '{"a": 1}'
    assert store.size("index/cold.json") == 8
    assert _keys(store, "index") == ["index/cold.json"]


def test_list_under_a_prefix_returns_its_objects_sorted_with_sizes(store: Store) -> None:
    store.create("events/date=2026-01-02/b.parquet", b"bb")
    store.create("events/date=2026-01-02/a.parquet", b"a")
    store.create("events/date=2026-01-03/c.parquet", b"ccc")
    store.create("other/d.json", b"dddd")
    assert [(o.key, o.size) for o in store.list("events/date=2026-01-02")] == [
        ("events/date=2026-01-02/a.parquet", 1), ("events/date=2026-01-02/b.parquet", 2)]
    assert _keys(store, "events") == ["events/date=2026-01-02/a.parquet", "events/date=2026-01-02/b.parquet",
                                      "events/date=2026-01-03/c.parquet"]
    assert store.list("events/date=1999-01-01") == []  # an absent prefix is empty, not an error


def test_delete_removes_one_object(store: Store) -> None:
    store.create("a/x", b"x")
    store.create("a/y", b"y")
    store.delete("a/x")
    assert not store.exists("a/x") and store.size("a/x") is None
    assert _keys(store, "a") == ["a/y"]
    store.delete("a/x")  # already gone: harmless by default
    with pytest.raises(FileNotFoundError):
        store.delete("a/x", missing_ok=False)


def test_sha256_streams_the_object(store: Store) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    store.create("blob", data)
    assert store.sha256("blob") == (hashlib.sha256(data).hexdigest(), len(data))
    assert b"".join(store.iter_chunks("blob")) == data


def test_a_staged_object_is_invisible_until_published(store: Store) -> None:
    staged = store.stage(KEY, b"parquet bytes")
    # By default a hidden name beside the final one: folder readers skip it.
    assert staged.temp_key == "events/date=2026-01-02/.part-w1-0000000001.parquet.tmp"
    assert not store.exists(KEY)
    assert KEY not in _keys(store, "events")
    store.publish(staged)
    assert store.read(KEY) == b"parquet bytes"
    assert _keys(store, "events") == [KEY]  # the temporary object is gone


def test_publishing_twice_is_harmless(store: Store) -> None:
    staged = store.stage(KEY, b"once")
    store.publish(staged)
    store.publish(staged)  # a repeat after a crash
    assert store.read(KEY) == b"once"
    assert _keys(store) == [KEY]


def test_publishing_the_same_bytes_again_is_harmless_and_other_bytes_are_refused(store: Store) -> None:
    store.publish(store.stage(KEY, b"signed checkpoint"))
    store.publish(store.stage(KEY, b"signed checkpoint"))  # rewritten by recovery: same bytes
    assert _keys(store) == [KEY]
    staged = store.stage(KEY, b"something else")
    with pytest.raises(ObjectExistsError):
        store.publish(staged)
    assert store.read(KEY) == b"signed checkpoint"  # never overwritten
    assert (store.staging or store).read(staged.temp_key) == b"something else"  # kept for a look


def test_staging_again_replaces_the_earlier_stage(store: Store) -> None:
    store.stage(KEY, b"first attempt")
    staged = store.stage(KEY, b"retry")  # a seal retried after an error writes the same temporary name
    store.publish(staged)
    assert store.read(KEY) == b"retry"


def test_rename_moves_an_object(store: Store) -> None:
    store.create("events/date=2026-01-02/a.parquet", b"a")
    store.rename("events/date=2026-01-02/a.parquet", "events/date=2026-01-02/a.parquet.superseded")
    store.sync("events/date=2026-01-02")
    assert _keys(store, "events") == ["events/date=2026-01-02/a.parquet.superseded"]
    assert store.read("events/date=2026-01-02/a.parquet.superseded") == b"a"


def test_rename_creates_the_target_folder(store: Store) -> None:
    store.create("events/date=2026-01-02/a.parquet", b"a")
    aside = "_superseded/events/date=2026-01-02/a.parquet.superseded"
    store.rename("events/date=2026-01-02/a.parquet", aside)  # no folder there yet
    store.sync("events/date=2026-01-02")
    store.sync("_superseded/events/date=2026-01-02")
    assert _keys(store) == [aside]
    assert store.read(aside) == b"a"


def test_a_local_stage_is_read_by_no_folder_reader_or_parquet_glob(tmp_path: Path) -> None:
    # pyarrow.dataset (and Spark, Dask) read every file of the folder not
    # named _* or .*; DuckDB globs *.parquet, hidden names included.
    store = LocalStore(tmp_path / "lake")
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"x": list(range(5))}), sink)
    store.create("events/date=2026-01-02/part-w1-0000000000.parquet", sink.getvalue())  # a live file
    staged = store.stage(KEY, sink.getvalue())
    events = tmp_path / "lake" / "events"

    def counts() -> tuple[int, int]:
        by_folder = pads.dataset(events, format="parquet", partitioning="hive").count_rows()
        with duckdb.connect() as con:
            row = con.execute(f"SELECT count(*) FROM read_parquet('{events}/**/*.parquet')").fetchone()
        assert row is not None
        return by_folder, int(row[0])

    assert (tmp_path / "lake" / staged.temp_key).parent == (tmp_path / "lake" / KEY).parent
    assert counts() == (5, 5)
    store.publish(staged)
    assert counts() == (10, 10)
    assert sorted(p.name for p in (tmp_path / "lake" / KEY).parent.iterdir()) == [
        "part-w1-0000000000.parquet", "part-w1-0000000001.parquet"]


def test_a_staged_store_publishes_with_one_conditional_put_and_never_overwrites(tmp_path: Path,
                                                                               s3_endpoint: str) -> None:
    fs = pafs.S3FileSystem(endpoint_override=s3_endpoint, scheme="http", access_key="testing",
                           secret_key="testing", region="us-east-1", allow_bucket_creation=True)
    fs.create_dir("staged-writes")
    conditional = S3Conditional("staged-writes", "lake", endpoint_url=f"http://{s3_endpoint}", region="us-east-1")
    lake = ObjectStore(fs, "staged-writes/lake", "hot", "s3://staged-writes/lake", conditional)
    a, b = lake.with_staging(tmp_path / "a"), lake.with_staging(tmp_path / "b")  # two collectors
    staged_a, staged_b = a.stage(KEY, b"writer a"), b.stage(KEY, b"writer b")
    assert not a.exists(KEY) and a.stage_exists(staged_a.temp_key)  # durable, on local disk only
    assert (tmp_path / "a" / staged_a.temp_key).read_bytes() == b"writer a"
    a.publish(staged_a)
    with pytest.raises(ObjectExistsError):  # the bucket's If-None-Match, not a check before the write
        b.publish(staged_b)
    assert a.read(KEY) == b"writer a"
    assert not a.stage_exists(staged_a.temp_key) and b.stage_exists(staged_b.temp_key)
    assert _keys(a) == [KEY]  # no temporary object ever went to the bucket
