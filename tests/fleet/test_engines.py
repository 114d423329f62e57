"""The lake on S3 is read, with no auditlake code, by stock DuckDB, by Dask on
a ``distributed`` cluster of worker processes and by Spark: each finds the
count, distinct ids, id checksum and count per ``date`` partition that
`auditlake query` gives for the same objects.

Every engine computes the checksum the same way: sha256 (hex) of the ids
sorted and joined with "\\n".  The snippets here are the ones
docs/scale-out.md shows readers.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.fleet.conftest import LakeDigest, S3Lake, id_checksum

pytestmark = pytest.mark.s3


def _only_day(lake: S3Lake) -> tuple[str, int]:
    """The partition the pruning checks filter on: the one holding the fewest events
    (a reader that ignores the filter returns more)."""
    day = min(lake.expected.per_date, key=lambda d: lake.expected.per_date[d])
    return day, lake.expected.per_date[day]


# -- DuckDB ---------------------------------------------------------------------


def test_duckdb_reads_the_bucket_through_fsspec_with_hive_partitioning(s3_lake: S3Lake) -> None:
    """Stock DuckDB over ``s3://.../events/*/*.parquet``.  Its httpfs extension
    is a download DuckDB cannot make here, so the bucket is reached through
    s3fs registered as a DuckDB filesystem; extension autoloading is off, so
    the test fails rather than silently use anything but that filesystem."""
    import duckdb

    con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    try:
        con.register_filesystem(s3_lake.filesystem())
        # The docs' snippet; a view cannot take a prepared parameter, so the URL is spliced in.
        con.execute(f"CREATE VIEW lake AS SELECT * FROM read_parquet('{s3_lake.events_url}/*/*.parquet',"
                    " hive_partitioning = true, hive_types = {'date': DATE})")
        n, distinct, digest = con.execute(
            "SELECT count(*), count(DISTINCT id), sha256(string_agg(id, chr(10) ORDER BY id)) FROM lake"
        ).fetchone()
        per_date = dict(con.execute(
            "SELECT CAST(date AS VARCHAR), count(*) FROM lake GROUP BY ALL ORDER BY 1").fetchall())
        day, expected_day = _only_day(s3_lake)
        # A filter on the partition column: that day's rows, from that date= folder's objects only.
        in_day = con.execute("SELECT count(*), count(DISTINCT filename) FROM read_parquet(?, hive_partitioning = true,"
                             " hive_types = {'date': DATE}, filename = true) WHERE date = ?::DATE",
                             [f"{s3_lake.events_url}/*/*.parquet", day]).fetchone()
        httpfs_loaded = con.execute(
            "SELECT bool_or(loaded) FROM duckdb_extensions() WHERE extension_name = 'httpfs'").fetchone()[0]
    finally:
        con.close()
    assert LakeDigest(n, distinct, digest, per_date) == s3_lake.expected
    assert in_day[0] == expected_day
    day_objects = s3_lake.filesystem().glob(f"{s3_lake.events_url}/date={day}/*.parquet")
    assert in_day[1] == len(day_objects) >= 2
    assert not httpfs_loaded


# -- Dask on a distributed cluster ------------------------------------------------


def _partition_reader(df: Any) -> Any:
    """Which worker process read a partition, and how many rows it held."""
    import pandas as pd

    return pd.DataFrame({"pid": [os.getpid()], "rows": [len(df)]})


def test_dask_cluster_of_worker_processes_reads_the_bucket_through_s3fs(s3_lake: S3Lake) -> None:
    """``dask.dataframe.read_parquet`` over the events prefix, computed by a
    two-process ``distributed.LocalCluster`` (each worker opens the bucket
    with s3fs itself); ``date`` comes from the Hive folders, and a filter
    on it reads only that partition's objects."""
    import dask.dataframe as dd
    import pandas as pd
    import psutil
    from distributed import Client, LocalCluster

    options = s3_lake.storage_options
    with (
        LocalCluster(n_workers=2, processes=True, threads_per_worker=1, host="127.0.0.1",
                     dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        client.wait_for_workers(2, timeout=60)
        worker_pids = set(client.run(os.getpid).values())
        workers = [psutil.Process(pid) for pid in worker_pids]
        events = dd.read_parquet(s3_lake.events_url, storage_options=options)
        n, distinct, per_date_series, readers = client.compute(
            [events.shape[0], events["id"].nunique(), events["date"].astype(str).value_counts(),
             events.map_partitions(_partition_reader, meta={"pid": "int64", "rows": "int64"})],
            sync=True)
        # The checksum needs every id in one sorted sequence: gathered to the client.
        ids = client.compute(events["id"], sync=True).tolist()
        day, expected_day = _only_day(s3_lake)
        one_day = dd.read_parquet(s3_lake.events_url, storage_options=options, filters=[("date", "==", day)])
        day_partitions = one_day.npartitions
        day_rows = client.compute(one_day[["id", "date"]], sync=True)
    assert LakeDigest(int(n), int(distinct), id_checksum(ids), dict(sorted(per_date_series.items()))) \
        == s3_lake.expected
    # The work ran in both worker processes, not in the test's.
    assert isinstance(readers, pd.DataFrame) and int(readers["rows"].sum()) == s3_lake.expected.count
    assert set(readers["pid"]) == worker_pids and os.getpid() not in worker_pids and len(worker_pids) == 2
    # The partition filter: only that date's rows, read from only that date's objects.
    assert len(day_rows) == expected_day and set(day_rows["date"].astype(str)) == {day}
    assert day_partitions == len(s3_lake.filesystem().glob(f"{s3_lake.events_url}/date={day}/*.parquet"))
    # Closing the cluster ended its worker processes.
    assert not psutil.wait_procs(workers, timeout=15)[1]


# -- Spark (local mode) -------------------------------------------------------------


def _mirror_events(lake: S3Lake, dest: Path) -> Path:
    """Copy every object under the events prefix to ``dest`` with the same relative paths."""
    fs = lake.filesystem()
    prefix = lake.events_url.removeprefix("s3://")
    for key in fs.find(prefix):
        target = dest / key.removeprefix(prefix + "/")
        target.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(key, str(target))
    return dest


@contextmanager
def _local_spark(scratch: Path) -> Iterator[Any]:
    """A ``local[2]`` SparkSession bound to loopback; on exit the session is
    stopped and its JVM ended (pyspark keeps the JVM for the life of the
    Python process otherwise), so no Java process outlives the test."""
    from pyspark import SparkContext
    from pyspark.sql import SparkSession

    spark = (
        SparkSession.builder.master("local[2]").appName("auditlake-fleet-test")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.local.dir", str(scratch))
        .getOrCreate()
    )
    gateway = SparkContext._gateway
    try:
        spark.sparkContext.setLogLevel("ERROR")
        yield spark
    finally:
        spark.stop()
        if gateway is not None:
            # The JVM exits when its stdin closes (pyspark's own design); wait for it.
            gateway.shutdown()
            gateway.proc.stdin.close()
            try:
                gateway.proc.wait(30)
            except Exception:
                gateway.proc.kill()
                gateway.proc.wait()
            SparkContext._gateway = None
            SparkContext._jvm = None


@pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning")
def test_spark_local_mode_reads_the_same_objects(s3_lake: S3Lake, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Spark in local mode over the same objects, ``date`` from the Hive folders.

    Spark reaches S3 through Hadoop's S3A, whose jars (hadoop-aws and the AWS
    SDK bundle) come only from Maven Central: neither pyspark nor any
    maintained PyPI or Debian package ships them, and this machine reaches no
    other registry.  So the test mirrors the bucket's objects, byte for byte
    and key for key, to a local folder with s3fs and Spark reads that folder;
    with hadoop-aws on the classpath the same read takes ``s3a://bucket/lake/events``
    (docs/scale-out.md gives those options)."""
    import psutil
    from pyspark.sql import functions as F

    monkeypatch.setenv("SPARK_LOCAL_IP", "127.0.0.1")  # the JVM binds loopback only
    root = _mirror_events(s3_lake, tmp_path / "events")
    day, expected_day = _only_day(s3_lake)
    with _local_spark(tmp_path / "spark-local") as spark:
        events = spark.read.option("basePath", str(root)).parquet(str(root / "date=*" / "*.parquet"))
        row = events.agg(
            F.count(F.lit(1)).alias("n"),
            F.countDistinct("id").alias("distinct_ids"),
            F.sha2(F.concat_ws("\n", F.array_sort(F.collect_list("id"))), 256).alias("id_sha256"),
        ).collect()[0]
        per_date = {r["date"]: r["n"] for r in
                    events.groupBy(F.col("date").cast("string").alias("date")).agg(F.count(F.lit(1)).alias("n"))
                    .collect()}
        date_type = dict(events.dtypes)["date"]
        in_day = events.where(F.col("date") == F.lit(day).cast("date"))
        day_count, day_files = in_day.agg(F.count(F.lit(1)), F.countDistinct("_metadata.file_path")).collect()[0]
        jvm = psutil.Process(spark.sparkContext._gateway.proc.pid)
        assert "java" in jvm.name()
    assert LakeDigest(row["n"], row["distinct_ids"], row["id_sha256"], dict(sorted(per_date.items()))) \
        == s3_lake.expected
    assert date_type == "date"  # Hive partition values typed, not strings
    assert day_count == expected_day
    assert day_files == len(list((root / f"date={day}").glob("*.parquet")))
    # No JVM outlives the test.
    assert not psutil.wait_procs([jvm], timeout=15)[1]
    assert not [p for p in psutil.Process().children(recursive=True) if "java" in p.name()]
