"""Planning a retention run: which day partitions move to cold, which moves
or expiries an interrupted run left to finish, which cold days expire and
which a legal hold keeps.  Planning reads the lake and the cold index and
changes nothing: a dry run prints the plan.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from auditlake.collector.lake.cold import ColdIndex, partition_day
from auditlake.collector.retention.policy import RetentionPolicy
from auditlake.collector.storage.store import Store, StoredObject

#: Days and bytes moved (or expired) under one checkpoint: bounds the work a
#: crash repeats, while a long backlog does not cost a checkpoint per day.
#: (AUDITLAKE_RETENTION_GROUP_DAYS overrides the days, for tests.)
GROUP_DAYS = 32
GROUP_BYTES = 256 * 1024 * 1024

#: The order of a run: finish what a crash left, then move, then expire.
_ORDER = {"finish_move": 0, "move": 1, "finish_expire": 2, "hold": 3, "expire": 4}


@dataclass
class DayPlan:
    """What the job will do to one day partition."""

    day: dt.date
    action: str  # "move", "finish_move", "expire", "finish_expire", "hold"
    files: list[str] = field(default_factory=list)
    bytes: int = 0
    rows: int = 0
    reasons: list[str] = field(default_factory=list)

    def line(self) -> str:
        """One line of the printed plan."""
        what = {"move": "move to cold", "finish_move": "finish move (remove hot copy)",
                "expire": "expire (delete)", "hold": "keep (legal hold)",
                "finish_expire": "finish expiry (delete cold copy)"}[self.action]
        extra = f" — {'; '.join(self.reasons)}" if self.reasons else ""
        return (f"{self.day.isoformat()}  {what:32s} {len(self.files):4d} files "
                f"{self.bytes:>14,d} B {self.rows:>12,d} events{extra}")


class Planner:
    """Plans one run over the hot lake ``hot`` and the cold tier ``tier``
    (reading tenants of held days from the files, once per day)."""

    def __init__(self, hot: Store, tier: Store, index: ColdIndex, policy: RetentionPolicy,
                 today: dt.date) -> None:
        self.hot = hot
        self.tier = tier
        self.index = index
        self.policy = policy
        self.today = today
        self._tenant_cache: dict[dt.date, set[str]] = {}

    def plan(self) -> list[DayPlan]:
        """What a run would do now: finishing first, then oldest day first."""
        plans = self._move_plans()
        plans += self._finish_expire_plans()
        before = self.policy.expire_before(self.today)
        if before is not None:
            plans += self._expire_plans(before, [p for p in plans if p.action == "move"])
        plans.sort(key=lambda p: (_ORDER[p.action], p.day))
        return plans

    # -- moving ----------------------------------------------------------------

    def hot_days(self) -> dict[dt.date, list[StoredObject]]:
        """The hot files of each day old enough to move."""
        out: dict[dt.date, list[StoredObject]] = {}
        cutoff = self.policy.move_before(self.today)
        for obj in self.hot.list("events"):
            parts = obj.key.split("/")
            if len(parts) != 3 or not parts[1].startswith("date=") or not parts[2].endswith(".parquet"):
                continue
            try:
                day = dt.date.fromisoformat(parts[1][5:])
            except ValueError:
                continue
            if day < cutoff:
                out.setdefault(day, []).append(obj)
        return out

    def _move_plans(self) -> list[DayPlan]:
        """Days to move, and moves whose hot copies a crash left behind."""
        plans: list[DayPlan] = []
        committed_hot = {e["hot"] for e in self.index.files.values()}
        for day, files in sorted(self.hot_days().items()):
            done = [o for o in files if o.key in committed_hot]
            new = [o for o in files if o.key not in committed_hot]
            if done:
                plans.append(DayPlan(day, "finish_move", [o.key for o in done], sum(o.size for o in done)))
            if new:
                plans.append(DayPlan(day, "move", [o.key for o in new], sum(o.size for o in new),
                                     sum(self._hot_rows(o.key) for o in new)))
        return plans

    def _hot_rows(self, rel: str) -> int:
        # The plan's event count is informative: an unreadable footer counts 0.
        with contextlib.suppress(OSError, pa.ArrowException), self.hot.open_input(rel) as f:
            return int(pq.read_metadata(f).num_rows)
        return 0

    # -- expiring --------------------------------------------------------------

    def _finish_expire_plans(self) -> list[DayPlan]:
        """Cold files an expiry's tombstone removed that may still exist."""
        pending = self.index.pending_delete
        return [DayPlan(day, "finish_expire", [r for r in pending if partition_day(r) == day])
                for day in sorted({partition_day(r) for r in pending})]

    def _expire_plans(self, before: dt.date, moving: list[DayPlan]) -> list[DayPlan]:
        """Cold days (and days moving now) older than ``before``: expire, or
        keep under a legal hold."""
        plans: list[DayPlan] = []
        cold_days = sorted({partition_day(r) for r in self.index.files} | {p.day for p in moving})
        for day in cold_days:
            if day >= before:
                continue
            move = next((p for p in moving if p.day == day), None)
            cold_files = self.index.day_files(day)
            reasons = self._hold_reasons(day, move)
            if reasons:
                plans.append(DayPlan(day, "hold", [r for r, _ in cold_files] + (move.files if move else []),
                                     reasons=reasons))
                continue
            mv = move or DayPlan(day, "move")
            rels = [r for r, _ in cold_files] + [f"(after move) {r}" for r in mv.files]
            plans.append(DayPlan(day, "expire", rels,
                                 sum(int(e["bytes"]) for _, e in cold_files) + mv.bytes,
                                 sum(int(e["rows"]) for _, e in cold_files) + mv.rows))
        return plans

    def _hold_reasons(self, day: dt.date, move: DayPlan | None) -> list[str]:
        """Why ``day`` must be kept (the reasons of the holds covering it); a
        tenant's hold reads the day's tenants only when one covers the date."""
        holds = [h for h in self.policy.legal_holds if h.covers_date(day)]
        reasons = [h.reason for h in holds if h.tenant is None]
        if reasons:
            return reasons
        tenant_holds = [h for h in holds if h.tenant]
        if not tenant_holds:
            return []
        tenants = self._cold_tenants(day)
        if move is not None:
            tenants = tenants | self._hot_tenants(move)
        return [h.reason for h in tenant_holds if h.tenant in tenants]

    def _cold_tenants(self, day: dt.date) -> set[str]:
        """Tenants with events in the day's cold files (read from the files)."""
        if day not in self._tenant_cache:
            self._tenant_cache[day] = _tenants(self.tier, [rel for rel, _ in self.index.day_files(day)])
        return self._tenant_cache[day]

    def _hot_tenants(self, plan: DayPlan) -> set[str]:
        return _tenants(self.hot, plan.files)


def _tenants(store: Store, rels: list[str]) -> set[str]:
    tenants: set[str] = set()
    for rel in rels:
        with store.open_input(rel) as f:
            col = pq.read_table(f, columns=["tenant_id"]).column("tenant_id")
        tenants.update(pc.unique(col).to_pylist())
    return tenants


def groups(plan: list[DayPlan]) -> Iterable[tuple[str, list[DayPlan]]]:
    """Consecutive plan entries of one action, in groups of at most
    GROUP_DAYS days and (for moves) about GROUP_BYTES."""
    group: list[DayPlan] = []
    size = 0
    max_days = int(os.environ.get("AUDITLAKE_RETENTION_GROUP_DAYS", "") or GROUP_DAYS)
    for p in plan:
        if group and (p.action != group[0].action or len(group) >= max_days or size >= GROUP_BYTES):
            yield group[0].action, group
            group, size = [], 0
        group.append(p)
        size += p.bytes
    if group:
        yield group[0].action, group


def plan_json(plan: list[DayPlan]) -> list[dict[str, Any]]:
    """The plan as JSON values."""
    return [{"day": p.day.isoformat(), "action": p.action, "files": p.files, "bytes": p.bytes,
             "rows": p.rows, "reasons": p.reasons} for p in plan]
