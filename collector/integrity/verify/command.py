"""The ``auditlake verify`` command: its arguments, progress lines on
stderr, the report on stdout and the exit status."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from auditlake.collector.config import load_toml
from auditlake.collector.integrity.verify.run import verify_lake
from auditlake.collector.storage.datadir import DataDir


class _StderrProgress:
    """Progress lines on stderr, at most one a second per phase (and each phase's end)."""

    def __init__(self, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self.last = 0.0
        self.t0 = time.monotonic()

    def __call__(self, phase: str, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self.last < self.interval_s:
            return
        self.last = now
        unit = {"digest": "bytes", "hash": "events"}.get(phase, "steps")
        pct = f" ({100 * done / total:.0f}%)" if total else ""
        print(f"verify: {phase} {done:,}/{total:,} {unit}{pct}, {now - self.t0:.1f} s",
              file=sys.stderr, flush=True)


def cmd_verify(args: argparse.Namespace) -> int:
    """Run ``auditlake verify``: 0 when clean, 1 when problems were found."""
    from auditlake.collector.config import collector_config  # noqa: PLC0415

    data = DataDir.from_args(args)
    toml = load_toml(Path(args.config) if args.config else data.config_file)
    mirrors = list(args.checkpoint_mirror or [])
    if not mirrors:
        configured = collector_config(toml).checkpoint_mirror
        if configured and Path(configured).is_dir():
            mirrors.append(configured)
    report = verify_lake(
        data, public_key=args.public_key, date_from=args.date_from, date_to=args.date_to,
        mirrors=mirrors, progress=None if args.quiet else _StderrProgress(), toml=toml,
        expect_heads=args.expect_head or (),
    )
    if args.format == "json":
        sys.stdout.write(json.dumps(report.to_json(), indent=1) + "\n")
    else:
        sys.stdout.write(report.to_text())
    return 0 if report.ok else 1


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``auditlake verify``."""
    from auditlake.collector.config import add_data_arg  # noqa: PLC0415

    p = subparsers.add_parser(
        "verify",
        help="re-hash the lake and check it against its signed checkpoints",
        description="Re-read every lake file, recompute every event's hash, check sequences, "
        "file digests, checkpoint signatures and links; name each problem.  Exit 0 when "
        "clean, 1 when problems were found, 2 on a usage error.",
    )
    add_data_arg(p)
    p.add_argument("--config", metavar="FILE", help=argparse.SUPPRESS)
    p.add_argument("--from", dest="date_from", metavar="YYYY-MM-DD",
                   help="first date partition to re-hash (weaker guarantee: docs/integrity.md)")
    p.add_argument("--to", dest="date_to", metavar="YYYY-MM-DD",
                   help="last date partition to re-hash")
    p.add_argument("--public-key", metavar="FILE", action="append",
                   help="Ed25519 public key(s) (PEM, as `auditlake keys public` prints them: one "
                   "key, or every writer's of a shared lake) to check signatures with, instead "
                   "of the data dir's (or the shared lake's registry); repeatable")
    p.add_argument("--checkpoint-mirror", metavar="DIR", action="append",
                   help="a second checkpoint folder to compare (repeatable; default: the "
                   "configured mirror)")
    p.add_argument("--expect-head", metavar="FILE", action="append",
                   help="a head recorded earlier that the lake must still pass through: a checkpoint "
                   "file, an `auditlake monitor` state file or a `verify --format json` report "
                   "(repeatable); catches a lake rolled back together with its checkpoints")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(func=cmd_verify)
