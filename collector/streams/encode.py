"""Encoding stored events for a destination, vectorised: DuckDB turns an
Arrow table of stored rows into one string per event in SQL (one
``concat`` per JSON object, values escaped by ``to_json`` in C++), and the batch body is the
Arrow string column's value buffer as it stands — no Python object per
event, no Python loop over rows.

Formats (docs/streams.md shows each):

- ``json``: a JSON array of events, the stored columns with ``changes`` and
  ``metadata`` as nested objects and timestamps as RFC 3339 UTC strings;
- ``ocsf``: a JSON array of OCSF 1.3 events, the mapping of the export's
  ``ocsf`` format (Authentication 3002 or API Activity 6003);
- ``hec``: Splunk HTTP Event Collector events, one JSON object per event,
  concatenated (``{"time": ..., "host": ..., "source": "auditlake",
  "sourcetype": ..., "event": {...}}``);
- ``syslog``: RFC 5424 messages, octet-counted (RFC 6587 3.4.1: ``LEN SP
  MSG``), facility 13 (log audit), the event as JSON in MSG.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import duckdb
import pyarrow as pa

FORMATS = ("json", "ocsf", "hec", "syslog")

#: RFC 5424 structured-data id: the documentation enterprise number (RFC
#: 5612); receivers match the SD-ID ``auditlake@32473``.
SD_ID = "auditlake@32473"
#: Syslog facility 13, "log audit": PRI = 13 * 8 + severity.
_FACILITY = 13
#: Severity by outcome: informational for success, notice for a failure, warning when denied.
_SEVERITY = {"success": 6, "failure": 5, "denied": 4}

#: RFC 3339 with microseconds, UTC (the session time zone is UTC), as a JSON string.
_TS = "concat('\"', strftime({col}, '%Y-%m-%dT%H:%M:%S.%fZ'), '\"')"
_MS = "(epoch_us({col}) // 1000)::VARCHAR"

# Each event's JSON is built by string concatenation in SQL: one ``concat``
# per object (a single allocation per row, where ``||`` chains and
# ``to_json(struct_pack(...))`` cost two to three times as much), each string
# value escaped by ``to_json``.  A field is (key, SQL giving its JSON text,
# SQL condition for writing it or None).
Field = tuple[str, str, "str | None"]


def _literal(text: str) -> str:
    """``text`` as a SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def _object(fields: list[Field]) -> str:
    """SQL building a JSON object of ``fields`` (the first one unconditional)."""
    if fields[0][2] is not None:
        raise ValueError("the first field of an object must be unconditional (it carries no comma)")
    parts = []
    for i, (key, value, when) in enumerate(fields):
        piece = f"concat('{',' if i else ''}{json.dumps(key)}:', {value})"
        parts.append(piece if when is None else f"CASE WHEN {when} THEN {piece} ELSE '' END")
    return "concat('{', " + ", ".join(parts) + ", '}')"


def _s(col: str) -> str:
    """A string column as a JSON string."""
    return f"to_json({col})"


def _json_text(value: object) -> str:
    """A constant as SQL giving its JSON text."""
    return _literal(json.dumps(value, separators=(",", ":"), ensure_ascii=False))


def _nested(col: str) -> str:
    """A column holding a JSON object, nested as it is (as a string when it is not JSON)."""
    return f"(CASE WHEN json_valid({col}) THEN {col} ELSE to_json({col}) END)"


def _bool(col: str) -> str:
    return f"(CASE WHEN {col} THEN 'true' ELSE 'false' END)"


#: The event as the ``json`` format writes it (and Splunk's ``event``, and syslog's MSG).
_EVENT_JSON = _object([
    *[(c, _s(c), None) for c in ("id", "tenant_id", "user_id", "action", "resource_type", "resource_id")],
    ("changes", _nested("changes"), None), ("ip_address", _s("ip_address"), None),
    ("user_agent", _s("user_agent"), None), ("created_at", _TS.format(col="created_at"), None),
    *[(c, _s(c), None) for c in ("outcome", "reason", "service", "trace_id", "span_id", "request_id")],
    ("metadata", _nested("metadata"), None), ("received_at", _TS.format(col="received_at"), None),
    ("writer_id", _s("writer_id"), None), ("ingest_key_id", _s("ingest_key_id"), None),
    ("seq", "seq::VARCHAR", None), ("imported", _bool("imported"), None),
    ("clock_skew", _bool("clock_skew"), None), ("chain_hash", _s("chain_hash"), None),
])

