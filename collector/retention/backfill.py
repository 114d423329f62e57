"""Backfill: `auditlake import` brings existing audit history (a CSV dump,
JSON lines) into the lake with its original timestamps, through the same
validation, hash chain and signing as live events, each marked imported.

Rows failing validation are reported with their line numbers; every other
row is stored.  Columns that are not event fields are kept in ``metadata``.
Event ids made for rows without one are UUIDv7s derived from the row
(created_at, tenant, line, content), and batch ids from the file digest, so
running the same import twice stores each event once.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import hashlib
import json
import os
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import pyarrow as pa
import pyarrow.compute as pc

from auditlake.collector.errors import ConfigError
from auditlake.collector.ingest.receive import WIRE_SCHEMA, Limits, normalize, validate
from auditlake.collector.schema import STRING_FIELDS, SYSTEM_TENANT
from auditlake.collector.storage.datadir import DataDir

#: Rows per batch handed to the collector (one WAL record, one seal each).
DEFAULT_CHUNK_ROWS = 50_000
_BLOCK_ROWS = 50_000
_EVENT_FIELDS = frozenset(STRING_FIELDS) | {"created_at"}


def uuid7_from(ms: int, entropy: bytes) -> str:
    """A UUIDv7 with timestamp ``ms`` and 74 bits taken from ``entropy``."""
    raw = bytearray(ms.to_bytes(6, "big") + entropy[:10])
    raw[6] = 0x70 | (raw[6] & 0x0F)
    raw[8] = 0x80 | (raw[8] & 0x3F)
    return str(uuid.UUID(bytes=bytes(raw)))


def parse_timestamp_us(value: Any) -> int:
    """Microseconds since the epoch of an ISO 8601 text (no zone: UTC)."""
    text = str(value).strip()
    if not text:
        raise ValueError("is missing")
    try:
        t = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(f"is not an ISO 8601 timestamp: {text[:40]!r}") from exc
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    delta = t - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


@dataclass
class RowProblem:
    """A row of the input file that was not imported, and why."""

    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: field '{self.field}' {self.message}"


@dataclass
class ImportResult:
    """What an import stored and rejected."""

    rows_read: int = 0
    imported: int = 0
    problems: list[RowProblem] = field(default_factory=list)
    batches: list[str] = field(default_factory=list)
    first: str = ""
    last: str = ""


def parse_mapping(items: list[str]) -> dict[str, str]:
    """``["src=dst", ...]`` → {src: dst}; ConfigError on a malformed item."""
    out: dict[str, str] = {}
    for item in items:
        src, sep, dst = item.partition("=")
        if not sep or not src or not dst:
            raise ConfigError(f"--map {item!r}: expected SOURCE=FIELD, e.g. --map timestamp=created_at")
        out[src] = dst
    return out


def read_records(f: TextIO, fmt: str) -> Iterator[tuple[int, dict[str, Any], str]]:
    """(first line number, record, raw text) of each record of a CSV (with a
    header row) or JSON-lines stream.  A JSON line that is not an object is
    yielded as ``{"__error__": message}``."""
    if fmt == "csv":
        reader = csv.reader(f)
        header: list[str] | None = None
        start = 1
        for values in reader:
            line = start
            start = reader.line_num + 1
            if header is None:
                header = [h.strip() for h in values]
                continue
            if not values or all(v == "" for v in values):
                continue
            if len(values) != len(header):
                yield line, {"__error__": f"has {len(values)} values, the header {len(header)}"}, ""
                continue
            yield line, dict(zip(header, values, strict=True)), ",".join(values)
        return
    if fmt != "jsonl":
        raise ConfigError(f"--format {fmt!r}: expected csv or jsonl")
    for n, text in enumerate(f, 1):
        if not text.strip():
            continue
        try:
            rec = json.loads(text)
        except json.JSONDecodeError as exc:
            yield n, {"__error__": f"is not valid JSON ({exc.msg})"}, text
            continue
        if not isinstance(rec, dict):
            yield n, {"__error__": "is not a JSON object"}, text
            continue
        yield n, rec, text


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, ensure_ascii=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class _Block:
    """Column lists of up to _BLOCK_ROWS parsed rows."""

    def __init__(self) -> None:
        self.cols: dict[str, list[Any]] = {n: [] for n in WIRE_SCHEMA.names}
        self.lines: list[int] = []

    def __len__(self) -> int:
        return len(self.lines)

    def table(self) -> pa.Table:
        arrays = []
        for f in WIRE_SCHEMA:
            values = self.cols[f.name]
            arrays.append(pa.array(values, pa.int64()).cast(f.type) if f.name == "created_at"
                          else pa.array(values, pa.string()))
        return pa.Table.from_arrays(arrays, schema=WIRE_SCHEMA)


def _add_row(block: _Block, line: int, rec: dict[str, Any], raw: str, tenant: str,
             mapping: dict[str, str], problems: list[RowProblem]) -> None:
    if "__error__" in rec:
        problems.append(RowProblem(line, "(row)", rec["__error__"]))
        return
    values: dict[str, Any] = {}
    unknown: dict[str, Any] = {}
    for key, value in rec.items():
        name = mapping.get(key, key)
        if name in _EVENT_FIELDS:
            values[name] = value
        elif value not in (None, ""):
            unknown[name] = value
    given_tenant = _text(values.get("tenant_id")).strip()
    if given_tenant and given_tenant != tenant:
        problems.append(RowProblem(line, "tenant_id", f"is {given_tenant!r}, not the --tenant {tenant!r}"))
        return
    try:
        created = parse_timestamp_us(values.get("created_at", ""))
    except ValueError as exc:
        problems.append(RowProblem(line, "created_at", str(exc)))
        return
    row = {n: _text(values.get(n)) for n in STRING_FIELDS}
    row["tenant_id"] = tenant
    if unknown:
        try:
            meta = json.loads(row["metadata"]) if row["metadata"] else {}
        except ValueError:
            meta = None
        if isinstance(meta, dict):
            for k, v in unknown.items():
                meta.setdefault(k, v)
            row["metadata"] = json.dumps(meta, sort_keys=True, ensure_ascii=False)
    if not row["id"]:
        entropy = hashlib.sha256(f"{tenant}\x00{line}\x00{raw}".encode()).digest()
        row["id"] = uuid7_from(max(created, 0) // 1000, entropy)
    for n in STRING_FIELDS:
        block.cols[n].append(row[n])
    block.cols["created_at"].append(created)
    block.lines.append(line)


def _validated(block: _Block, problems: list[RowProblem]) -> pa.Table:
    """The block's valid rows (normalized); problems get the others."""
    table = normalize(block.table())
    rejected = validate(table, time.time_ns() // 1000, Limits())
    if not rejected:
        return table
    for r in rejected:
        problems.append(RowProblem(block.lines[r.index], r.field, r.message))
    mask = [True] * table.num_rows
    for r in rejected:
        mask[r.index] = False
    return table.filter(pa.array(mask))


class ProgressBar:
    """A progress bar on stderr (a line per update when stderr is not a terminal)."""

    def __init__(self, total: int, label: str, stream: TextIO | None = None) -> None:
        self.total = max(total, 1)
        self.label = label
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.started = time.monotonic()

    def update(self, done: int) -> None:
        frac = min(done / self.total, 1.0)
        bar = "#" * int(frac * 30)
        rate = done / max(time.monotonic() - self.started, 1e-9)
        text = f"{self.label} [{bar:<30s}] {frac * 100:5.1f}% {done:,}/{self.total:,} rows {rate:,.0f}/s"
        if self.tty:
            self.stream.write("\r" + text)
            if done >= self.total:
                self.stream.write("\n")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def import_file(data: DataDir, path: Path, tenant: str, fmt: str, *, mapping: dict[str, str] | None = None,
                chunk_rows: int = DEFAULT_CHUNK_ROWS, progress: bool = True) -> ImportResult:
    """Import ``path`` into ``tenant``'s history; returns counts and problems."""
    from auditlake.collector.ingest.inbox import submit  # noqa: PLC0415
    from auditlake.collector.retention.events import meta_event  # noqa: PLC0415

    if not tenant:
        raise ConfigError("--tenant is required")
    if chunk_rows <= 0:
        raise ConfigError("--chunk-rows must be positive")
    mapping = mapping or {}
    bad_targets = sorted(set(mapping.values()) - _EVENT_FIELDS)
    if bad_targets:
        raise ConfigError(f"--map target(s) {', '.join(bad_targets)} are not event fields "
                          f"({', '.join(sorted(_EVENT_FIELDS))})")
    h = hashlib.sha256()
    with open(path, "rb") as fb:
        for block_bytes in iter(lambda: fb.read(1 << 20), b""):
            h.update(block_bytes)
    file_sha = h.hexdigest()
    run_key = hashlib.sha256(
        json.dumps([file_sha, tenant, fmt, sorted(mapping.items()), chunk_rows]).encode()
    ).hexdigest()[:24]

    result = ImportResult()
    tables: list[pa.Table] = []
    block = _Block()
    with open(path, newline="", encoding="utf-8-sig") as f:
        for line, rec, raw in read_records(f, fmt):
            result.rows_read += 1
            _add_row(block, line, rec, raw, tenant, mapping, result.problems)
            if len(block) >= _BLOCK_ROWS:
                tables.append(_validated(block, result.problems))
                block = _Block()
    if len(block):
        tables.append(_validated(block, result.problems))
    result.problems.sort(key=lambda p: p.line)
    valid = pa.concat_tables(tables) if tables else WIRE_SCHEMA.empty_table()
    # Oldest first: each batch then spans few days, so a seal writes few files.
    valid = valid.take(pc.sort_indices(valid, [("created_at", "ascending")]))
    if valid.num_rows:
        result.first = valid.column("created_at")[0].as_py().isoformat()
        result.last = valid.column("created_at")[valid.num_rows - 1].as_py().isoformat()
    bar = ProgressBar(valid.num_rows, f"import {path.name}") if progress else None
    for i, start in enumerate(range(0, valid.num_rows, chunk_rows)):
        chunk = valid.slice(start, chunk_rows)
        bid = f"import-{run_key}-{i:06d}"
        submit(data, chunk, imported=True, batch_id=bid)
        result.batches.append(bid)
        result.imported += chunk.num_rows
        if bar:
            bar.update(result.imported)
    meta = {"tenant": tenant, "file": str(path), "sha256": file_sha, "format": fmt,
            "rows_read": result.rows_read, "imported": result.imported,
            "rejected": len(result.problems), "first": result.first, "last": result.last,
            "mapping": mapping}
    event = meta_event("import", path.name[:500], meta, resource_type="import",
                       user_id=os.environ.get("USER", "") or "auditlake-import")
    assert event.column("tenant_id")[0].as_py() == SYSTEM_TENANT
    submit(data, event, batch_id=f"import-{run_key}-done")
    return result


def cmd_import(args: argparse.Namespace) -> int:
    """`auditlake import`: load audit history from CSV or JSON lines."""
    data = DataDir.from_args(args)
    path = Path(args.file)
    if not path.exists():
        print(f"auditlake import: no such file {path}", file=sys.stderr)
        return 2
    fmt = args.format or ("jsonl" if path.suffix in (".jsonl", ".ndjson", ".json") else "csv")
    result = import_file(data, path, args.tenant, fmt, mapping=parse_mapping(args.map or []),
                         chunk_rows=args.chunk_rows, progress=not args.quiet)
    shown = result.problems[: args.show_rejects]
    for p in shown:
        print(f"{path}:{p}", file=sys.stderr)
    if len(result.problems) > len(shown):
        print(f"... and {len(result.problems) - len(shown)} more rejected rows", file=sys.stderr)
    if args.rejects:
        with open(args.rejects, "w") as f:
            for p in result.problems:
                f.write(json.dumps({"line": p.line, "field": p.field, "message": p.message}) + "\n")
    print(f"imported {result.imported:,} of {result.rows_read:,} rows into tenant {args.tenant}"
          + (f" ({result.first} .. {result.last})" if result.imported else "")
          + (f"; {len(result.problems):,} rejected" if result.problems else ""))
    return 3 if result.problems else 0


def register(subparsers: Any) -> None:
    """Add `auditlake import`."""
    from auditlake.collector.config import add_data_arg  # noqa: PLC0415

    p = subparsers.add_parser(
        "import", help="import audit history from CSV or JSON lines (original timestamps, chained, signed)")
    add_data_arg(p)
    p.add_argument("--tenant", required=True, help="tenant the history belongs to")
    p.add_argument("--format", choices=("csv", "jsonl"), help="input format (default: from the file name)")
    p.add_argument("--map", action="append", metavar="SOURCE=FIELD",
                   help="rename an input column to an event field (repeatable), e.g. timestamp=created_at")
    p.add_argument("--chunk-rows", type=int, default=DEFAULT_CHUNK_ROWS, help=argparse.SUPPRESS)
    p.add_argument("--rejects", metavar="FILE", help="write every rejected row (line, field, message) as JSON lines")
    p.add_argument("--show-rejects", type=int, default=50, metavar="N", help="rejected rows to print (default 50)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("file", help="the CSV (with a header row) or JSON-lines file")
    p.set_defaults(func=cmd_import)
