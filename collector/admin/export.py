"""Export: the events of a filter as CSV, JSON lines or OCSF, streamed in
constant memory, with a signed manifest an auditor can check.

Rows leave in storage order: day by day, and inside a day by tenant, then
time (a one-tenant export is chronological).  No global sort: memory stays
bounded by a few batches however long the range.

CSV is RFC 4180 (UTF-8, header row, CRLF, every text cell quoted).  A text
cell whose first character is ``=``, ``+``, ``-``, ``@``, tab or carriage
return, or whose first character after blanks (spaces, NBSP, line breaks,
BOM, ``"``) is one of ``= + - @``, or which starts with ``'``, gets a single
quote ``'`` in front, so a spreadsheet shows it as text instead of running it
as a formula; removing one leading ``'`` from every cell that has one gives
back exactly what was stored.

The manifest (``FILE.manifest.json``) states the filter, the row count, the
time range, the file's SHA-256 and the newest signed chain checkpoint of each
writer at export time, signed with the collector's Ed25519 key;
``auditlake export verify FILE`` checks it.
"""

from __future__ import annotations

import argparse
import base64
import csv
import datetime as dt
import hashlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from auditlake.collector.admin.search import Filter, LakeReader, iso, where
from auditlake.collector.errors import ConfigError
from auditlake.collector.integrity.checkpoint import canonical_json, read_checkpoints
from auditlake.collector.integrity.signing import SigningKey
from auditlake.collector.lake.encode import OCSF_JSON, RFC3339, string_values
from auditlake.collector.lake.files import EVENTS
from auditlake.collector.schema import COLUMNS, EVENT_SCHEMA
from auditlake.collector.storage.datadir import DataDir
from auditlake.collector.storage.store import Store
from auditlake.collector.storage.tiers import checkpoint_tier, hot_tier

FORMATS = ("csv", "jsonl", "ocsf")
MEDIA_TYPES = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson",
               "ocsf": "application/x-ndjson"}
EXTENSIONS = {"csv": "csv", "jsonl": "jsonl", "ocsf": "ocsf.jsonl"}
MANIFEST_VERSION = 1
_BATCH_ROWS = 64 * 1024
#: OCSF rows are ~10x larger once encoded (nested JSON per row): smaller
#: chunks keep one export's memory to a few megabytes and let a hung-up
#: download stop within a chunk.
_OCSF_BATCH_ROWS = 2 * 1024
_TIME_COLUMNS = tuple(f.name for f in EVENT_SCHEMA if pa.types.is_timestamp(f.type))


def exports_dir(data: DataDir) -> Path:
    """DIR/exports/: manifests of exports made through the admin server."""
    return data.root / "exports"


# -- encoders --------------------------------------------------------------------


#: Characters a spreadsheet skips before it looks for a formula's first
#: character: whitespace (ASCII and Unicode, incl. NBSP), the byte-order mark,
#: zero-width space, and the double quote.
CSV_BLANKS = ("\t\n\r\v\f \u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
              "\u2009\u200a\u200b\u2028\u2029\u202f\u205f\u3000\ufeff\"")
#: Formula triggers after any blanks: = + - @.
CSV_TRIGGERS = "=+-@"
#: First characters that always get the quote: the triggers, tab, CR, and the
#: quote itself (so the reversal below is never ambiguous).
_QUOTED_FIRST = CSV_TRIGGERS + "\t\r'"