#: The export's OCSF mapping (collector/admin/export.py ``ocsf_event``), in SQL:
#: keys without a value are left out, as there.
_AUTH = "action IN ('login', 'login_failed', 'logout')"
_FAILED = "(outcome <> 'success' OR action = 'login_failed')"
_ACTIVITY_ID = ("CASE action WHEN 'login' THEN 1 WHEN 'login_failed' THEN 1 WHEN 'logout' THEN 2 "
                "WHEN 'create' THEN 1 WHEN 'read' THEN 2 WHEN 'update' THEN 3 WHEN 'delete' THEN 4 ELSE 99 END")
_ACTIVITY_NAME = ("CASE action WHEN 'login' THEN '\"Logon\"' WHEN 'login_failed' THEN '\"Logon\"' "
                  "WHEN 'logout' THEN '\"Logoff\"' WHEN 'create' THEN '\"Create\"' WHEN 'read' THEN '\"Read\"' "
                  "WHEN 'update' THEN '\"Update\"' WHEN 'delete' THEN '\"Delete\"' ELSE '\"Other\"' END")


def _either(when: str, yes: object, no: object) -> str:
    return f"(CASE WHEN {when} THEN {_json_text(yes)} ELSE {_json_text(no)} END)"


def _wrap(key: str, col: str) -> str:
    """``{"key": col}`` (col a string column)."""
    return f"concat('{{{json.dumps(key)}:', to_json({col}), '}}')"


_OCSF_JSON = _object([
    ("class_uid", _either(_AUTH, 3002, 6003), None),
    ("class_name", _either(_AUTH, "Authentication", "API Activity"), None),
    ("category_uid", _either(_AUTH, 3, 6), None),
    ("category_name", _either(_AUTH, "Identity & Access Management", "Application Activity"), None),
    ("activity_id", f"({_ACTIVITY_ID})::VARCHAR", None),
    ("activity_name", f"({_ACTIVITY_NAME})", None),
    ("type_uid", f"((CASE WHEN {_AUTH} THEN 3002 ELSE 6003 END) * 100 + {_ACTIVITY_ID})::VARCHAR", None),
    ("severity_id", "'1'", None), ("severity", _json_text("Informational"), None),
    ("time", _MS.format(col="created_at"), None),
    ("status_id", _either(_FAILED, 2, 1), None),
    ("status", _either(_FAILED, "Failure", "Success"), None),
    ("metadata", _object([
        ("version", _json_text("1.3.0"), None), ("uid", _s("id"), None), ("tenant_uid", _s("tenant_id"), None),
        ("logged_time", _MS.format(col="received_at"), None),
        ("product", _json_text({"name": "auditlake", "vendor_name": "auditlake"}), None),
        ("log_name", _json_text("audit"), None),
        ("correlation_uid", _s("trace_id"), "trace_id <> ''"),
    ]), None),
    ("actor", _object([("user", _object([("uid", _s("user_id"), None), ("type_id", "'0'", None)]), None)]), None),
    ("src_endpoint", f"(CASE WHEN ip_address <> '' THEN {_wrap('ip', 'ip_address')} ELSE '{{}}' END)", None),
    ("unmapped", _object([
        ("action", _s("action"), None), ("outcome", _s("outcome"), None),
        ("changes", _nested("changes"), None), ("metadata", _nested("metadata"), None),
        ("writer_id", _s("writer_id"), None), ("seq", "seq::VARCHAR", None),
        ("chain_hash", _s("chain_hash"), None), ("imported", _bool("imported"), None),
        ("clock_skew", _bool("clock_skew"), None), ("span_id", _s("span_id"), "trace_id <> ''"),
    ]), None),
    ("status_detail", "to_json(CASE WHEN reason <> '' THEN concat(outcome, ': ', reason) ELSE outcome END)",
     _FAILED),
    ("http_request", _wrap("user_agent", "user_agent"), "user_agent <> ''"),
    ("user", _wrap("uid", "user_id"), _AUTH),
    ("service", _wrap("name", "service"), _AUTH),
    ("api", _object([
        ("operation", _s("action"), None), ("service", _wrap("name", "service"), None),
        ("request", _wrap("uid", "request_id"), "request_id <> ''"),
    ]), f"NOT {_AUTH}"),
    ("resources", "concat('[', " + _object([("type", _s("resource_type"), None), ("uid", _s("resource_id"), None)])
     + ", ']')", f"NOT {_AUTH}"),
])


def _sd_value(col: str) -> str:
    """An RFC 5424 SD-PARAM value: ``\\``, ``"`` and ``]`` escaped with a backslash."""
    return f"replace(replace(replace({col}, '\\', '\\\\'), '\"', '\\\"'), ']', '\\]')"


def _printable(expr: str, limit: int) -> str:
    """A syslog header field: printable US-ASCII, at most ``limit`` characters, ``-`` when empty."""
    return f"COALESCE(NULLIF(left(regexp_replace({expr}, '[^!-~]', '_', 'g'), {limit}), ''), '-')"


