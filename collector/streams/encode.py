"""Encoding stored events for a destination, vectorised: DuckDB turns an
Arrow table of stored rows into one string per event in SQL (one
``concat`` per JSON object, values escaped by ``to_json`` in C++), and the batch body is the
Arrow string column's value buffer as it stands — no Python object per
event, no Python loop over rows.  The event's JSON and OCSF expressions
are the lake's (collector/lake/encode.py, shared with the export); this
module adds the request framing: arrays, HEC envelopes, syslog frames.

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

import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import duckdb
import pyarrow as pa

from auditlake.collector.lake.encode import (
    EVENT_JSON,
    OCSF_JSON,
    RFC3339,
    Field,
    json_constant,
    json_object,
    sql_literal,
    string_values,
)

FORMATS = ("json", "ocsf", "hec", "syslog")

#: RFC 5424 structured-data id: the documentation enterprise number (RFC
#: 5612); receivers match the SD-ID ``auditlake@32473``.
SD_ID = "auditlake@32473"
#: Syslog facility 13, "log audit": PRI = 13 * 8 + severity.
_FACILITY = 13
#: Severity by outcome: informational for success, notice for a failure, warning when denied.
_SEVERITY = {"success": 6, "failure": 5, "denied": 4}


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
            event = EVENT_JSON if self.format == "json" else OCSF_JSON
            return f"SELECT concat({event}, ',') AS r FROM rows_in"
        if self.format == "hec":
            # Splunk takes "time" as epoch seconds with a fraction.
            head: list[Field] = [
                ("time", "(epoch_us(created_at) / 1000000.0)::DECIMAL(18,6)::VARCHAR", None),
                ("host", json_constant(self.host), None), ("source", json_constant(source), None),
                ("sourcetype", json_constant(sourcetype), None)]
            if index:
                head.append(("index", json_constant(index), None))
            return f"SELECT concat({json_object([*head, ('event', EVENT_JSON, None)])}, '\n') AS r FROM rows_in"
        severity = " ".join(f"WHEN '{k}' THEN '{_FACILITY * 8 + v}'" for k, v in _SEVERITY.items())
        sd = (f"concat('[{SD_ID} id=\"', {_sd_value('id')}, '\" tenant=\"', {_sd_value('tenant_id')}, "
              f"'\" outcome=\"', {_sd_value('outcome')}, '\" writer=\"', {_sd_value('writer_id')}, "
              "'\" seq=\"', seq::VARCHAR, '\"]')")
        host = _printable(sql_literal(self.host), 255)
        msg = (f"concat('<', CASE outcome {severity} ELSE '{_FACILITY * 8 + 5}' END, '>1 ', "
               f"strftime(created_at, '{RFC3339}'), ' ', {host}, ' auditlake - ', "
               f"{_printable('action', 32)}, ' ', {sd}, ' \ufeff', {EVENT_JSON})")
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
            parts = string_values(part)
            if self.format in ("json", "ocsf"):  # an array: the last row's comma becomes the "]"
                parts[-1] = parts[-1][:-1]
                parts = [memoryview(b"["), *parts, memoryview(b"]")]
            yield Encoded(b"".join(parts), len(part))  # the one copy of the body

    def close(self) -> None:
        """Release the DuckDB connection."""
        self._con.close()

