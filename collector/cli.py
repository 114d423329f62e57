"""The `auditlake` command: serve, keys, query, and the subcommands that
other stages register (verify, export, users, retention, import).

Each stage module that offers subcommands defines
``register(subparsers: argparse._SubParsersAction) -> None``; the parser
gives each a ``func(args) -> int`` default.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import importlib
import logging
import os
import resource
import signal
import sys
import time
from types import FrameType

from auditlake import __version__
from auditlake.collector.config import (
    add_data_arg,
    add_tls_args,
    collector_config,
    config_path,
    data_umask,
    load_toml,
    tls_overrides,
)
from auditlake.collector.errors import CollectorError
from auditlake.collector.storage.datadir import DataDir

#: The subcommands this module adds itself (cheap: their imports wait for the call).
BUILTIN_COMMANDS = ("serve", "keys", "query")

#: Which module (under ``auditlake.collector``, defining ``register(subparsers)``)
#: adds each top-level subcommand, in --help order.  The one list: ``auditlake NAME``
#: imports NAME's module only, since importing them all costs half a second of
#: pandas, gRPC and Starlette that `auditlake verify` never uses;
#: tests/e2e/test_cli_lazy.py checks that the modules add exactly these names.
STAGE_COMMANDS: dict[str, str] = {
    "verify": "integrity.verify",
    "proof": "integrity.proof_command",
    "monitor": "integrity.proof_command",
    "users": "admin.server",
    "export": "admin.export",
    "admin-serve": "admin.process",
    "retention": "retention.job",
    "import": "retention.backfill",
    "erase": "retention.erase",
    "compact": "lake.compact",
}

#: The top-level options that take a value (``--log-level DEBUG``).
_VALUED_OPTIONS = ("--log-level",)


def named_command(argv: list[str]) -> str | None:
    """The subcommand ``argv`` names (its first non-option argument), or None
    when that is not certain: an option other than --log-level comes first
    (``--help``, ``--version``, a typo), or there is none.  None registers
    every subcommand, so help and errors read as if nothing were lazy."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("-"):
            return arg
        name = arg.split("=", 1)[0]
        # argparse accepts unambiguous prefixes (--log DEBUG); "--" alone is no option.
        if len(name) < 3 or not any(opt.startswith(name) for opt in _VALUED_OPTIONS):
            return None
        i += 1 if "=" in arg else 2
    return None


def cmd_serve(args: argparse.Namespace) -> int:
    from auditlake.collector.server import Collector, ready_file_write  # noqa: PLC0415

    data = DataDir.from_args(args)
    toml = load_toml(config_path(args, data.config_file))
    config = collector_config(
        toml,
        grpc_listen=args.grpc_listen,
        http_listen=args.http_listen,
        seal_interval_s=args.seal_interval,
        checkpoint_mirror=args.checkpoint_mirror,
        **tls_overrides(args),
    )
    collector = Collector(data, config)
    collector.config_toml = toml  # type: ignore[attr-defined]
    collector.config_file = config_path(args, data.config_file)

    def stop(signum: int, frame: FrameType | None) -> None:
        collector.request_stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    # `kill -USR1 PID` prints every thread's stack to stderr: what a collector
    # that does not stop (or does not answer) is waiting for.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    collector.start()
    http = collector.http.address if collector.http is not None else ""
    print(f"auditlake collector listening: grpc={collector.grpc_address}"
          + (f" http={'https' if config.tls else 'http'}://{http}" if http else ""), flush=True)
    if args.ready_file:
        ready_file_write(args.ready_file, collector.grpc_address, http)
    collector.wait()
    collector.stop()
    return 0


