"""Query: DuckDB over the lake, through one view ``events`` (hot and, once
retention moves data, cold) with Hive partitioning so ``date`` prunes files.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import duckdb

from auditlake.collector.lake.cold import prepare_connection
from auditlake.collector.lake.files import EVENTS
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
#: received, then the lowest writer id and seq.  ``date`` leads the partition
#: so that DuckDB pushes date filters below the window.
ONE_COPY = ("QUALIFY row_number() OVER (PARTITION BY date, tenant_id, id "
            "ORDER BY received_at, writer_id, seq) = 1")


def create_events_view(con: duckdb.DuckDBPyConnection, view: str, *, one_copy: bool = False) -> None:
    """The view ``events`` over the relation ``view``, with every column of
    EVENT_SCHEMA: a lake whose files were all sealed before a column existed
    (``ingest_key_id``) reads it as NULL instead of failing every query that
    names it.  ``one_copy`` (a lake with several writers): each (tenant, event
    id) once, as :data:`ONE_COPY` picks it; docs/durability.md says why."""
    have = {row[0] for row in con.execute(f"DESCRIBE {view}").fetchall()}
    missing = [f", CAST(NULL AS {_sql_type(f)}) AS {f.name}" for f in EVENT_SCHEMA if f.name not in have]
    if missing:
        view = f"SELECT *{''.join(missing)} FROM ({view})"
    if one_copy:
        view = f"SELECT * FROM ({view}) {ONE_COPY}"
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
    """Globs of the hot lake that match at least one file (DuckDB refuses
    a glob matching nothing).  A lake in object storage is read through
    fsspec: call :func:`register_lake` on the connection."""
    hot = hot_tier(data)
    if hot.is_local:
        root = Path(hot.path(EVENTS))
        if root.exists() and next(root.glob("date=*/*.parquet"), None) is not None:
            return [str(root / "date=*" / "*.parquet")]
        return []
    # One listing of the day folders, not of every file (an object store has
    # no empty folders: a day folder holds objects).
    if any(f.startswith("date=") for f in hot.folders(EVENTS)):
        return [f"{hot.uri}/{EVENTS}/date=*/*.parquet"]
    return []


def register_lake(con: duckdb.DuckDBPyConnection, data: DataDir) -> None:
    """Let ``con`` (and its cursors) read a lake in object storage: DuckDB
    reads ``s3://`` paths through the store's fsspec filesystem (DuckDB's own
    httpfs extension is downloaded at first use, which a closed network
    cannot do)."""
    fs = hot_tier(data).fsspec()
    if fs is not None and not con.filesystem_is_registered(_protocol(fs)):
        con.register_filesystem(fs)


def _protocol(fs: Any) -> str:
    protocol = fs.protocol
    return str(protocol[0] if isinstance(protocol, tuple | list) else protocol)


def connect(data: DataDir, *, extra_globs: Iterable[str] = (), threads: int | None = None,
            toml: dict[str, Any] | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the view ``events`` over the lake (hot, and
    the cold tier when retention moved files there).  UTC session time zone,
    so timestamps print as stored.  ``toml``: the configuration (default
    DIR/auditlake.toml), for the cold tier's location."""
    con = duckdb.connect(config={"threads": threads} if threads else {})
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET parquet_metadata_cache = true")  # the view is bound twice (create_events_view)
    register_lake(con, data)
    globs = lake_globs(data) + list(extra_globs)
    view = events_view_sql(globs)
    cold = prepare_connection(con, data, toml)  # the cold tier, when retention moved files there
    if cold:
        view = f"{view} UNION ALL BY NAME {cold}"
    create_events_view(con, view, one_copy=several_writers(data))
    return con


def _json_default(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return str(value)


def format_result(columns: list[str], rows: list[tuple[Any, ...]], fmt: str) -> str:
    """Rows as ``table`` (aligned text), ``csv`` (RFC 4180) or ``json`` (lines)."""
    if fmt == "json":
        return "".join(
            json.dumps(dict(zip(columns, r, strict=True)), default=_json_default, ensure_ascii=False)
            + "\n"
            for r in rows
        )
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
        raise ValueError(f"unknown format {fmt!r} (table, csv or json)")
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
