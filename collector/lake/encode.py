"""Stored events as JSON text, vectorised: DuckDB SQL expressions that turn
the columns of stored rows into one JSON string per event (one ``concat``
per JSON object, string values escaped by ``to_json`` in C++), and the
Arrow string column of the result read back as bytes without a Python
object per event.

Owns the two JSON shapes an event leaves the lake in, written once for
every reader: ``EVENT_JSON`` (the stored columns, ``changes`` and
``metadata`` nested, timestamps as RFC 3339 UTC strings: the streams'
``json``, Splunk and syslog bodies) and ``OCSF_JSON`` (the OCSF 1.3 mapping,
docs/admin.md: the export's ``ocsf`` lines and the streams' ``ocsf``
bodies).  The expressions name the stored columns (collector/schema.py), so
they run over the ``events`` view or over a registered Arrow table alike;
timestamps are rendered in the session's time zone, which readers set to UTC.

Imported by ``admin`` (export) and ``streams`` (encode).
"""

from __future__ import annotations

import json

import pyarrow as pa

OCSF_VERSION = "1.3.0"

#: RFC 3339 with microseconds, UTC (the session time zone is UTC).
RFC3339 = "%Y-%m-%dT%H:%M:%S.%fZ"

# Each event's JSON is built by string concatenation in SQL: one ``concat``
# per object (a single allocation per row, where ``||`` chains and
# ``to_json(struct_pack(...))`` cost two to three times as much), each string
# value escaped by ``to_json``.
#: A JSON member: (key, SQL giving its JSON text, SQL condition for writing it or None).
Field = tuple[str, str, "str | None"]


