"""The admin reader's DuckDB settings reach the cursors its queries run on.

DuckDB's ``SET`` is session-local by default and each ``cursor()`` is a
session of its own, so a setting made on the reader's connection only would
silently not apply to any query (a results page then missed Top-N late
materialization and re-read every Parquet footer: ~10 ms a page; on a host
outside UTC, times were printed and bucketed in the host's zone)."""

from __future__ import annotations

import time

import pytest

from auditlake.collector.admin.search import DEFAULT_LIMIT, Filter, LakeReader
from auditlake.collector.storage.datadir import DataDir


def test_reader_settings_apply_to_every_cursor(lake, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    # A host in another time zone: a cursor that missed the reader's UTC would
    # print and bucket times (CSV export, the stats) in New York's.
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        reader = LakeReader(DataDir(lake.collector.data), threads=1, memory_limit_mb=256)
        try:
            for _ in range(2):  # the second cursor too, not just the first
                cur = reader.cursor()
                try:
                    late, footers, zone, shown = cur.execute(
                        "SELECT current_setting('late_materialization_max_rows'), "
                        "current_setting('parquet_metadata_cache'), current_setting('TimeZone'), "
                        "CAST(TIMESTAMPTZ '2026-01-01 00:30:00+00' AS VARCHAR)").fetchone()
                finally:
                    cur.close()
                assert late == DEFAULT_LIMIT + 1
                assert footers is True
                assert zone == "UTC" and shown == "2026-01-01 00:30:00+00"
        finally:
            reader.close()
    finally:
        monkeypatch.undo()
        time.tzset()


def test_a_page_is_the_newest_first_with_late_materialization(lake) -> None:  # noqa: ANN001
    reader = LakeReader(DataDir(lake.collector.data), threads=1)
    try:
        f = Filter(tenants=("acme",))
        page = reader.page(f, None, limit=DEFAULT_LIMIT)
        whole = reader.page(f, None, limit=10_000)
    finally:
        reader.close()
    assert len(page.rows) == DEFAULT_LIMIT
    assert page.rows == whole.rows[:DEFAULT_LIMIT]
    keys = [(r["created_at"], r["id"]) for r in page.rows]
    assert keys == sorted(keys, reverse=True)
    assert page.next_cursor is not None