def cmd_keys_create(args: argparse.Namespace) -> int:
    from auditlake.collector.ingest.keys import IngestKeyStore  # noqa: PLC0415
    from auditlake.collector.storage.tiers import fleet_state  # noqa: PLC0415

    data = DataDir.from_args(args)
    data.create()
    # The fleet state: DIR/keys, or the --lake's _auditlake/ that every collector of it reads.
    token = IngestKeyStore(fleet_state(data)).create(args.tenant, args.description or "")
    print(token)
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    from auditlake.collector.ingest.keys import IngestKeyStore  # noqa: PLC0415
    from auditlake.collector.storage.tiers import fleet_state  # noqa: PLC0415

    data = DataDir.from_args(args)
    # IngestKeyStore.keys() is a method returning IngestKey records, not a dict view.
    for k in IngestKeyStore(fleet_state(data)).keys():  # noqa: SIM118
        print(f"{k.key_id}\t{','.join(sorted(k.tenants))}\t{k.created_at}\t{k.description}")
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    from auditlake.collector.ingest.keys import IngestKeyStore  # noqa: PLC0415
    from auditlake.collector.storage.tiers import fleet_state  # noqa: PLC0415

    data = DataDir.from_args(args)
    if not IngestKeyStore(fleet_state(data)).revoke(args.key_id):
        print(f"auditlake: no ingest key with id {args.key_id}", file=sys.stderr)
        return 1
    return 0


def cmd_keys_public(args: argparse.Namespace) -> int:
    from auditlake.collector.integrity.signing import SigningKey  # noqa: PLC0415

    data = DataDir.from_args(args)
    if data.shared_lake:
        return _print_fleet_keys(data)
    data.create()
    sys.stdout.write(SigningKey.load_or_create(data.keys).public_pem().decode())
    return 0


def _print_fleet_keys(data: DataDir) -> int:
    """Every writer's public key of a shared lake, each labelled with its
    writer id (``verify --public-key`` binds each key to that writer)."""
    from auditlake.collector.integrity.signing import WRITER_LABEL  # noqa: PLC0415
    from auditlake.collector.storage.tiers import fleet_state  # noqa: PLC0415
    from auditlake.collector.storage.writers import list_writers  # noqa: PLC0415

    writers = list_writers(fleet_state(data))
    if not writers:
        print(f"auditlake keys public: no collector has written to {data.lake_uri} yet", file=sys.stderr)
        return 1
    for w in writers:
        sys.stdout.write(f"{WRITER_LABEL}{w.writer_id} (host {w.host}, data {w.data_dir}, since {w.registered})\n")
        sys.stdout.write(w.public_key_pem if w.public_key_pem.endswith("\n") else w.public_key_pem + "\n")
    return 0


#: ``auditlake query --format`` values, as --help describes them
#: (collector/lake/query.py ``format_result`` writes them).
QUERY_FORMATS = {
    "table": "aligned text (default)",
    "csv": "RFC 4180, a header row first",
    "json": "one JSON document, an array of objects",
    "jsonl": "JSON Lines, one object per line",
}


