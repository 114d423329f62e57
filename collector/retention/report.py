"""What a retention run did (or, for a dry run, would do): the plan and the
totals, printed by `auditlake retention run` and logged by the collector;
and the progress log of long runs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from auditlake.collector.retention.plan import DayPlan, plan_json

log = logging.getLogger(__name__)


@dataclass
class RetentionReport:
    """The outcome (or, for a dry run, the plan) of a retention run."""

    dry_run: bool
    plan: list[DayPlan] = field(default_factory=list)
    moved_days: int = 0
    moved_files: int = 0
    moved_bytes: int = 0
    moved_rows: int = 0
    expired_days: int = 0
    expired_files: int = 0
    expired_rows: int = 0
    held_days: int = 0
    seconds: float = 0.0
    error: str = ""

    def text(self) -> str:
        """Human summary (the plan, then totals)."""
        head = "retention plan (dry run: nothing changed)" if self.dry_run else "retention run"
        lines = [head] + [p.line() for p in self.plan]
        if not self.plan:
            lines.append("nothing to do")
        if not self.dry_run:
            lines.append(
                f"moved {self.moved_days} partitions ({self.moved_files} files, {self.moved_bytes:,} B, "
                f"{self.moved_rows:,} events); expired {self.expired_days} partitions "
                f"({self.expired_files} files, {self.expired_rows:,} events); "
                f"{self.held_days} held; {self.seconds:.1f} s"
            )
        if self.error:
            lines.append(f"error: {self.error}")
        return "\n".join(lines) + "\n"

    def as_json(self) -> dict[str, Any]:
        """The report as JSON values."""
        return {k: v for k, v in self.__dict__.items() if k != "plan"} | {"plan": plan_json(self.plan)}


class Progress:
    """Logs progress of long runs (every 10 s or 5 % of the partitions)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.last = time.monotonic()

    def step(self, what: str, report: RetentionReport, n: int = 1) -> None:
        """Count ``n`` partitions done (``what``: the step, for the log)."""
        before = self.done
        self.done += n
        now = time.monotonic()
        tick = max(1, self.total // 20)
        if self.total and (now - self.last >= 10 or self.done >= self.total or before // tick != self.done // tick):
            self.last = now
            log.info("retention: %d/%d partitions (%s); moved %s B, %s events so far",
                     self.done, self.total, what, f"{report.moved_bytes:,}", f"{report.moved_rows:,}")
