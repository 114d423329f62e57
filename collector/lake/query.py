"""Query: DuckDB over the lake, through one view ``events`` (hot and, once
retention moves data, cold) with Hive partitioning so ``date`` prunes files.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.dataset as pads

from auditlake.collector.lake.cold import prepare_connection
from auditlake.collector.lake.erasure import reader_for
from auditlake.collector.lake.files import DATED_SCHEMA, EVENTS, day_dataset, partition_files
from auditlake.collector.schema import EVENT_SCHEMA
from auditlake.collector.storage.datadir import DataDir
from auditlake.collector.storage.tiers import hot_tier


def _sql_type(f: Any) -> str:
    return {"string": "VARCHAR", "int64": "BIGINT", "bool": "BOOLEAN"}.get(str(f.type), "TIMESTAMPTZ")


def _empty_select() -> str:
    cols = [f"CAST(NULL AS {_sql_type(f)}) AS {f.name}" for f in EVENT_SCHEMA]
    cols.append("CAST(NULL AS DATE) AS date")
    return "SELECT " + ", ".join(cols) + " WHERE false"


#: The copy of an event the view keeps when several writers stored it (an
#: SDK that lost an answer retried its batch at another collector): the first
#: received, then the lowest writer id and seq.  Copies are the same event
#: (same tenant and id) with the same content; the partition names the
#: content columns queries filter on, because DuckDB pushes a filter below
#: the window only on partition columns: a query for one user, tenant, action
#: or time range reads only its rows (docs/benchmarks.md measures the rule).
ONE_COPY = ("QUALIFY row_number() OVER (PARTITION BY date, tenant_id, created_at, user_id, action, "
            "resource_type, resource_id, outcome, service, ip_address, request_id, id "
            "ORDER BY received_at, writer_id, seq) = 1")

#: The DuckDB relation under which a connection sees a lake in object
#: storage (a pyarrow dataset over one listing of its files).
HOT_RELATION = "auditlake_hot_events"
#: How old the listing behind that relation may be when a cursor is handed out.
HOT_LISTING_MAX_AGE_S = 1.0


def create_events_view(con: duckdb.DuckDBPyConnection, view: str, *, one_copy: bool = False,
                       data: DataDir | None = None, toml: dict[str, Any] | None = None) -> None:
    """The view ``events`` over the relation ``view``, with every column of
    EVENT_SCHEMA: a lake whose files were all sealed before a column existed
    (``ingest_key_id``) reads it as NULL instead of failing every query that
    names it.  ``one_copy`` (a lake with several writers): each (tenant, event
    id) once, as :data:`ONE_COPY` picks it; docs/durability.md says why.
    ``data`` (and its configuration ``toml``, default DIR/auditlake.toml):
    when ``[erasure]`` is enabled there, the encrypted columns read as
    plaintext, or ``[erased]`` (lake/erasure.py); else the view is unchanged."""
    have = {row[0] for row in con.execute(f"DESCRIBE {view}").fetchall()}
    missing = [f", CAST(NULL AS {_sql_type(f)}) AS {f.name}" for f in EVENT_SCHEMA if f.name not in have]
    if missing:
        view = f"SELECT *{''.join(missing)} FROM ({view})"
    if one_copy:
        # On the stored (encrypted) values: copies of an event are equal
        # there too, and the rule's filters still reach the files.
        view = f"SELECT * FROM ({view}) {ONE_COPY}"
    decryptor = reader_for(data, toml) if data is not None else None
    if decryptor is not None:
        decryptor.register(con)
        view = decryptor.view_sql(view, [f.name for f in EVENT_SCHEMA])
    con.execute(f"CREATE OR REPLACE VIEW events AS {view}")


def several_writers(data: DataDir) -> bool:
    """True when the view must keep one copy of each event: a shared lake
    (``--lake``: a fleet's collectors each write), or a local lake holding
    more than one writer's checkpoints (one folder each)."""
    if data.shared_lake:
        return True
    root = data.checkpoints
    return root.is_dir() and sum(1 for p in root.iterdir() if p.is_dir()) > 1


def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def events_view_sql(globs: Sequence[str]) -> str:
    """SELECT over every Parquet file matching ``globs`` (hot and cold tiers)."""
    if not globs:
        return _empty_select()
    files = "[" + ", ".join(_sql_str(g) for g in globs) + "]"
    return (
        f"SELECT * FROM read_parquet({files}, hive_partitioning = true, "
        "hive_types = {'date': DATE}, union_by_name = true)"
    )


def lake_globs(data: DataDir) -> list[str]:
    """Globs of a local hot lake that match at least one file (DuckDB
    refuses a glob matching nothing); [] for a lake in object storage, which
    a connection reads through :func:`register_hot` instead."""
    hot = hot_tier(data)
    if hot.is_local:
        root = Path(hot.path(EVENTS))
        if root.exists() and next(root.glob("date=*/*.parquet"), None) is not None:
            return [str(root / "date=*" / "*.parquet")]
    return []


def remote_lake(data: DataDir) -> bool:
    """True when the hot lake is in object storage (read through :data:`HOT_RELATION`)."""
    return not hot_tier(data).is_local


def hot_dataset(data: DataDir) -> pads.Dataset | None:
    """The hot lake's files as one pyarrow dataset, from one listing, with a
    ``date`` partition expression per file and the full event schema (a file
    sealed before a column existed reads it as NULL): DuckDB reads it through
    pyarrow's own S3 client, pushing column and ``date`` filters down.
    (Through fsspec, DuckDB lists every day folder and re-reads every footer
    on every query: hundreds of requests.)  None when the lake is empty."""
    hot = hot_tier(data)
    keys = partition_files(hot, ".parquet")
    return day_dataset(hot, keys) if keys else None


_HOT: dict[str, tuple[float, pads.Dataset | None]] = {}
_HOT_LOCK = threading.Lock()


def register_hot(con: Any, data: DataDir, *, max_age_s: float = HOT_LISTING_MAX_AGE_S) -> None:
    """Register :data:`HOT_RELATION` on ``con`` — a connection or a cursor
    (cursors do not see what their connection registered) — over a listing
    at most ``max_age_s`` old: a long-lived reader that registers it on each
    cursor sees files sealed a second ago."""
    key = f"{data.lake_uri}|{sorted(data.lake_options)}"
    now = time.monotonic()
    with _HOT_LOCK:
        made, dataset = _HOT.get(key, (-1e9, None))
        if now - made > max_age_s:
            dataset = hot_dataset(data)
            if len(_HOT) > 16:
                _HOT.clear()
            _HOT[key] = (now, dataset)
    con.register(HOT_RELATION, dataset if dataset is not None else DATED_SCHEMA.empty_table())


def connect(data: DataDir, *, extra_globs: Iterable[str] = (), threads: int | None = None,
            toml: dict[str, Any] | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the view ``events`` over the lake (hot, and
    the cold tier when retention moved files there).  UTC session time zone,
    so timestamps print as stored.  ``toml``: the configuration (default
    DIR/auditlake.toml), for the cold tier's location."""
    con = duckdb.connect(config={"threads": threads} if threads else {})
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET parquet_metadata_cache = true")  # the view is bound twice (create_events_view)
    globs = lake_globs(data) + list(extra_globs)
    view = events_view_sql(globs)
    if remote_lake(data):  # a snapshot of the lake's files as of now
        register_hot(con, data, max_age_s=0.0)
        view = f"SELECT * FROM {HOT_RELATION}" + (f" UNION ALL BY NAME {view}" if globs else "")
    cold = prepare_connection(con, data, toml)  # the cold tier, when retention moved files there
    if cold:
        view = f"{view} UNION ALL BY NAME {cold}"
    create_events_view(con, view, one_copy=several_writers(data), data=data, toml=toml)
    return con


def _json_default(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return str(value)


def format_result(columns: list[str], rows: list[tuple[Any, ...]], fmt: str) -> str:
    """Rows as ``table`` (aligned text), ``csv`` (RFC 4180), ``json`` (one
    document: an array of objects) or ``jsonl`` (JSON Lines, an object a line)."""
    if fmt in ("json", "jsonl"):
        objects = [
            json.dumps(dict(zip(columns, r, strict=True)), default=_json_default, ensure_ascii=False) for r in rows
        ]
        if fmt == "jsonl":
            return "".join(line + "\n" for line in objects)
        # One object per line inside the array: one document for json.load
        # and jq, still readable and greppable.
        return "[\n" + ",\n".join(objects) + "\n]\n" if objects else "[]\n"
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\r\n")
        w.writerow(columns)
        for r in rows:
            w.writerow(
                ["" if v is None else _json_default(v) if not isinstance(v, str | int | float) else v for v in r]
            )
        return buf.getvalue()
    if fmt != "table":
        raise ValueError(f"unknown format {fmt!r} (table, csv, json or jsonl)")
    text = [[("" if v is None else _json_default(v) if not isinstance(v, str) else v) for v in r] for r in rows]
    text = [[c if len(c) <= 60 else c[:57] + "..." for c in (str(x) for x in r)] for r in text]
    widths = [len(c) for c in columns]
    for cells in text:
        widths = [max(w, len(c)) for w, c in zip(widths, cells, strict=True)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))
    rule = "  ".join("-" * w for w in widths)
    body = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in text]
    footer = f"({len(rows)} row{'s' if len(rows) != 1 else ''})"
    return "\n".join([line, rule, *body, footer]) + "\n"


def run_query(data: DataDir, sql: str, fmt: str = "table", extra_globs: Iterable[str] = (),
              toml: dict[str, Any] | None = None) -> str:
    """Run ``sql`` against the lake and format the result (``toml``: the
    configuration naming the cold tier; default DIR/auditlake.toml)."""
    con = connect(data, extra_globs=extra_globs, toml=toml)
    try:
        cur = con.execute(sql)
        columns = [d[0] for d in cur.description] if cur.description else []
        rows = cur.fetchall() if columns else []
    finally:
        con.close()
    return format_result(columns, rows, fmt)