def neutralize_sql(column: str) -> str:
    """SQL for ``column`` with ``'`` put before a text that a spreadsheet could
    run (CSV injection): its first character is = + - @ tab or CR, or its
    first character after blanks (CSV_BLANKS) is = + - @; and before a text
    that already starts with ``'``, so removing one leading ``'`` from every
    cell that has one always gives back the stored value.  Done in DuckDB,
    in parallel with the scan."""
    first = ", ".join(str(ord(c)) for c in _QUOTED_FIRST)
    blank = ", ".join(str(ord(c)) for c in CSV_BLANKS)
    after_blanks = ", ".join(str(ord(c)) for c in CSV_TRIGGERS)
    # Nearly every cell starts with a letter, "{" or a digit, or is empty:
    # the first test lets those through with plain comparisons of the bytes
    # (on DuckDB's inlined string prefix: no UTF-8 decoding, no ord() per
    # cell, and a CASE whose first branch takes every row passes the column
    # on uncopied).  ``>= 'A' AND < chr(128)`` is a first character in
    # A..U+007F, ``>= '0' AND < '='`` one of 0-9 : ; < (none of them a blank
    # or a trigger: = is 61, @ 64).  Only the other cells pay for the full
    # rule, which decides them as before; which branch takes a cell never
    # changes its bytes (tests/admin/test_csv_export_bytes.py).
    safe = f"({column} >= 'A' AND {column} < chr(128)) OR {column} = '' OR ({column} >= '0' AND {column} < '=')"
    return (f"CASE WHEN {safe} THEN {column} "
            f"WHEN ord({column}) IN ({first}) THEN '''' || {column} "
            f"WHEN ord({column}) IN ({blank}) AND ord(ltrim({column}, '{CSV_BLANKS}')) IN ({after_blanks}) "
            f"THEN '''' || {column} ELSE {column} END")


def neutralize(cell: str) -> str:
    """The rule of neutralize_sql, in Python."""
    if cell[:1] and cell[0] in _QUOTED_FIRST:
        return "'" + cell
    rest = cell.lstrip(CSV_BLANKS)
    return "'" + cell if rest[:1] and rest[0] in CSV_TRIGGERS else cell


def _select_list(fmt: str) -> str:
    """Columns as the encoders want them: for CSV, DuckDB writes timestamps
    as ISO 8601 text and neutralises formula cells; for JSON lines and OCSF,
    one finished line per row (the OCSF mapping is the lake's ``OCSF_JSON``,
    the streams' too)."""
    # DuckDB writes each line in C++, in parallel with the scan: many times
    # faster than json.dumps per row in Python.
    if fmt == "jsonl":
        members = [f"'{c}': strftime({c}, '{RFC3339}')" if c in _TIME_COLUMNS else f"'{c}': {c}"
                   for c in COLUMNS]
        return "concat(to_json({" + ", ".join(members) + "}), '\n') AS line"
    if fmt == "ocsf":
        return f"concat({OCSF_JSON}, '\n') AS line"
    if fmt != "csv":
        return ", ".join(COLUMNS)
    out = []
    for f in EVENT_SCHEMA:
        if f.name in _TIME_COLUMNS:
            out.append(f"strftime({f.name}, '{RFC3339}') AS {f.name}")
        elif pa.types.is_string(f.type):
            out.append(f"{neutralize_sql(f.name)} AS {f.name}")
        else:
            out.append(f.name)
    return ", ".join(out)


class CsvEncoder:
    """RFC 4180 CSV of batches whose text cells are already neutralised
    (``_select_list("csv")``): UTF-8, CRLF, every text value quoted."""

    def header(self) -> bytes:
        buf = pa.BufferOutputStream()
        pacsv.write_csv(pa.table({c: pa.array([], pa.string()) for c in COLUMNS}), buf,
                        pacsv.WriteOptions(include_header=True, eol="\r\n"))
        return bytes(buf.getvalue().to_pybytes())

    def encode(self, batches: list[pa.RecordBatch]) -> bytes:
        # one write for the chunk: DuckDB's batches are a few thousand rows each
        table = pa.Table.from_batches(batches).combine_chunks()
        buf = pa.BufferOutputStream()
        pacsv.write_csv(table, buf, pacsv.WriteOptions(include_header=False, eol="\r\n",
                                                       quoting_style="all_valid"))
        return bytes(buf.getvalue().to_pybytes())


class LineEncoder:
    """One line per row, made by DuckDB in the scan (``_select_list``: JSON
    lines or OCSF, each ending in a newline): a chunk is the result column's
    text as it stands, with no Python object per row."""

    def header(self) -> bytes:
        return b""

    def encode(self, batches: list[pa.RecordBatch]) -> bytes:
        return b"".join(view for b in batches for view in string_values(b.column(0)))


def encoder(fmt: str) -> CsvEncoder | LineEncoder:
    """The encoder of ``fmt`` (csv, jsonl, ocsf)."""
    if fmt == "csv":
        return CsvEncoder()
    if fmt in ("jsonl", "ocsf"):
        return LineEncoder()
    raise ConfigError(f"unknown export format {fmt!r} (csv, jsonl or ocsf)")


