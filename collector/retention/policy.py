"""The retention policy: the ``[retention]`` table of auditlake.toml as a
frozen value (how long partitions stay hot, when cold ones expire, the floor
no policy may delete earlier than), its legal holds and its schedule.

Everything is validated when the policy is loaded, so a bad table is a
ConfigError naming the setting before anything runs; docs/retention.md lists
the settings.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from auditlake.collector.errors import ConfigError
from auditlake.collector.storage.tiers import Tier, tier_from_uri

_SCHEDULES = {"daily": 86400.0, "hourly": 3600.0, "weekly": 7 * 86400.0, "off": 0.0}


def _as_date(name: str, value: Any) -> dt.date | None:
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError as exc:
        raise ConfigError(f"{name}: expected a date YYYY-MM-DD, got {value!r}") from exc


@dataclass(frozen=True)
class LegalHold:
    """Stops deletion of partitions in a date range and/or holding a tenant's
    events, for ``reason``.  A hold without dates covers every date."""

    reason: str
    tenant: str | None = None
    start: dt.date | None = None
    end: dt.date | None = None

    def __post_init__(self) -> None:
        if not self.reason.strip():
            raise ConfigError("[[retention.legal_hold]] reason is required (why the data is held)")
        if self.tenant is None and self.start is None and self.end is None:
            raise ConfigError(
                f"[[retention.legal_hold]] {self.reason!r}: give a tenant and/or from/to dates"
            )
        if self.start and self.end and self.end < self.start:
            raise ConfigError(f"[[retention.legal_hold]] {self.reason!r}: 'to' is before 'from'")

    def covers_date(self, day: dt.date) -> bool:
        """True when ``day`` is inside the hold's date range."""
        return (self.start is None or day >= self.start) and (self.end is None or day <= self.end)

    def holds(self, day: dt.date, tenants: Callable[[], set[str]]) -> bool:
        """True when a partition of ``day`` whose tenants ``tenants()`` returns
        must be kept (``tenants`` is called only when the hold names one)."""
        if not self.covers_date(day):
            return False
        return self.tenant is None or self.tenant in tenants()

    def as_json(self) -> dict[str, Any]:
        """What a tombstone records about a hold in force."""
        return {
            "reason": self.reason,
            "tenant": self.tenant,
            "from": self.start.isoformat() if self.start else None,
            "to": self.end.isoformat() if self.end else None,
        }


@dataclass(frozen=True)
class RetentionPolicy:
    """The ``[retention]`` table of auditlake.toml (see docs/retention.md).

    ``hot_days``: days a partition stays in the hot lake before it moves to
    ``cold``; ``delete_after_days``: age (days) after which cold partitions are
    deleted (None: never); ``minimum_days``: the floor no policy may delete
    earlier than (a guard against a typo destroying evidence)."""

    cold: str
    hot_days: int = 30
    delete_after_days: int | None = None
    minimum_days: int = 365
    endpoint_url: str = ""
    region: str = ""
    schedule_s: float = 86400.0
    #: Seconds an object-store request may take before the step fails.
    timeout_s: float = 60.0
    legal_holds: tuple[LegalHold, ...] = ()

    def __post_init__(self) -> None:
        if not self.cold:
            raise ConfigError("[retention] cold is required: where old partitions go (file:///path or s3://bucket/prefix)")
        if self.hot_days < 1:
            raise ConfigError(f"[retention] hot_days must be at least 1, got {self.hot_days}")
        if self.minimum_days < 0:
            raise ConfigError(f"[retention] minimum_days must be >= 0, got {self.minimum_days}")
        if self.timeout_s <= 0:
            raise ConfigError(f"[retention] timeout_s must be positive, got {self.timeout_s}")
        if self.schedule_s < 0:
            raise ConfigError("[retention] schedule must be daily, hourly, weekly, off or a number of seconds")
        if self.delete_after_days is not None:
            if self.delete_after_days < self.hot_days:
                raise ConfigError(
                    f"[retention] delete_after_days = {self.delete_after_days} is shorter than "
                    f"hot_days = {self.hot_days}: data must not be deleted before it has even left the hot lake"
                )
            if self.delete_after_days < self.minimum_days:
                raise ConfigError(
                    f"[retention] delete_after_days = {self.delete_after_days} would delete audit data "
                    f"earlier than minimum_days = {self.minimum_days}: refusing this policy. Raise "
                    "delete_after_days, or lower minimum_days if your obligations really allow it"
                )

    def move_before(self, today: dt.date) -> dt.date:
        """Partitions dated before this move to cold."""
        return today - dt.timedelta(days=self.hot_days)

    def expire_before(self, today: dt.date) -> dt.date | None:
        """Partitions dated before this are deleted (unless held); None: never."""
        if self.delete_after_days is None:
            return None
        return today - dt.timedelta(days=self.delete_after_days)

    def tier(self) -> Tier:
        """The cold tier this policy names."""
        return tier_from_uri(self.cold, endpoint_url=self.endpoint_url, region=self.region,
                             timeout_s=self.timeout_s)

    def as_json(self) -> dict[str, Any]:
        """What a tombstone records about the policy that deleted data."""
        return {
            "hot_days": self.hot_days,
            "delete_after_days": self.delete_after_days,
            "minimum_days": self.minimum_days,
            "cold": self.cold,
        }