def cmd_query(args: argparse.Namespace) -> int:
    import duckdb  # noqa: PLC0415

    from auditlake.collector.lake.query import run_query  # noqa: PLC0415

    data = DataDir.from_args(args)
    sql = args.sql if args.sql != "-" else sys.stdin.read()
    try:
        # The cold tier joins the view through retention's hook in query.connect.
        out = run_query(data, sql, args.format, toml=load_toml(config_path(args, data.config_file)))
    except duckdb.Error as exc:
        print(f"auditlake query: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(out)
    return 0


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `auditlake` parser.  With ``command`` (a name of BUILTIN_COMMANDS
    or STAGE_COMMANDS) only that subcommand's module is imported (none for a
    builtin); otherwise all are, which is what --help and an unknown name need."""
    parser = argparse.ArgumentParser(
        prog="auditlake",
        description="auditlake collector: ingest, store, verify and query audit events.",
    )
    parser.add_argument("--version", action="version", version=f"auditlake {__version__}")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", help="run the collector (gRPC ingest, sealing, admin UI)")
    add_data_arg(p)
    p.add_argument("--config", metavar="FILE", help="TOML configuration (default DIR/auditlake.toml)")
    p.add_argument(
        "--grpc-listen", metavar="HOST:PORT", help="gRPC address (default 127.0.0.1:4317; port 0 picks a free one)"
    )
    p.add_argument(
        "--http-listen", metavar="HOST:PORT", help="admin UI/API address (default 127.0.0.1:8080; '' disables)"
    )
    p.add_argument("--seal-interval", type=float, metavar="SECONDS", help="seconds between seals (default 1)")
    p.add_argument("--checkpoint-mirror", metavar="DIR", help="second folder for signed checkpoints")
    add_tls_args(p)
    p.add_argument("--ready-file", metavar="FILE", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_serve)

    keys = sub.add_parser("keys", help="ingest API keys and the signing key")
    ks = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    p = ks.add_parser("create", help="create an ingest key for one or more tenants; prints it once")
    add_data_arg(p)
    p.add_argument("--tenant", action="append", required=True, help="tenant the key may write (repeatable)")
    p.add_argument("--description", help="what the key is for")
    p.set_defaults(func=cmd_keys_create)
    p = ks.add_parser("list", help="list ingest keys (ids and tenants; secrets are never stored)")
    add_data_arg(p)
    p.set_defaults(func=cmd_keys_list)
    p = ks.add_parser("revoke", help="revoke an ingest key by id")
    add_data_arg(p)
    p.add_argument("key_id")
    p.set_defaults(func=cmd_keys_revoke)
    p = ks.add_parser("public", help="print the checkpoint signing public key (PEM) for auditors; "
                      "with --lake, every writer's key, each labelled with its writer id")
    add_data_arg(p)
    p.set_defaults(func=cmd_keys_public)

    p = sub.add_parser("query", help="run DuckDB SQL over the lake (view: events)")
    add_data_arg(p)
    p.add_argument("--config", metavar="FILE", help=argparse.SUPPRESS)
    p.add_argument("--format", choices=tuple(QUERY_FORMATS), default="table",
                   help="; ".join(f"{name}: {what}" for name, what in QUERY_FORMATS.items()))
    p.add_argument("sql", help="SQL text, or - to read it from stdin")
    p.set_defaults(func=cmd_query)

    if command in BUILTIN_COMMANDS:
        return parser
    modules = [STAGE_COMMANDS[command]] if command in STAGE_COMMANDS else STAGE_COMMANDS.values()
    for module in dict.fromkeys(modules):  # a module adding two names registers once
        importlib.import_module(f"auditlake.collector.{module}").register(sub)
    return parser


class RepeatLimit(logging.Filter):
    """At most ``burst`` records of one kind (logger, level, message
    template) per ``window_s``; then one line saying how many were dropped.
    A client that makes the server fail the same way thousands of times a
    second (descriptors exhausted, a malformed flood) fills no disk."""

    def __init__(self, burst: int = 20, window_s: float = 10.0) -> None:
        super().__init__()
        self.burst = burst
        self.window_s = window_s
        self._seen: dict[tuple[str, int, str], tuple[float, int, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, str(record.msg))
        now = time.monotonic()
        start, count, dropped = self._seen.get(key, (now, 0, 0))
        if now - start > self.window_s:
            if dropped:
                record.msg = f"{record.msg} [{dropped} more like this in the last {self.window_s:g} s not logged]"
            start, count, dropped = now, 0, 0
        count += 1
        keep = count <= self.burst
        self._seen[key] = (start, count, dropped + (0 if keep else 1))
        if len(self._seen) > 10_000:
            self._seen.clear()
        return keep


def _raise_open_files_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard limit: connections are descriptors,
    and running out of them fails ingest and HTTP alike."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["proof"]:
        # `proof EVENT_ID` is `proof event EVENT_ID`; only `proof` needs the module.
        from auditlake.collector.integrity.proof_command import shorthand  # noqa: PLC0415

        argv = shorthand(argv)
    args = build_parser(named_command(argv)).parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(RepeatLimit())
    _raise_open_files_limit()
    try:
        # Whatever the caller's umask: audit data is not for every local user.
        os.umask(data_umask())
        return int(args.func(args))
    except CollectorError as exc:
        print(f"auditlake: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