# -- the run ----------------------------------------------------------------------


@dataclass
class ExportRun:
    """One export in progress: iterate ``chunks()`` for the bytes; the
    counters update as it goes; ``manifest`` is set when it has finished."""

    reader: LakeReader
    filter: Filter
    scope: frozenset[str] | None
    format: str
    file_name: str
    user: str = ""
    signing_key: SigningKey | None = None
    checkpoints_root: Store | None = None
    rows: int = 0
    total: int | None = None
    nbytes: int = 0
    done: bool = False
    manifest: dict[str, Any] | None = None
    started: float = field(default_factory=time.time)
    _sha: Any = field(default_factory=hashlib.sha256)
    _first: Any = None
    _last: Any = None

    def chunks(self) -> Iterator[bytes]:
        """The file's bytes, chunk by chunk (about 64k rows each)."""
        enc = encoder(self.format)
        clause, params = where(self.filter, self.scope)
        checkpoints = newest_checkpoints(self.checkpoints_root) if self.checkpoints_root else []
        cur = self.reader.cursor()
        try:
            self._measure(cur, clause, params)
            head = enc.header()
            if head:
                yield self._emit(head)
            # One streaming query, no ORDER BY: DuckDB keeps insertion order
            # (files by day, rows as stored: tenant, then time) and never
            # holds more than a few batches.  Sorting would buffer it all.
            rel = cur.sql(f"SELECT {_select_list(self.format)} FROM events WHERE {clause}", params=params)
            # DuckDB hands out a batch per file chunk (a few thousand rows);
            # encoding ~64k rows at a time keeps per-call overhead small.
            pending: list[pa.RecordBatch] = []
            size = 0
            chunk_rows = _OCSF_BATCH_ROWS if self.format == "ocsf" else _BATCH_ROWS
            for batch in rel.to_arrow_reader(chunk_rows):
                if not batch.num_rows:
                    continue
                pending.append(batch)
                size += batch.num_rows
                if size >= chunk_rows:
                    yield self._encode(enc, pending)
                    pending, size = [], 0
            if pending:
                yield self._encode(enc, pending)
        finally:
            cur.close()
        self.manifest = self._manifest(checkpoints)
        self.done = True

    def copy_csv(self, path: Path, progress: Callable[[ExportRun], None] | None = None,
                 release: Callable[[], None] | None = None) -> None:
        """Write the CSV straight to ``path`` with DuckDB's parallel CSV writer
        (the same bytes a reader gets as from ``chunks()``, up to quoting:
        DuckDB quotes only the cells that need it), then hash and fsync it.
        ``release`` is called once DuckDB is done with the file, beside the
        hash (export_to_file closes its own reader there: freeing DuckDB's
        buffers after a large COPY takes tens of milliseconds)."""
        if self.format != "csv":
            raise ConfigError("copy_csv writes CSV only")
        clause, params = where(self.filter, self.scope)
        checkpoints = newest_checkpoints(self.checkpoints_root) if self.checkpoints_root else []
        cur = self.reader.cursor()
        try:
            self._measure(cur, clause, params)
            target = str(path).replace("'", "''")
            done = threading.Event()

            def watch() -> None:  # DuckDB reports a running query's progress to other threads
                while not done.wait(0.2):
                    pct = cur.query_progress()
                    if pct >= 0 and progress is not None:
                        self.rows = min(int(self.total or 0), int((self.total or 0) * pct / 100))
                        progress(self)

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            try:
                cur.execute("SET enable_progress_bar = true")
                cur.execute("SET enable_progress_bar_print = false")
                copied = cur.execute(
                    f"COPY (SELECT {_select_list('csv')} FROM events WHERE {clause}) TO '{target}' "
                    "(FORMAT csv, HEADER, NEW_LINE '\r\n')", params).fetchall()
            finally:
                done.set()
                watcher.join()
            self.rows = int(copied[0][0]) if copied and copied[0] else int(self.total or 0)
        finally:
            cur.close()
        # fsync beside the hash: both release the GIL, and each costs about
        # as much as the other on a large export.  The hash reads the file
        # only once DuckDB has closed it: DuckDB's threads write their
        # batches at reserved offsets, out of order, so a file still being
        # written cannot be hashed as it grows.
        with open(path, "rb+") as f, ThreadPoolExecutor(2, thread_name_prefix="export-finish") as pool:
            synced = pool.submit(os.fsync, f.fileno())
            released = pool.submit(release) if release is not None else None
            # one buffer for the whole file: a fresh 1 MiB bytes per read is
            # a fresh mapping to fault in, some 300 times per 300 MB
            buf = bytearray(1 << 20)
            view = memoryview(buf)
            while n := f.readinto(buf):
                self._sha.update(view[:n])
                self.nbytes += n
            synced.result()  # an fsync error fails the export
            if released is not None:
                released.result()
        if progress is not None:
            progress(self)
        self.manifest = self._manifest(checkpoints)
        self.done = True

    def _measure(self, cur: Any, clause: str, params: list[Any]) -> None:
        """The match's first and last event time and its row count (for the
        manifest and progress), before any row is written."""
        first, last, total = cur.execute(
            f"SELECT min(created_at), max(created_at), count(*) FROM events WHERE {clause}", params
        ).fetchall()[0]
        self._first, self._last, self.total = first, last, int(total)

    def _encode(self, enc: CsvEncoder | LineEncoder, batches: list[pa.RecordBatch]) -> bytes:
        self.rows += sum(b.num_rows for b in batches)
        return self._emit(enc.encode(batches))

    def _emit(self, chunk: bytes) -> bytes:
        self._sha.update(chunk)
        self.nbytes += len(chunk)
        return chunk

    def _manifest(self, checkpoints: list[dict[str, Any]]) -> dict[str, Any]:
        body: dict[str, Any] = {
            "version": MANIFEST_VERSION,
            "kind": "auditlake-export",
            "file": self.file_name,
            "format": self.format,
            "sha256": self._sha.hexdigest(),
            "bytes": self.nbytes,
            "rows": self.rows,
            "filter": self.filter.describe(),
            "tenant_scope": sorted(self.scope) if self.scope is not None else "*",
            "time_range": {
                "from": iso(self.filter.start) if self.filter.start else None,
                "to": iso(self.filter.end) if self.filter.end else None,
                "first_event": _iso_or_none(self._first),
                "last_event": _iso_or_none(self._last),
            },
            "exported_at": iso(dt.datetime.now(dt.UTC)),
            "exported_by": self.user,
            "checkpoints": checkpoints,
        }
        if self.signing_key is not None:
            return sign_manifest(body, self.signing_key)
        return body


