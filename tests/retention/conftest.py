"""Fixtures for the retention tests: a data dir with years of imported
history (built once, copied per test), a real S3-API server (moto's
standalone server on a free loopback port), and checks that every event is
queryable exactly once and that `verify` is clean."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_cli

TENANTS = ("acme", "globex")
EVENTS_PER_DAY = 3


def today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def write_history(path: Path, days: int, *, start_days_ago: int = 0) -> dict[str, int]:
    """A JSON-lines history file: EVENTS_PER_DAY events on each of ``days``
    days ending ``start_days_ago`` days ago (tenant alternating); returns the
    expected count per date."""
    noon = dt.datetime.combine(today(), dt.time(12), tzinfo=dt.UTC)
    expected: dict[str, int] = {}
    with open(path, "w") as f:
        for d in range(start_days_ago, start_days_ago + days):
            for k in range(EVENTS_PER_DAY):
                t = noon - dt.timedelta(days=d, minutes=k)
                if t > dt.datetime.now(dt.UTC) + dt.timedelta(hours=20):
                    continue
                f.write(json.dumps({
                    "created_at": t.isoformat(), "tenant_id": TENANTS[(d + k) % 2], "user_id": f"u{k}",
                    "action": "update", "resource_type": "document", "resource_id": f"doc-{d}",
                    "changes": {"title": {"before": "a", "after": "b"}},
                }) + "\n")
                expected[t.date().isoformat()] = expected.get(t.date().isoformat(), 0) + 1
    return expected


def import_history(data: Path, days: int, tmp: Path, *, start_days_ago: int = 0) -> dict[str, int]:
    """Import a history into ``data`` (one tenant per import: both tenants)."""
    src = tmp / f"history-{days}-{start_days_ago}.jsonl"
    expected = write_history(src, days, start_days_ago=start_days_ago)
    lines = src.read_text().splitlines()
    for tenant in TENANTS:
        part = tmp / f"{src.stem}-{tenant}.jsonl"
        part.write_text("".join(ln + "\n" for ln in lines if json.loads(ln)["tenant_id"] == tenant))
        run_cli("import", "--quiet", "--tenant", tenant, str(part), data=data)
    return expected


def write_policy(data: Path, *, holds: tuple[dict[str, Any], ...] = (), **settings: Any) -> None:
    """DIR/auditlake.toml with a [retention] table."""
    def val(v: Any) -> str:
        return json.dumps(v) if isinstance(v, str) else str(v)

    text = "[retention]\n" + "".join(f"{k} = {val(v)}\n" for k, v in settings.items())
    for h in holds:
        text += "\n[[retention.legal_hold]]\n" + "".join(f"{k} = {val(v)}\n" for k, v in h.items())
    (data / "auditlake.toml").write_text(text)


def counts_by_date(data: Path) -> dict[str, int]:
    """Tenant events (not the system tenant's) per date, through the `events` view."""
    from auditlake.collector.lake.query import connect
    from auditlake.collector.storage.datadir import DataDir

    con = connect(DataDir(data))
    try:
        rows = con.execute(
            "SELECT CAST(date AS VARCHAR), count(*), count(DISTINCT id) FROM events "
            "WHERE tenant_id <> '_auditlake' GROUP BY 1"
        ).fetchall()
    finally:
        con.close()
    for day, n, distinct in rows:
        assert n == distinct, f"{day}: {n} rows but {distinct} distinct ids (an event counted twice)"
    return {d: int(n) for d, n, _ in rows}


def system_events(data: Path, action: str) -> list[dict[str, Any]]:
    from auditlake.collector.lake.query import connect
    from auditlake.collector.storage.datadir import DataDir

    con = connect(DataDir(data))
    try:
        cur = con.execute(
            "SELECT * FROM events WHERE tenant_id = '_auditlake' AND action = ? ORDER BY resource_id", [action])
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
    finally:
        con.close()


def assert_verify_clean(data: Path) -> Any:
    from auditlake.collector.integrity.verify import verify_lake

    report = verify_lake(data)
    assert report.ok, report.to_text()
    return report


def hot_dates(data: Path) -> set[str]:
    return {p.name[5:] for p in (data / "lake" / "events").glob("date=*") if any(p.glob("*.parquet"))}


def run_retention(data: Path, *args: str, env: dict[str, str] | None = None,
                  check: bool = True) -> subprocess.CompletedProcess[str]:
    return run_cli("retention", "run", *args, data=data, env=env, check=check)


@pytest.fixture(scope="session")
def history_template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    """A data dir with 140 days of history (3 events a day), built once."""
    tmp = tmp_path_factory.mktemp("history")
    data = tmp / "data"
    expected = import_history(data, 140, tmp)
    return data, expected


@pytest.fixture()
def history(history_template: tuple[Path, dict[str, int]], tmp_path: Path) -> tuple[Path, dict[str, int]]:
    """A fresh copy of the history data dir for one test."""
    src, expected = history_template
    data = tmp_path / "data"
    shutil.copytree(src, data)
    return data, dict(expected)


@pytest.fixture(scope="session")
def small_history_template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    """A data dir with 45 days of history (3 events a day), built once."""
    tmp = tmp_path_factory.mktemp("small-history")
    data = tmp / "data"
    expected = import_history(data, 45, tmp)
    return data, expected


@pytest.fixture()
def small_history(small_history_template: tuple[Path, dict[str, int]], tmp_path: Path) -> tuple[Path, dict[str, int]]:
    """A fresh copy of the 45-day history data dir for one test."""
    src, expected = small_history_template
    data = tmp_path / "data"
    shutil.copytree(src, data)
    return data, dict(expected)