@dataclass(frozen=True)
class Encoded:
    """One destination request's body: ``count`` events."""

    body: bytes
    count: int


class Encoder:
    """Encodes tables of stored rows in one format.  One DuckDB connection
    each: use an encoder from one thread at a time (each stream has its own)."""

    def __init__(self, fmt: str, *, host: str = "", sourcetype: str = "auditlake:event",
                 index: str = "", source: str = "auditlake") -> None:
        if fmt not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        self.format = fmt
        self.host = host or socket.gethostname()
        self._con = duckdb.connect(config={"threads": 1})
        self._con.execute("SET TimeZone = 'UTC'")
        self._lock = threading.Lock()
        self._sql = self._build_sql(sourcetype, index, source)

    def _build_sql(self, sourcetype: str, index: str, source: str) -> str:
        if self.format in ("json", "ocsf"):
            event = _EVENT_JSON if self.format == "json" else _OCSF_JSON
            return f"SELECT concat({event}, ',') AS r FROM rows_in"
        if self.format == "hec":
            # Splunk takes "time" as epoch seconds with a fraction.
            head = [("time", "(epoch_us(created_at) / 1000000.0)::DECIMAL(18,6)::VARCHAR", None),
                    ("host", _json_text(self.host), None), ("source", _json_text(source), None),
                    ("sourcetype", _json_text(sourcetype), None)]
            if index:
                head.append(("index", _json_text(index), None))
            return f"SELECT concat({_object([*head, ('event', _EVENT_JSON, None)])}, '\n') AS r FROM rows_in"
        severity = " ".join(f"WHEN '{k}' THEN '{_FACILITY * 8 + v}'" for k, v in _SEVERITY.items())
        sd = (f"concat('[{SD_ID} id=\"', {_sd_value('id')}, '\" tenant=\"', {_sd_value('tenant_id')}, "
              f"'\" outcome=\"', {_sd_value('outcome')}, '\" writer=\"', {_sd_value('writer_id')}, "
              "'\" seq=\"', seq::VARCHAR, '\"]')")
        host = _printable(_literal(self.host), 255)
        msg = (f"concat('<', CASE outcome {severity} ELSE '{_FACILITY * 8 + 5}' END, '>1 ', "
               f"strftime(created_at, '%Y-%m-%dT%H:%M:%S.%fZ'), ' ', {host}, ' auditlake - ', "
               f"{_printable('action', 32)}, ' ', {sd}, ' \ufeff', {_EVENT_JSON})")
        # octet counting: the length in bytes (strlen), a space, the message
        return f"SELECT concat(strlen(m)::VARCHAR, ' ', m) AS r FROM (SELECT {msg} AS m FROM rows_in)"

    def encode(self, table: pa.Table) -> Encoded:
        """The body of one request holding every row of ``table``, in its order."""
        if table.num_rows == 0:
            return Encoded(b"[]" if self.format in ("json", "ocsf") else b"", 0)
        return next(self.requests(table, table.num_rows))

    def requests(self, table: pa.Table, size: int) -> Iterator[Encoded]:
        """The rows of ``table`` in order, as bodies of ``size`` events (the
        last one fewer).  One SQL query encodes them all: planning it costs
        about as much as encoding a few thousand events, so the stream encodes
        a whole read and cuts the result into requests (no copy per value)."""
        if table.num_rows == 0:
            return
        with self._lock:
            self._con.register("rows_in", table)
            try:
                out = self._con.sql(self._sql).to_arrow_table().column(0)
            finally:
                self._con.unregister("rows_in")
        for start in range(0, len(out), size):
            part = out.slice(start, size)
            parts = _values(part)
            if self.format in ("json", "ocsf"):  # an array: the last row's comma becomes the "]"
                parts[-1] = parts[-1][:-1]
                parts = [memoryview(b"["), *parts, memoryview(b"]")]
            yield Encoded(b"".join(parts), len(part))  # the one copy of the body

    def close(self) -> None:
        """Release the DuckDB connection."""
        self._con.close()


def _values(column: pa.ChunkedArray) -> list[memoryview]:
    """Every value of a string column back to back, as views of each chunk's
    value buffer between its first and last offsets (no copy per value)."""
    parts = []
    for chunk in column.chunks:
        arr = chunk if chunk.type in (pa.string(), pa.large_string()) else chunk.cast(pa.large_string())
        if len(arr) == 0 or arr.buffers()[2] is None:
            continue
        offsets = memoryview(arr.buffers()[1]).cast("i" if arr.type == pa.string() else "q")
        first, last = offsets[arr.offset], offsets[arr.offset + len(arr)]
        parts.append(memoryview(arr.buffers()[2])[first:last])
    return parts