def _iso_or_none(value: Any) -> str | None:
    if isinstance(value, dt.datetime):
        return iso(value if value.tzinfo else value.replace(tzinfo=dt.UTC))
    return None


def newest_checkpoints(root: Store) -> list[dict[str, Any]]:
    """The newest signed checkpoint of each writer: the chain heads the
    exported rows lie under (an event in the lake is at or before its
    writer's newest checkpoint)."""
    newest: dict[str, Any] = {}
    for s in read_checkpoints(root):
        newest[s.checkpoint.writer_id] = s
    return [
        {"writer_id": s.checkpoint.writer_id, "seal": s.checkpoint.seal, "seq": s.checkpoint.seq,
         "chain_hash": s.checkpoint.chain_hash, "time": s.checkpoint.time, "kind": s.checkpoint.kind,
         "digest": s.checkpoint.digest()}
        for _, s in sorted(newest.items())
    ]


def _public_raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def sign_manifest(body: dict[str, Any], key: SigningKey) -> dict[str, Any]:
    """``body`` plus the key's fingerprint and an Ed25519 signature over the
    canonical JSON (sorted keys, no spaces, ASCII) of everything but ``signature``."""
    body = {**body, "public_key_sha256": hashlib.sha256(_public_raw(key.public)).hexdigest()}
    return {**body, "signature": base64.b64encode(key.sign(canonical_json(body))).decode()}


