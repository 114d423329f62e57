"""Search: the one query layer behind the admin UI, the JSON API and export.
A Filter (parsed and validated from URL parameters) plus the reader's tenant
scope become one WHERE clause of bound DuckDB parameters.

Every value a user typed reaches DuckDB as a bound parameter, never as SQL
text.  The reader's tenant scope is applied here, in the only place that
builds SQL, so no page, chart, count or export can forget it.  A time range
always becomes a ``date`` filter too: Hive partition pruning makes a
30-day page about 2.5x faster than filtering ``created_at`` alone.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import duckdb
import pyarrow.parquet as pq

from auditlake.collector.errors import CollectorError
from auditlake.collector.lake.cold import cold_generation, prepare_connection, register_cold
from auditlake.collector.lake.files import EVENTS
from auditlake.collector.lake.query import (
    HOT_RELATION,
    create_events_view,
    events_view_sql,
    lake_globs,
    register_hot,
    remote_lake,
    several_writers,
)
from auditlake.collector.schema import COLUMNS, INGEST_KEY_COLUMN, MAX_BYTES, OUTCOMES
from auditlake.collector.storage.datadir import DataDir
from auditlake.collector.storage.tiers import hot_tier

UTC = dt.UTC

#: Columns shown in a result list (the detail view shows every column).
LIST_COLUMNS: tuple[str, ...] = (
    "id", "created_at", "tenant_id", "user_id", "action", "resource_type",
    "resource_id", "outcome", "ip_address", "service",
)

#: Named time ranges (``range=``) and how far back each reaches.
RANGES: dict[str, dt.timedelta | None] = {
    "1h": dt.timedelta(hours=1),
    "24h": dt.timedelta(hours=24),
    "7d": dt.timedelta(days=7),
    "30d": dt.timedelta(days=30),
    "90d": dt.timedelta(days=90),
    "365d": dt.timedelta(days=365),
    "all": None,
    "custom": None,
}

MAX_LIMIT = 1000
#: Most bars in the activity chart.
MAX_BUCKETS = 400
DEFAULT_LIMIT = 50
_MAX_FREE_TEXT = 256
_MAX_MULTI = 50


class QueryParameterError(ValueError, CollectorError):
    """A search parameter is malformed (HTTP 400, naming the parameter)."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(f"{parameter}: {message}")
        self.parameter = parameter
        self.message = message


class QueryTimeout(CollectorError):
    """An admin query ran past its time limit and was interrupted (HTTP 503)."""


class TenantScopeError(CollectorError):
    """The reader asked for a tenant outside their grant (HTTP 403)."""

    def __init__(self, parameter: str = "tenant") -> None:
        super().__init__("you are not allowed to read this tenant")
        self.parameter = parameter


@dataclass(frozen=True)
class Filter:
    """What to find.  Empty fields do not filter; lists match any value."""

    tenants: tuple[str, ...] = ()
    user: str = ""
    actions: tuple[str, ...] = ()
    resource_type: str = ""
    resource_id: str = ""
    outcomes: tuple[str, ...] = ()
    ip: str = ""
    text: str = ""
    start: dt.datetime | None = None  # inclusive
    end: dt.datetime | None = None  # exclusive
    range: str = ""

    def to_params(self) -> dict[str, list[str]]:
        """The filter as URL parameters (inverse of ``parse_filter``)."""
        out: dict[str, list[str]] = {}
        if self.tenants:
            out["tenant"] = list(self.tenants)
        for name, value in (("user", self.user), ("resource_type", self.resource_type),
                            ("resource_id", self.resource_id), ("ip", self.ip), ("q", self.text)):
            if value:
                out[name] = [value]
        if self.actions:
            out["action"] = list(self.actions)
        if self.outcomes:
            out["outcome"] = list(self.outcomes)
        if self.range and self.range != "custom":
            out["range"] = [self.range]
        else:
            if self.start:
                out["from"] = [iso(self.start)]
            if self.end:
                out["to"] = [iso(self.end)]
        return out

    def describe(self) -> dict[str, Any]:
        """The filter as JSON-able values (for meta-audit events and manifests)."""
        d = {k: v for k, v in asdict(self).items() if v not in ("", (), None)}
        for k in ("start", "end"):
            if k in d:
                d[k] = iso(d[k])
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def iso(t: dt.datetime) -> str:
    """ISO 8601 UTC with a Z and microseconds when present."""
    t = t.astimezone(UTC)
    spec = "microseconds" if t.microsecond else "seconds"
    return t.replace(tzinfo=None).isoformat(timespec=spec) + "Z"