def sql_literal(text: str) -> str:
    """``text`` as a SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def json_object(fields: list[Field]) -> str:
    """SQL building a JSON object of ``fields`` (the first one unconditional:
    it carries no comma)."""
    if fields[0][2] is not None:
        raise ValueError("the first field of an object must be unconditional (it carries no comma)")
    parts = []
    for i, (key, value, when) in enumerate(fields):
        piece = f"concat('{',' if i else ''}{json.dumps(key)}:', {value})"
        parts.append(piece if when is None else f"CASE WHEN {when} THEN {piece} ELSE '' END")
    return "concat('{', " + ", ".join(parts) + ", '}')"


def json_string(col: str) -> str:
    """SQL giving a string column as a JSON string."""
    return f"to_json({col})"


def json_constant(value: object) -> str:
    """SQL giving the JSON text of a constant."""
    return sql_literal(json.dumps(value, separators=(",", ":"), ensure_ascii=False))


def json_nested(col: str) -> str:
    """SQL giving a column that holds a JSON object nested as it is (as a
    JSON string when it is not JSON)."""
    return f"(CASE WHEN json_valid({col}) THEN {col} ELSE to_json({col}) END)"


def json_bool(col: str) -> str:
    """SQL giving a boolean column as JSON ``true`` or ``false``."""
    return f"(CASE WHEN {col} THEN 'true' ELSE 'false' END)"


def json_timestamp(col: str) -> str:
    """SQL giving a timestamp column as an RFC 3339 UTC JSON string."""
    return f"concat('\"', strftime({col}, '{RFC3339}'), '\"')"


def json_epoch_ms(col: str) -> str:
    """SQL giving a timestamp column as whole milliseconds since the epoch
    (truncated toward zero: DuckDB's integer division)."""
    return f"(epoch_us({col}) // 1000)::VARCHAR"


def _member(key: str, col: str) -> str:
    """``{"key": col}`` (col a string column)."""
    return f"concat('{{{json.dumps(key)}:', to_json({col}), '}}')"


def _either(when: str, yes: object, no: object) -> str:
    return f"(CASE WHEN {when} THEN {json_constant(yes)} ELSE {json_constant(no)} END)"


#: The event as the streams' ``json`` format writes it (and Splunk's
#: ``event``, and syslog's MSG): every stored column, in schema order.  No
#: column may be NULL (``concat`` would drop the value and leave ``"key":``):
#: over files sealed before ``ingest_key_id`` existed, fill it in first, as
#: the streams' feed does.
EVENT_JSON = json_object([
    *[(c, json_string(c), None) for c in ("id", "tenant_id", "user_id", "action", "resource_type", "resource_id")],
    ("changes", json_nested("changes"), None), ("ip_address", json_string("ip_address"), None),
    ("user_agent", json_string("user_agent"), None), ("created_at", json_timestamp("created_at"), None),
    *[(c, json_string(c), None) for c in ("outcome", "reason", "service", "trace_id", "span_id", "request_id")],
    ("metadata", json_nested("metadata"), None), ("received_at", json_timestamp("received_at"), None),
    ("writer_id", json_string("writer_id"), None), ("ingest_key_id", json_string("ingest_key_id"), None),
    ("seq", "seq::VARCHAR", None), ("imported", json_bool("imported"), None),
    ("clock_skew", json_bool("clock_skew"), None), ("chain_hash", json_string("chain_hash"), None),
])

# The OCSF mapping (docs/admin.md, "OCSF mapping"): Authentication (3002) for
# login, login_failed and logout, API Activity (6003) for every other action;
# keys without a value are left out.
_AUTH = "action IN ('login', 'login_failed', 'logout')"
_FAILED = "(outcome <> 'success' OR action = 'login_failed')"
_ACTIVITY_ID = ("CASE action WHEN 'login' THEN 1 WHEN 'login_failed' THEN 1 WHEN 'logout' THEN 2 "
                "WHEN 'create' THEN 1 WHEN 'read' THEN 2 WHEN 'update' THEN 3 WHEN 'delete' THEN 4 ELSE 99 END")
_ACTIVITY_NAME = ("CASE action WHEN 'login' THEN '\"Logon\"' WHEN 'login_failed' THEN '\"Logon\"' "
                  "WHEN 'logout' THEN '\"Logoff\"' WHEN 'create' THEN '\"Create\"' WHEN 'read' THEN '\"Read\"' "
                  "WHEN 'update' THEN '\"Update\"' WHEN 'delete' THEN '\"Delete\"' ELSE '\"Other\"' END")

#: The event as an OCSF 1.3 event (compact JSON, keys in the mapping's order).
OCSF_JSON = json_object([
    ("class_uid", _either(_AUTH, 3002, 6003), None),
    ("class_name", _either(_AUTH, "Authentication", "API Activity"), None),
    ("category_uid", _either(_AUTH, 3, 6), None),
    ("category_name", _either(_AUTH, "Identity & Access Management", "Application Activity"), None),
    ("activity_id", f"({_ACTIVITY_ID})::VARCHAR", None),
    ("activity_name", f"({_ACTIVITY_NAME})", None),
    ("type_uid", f"((CASE WHEN {_AUTH} THEN 3002 ELSE 6003 END) * 100 + {_ACTIVITY_ID})::VARCHAR", None),
    ("severity_id", "'1'", None), ("severity", json_constant("Informational"), None),
    ("time", json_epoch_ms("created_at"), None),
    ("status_id", _either(_FAILED, 2, 1), None),
    ("status", _either(_FAILED, "Failure", "Success"), None),
    ("metadata", json_object([
        ("version", json_constant(OCSF_VERSION), None), ("uid", json_string("id"), None),
        ("tenant_uid", json_string("tenant_id"), None),
        ("logged_time", json_epoch_ms("received_at"), None),
        ("product", json_constant({"name": "auditlake", "vendor_name": "auditlake"}), None),
        ("log_name", json_constant("audit"), None),
        ("correlation_uid", json_string("trace_id"), "trace_id <> ''"),
    ]), None),
    ("actor", json_object([("user", json_object([("uid", json_string("user_id"), None),
                                                 ("type_id", "'0'", None)]), None)]), None),
    ("src_endpoint", f"(CASE WHEN ip_address <> '' THEN {_member('ip', 'ip_address')} ELSE '{{}}' END)", None),
    ("unmapped", json_object([
        ("action", json_string("action"), None), ("outcome", json_string("outcome"), None),
        ("changes", json_nested("changes"), None), ("metadata", json_nested("metadata"), None),
        ("writer_id", json_string("writer_id"), None), ("seq", "seq::VARCHAR", None),
        ("chain_hash", json_string("chain_hash"), None), ("imported", json_bool("imported"), None),
        ("clock_skew", json_bool("clock_skew"), None), ("span_id", json_string("span_id"), "trace_id <> ''"),
    ]), None),
    ("status_detail", "to_json(CASE WHEN reason <> '' THEN concat(outcome, ': ', reason) ELSE outcome END)",
     _FAILED),
    ("http_request", _member("user_agent", "user_agent"), "user_agent <> ''"),
    ("user", _member("uid", "user_id"), _AUTH),
    ("service", _member("name", "service"), _AUTH),
    ("api", json_object([
        ("operation", json_string("action"), None), ("service", _member("name", "service"), None),
        ("request", _member("uid", "request_id"), "request_id <> ''"),
    ]), f"NOT {_AUTH}"),
    ("resources", "concat('[', " + json_object([("type", json_string("resource_type"), None),
                                                 ("uid", json_string("resource_id"), None)])
     + ", ']')", f"NOT {_AUTH}"),
])


def string_values(column: pa.ChunkedArray | pa.Array) -> list[memoryview]:
    """Every value of a string column back to back, as views of each chunk's
    value buffer between its first and last offsets (no copy per value, no
    Python object per value): ``b"".join(...)`` is the column's text."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    parts = []
    for chunk in chunks:
        arr = chunk if chunk.type in (pa.string(), pa.large_string()) else chunk.cast(pa.large_string())
        if len(arr) == 0 or arr.buffers()[2] is None:
            continue
        offsets = memoryview(arr.buffers()[1]).cast("i" if arr.type == pa.string() else "q")
        first, last = offsets[arr.offset], offsets[arr.offset + len(arr)]
        parts.append(memoryview(arr.buffers()[2])[first:last])
    return parts