def count_rows(path: Path, fmt: str) -> int:
    """Records in an export file (CSV: records after the header; else lines)."""
    if fmt == "csv":
        with open(path, newline="", encoding="utf-8") as f:
            return max(0, sum(1 for _ in csv.reader(f)) - 1)
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def verify_export(path: Path, manifest: dict[str, Any], public: Ed25519PublicKey) -> list[str]:
    """Problems found (empty: the file is what the manifest states, and the
    manifest was signed by ``public``)."""
    problems: list[str] = []
    body = {k: v for k, v in manifest.items() if k != "signature"}
    try:
        public.verify(base64.b64decode(str(manifest.get("signature", ""))), canonical_json(body))
    except (InvalidSignature, ValueError):
        problems.append("the manifest's signature does not match the public key")
    if body.get("public_key_sha256") != hashlib.sha256(_public_raw(public)).hexdigest():
        problems.append("the manifest names a different signing key")
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
            size += len(block)
    if h.hexdigest() != body.get("sha256"):
        problems.append(f"sha256 of {path.name} is {h.hexdigest()}, the manifest says {body.get('sha256')}")
    if size != body.get("bytes"):
        problems.append(f"{path.name} has {size} bytes, the manifest says {body.get('bytes')}")
    fmt = str(body.get("format", "csv"))
    if fmt in FORMATS and not problems:
        rows = count_rows(path, fmt)
        if rows != body.get("rows"):
            problems.append(f"{path.name} holds {rows} rows, the manifest says {body.get('rows')}")
    return problems


def export_to_file(data: DataDir, f: Filter, scope: frozenset[str] | None, fmt: str, output: Path,
                   *, signing_key: SigningKey | None, user: str = "",
                   progress: Callable[[ExportRun], None] | None = None,
                   reader: LakeReader | None = None) -> ExportRun:
    """Export to ``output`` (written to a temporary name, then renamed) and
    write ``output.manifest.json`` next to it when a key is given."""

    own = reader is None
    reader = reader or LakeReader(data)
    run = ExportRun(reader, f, scope, fmt, output.name, user=user, signing_key=signing_key,
                    checkpoints_root=checkpoint_tier(data))
    tmp = output.with_name(output.name + ".partial")
    try:
        if fmt == "csv":
            run.copy_csv(tmp, progress, release=reader.close if own else None)  # fsyncs it
        else:
            with open(tmp, "wb") as out:
                for chunk in run.chunks():
                    out.write(chunk)
                    if progress:
                        progress(run)
                out.flush()
                os.fsync(out.fileno())
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
        if own:
            reader.close()
    if signing_key is not None and run.manifest is not None:
        manifest_path(output).write_text(json.dumps(run.manifest, indent=1, sort_keys=True) + "\n")
    return run


def manifest_path(path: Path) -> Path:
    """``FILE.manifest.json``."""
    return path.with_name(path.name + ".manifest.json")


# -- CLI: auditlake export ... ---------------------------------------------------------


def _filter_from_args(args: argparse.Namespace) -> Filter:
    from auditlake.collector.admin.search import parse_filter  # noqa: PLC0415

    def get(name: str) -> list[str]:
        value = getattr(args, {"from": "from_", "q": "text"}.get(name, name), None)
        if value is None:
            return []
        return list(value) if isinstance(value, list) else [str(value)]

    return parse_filter(get)