def parse_time(parameter: str, value: str) -> dt.datetime:
    """An ISO 8601 date or date-time (naive means UTC)."""
    v = value.strip()
    if v.endswith(("Z", "z")):
        v = v[:-1] + "+00:00"
    try:
        if len(v) == 10:
            t = dt.datetime.combine(dt.date.fromisoformat(v), dt.time(), UTC)
        else:
            t = dt.datetime.fromisoformat(v)
        if t.tzinfo is None:
            t = t.replace(tzinfo=UTC)
        t = t.astimezone(UTC)
    except (ValueError, OverflowError):
        raise QueryParameterError(
            parameter, "expected an ISO 8601 date or date-time, e.g. 2026-01-31T12:00:00Z") from None
    if not 1970 <= t.year <= 9998:
        raise QueryParameterError(parameter, "year out of range (1970..9998)")
    return t


def _text(parameter: str, value: str, limit: int) -> str:
    if "\x00" in value:
        raise QueryParameterError(parameter, "must not contain NUL characters")
    if len(value.encode("utf-8", "surrogatepass")) > limit:
        raise QueryParameterError(parameter, f"is longer than {limit} bytes")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise QueryParameterError(parameter, "is not valid UTF-8") from None
    return value


def parse_filter(get_list: Callable[[str], Sequence[str]], *, now: dt.datetime | None = None,
                 default_range: str = "") -> Filter:
    """A Filter from URL parameters (``get_list(name)`` returns every value).
    Raises QueryParameterError naming the first bad parameter."""
    now = now or dt.datetime.now(UTC)

    def one(name: str, limit: int) -> str:
        values = [v for v in get_list(name) if v != ""]
        if len(values) > 1:
            raise QueryParameterError(name, "give at most one value")
        return _text(name, values[0].strip(), limit) if values else ""

    def many(name: str, limit: int) -> tuple[str, ...]:
        values = [v.strip() for v in get_list(name) if v.strip() != ""]
        if len(values) > _MAX_MULTI:
            raise QueryParameterError(name, f"give at most {_MAX_MULTI} values")
        return tuple(dict.fromkeys(_text(name, v, limit) for v in values))

    outcomes = many("outcome", MAX_BYTES["outcome"])
    for o in outcomes:
        if o not in OUTCOMES:
            raise QueryParameterError("outcome", f"must be one of {', '.join(sorted(OUTCOMES))}")
    range_name = one("range", 16) or default_range
    if range_name and range_name not in RANGES:
        raise QueryParameterError("range", f"must be one of {', '.join(RANGES)}")
    start_s, end_s = one("from", 64), one("to", 64)
    start = parse_time("from", start_s) if start_s else None
    end = parse_time("to", end_s) if end_s else None
    if (start or end) and range_name not in ("", "custom"):
        if one("range", 16):
            raise QueryParameterError("range", "give either range or from/to, not both")
        range_name = "custom"
    if start and end and start >= end:
        raise QueryParameterError("to", "must be later than from")
    delta = RANGES.get(range_name) if range_name else None
    if delta is not None:
        start, end = now - delta, None
    return Filter(
        tenants=many("tenant", MAX_BYTES["tenant_id"]),
        user=one("user", MAX_BYTES["user_id"]),
        actions=many("action", MAX_BYTES["action"]),
        resource_type=one("resource_type", MAX_BYTES["resource_type"]),
        resource_id=one("resource_id", MAX_BYTES["resource_id"]),
        outcomes=outcomes,
        ip=one("ip", MAX_BYTES["ip_address"]),
        text=one("q", _MAX_FREE_TEXT),
        start=start,
        end=end,
        range=range_name if range_name in RANGES and range_name != "custom" else ("custom" if start or end else ""),
    )


