"""Running retention: on its schedule inside `auditlake serve`, on request
(`auditlake retention run` handing the job to the collector that holds the
data dir), or from the command line when no collector runs.

Every move and expiry goes through a signed checkpoint of the writer's chain
(kind ``move`` / ``expire``) and is itself an audit event of the system tenant.
The crash-safety argument and the settings are in docs/retention.md.  The
package's modules: ``policy`` (the settings), ``plan``, ``move`` and
``expire`` (the steps), ``run`` (one run), ``events`` (the meta-audit),
``checkpoints``, ``report`` and ``interrupts``; the cold index and the query
side of the cold tier are in ``lake.cold``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from auditlake.collector.config import load_toml
from auditlake.collector.lake.cold import ColdIndex
from auditlake.collector.retention.checkpoints import sealer_appender
from auditlake.collector.retention.events import collector_emitter
from auditlake.collector.retention.policy import RetentionPolicy, load_policy
from auditlake.collector.retention.report import RetentionReport
from auditlake.collector.retention.run import RetentionJob
from auditlake.collector.storage.datadir import DataDir, try_lock
from auditlake.collector.storage.local import fsync_dir
from auditlake.collector.storage.store import LocalStore
from auditlake.collector.storage.tiers import hot_tier

log = logging.getLogger(__name__)


def run_in_collector(collector: Any, policy: RetentionPolicy, *, dry_run: bool = False,
                     cancel: threading.Event | None = None) -> RetentionReport:
    """Run the job with a collector's sealer (checkpoints) and WAL (meta-audit)."""
    job = RetentionJob(collector.data, policy, append_checkpoint=sealer_appender(collector.sealer),
                       emit=collector_emitter(collector), writer_id=collector.sealer.writer_id,
                       cancel=cancel, lock=getattr(collector, "maintenance_lock", None))
    return job.dry_run() if dry_run else job.run()


def _request_dir(data: DataDir) -> Path:
    return data.state / "retention-requests"


def start_scheduler(collector: Any) -> Callable[[], None]:
    """Start the retention thread of a running collector (policy from
    ``collector.config_toml`` or DIR/auditlake.toml).  Raises ConfigError when
    the policy is invalid, so `auditlake serve` refuses to start.  Returns a
    callable that stops the thread (waiting for the current step)."""
    toml = getattr(collector, "config_toml", None)
    if toml is None:
        toml = load_toml(collector.data.config_file)
    policy = load_policy(toml)
    if policy is None:
        return lambda: None
    finish_interrupted_moves(collector.data)
    stop = threading.Event()
    thread = threading.Thread(target=_schedule, args=(collector, policy, stop), name="auditlake-retention",
                              daemon=True)
    thread.start()

    def stopper() -> None:
        stop.set()
        thread.join()

    return stopper


def _schedule(collector: Any, policy: RetentionPolicy, stop: threading.Event) -> None:
    """The retention thread: run requests as they arrive, and the policy on
    its schedule, until ``stop`` is set."""
    requests = _request_dir(collector.data)
    interval = policy.schedule_s
    next_run = time.monotonic() + min(interval, 60.0) if interval else float("inf")
    while not stop.wait(0.5):
        try:
            pending = sorted(requests.glob("*.request")) if requests.exists() else []
            if pending:
                req = pending[0]
                body = json.loads(req.read_text())
                report = run_in_collector(collector, policy, dry_run=bool(body.get("dry_run")), cancel=stop)
                _write_json(req.with_suffix(".result"), {"text": report.text(), "error": report.error})
                req.unlink()
                _count_run(collector, ok=not report.error)
            elif time.monotonic() >= next_run:
                report = run_in_collector(collector, policy, cancel=stop)
                log.info("%s", report.text().rstrip())
                next_run = time.monotonic() + interval
                _count_run(collector, ok=not report.error)
        except Exception:  # noqa: BLE001 - the next tick retries; nothing is lost
            log.exception("retention run failed; it will be retried")
            next_run = time.monotonic() + min(interval or 60.0, 60.0)
            _count_run(collector, ok=False)


def _count_run(collector: Any, *, ok: bool) -> None:
    """Count a run in the collector's metrics (auditlake_retention_runs_total)."""
    metrics = getattr(collector, "metrics", None)
    if metrics is not None:
        metrics.retention_run(ok)


def finish_interrupted_moves(data: DataDir) -> int:
    """Remove hot copies whose move checkpoint is signed (left by a crash),
    before compaction could merge them into a new hot file; returns how many."""
    index = ColdIndex.load(data, rebuild=False)
    if index.refresh(data):
        index.save()
    hot = hot_tier(data)
    done = 0
    for e in index.files.values():
        if hot.exists(e["hot"]):
            hot.delete(e["hot"])
            if isinstance(hot, LocalStore):
                fsync_dir(hot.local_path(e["hot"]).parent)
            done += 1
    if done:
        log.info("retention: removed %d hot files an interrupted run had already moved to cold", done)
    return done


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


def _hand_to_collector(data: DataDir, dry_run: bool, wait_s: float) -> int:
    """Ask the collector holding the data dir to run the job; print its result."""
    folder = _request_dir(data)
    folder.mkdir(parents=True, exist_ok=True)
    req = folder / f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.request"
    _write_json(req, {"dry_run": dry_run})
    result = req.with_suffix(".result")
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if result.exists():
            doc = json.loads(result.read_text())
            result.unlink()
            sys.stdout.write(doc["text"])
            return 1 if doc.get("error") else 0
        time.sleep(0.2)
    req.unlink(missing_ok=True)
    print(f"auditlake retention: a collector is running on {data.root} and did not run the job within "
          f"{wait_s:.0f} s; is [retention] configured in the configuration it was started with?",
          file=sys.stderr)
    return 2


def cmd_run(args: argparse.Namespace) -> int:
    """`auditlake retention run`: run the policy now (or print the plan)."""
    from auditlake.collector.config import (
        collector_config,  # noqa: PLC0415
        config_path,  # noqa: PLC0415
    )
    from auditlake.collector.lake.writer import LakeWriter  # noqa: PLC0415

    data = DataDir.from_args(args)
    toml = load_toml(config_path(args, data.config_file))
    policy = load_policy(toml)
    if policy is None:
        print(f"auditlake retention: no [retention] policy in {config_path(args, data.config_file)}", file=sys.stderr)
        return 2
    if args.dry_run:
        report = RetentionJob(data, policy).dry_run()
        sys.stdout.write(report.text())
        return 0
    lock = try_lock(data)
    if lock is None:
        return _hand_to_collector(data, False, args.wait)
    lock.close()
    collector = LakeWriter(data, collector_config(toml, http_listen=""))
    try:
        report = run_in_collector(collector, policy)
    finally:
        collector.stop()
    sys.stdout.write(report.text())
    return 1 if report.error else 0


def register(subparsers: Any) -> None:
    """Add `auditlake retention run`."""
    from auditlake.collector.config import add_data_arg  # noqa: PLC0415

    p = subparsers.add_parser("retention", help="move old partitions to cold storage, expire past the policy")
    sub = p.add_subparsers(dest="retention_command", required=True, metavar="ACTION")
    r = sub.add_parser("run", help="run the [retention] policy now (the collector also runs it daily)")
    add_data_arg(r)
    r.add_argument("--config", metavar="FILE", help="TOML configuration (default DIR/auditlake.toml)")
    r.add_argument("--dry-run", action="store_true", help="print the plan; change nothing")
    r.add_argument("--wait", type=float, default=3600.0, metavar="SECONDS",
                   help="when a collector is running, how long to wait for it to run the job")
    r.set_defaults(func=cmd_run)