class _Progress:
    """A progress line on stderr, redrawn at most five times a second."""

    def __init__(self) -> None:
        self.last = 0.0

    def __call__(self, run: ExportRun, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self.last < 0.2:
            return
        self.last = now
        total = run.total or 0
        pct = 100 * run.rows / total if total else 100.0
        bar = "#" * int(pct / 4)
        sys.stderr.write(f"\rexport [{bar:<25}] {run.rows:,}/{total:,} rows {pct:5.1f}%  {run.nbytes / 1e6:,.1f} MB")
        if final:
            sys.stderr.write("\n")
        sys.stderr.flush()


def cmd_export(args: argparse.Namespace) -> int:
    from auditlake.collector.admin.readaudit import meta_event  # noqa: PLC0415
    from auditlake.collector.admin.search import QueryParameterError  # noqa: PLC0415

    if args.export_command == "verify":
        return cmd_export_verify(args)
    if not args.output or not args.format:
        print("auditlake export: --format and --output are required", file=sys.stderr)
        return 2
    data = DataDir.from_args(args)
    if not hot_tier(data).folders(EVENTS):
        print(f"auditlake export: no lake at {hot_tier(data).uri}", file=sys.stderr)
        return 2
    try:
        f = _filter_from_args(args)
    except QueryParameterError as exc:
        print(f"auditlake export: --{exc.parameter.replace('_', '-')}: {exc.message}", file=sys.stderr)
        return 2
    key = SigningKey.load_or_create(data.keys)
    bar = _Progress()
    output = Path(args.output)
    import getpass  # noqa: PLC0415

    user = f"cli:{getpass.getuser()}"
    run = export_to_file(data, f, None, args.format, output, signing_key=key, user=user,
                         progress=None if args.quiet else bar)
    if not args.quiet:
        bar(run, final=True)
    if not args.no_audit:
        from auditlake.collector.ingest.inbox import submit  # noqa: PLC0415

        tenant = f.tenants[0] if len(f.tenants) == 1 else None
        submit(data, meta_event(action="export", user=user, tenant=tenant,
                                resource_id=output.name,
                                details={"filter": f.describe(), "rows": run.rows, "format": args.format,
                                         "sha256": run.manifest["sha256"] if run.manifest else "",
                                         "via": "cli"}))
    print(f"{run.rows} rows -> {output} (manifest {manifest_path(output).name})", file=sys.stderr)
    return 0


def cmd_export_verify(args: argparse.Namespace) -> int:
    from auditlake.collector.integrity.signing import load_public_key  # noqa: PLC0415

    path = Path(args.file)
    mpath = Path(args.manifest) if args.manifest else manifest_path(path)
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, ValueError) as exc:
        print(f"auditlake export verify: cannot read manifest {mpath}: {exc}", file=sys.stderr)
        return 2
    if args.public_key:
        public = load_public_key(Path(args.public_key))
    else:
        pem = DataDir.from_args(args).keys / "signing.pub.pem"
        if not pem.exists():
            print("auditlake export verify: give --public-key PEM (from `auditlake keys public`)", file=sys.stderr)
            return 2
        public = load_public_key(pem)
    problems = verify_export(path, manifest, public)
    if problems:
        for p in problems:
            print(f"FAIL: {p}")
        return 1
    heads = ", ".join(f"{c['writer_id']}@{c['seq']}" for c in manifest.get("checkpoints", []))
    print(f"OK: {path.name}: {manifest['rows']} rows, sha256 {manifest['sha256']}, "
          f"signed; chain heads {heads or 'none'}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``auditlake export`` and ``auditlake export verify``."""
    from auditlake.collector.admin.search import RANGES  # noqa: PLC0415
    from auditlake.collector.config import add_data_arg  # noqa: PLC0415

    p = sub.add_parser("export", help="export events as CSV, JSON lines or OCSF, with a signed manifest",
                       description="Export the events matching the filters to FILE and write "
                                   "FILE.manifest.json (signed).  `auditlake export verify FILE` checks it.")
    add_data_arg(p)
    p.add_argument("--format", choices=FORMATS)
    p.add_argument("--output", "-o", metavar="FILE")
    p.add_argument("--tenant", action="append")
    p.add_argument("--user")
    p.add_argument("--action", action="append")
    p.add_argument("--resource-type", dest="resource_type")
    p.add_argument("--resource-id", dest="resource_id")
    p.add_argument("--outcome", action="append")
    p.add_argument("--ip")
    p.add_argument("--text", "-q", dest="text", help="free text in changes or metadata")
    p.add_argument("--range", choices=[r for r in RANGES if r != "custom"])
    p.add_argument("--from", dest="from_", metavar="TIME", help="ISO 8601 date or time (inclusive)")
    p.add_argument("--to", metavar="TIME", help="ISO 8601 date or time (exclusive)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--no-audit", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_export, export_command=None)
    vs = p.add_subparsers(dest="export_command", required=False, metavar="verify")
    v = vs.add_parser("verify", help="check an export file against its signed manifest")
    add_data_arg(v)
    v.add_argument("file")
    v.add_argument("--manifest", metavar="FILE", help="default FILE.manifest.json")
    v.add_argument("--public-key", metavar="PEM", help="the collector's public key (default DIR/keys/signing.pub.pem)")
    v.set_defaults(func=cmd_export_verify)
