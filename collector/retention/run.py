"""One retention run over one data dir: bring the cold index up to date,
plan, then finish interrupted work, move and expire group by group, each
group under the maintenance lock so compaction never replaces a file being
moved.  The steps themselves are in ``plan``, ``move`` and ``expire``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from auditlake.collector.errors import ConfigError
from auditlake.collector.lake.cold import ColdIndex
from auditlake.collector.retention.checkpoints import CheckpointAppender
from auditlake.collector.retention.events import Emitter, announce_pending
from auditlake.collector.retention.expire import Expirer
from auditlake.collector.retention.interrupts import Cancelled
from auditlake.collector.retention.move import Mover
from auditlake.collector.retention.plan import DayPlan, Planner, groups
from auditlake.collector.retention.policy import RetentionPolicy
from auditlake.collector.retention.report import Progress, RetentionReport
from auditlake.collector.storage.datadir import DataDir
from auditlake.collector.storage.maintenance import MaintenanceBusy
from auditlake.collector.storage.tiers import hot_tier, maintenance_lock

log = logging.getLogger(__name__)

#: One step of a run: does a group of plan entries of one action.
Step = Callable[[list[DayPlan], RetentionReport], None]

#: The actions the progress log counts, as it words them.
_DONE = {"move": "moved", "expire": "expired"}


def _keep_held(plans: list[DayPlan], report: RetentionReport) -> None:
    for p in plans:
        report.held_days += 1
        log.info("partition %s is under legal hold (%s): kept", p.day, "; ".join(p.reasons))


class RetentionJob:
    """One run of the policy over one data dir: plan, move, expire."""

    def __init__(self, data: DataDir, policy: RetentionPolicy, *,
                 append_checkpoint: CheckpointAppender | None = None,
                 emit: Emitter | None = None, writer_id: str = "",
                 today: dt.date | None = None, cancel: threading.Event | None = None,
                 lock: contextlib.AbstractContextManager[Any] | None = None) -> None:
        self.data = data
        self.policy = policy
        self.hot = hot_tier(data)
        self.tier = policy.tier()
        self.append_checkpoint = append_checkpoint
        self.emit = emit
        self.writer_id = writer_id or data.writer_id()
        self.today = today or dt.datetime.now(dt.UTC).date()
        self.cancel = cancel or threading.Event()
        #: Held through each group's copy, checkpoint and removal, so that
        #: compaction never replaces a file being moved.
        self.lock = lock if lock is not None else maintenance_lock
        self.index = ColdIndex.load(data, rebuild=False)
        self.planner = Planner(self.hot, self.tier, self.index, policy, self.today)

    def plan(self) -> list[DayPlan]:
        """What a run would do now, oldest day first."""
        return self.planner.plan()

    def dry_run(self) -> RetentionReport:
        """The plan; changes nothing (the index is refreshed in memory only)."""
        self.index.refresh(self.data)
        return RetentionReport(dry_run=True, plan=self.plan())

    def run(self) -> RetentionReport:
        """Finish interrupted work, move, expire; returns what was done."""
        if self.append_checkpoint is None or self.emit is None:
            raise ValueError("RetentionJob.run needs append_checkpoint and emit (use dry_run to plan)")
        started = time.monotonic()
        try:
            # Under the lock: in a shared lake the index is the fleet's, and
            # only the maintenance lease's holder may write it.
            with self.lock:
                if self.index.refresh(self.data):
                    self.index.save()
        except MaintenanceBusy as exc:
            log.info("retention: %s", exc)
            return RetentionReport(dry_run=False, error=str(exc))
        self._check_location()
        announce = functools.partial(announce_pending, self.index, self.emit, self.policy)
        steps = self._steps(self.append_checkpoint, announce)
        report = RetentionReport(dry_run=False, plan=self.plan())
        announce()
        progress = Progress(len([p for p in report.plan if p.action in _DONE]))
        try:
            for action, group in groups(report.plan):
                if self.cancel.is_set():
                    raise Cancelled
                with self.lock:
                    steps[action](group, report)
                if action in _DONE:
                    progress.step(f"{_DONE[action]} through {group[-1].day}", report, len(group))
        except Cancelled:
            report.error = "stopped before finishing (the next run continues)"
        except (OSError, pa.ArrowException) as exc:
            report.error = f"{type(exc).__name__}: {exc} (the next run continues from here)"
            log.error("retention run stopped: %s", report.error)
        report.seconds = time.monotonic() - started
        return report

    def _check_location(self) -> None:
        """Refuse to run when the policy names another cold location than the
        one holding the cold files (the files would be lost to the view)."""
        if self.index.cold and self.index.files and self.index.cold.rstrip("/") != self.policy.cold.rstrip("/"):
            raise ConfigError(
                f"[retention] cold = {self.policy.cold!r}, but {len(self.index.files)} cold files live at "
                f"{self.index.cold!r} (the move checkpoints say so): copy them to the new location and set "
                "'cold' in DIR/state/cold-index.json, or keep the old location"
            )

    def _steps(self, append_checkpoint: CheckpointAppender, announce: Callable[[], None]) -> dict[str, Step]:
        """The step doing each plan action."""
        mover = Mover(self.hot, self.tier, self.index, append_checkpoint, announce, self.policy.cold, self.cancel)
        expirer = Expirer(self.tier, self.index, append_checkpoint, announce, self.policy, self.cancel)
        return {"finish_move": mover.finish, "move": mover.move, "finish_expire": expirer.finish,
                "hold": _keep_held, "expire": expirer.expire}