def parse_limit(value: str | None, default: int = DEFAULT_LIMIT) -> int:
    """``limit``: 1..MAX_LIMIT."""
    if value is None or value == "":
        return default
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= MAX_LIMIT:
        raise QueryParameterError("limit", f"must be an integer from 1 to {MAX_LIMIT}")
    return int(value)


# -- keyset cursor -------------------------------------------------------------


@dataclass(frozen=True)
class Cursor:
    """The last row of a page: the next page starts strictly after it in
    (created_at DESC, id DESC) order, so rows arriving meanwhile never shift it."""

    created_at_us: int
    id: str

    def encode(self) -> str:
        raw = json.dumps([self.created_at_us, self.id], separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            us, ident = json.loads(raw)
            if not isinstance(us, int) or isinstance(us, bool) or not isinstance(ident, str):
                raise ValueError
            if not 0 <= us < 253402214400 * 1_000_000 or len(ident) > MAX_BYTES["id"] or "\x00" in ident:
                raise ValueError
        except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
            raise QueryParameterError("cursor", "is not a cursor this server issued") from None
        return cls(us, ident)

    @property
    def created_at(self) -> dt.datetime:
        return dt.datetime(1970, 1, 1, tzinfo=UTC) + dt.timedelta(microseconds=self.created_at_us)


def _us(t: dt.datetime) -> int:
    delta = t - dt.datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


# -- SQL -----------------------------------------------------------------------


def effective_tenants(f: Filter, scope: frozenset[str] | None) -> tuple[str, ...] | None:
    """The tenants this reader reads with this filter (None: every tenant).
    Raises TenantScopeError when the filter names a tenant outside ``scope``."""
    if scope is None:
        return f.tenants or None
    if f.tenants:
        if not set(f.tenants) <= scope:
            raise TenantScopeError()
        return f.tenants
    return tuple(sorted(scope))


def where(f: Filter, scope: frozenset[str] | None, cursor: Cursor | None = None) -> tuple[str, list[Any]]:
    """``(sql, params)``: the WHERE clause (without the keyword) for ``f`` as
    read by a reader with tenant ``scope`` (None: all tenants)."""
    clauses: list[str] = []
    params: list[Any] = []
    tenants = effective_tenants(f, scope)
    if tenants is not None:
        if not tenants:
            return "false", []
        clauses.append("tenant_id IN (" + ", ".join("?" for _ in tenants) + ")")
        params.extend(tenants)
    for column, value in (("user_id", f.user), ("resource_type", f.resource_type),
                          ("resource_id", f.resource_id), ("ip_address", f.ip)):
        if value:
            clauses.append(f"{column} = ?")
            params.append(value)
    for column, values in (("action", f.actions), ("outcome", f.outcomes)):
        if values:
            clauses.append(f"{column} IN (" + ", ".join("?" for _ in values) + ")")
            params.extend(values)
    if f.text:
        # contains() takes the text literally: no LIKE wildcards to escape.
        clauses.append("(contains(lower(changes), ?) OR contains(lower(metadata), ?))")
        params.extend([f.text.lower(), f.text.lower()])
    start, end = f.start, f.end
    if cursor is not None:
        after = cursor.created_at
        end = min(end, after + dt.timedelta(microseconds=1)) if end else after + dt.timedelta(microseconds=1)
        clauses.append("(created_at < ? OR (created_at = ? AND id < ?))")
        params.extend([after, after, cursor.id])
    if start is not None:
        clauses.append("date >= ?")
        params.append(start.date())
        clauses.append("created_at >= ?")
        params.append(start)
    if end is not None:
        clauses.append("date <= ?")
        params.append((end - dt.timedelta(microseconds=1)).date())
        clauses.append("created_at < ?")
        params.append(end)
    return (" AND ".join(clauses) or "true"), params


def _row_dict(columns: Sequence[str], row: Sequence[Any]) -> dict[str, Any]:
    return dict(zip(columns, row, strict=True))


@dataclass
class Page:
    """One page of results, newest first, and the cursor of the next page."""

    rows: list[dict[str, Any]]
    next_cursor: str | None


@dataclass
class Stats:
    """Event counts per time bucket, split by one column (action or outcome)."""

    bucket: str  # "hour", "day" or "week"
    by: str
    buckets: list[dt.datetime]
    series: dict[str, list[int]] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(sum(v) for v in self.series.values())


class LakeReader:
    """Reads the lake for the admin server: one DuckDB database, a cursor per
    call (DuckDB cursors are safe to use from one thread each), refreshed now
    and then so new cold globs (and a first hot file) are picked up."""

    def __init__(self, data: DataDir, *, refresh_s: float = 30.0, threads: int | None = None,
                 memory_limit_mb: int | None = None, timeout_s: float | None = None) -> None:
        self.data = data
        self.refresh_s = refresh_s
        self.threads = threads
        #: DuckDB's memory for this reader: a heavy search spills or fails
        #: instead of taking the collector's memory.
        self.memory_limit_mb = memory_limit_mb
        #: Page, detail and chart queries running longer are interrupted.
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._con: duckdb.DuckDBPyConnection | None = None
        self._made = 0.0
        self._empty = True
        self._generation = 0
        self.union_by_name = False
        self._remote = False

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A cursor on a current connection (the caller closes it)."""
        with self._lock:
            stale = time.monotonic() - self._made > self.refresh_s
            generation = cold_generation(self.data)  # retention moved or expired files
            if self._con is None or stale or (self._empty and self._has_files()) or generation != self._generation:
                old = self._con
                self._con = self._connect()
                self._generation = generation
                self._made = time.monotonic()
                self._empty = not self._has_files()
                if old is not None:
                    old.close()
            cur = self._con.cursor()
        # Cursors do not see what was registered on the connection: the cold
        # tier of the `events` view is registered on each.
        register_cold(cur, self.data)
        if self._remote:  # a lake in a bucket: its files as listed at most a second ago
            register_hot(cur, self.data)
        return cur

    def _connect(self) -> duckdb.DuckDBPyConnection:
        # Like query.connect, but hot files are read without union_by_name:
        # it opens every file's footer on every query and when the view is
        # made (~0.5 ms a file: 200 ms over a year of day files).  Every file
        # the collector writes has EVENT_SCHEMA; a lake with mixed schemas
        # falls back to it (see _fetch_cols).
        con = duckdb.connect(config={"threads": self.threads} if self.threads else {})
        # Queries run on cursors (``cursor()``), which are sessions of their
        # own: a plain SET is session-local and would not reach them (a cursor
        # would print and bucket times in the host's time zone), so these are
        # GLOBAL (this in-memory database is this reader's alone).
        con.execute("SET GLOBAL TimeZone = 'UTC'")
        if self.memory_limit_mb:
            con.execute(f"SET memory_limit = '{int(self.memory_limit_mb)}MB'")
        con.execute("SET GLOBAL parquet_metadata_cache = true")  # footers once per connection
        # Top-N late materialization (sort on created_at/id, then fetch the
        # other columns of the winners only) applies up to this many rows;
        # DuckDB's default, 50, just misses a page of 50 plus its look-ahead row.
        con.execute(f"SET GLOBAL late_materialization_max_rows = {DEFAULT_LIMIT + 1}")
        self._remote = remote_lake(self.data)
        hot = lake_globs(self.data)
        if hot and not self.union_by_name and self._first_file_lacks_key_column():
            self.union_by_name = True
        if hot and not self.union_by_name:
            files = "[" + ", ".join("'" + g.replace("'", "''") + "'" for g in hot) + "]"
            view = (f"SELECT * FROM read_parquet({files}, hive_partitioning = true, "
                    "hive_types = {'date': DATE})")
        else:
            view = events_view_sql(hot)
        if self._remote:
            register_hot(con, self.data)
            view = f"SELECT * FROM {HOT_RELATION}"
        cold = prepare_connection(con, self.data)  # the cold tier, when files are cold
        if cold:
            view = f"{view} UNION ALL BY NAME {cold}"
        create_events_view(con, view, one_copy=several_writers(self.data), data=self.data)
        return con

    def _first_file_lacks_key_column(self) -> bool:
        """True when the first hot file DuckDB reads was sealed before
        ``ingest_key_id`` existed: without union_by_name DuckDB takes the
        first file's columns and would hide that column (no error to fall
        back on).  One footer read; a later old file is a schema mismatch."""
        tier = hot_tier(self.data)
        for day in (d for d in tier.folders(EVENTS) if d.startswith("date=")):
            files = sorted(o.key for o in tier.list(f"{EVENTS}/{day}", recursive=False)
                           if o.key.endswith(".parquet") and not o.key.rpartition("/")[2].startswith("."))
            if files:
                with tier.open_input(files[0]) as f:
                    return INGEST_KEY_COLUMN not in pq.read_schema(f).names
        return False

    def _has_files(self) -> bool:
        return bool(lake_globs(self.data))

    def close(self) -> None:
        with self._lock:
            if self._con is not None:
                self._con.close()
                self._con = None

    # -- queries ---------------------------------------------------------

    def page(self, f: Filter, scope: frozenset[str] | None, *, limit: int = DEFAULT_LIMIT,
             cursor: Cursor | None = None, columns: Sequence[str] = LIST_COLUMNS) -> Page:
        """One page, newest first (keyset on created_at DESC, id DESC)."""
        clause, params = where(f, scope, cursor)
        sql = (f"SELECT {', '.join(columns)} FROM events WHERE {clause} "
               f"ORDER BY created_at DESC, id DESC LIMIT {int(limit) + 1}")
        rows = self._fetch(sql, params)
        more = len(rows) > limit
        rows = rows[:limit]
        out = [_row_dict(columns, r) for r in rows]
        nxt = None
        if more and out:
            last = out[-1]
            nxt = Cursor(_us(last["created_at"]), last["id"]).encode()
        return Page(out, nxt)

    def event(self, event_id: str, scope: frozenset[str] | None) -> dict[str, Any] | None:
        """Every column of one event, or None when absent or outside ``scope``
        (the two are indistinguishable on purpose)."""
        tenants = None if scope is None else tuple(sorted(scope))
        if tenants == ():
            return None
        base = "SELECT *, date FROM events WHERE id = ?"
        params: list[Any] = [event_id]
        if tenants is not None:
            base += " AND tenant_id IN (" + ", ".join("?" for _ in tenants) + ")"
            params.extend(tenants)
        day = uuid7_date(event_id)
        if day is not None:
            # A UUIDv7 carries its creation time: look in the days around it first.
            rows, cols = self._fetch_cols(base + " AND date BETWEEN ? AND ? LIMIT 1",
                                          [*params, day - dt.timedelta(days=1), day + dt.timedelta(days=1)])
            if rows:
                return _row_dict(cols, rows[0])
        rows, cols = self._fetch_cols(base + " LIMIT 1", params)
        return _row_dict(cols, rows[0]) if rows else None

    def stats(self, f: Filter, scope: frozenset[str] | None, *, by: str = "action",
              top: int = 7, now: dt.datetime | None = None) -> Stats:
        """Counts per hour (ranges up to two days), day (up to 400 days) or
        week, split by ``by`` (``action`` or ``outcome``); beyond ``top``
        series, "other".  The counts always add up to the matching events."""
        if by not in ("action", "outcome"):
            raise QueryParameterError("by", "must be action or outcome")
        clause, params = where(f, scope)
        now = now or dt.datetime.now(UTC)
        start = f.start
        end = f.end or now
        if start is None or end - start > dt.timedelta(days=MAX_BUCKETS):
            # Begin where the data begins, not in 1970.
            first = self._fetch(f"SELECT min(date) FROM events WHERE {clause}", params)
            first_day = first[0][0] if first else None
            if first_day is None:
                return Stats("day", by, [])
            data_start = dt.datetime.combine(first_day, dt.time(), UTC)
            start = max(start, data_start) if start else data_start
        span = end - start
        if span <= dt.timedelta(days=2):
            bucket, step = "hour", dt.timedelta(hours=1)
            first_bucket = start.replace(minute=0, second=0, microsecond=0)
        elif span <= dt.timedelta(days=MAX_BUCKETS):
            bucket, step = "day", dt.timedelta(days=1)
            first_bucket = start.replace(hour=0, minute=0, second=0, microsecond=0)
        else:
            bucket, step = "week", dt.timedelta(days=7)  # date_trunc('week'): Mondays
            day0 = start.replace(hour=0, minute=0, second=0, microsecond=0)
            first_bucket = day0 - dt.timedelta(days=day0.weekday())
        count = max(1, int((end - first_bucket) / step) + 1)
        if count > MAX_BUCKETS:  # keep the newest buckets; older rows fold into the first
            first_bucket += (count - MAX_BUCKETS) * step
            count = MAX_BUCKETS
        rows = self._fetch(
            f"SELECT date_trunc('{bucket}', created_at) AS b, {by} AS k, count(*) AS n "
            f"FROM events WHERE {clause} GROUP BY ALL",
            params,
        )
        buckets = [first_bucket + i * step for i in range(count)]
        totals: dict[str, int] = {}
        for _, k, n in rows:
            totals[k] = totals.get(k, 0) + n
        keep = [k for k, _ in sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))[:top]]
        series: dict[str, list[int]] = {k: [0] * count for k in keep}
        for b, k, n in rows:
            when = b.astimezone(UTC) if b.tzinfo else b.replace(tzinfo=UTC)
            i = min(max(int((when - first_bucket) / step), 0), count - 1)  # every row counts
            name = k if k in series else "other"
            series.setdefault(name, [0] * count)[i] += n
        return Stats(bucket, by, buckets, series)

    def distinct(self, column: str, scope: frozenset[str] | None, limit: int = 200) -> list[str]:
        """Distinct values of ``column`` (action, tenant_id, ...) within scope."""
        if column not in COLUMNS:
            raise ValueError(column)
        clause, params = where(Filter(), scope)
        rows = self._fetch(f"SELECT DISTINCT {column} FROM events WHERE {clause} ORDER BY 1 LIMIT {int(limit)}", params)
        return [r[0] for r in rows]

    def _fetch(self, sql: str, params: Iterable[Any]) -> list[tuple[Any, ...]]:
        return self._fetch_cols(sql, params)[0]

    def _fetch_cols(self, sql: str, params: Iterable[Any]) -> tuple[list[tuple[Any, ...]], list[str]]:
        cur = self.cursor()
        # DuckDB has no statement timeout: a timer interrupts the cursor.
        timer = threading.Timer(self.timeout_s, cur.interrupt) if self.timeout_s else None
        if timer is not None:
            timer.daemon = True
            timer.start()
        try:
            res = cur.execute(sql, list(params))
            cols = [d[0] for d in res.description] if res.description else []
            return res.fetchall(), cols
        except duckdb.InterruptException as exc:
            raise QueryTimeout(f"the query ran longer than {self.timeout_s:g} s and was stopped: "
                               "narrow the time range or the filter") from exc
        except (duckdb.BinderException, duckdb.InvalidInputException) as exc:
            if self.union_by_name or "schema" not in str(exc).lower():
                raise
            self.fall_back_to_union_by_name()
            return self._fetch_cols(sql, params)
        finally:
            if timer is not None:
                timer.cancel()
            cur.close()

    def fall_back_to_union_by_name(self) -> None:
        """Read files by column name (slower): the lake holds files of more
        than one schema."""
        with self._lock:
            self.union_by_name = True
            self._made = 0.0


def uuid7_date(event_id: str) -> dt.date | None:
    """The UTC date a UUIDv7 was made, or None for other ids."""
    try:
        u = uuid.UUID(event_id)
    except ValueError:
        return None
    if u.version != 7:
        return None
    ms = u.int >> 80
    try:
        return (dt.datetime(1970, 1, 1, tzinfo=UTC) + dt.timedelta(milliseconds=ms)).date()
    except OverflowError:
        return None


def uuid7() -> str:
    """A new UUIDv7 (time-ordered), as the SDK makes them."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(uuid.uuid4().bytes, "big")
    value = (ms << 80) | (0x7 << 76) | (rand & ((1 << 76) - 1))
    value = (value & ~(0xC << 60)) | (0x8 << 60)  # RFC 9562 variant
    return str(uuid.UUID(int=value))


def json_value(value: Any) -> Any:
    """A column value as JSON (timestamps as ISO 8601 UTC, dates as ISO)."""
    if isinstance(value, dt.datetime):
        return iso(value if value.tzinfo else value.replace(tzinfo=UTC))
    if isinstance(value, dt.date):
        return value.isoformat()
    return value