def _schedule_seconds(value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip().lower()
    if text in _SCHEDULES:
        return _SCHEDULES[text]
    try:
        return float(text)
    except ValueError as exc:
        raise ConfigError(
            f"[retention] schedule = {value!r}: expected daily, hourly, weekly, off or seconds"
        ) from exc


_POLICY_KEYS = {"cold", "hot_days", "delete_after_days", "minimum_days", "endpoint_url",
                "region", "schedule", "timeout_s", "legal_hold"}


def load_policy(toml: dict[str, Any]) -> RetentionPolicy | None:
    """The policy of the ``[retention]`` table (AUDITLAKE_RETENTION_<KEY>
    environment variables override scalar keys), or None when there is none.
    Raises ConfigError naming the setting when the policy is invalid."""
    table = dict(toml.get("retention", {}) or {})
    for key in _POLICY_KEYS - {"legal_hold"}:
        env = os.environ.get(f"AUDITLAKE_RETENTION_{key.upper()}")
        if env is not None:
            table[key] = env
    if not table:
        return None
    unknown = set(table) - _POLICY_KEYS
    if unknown:
        raise ConfigError(f"unknown setting(s) in [retention]: {', '.join(sorted(unknown))}")

    def integer(name: str, default: int | None) -> int | None:
        if name not in table or table[name] in ("", None):
            return default
        try:
            return int(table[name])
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"[retention] {name}: expected a whole number of days, got {table[name]!r}") from exc

    holds = []
    for i, h in enumerate(table.get("legal_hold", []) or []):
        if not isinstance(h, dict):
            raise ConfigError("[[retention.legal_hold]] entries must be tables")
        extra = set(h) - {"reason", "tenant", "from", "to"}
        if extra:
            raise ConfigError(f"[[retention.legal_hold]] #{i + 1}: unknown key(s) {', '.join(sorted(extra))}")
        holds.append(LegalHold(
            reason=str(h.get("reason", "")),
            tenant=str(h["tenant"]) if h.get("tenant") else None,
            start=_as_date(f"[[retention.legal_hold]] #{i + 1} from", h.get("from")),
            end=_as_date(f"[[retention.legal_hold]] #{i + 1} to", h.get("to")),
        ))
    return RetentionPolicy(
        cold=str(table.get("cold", "")),
        hot_days=integer("hot_days", 30) or 0,
        delete_after_days=integer("delete_after_days", None),
        minimum_days=integer("minimum_days", 365) or 0,
        endpoint_url=str(table.get("endpoint_url", "")),
        region=str(table.get("region", "")),
        schedule_s=_schedule_seconds(table.get("schedule", "daily")),
        timeout_s=_schedule_seconds(table.get("timeout_s", 60.0)),
        legal_holds=tuple(holds),
    )
