"""Query benchmark: the admin search/API and CSV export against raw DuckDB
SQL on the same files.

A lake of 10 million events over 365 days, 50 tenants, 5,000 users
(quick: 1 million) is generated straight into the lake layout: one
well-compacted file per day, rows sorted by (tenant_id, created_at), the
collector's Parquet options.  It is cached under bench/results/ between runs.
The bench lake carries random ``chain_hash`` values, not a real chain: these
figures are about reading, and verification has its own benchmark.

Rows: one results page (tenant + action + 30 days, newest 50) through the
JSON API (HTTP, auth, query, JSON) and through the search layer, versus the
same SQL in DuckDB; one user's whole year; CSV export rows/s versus DuckDB
``COPY ... TO (FORMAT csv)``.  Medians of several runs.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

TENANTS = 50
USERS = 5000
DAYS = 365
ACTIONS = ["read", "read", "read", "update", "update", "create", "delete", "login", "logout",
           "login_failed", "export", "permission_grant"]
RESOURCES = ["document", "user", "payment", "invoice", "project", "report"]
END_DAY = dt.date(2026, 1, 1)


def lake_dir(quick: bool) -> Path:
    """Where the generated lake is cached: one per event schema (a lake of
    files without a column added since is what an upgraded collector reads,
    not what these figures measure)."""
    from auditlake.collector.schema import EVENT_SCHEMA  # noqa: PLC0415

    n = "1m" if quick else "10m"
    columns = hashlib.sha256(",".join(EVENT_SCHEMA.names).encode()).hexdigest()[:8]
    return ROOT / "bench" / "results" / f"query-lake-{n}-{columns}"


def _uuid7s(ms: np.ndarray, rng: np.random.Generator) -> list[str]:
    rand_hi = rng.integers(0, 1 << 12, size=len(ms), dtype=np.int64)
    rand_lo = rng.integers(0, 1 << 62, size=len(ms), dtype=np.int64)
    out = []
    for m, hi, lo in zip(ms.tolist(), rand_hi.tolist(), rand_lo.tolist(), strict=True):
        value = (m << 80) | (0x7 << 76) | (hi << 64) | (0x2 << 62) | lo
        h = f"{value:032x}"
        out.append(f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}")
    return out


def generate(root: Path, total: int, seed: int = 7) -> None:
    """Write ``total`` events over DAYS days under ``root/lake/events``."""
    from auditlake.collector.lake.files import PARQUET_OPTIONS  # noqa: PLC0415
    from auditlake.collector.schema import EVENT_SCHEMA  # noqa: PLC0415

    rng = np.random.default_rng(seed)
    per_day = total // DAYS
    events = root / "lake" / "events"
    seq = 0
    tenants = np.array([f"tenant-{i:02d}" for i in range(TENANTS)], dtype=object)
    users = np.array([f"user-{i:04d}@example.com" for i in range(USERS)], dtype=object)
    actions = np.array(ACTIONS, dtype=object)
    resources = np.array(RESOURCES, dtype=object)
    outcomes = np.array(["success"] * 17 + ["failure", "failure", "denied"], dtype=object)
    for d in range(DAYS):
        day = END_DAY - dt.timedelta(days=DAYS - d)
        n = per_day + (total - per_day * DAYS if d == DAYS - 1 else 0)
        start_us = int(dt.datetime.combine(day, dt.time(), dt.UTC).timestamp() * 1_000_000)
        created = np.sort(rng.integers(start_us, start_us + 86_400_000_000, size=n, dtype=np.int64))
        uidx = rng.integers(0, USERS, size=n)
        tidx = uidx % TENANTS  # a user belongs to one tenant
        act = actions[rng.integers(0, len(ACTIONS), size=n)]
        res = resources[rng.integers(0, len(RESOURCES), size=n)]
        rid = rng.integers(0, 100_000, size=n)
        changes = np.where(
            act == "update",
            np.char.add(np.char.add('{"status": {"before": "draft", "after": "v', rid.astype(str)), '"}}'),
            "{}",
        ).astype(object)
        hashes = os.urandom(32 * n).hex()
        cols = {
            "id": _uuid7s(created // 1000, rng),
            "tenant_id": tenants[tidx],
            "user_id": users[uidx],
            "action": act,
            "resource_type": res,
            "resource_id": np.char.add("r-", rid.astype(str)).astype(object),
            "changes": changes,
            "ip_address": np.char.add("10.0.", (uidx % 250).astype(str)).astype(object),
            "user_agent": np.full(n, "Mozilla/5.0 (X11; Linux x86_64)", dtype=object),
            "created_at": pa.array(created, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
            "outcome": outcomes[rng.integers(0, len(outcomes), size=n)],
            "reason": np.full(n, "", dtype=object),
            "service": np.full(n, "billing-api", dtype=object),
            "trace_id": [os.urandom(16).hex() for _ in range(n)],
            "span_id": [os.urandom(8).hex() for _ in range(n)],
            "request_id": np.full(n, "", dtype=object),
            "metadata": np.full(n, "{}", dtype=object),
            "received_at": pa.array(created + 50_000, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
            "writer_id": np.full(n, "wbench0000000", dtype=object),
            "ingest_key_id": np.full(n, "0bench0key00", dtype=object),
            "seq": pa.array(np.arange(seq + 1, seq + n + 1), pa.int64()),
            "imported": pa.array(np.zeros(n, dtype=bool)),
            "clock_skew": pa.array(np.zeros(n, dtype=bool)),
            "chain_hash": [hashes[i * 64:(i + 1) * 64] for i in range(n)],
        }
        seq += n
        table = pa.table({k: (v if isinstance(v, pa.Array) else pa.array(list(v), pa.string()))
                          for k, v in cols.items()}).cast(EVENT_SCHEMA)
        table = table.sort_by([("tenant_id", "ascending"), ("created_at", "ascending")])
        folder = events / f"date={day.isoformat()}"
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, folder / "part-wbench0000000-0000000001.parquet", **PARQUET_OPTIONS)  # type: ignore[arg-type]


def ensure_lake(quick: bool) -> Path:
    """The cached bench data dir, generated on first use."""
    root = lake_dir(quick)
    done = root / "complete"
    if not done.exists():
        import shutil  # noqa: PLC0415

        shutil.rmtree(root, ignore_errors=True)
        t0 = time.perf_counter()
        generate(root, 1_000_000 if quick else 10_000_000)
        done.write_text(f"generated in {time.perf_counter() - t0:.1f} s\n")
    return root


def _paired(ours: Callable[[], object], raw: Callable[[], object], runs: int) -> tuple[float, float]:
    """Medians of ``ours`` and ``raw``, run alternately so that load from
    other processes on this shared machine hits both alike."""
    ours()  # warm the page cache and DuckDB's metadata cache
    raw()
    a: list[float] = []
    b: list[float] = []
    for i in range(runs):
        for fn, out in ((ours, a), (raw, b)) if i % 2 == 0 else ((raw, b), (ours, a)):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return statistics.median(a), statistics.median(b)


def bench_rows(quick: bool = False) -> list[tuple[str, str, str, str]]:
    """Rows (metric, auditlake, raw DuckDB, ratio) measured side by side."""
    import duckdb  # noqa: PLC0415
    import httpx  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: PLC0415

    from auditlake.collector.admin.export import export_to_file  # noqa: PLC0415
    from auditlake.collector.admin.search import Filter, LakeReader  # noqa: PLC0415
    from auditlake.collector.admin.users import UserStore  # noqa: PLC0415
    from auditlake.collector.integrity.signing import SigningKey  # noqa: PLC0415
    from auditlake.collector.storage.datadir import DataDir  # noqa: PLC0415

    root = ensure_lake(quick)
    data = DataDir(root)
    files = str(data.events / "date=*" / "*.parquet")
    raw = duckdb.connect()
    raw.execute("SET TimeZone = 'UTC'")
    raw.execute(f"CREATE VIEW events AS SELECT * FROM read_parquet('{files}', hive_partitioning = true, "
                "hive_types = {'date': DATE})")
    runs = 7 if quick else 11
    user_runs = 5  # a year of one user: seconds per run on a busy machine
    rows: list[tuple[str, str, str, str]] = []

    # -- one results page: tenant + action + 30 days, newest 50 ----------------
    end = dt.datetime.combine(END_DAY, dt.time(), dt.UTC)
    start = end - dt.timedelta(days=30)
    raw_sql = (
        "SELECT id, created_at, tenant_id, user_id, action, resource_type, resource_id, outcome, "
        "ip_address, service FROM events WHERE tenant_id = 'tenant-07' AND action = 'update' "
        f"AND date >= DATE '{start.date()}' AND created_at >= TIMESTAMPTZ '{start.isoformat()}' "
        f"AND created_at < TIMESTAMPTZ '{end.isoformat()}' ORDER BY created_at DESC, id DESC LIMIT 50"
    )
    def raw_page() -> None:
        assert len(raw.execute(raw_sql).fetchall()) == 50

    reader = LakeReader(data)
    f = Filter(tenants=("tenant-07",), actions=("update",), start=start, end=end)
    t_search_page, t_raw_page = _paired(lambda: reader.page(f, None, limit=50), raw_page, runs)

    # The JSON API over HTTP, through a real AdminServer on a free port.
    from auditlake.collector.admin.server import AdminServer  # noqa: PLC0415

    with tempfile.TemporaryDirectory() as tmp:
        keys = Path(tmp)
        store = UserStore(keys)
        store.add("bench", "admin", (), "bench-password-123")
        token = store.create_token("bench")
        server = AdminServer.for_reading(data, listen="127.0.0.1:0", users_dir=keys)
        server.start()
        try:
            client = httpx.Client(base_url=f"http://{server.address}",
                                  headers={"Authorization": f"Bearer {token}"}, timeout=60)
            params = {"tenant": "tenant-07", "action": "update", "from": start.isoformat(),
                      "to": end.isoformat(), "limit": "50"}

            def api_page() -> None:
                r = client.get("/api/v1/events", params=params)
                assert r.status_code == 200, r.text
                assert len(r.json()["events"]) == 50

            t_api_page, t_raw_page2 = _paired(api_page, raw_page, runs)

            # -- one user's whole year ------------------------------------
            user = "user-0407@example.com"
            raw_user = ("SELECT id, created_at, tenant_id, user_id, action, resource_type, resource_id, "
                        f"outcome, ip_address, service FROM events WHERE user_id = '{user}' "
                        "ORDER BY created_at DESC, id DESC")
            n_user = len(raw.execute(raw_user).fetchall())

            def api_user() -> None:
                got, cursor = 0, None
                while True:
                    p = {"user": user, "limit": "1000", **({"cursor": cursor} if cursor else {})}
                    r = client.get("/api/v1/events", params=p)
                    body = r.json()
                    got += len(body["events"])
                    cursor = body.get("next_cursor")
                    if not cursor:
                        break
                assert got == n_user, (got, n_user)

            t_api_user, t_raw_user = _paired(api_user, lambda: raw.execute(raw_user).fetchall(), user_runs)
            t_search_user, t_raw_user2 = _paired(
                lambda: reader.page(Filter(user=user), None, limit=100_000), lambda: raw.execute(raw_user).fetchall(),
                user_runs)
            client.close()
        finally:
            server.stop()

        # -- CSV export: 30 days of every tenant ------------------------------
        ex_start = end - dt.timedelta(days=30 if not quick else 90)
        n_export = raw.execute(f"SELECT count(*) FROM events WHERE date >= DATE '{ex_start.date()}'").fetchone()[0]
        out = Path(tmp) / "raw.csv"
        ours = Path(tmp) / "ours.csv"
        ef = Filter(start=ex_start)
        key = SigningKey(Ed25519PrivateKey.generate())
        t_export, t_copy = _paired(
            lambda: export_to_file(data, ef, None, "csv", ours, signing_key=key),
            lambda: raw.execute(
                f"COPY (SELECT * EXCLUDE (date) FROM events WHERE date >= DATE '{ex_start.date()}' "
                f"AND created_at >= TIMESTAMPTZ '{ex_start.isoformat()}') TO '{out}' (FORMAT csv, HEADER)"),
            3)
        reader.close()
    raw.close()

    def ms(t: float) -> str:
        return f"{t * 1000:.0f} ms"

    rows.append(("query: results page (tenant+action+30 d, newest 50), API over HTTP",
                 ms(t_api_page), ms(t_raw_page2), f"{t_api_page / t_raw_page2:.2f}x (goal <= 1.5x)"))
    rows.append(("query: results page, search layer in-process",
                 ms(t_search_page), ms(t_raw_page), f"{t_search_page / t_raw_page:.2f}x"))
    rows.append((f"query: one user's year ({n_user} events) in one call, search layer",
                 ms(t_search_user), ms(t_raw_user2), f"{t_search_user / t_raw_user2:.2f}x (goal <= 1.5x)"))
    rows.append(("query: one user's year through the API, every page of 1000 (several queries)",
                 ms(t_api_user), ms(t_raw_user), f"{t_api_user / t_raw_user:.2f}x"))
    r_ours, r_raw = n_export / t_export, n_export / t_copy
    load = os.getloadavg()[0]
    rows.append((f"export: CSV rows/s ({n_export:,} rows, neutralised, sha256, manifest)",
                 f"{r_ours:,.0f}", f"{r_raw:,.0f}", f"{r_ours / r_raw:.2f}x (goal >= 0.8x)"))
    rows.append(("query bench: 1-minute load average at the end (2 cores, shared)", f"{load:.1f}", "", ""))
    return rows


if __name__ == "__main__":
    from common import table_text  # noqa: PLC0415

    quick = "--quick" in sys.argv
    print(table_text(bench_rows(quick=quick)))
