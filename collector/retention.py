"""Retention: move whole day partitions from the hot lake to cold storage,
expire cold partitions past the policy (never under a legal hold), and let
the ``events`` view read both tiers with date pruning.

Every move and expiry goes through a signed checkpoint of the writer's chain
(kind ``move`` / ``expire``) and is itself an audit event of the system tenant.
The crash-safety argument and the settings are in docs/retention.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from auditlake.collector.checkpoint import ChainCheckpoint, FileEntry, write_checkpoint
from auditlake.collector.config import load_toml
from auditlake.collector.datadir import DataDir
from auditlake.collector.errors import ConfigError, StorageError
from auditlake.collector.receive import WIRE_SCHEMA, AcceptedBatch, Limits, normalize, validate
from auditlake.collector.schema import EVENT_SCHEMA
from auditlake.collector.tiers import COLD_PREFIX, Tier, maintenance_lock, tier_from_uri
from auditlake.collector.wal import fsync_dir

log = logging.getLogger(__name__)

#: Test hook: when set to a step name, the job ``os._exit(137)``s at that step
#: (simulates kill -9 at the worst moment).  Steps: see ``FAIL_POINTS``.
FAIL_ENV = "AUDITLAKE_RETENTION_FAIL_AT"
#: Test hook: seconds to sleep before each group's copy (lets a test break
#: the cold store in the middle of a run).
PAUSE_ENV = "AUDITLAKE_RETENTION_PAUSE_S"
FAIL_POINTS = (
    "mid_copy",  # after the first chunk of a cold file is written
    "copied",  # every file of the day copied, none verified yet
    "verified",  # copies verified, before the move checkpoint
    "move_checkpointed",  # move checkpoint signed, cold index not updated
    "indexed",  # cold index updated, hot copy not removed
    "hot_removed_partly",  # the first hot file removed
    "moved",  # hot copies removed, meta-audit event not yet stored
    "expire_checkpointed",  # expire tombstone signed, cold index not updated
    "expire_indexed",  # cold index updated, cold files not deleted
    "cold_removed_partly",  # the first cold file deleted
)

#: The DuckDB relation name under which a connection sees the cold tier.
COLD_RELATION = "auditlake_cold_events"

#: Files copied (and read back) at once within a group.
COPY_THREADS = 4

_SCHEDULES = {"daily": 86400.0, "hourly": 3600.0, "weekly": 7 * 86400.0, "off": 0.0}
_CHUNK = 8 * 1024 * 1024
SYSTEM_ACTOR = "auditlake-retention"


def _fail_point(step: str) -> None:
    """Crash here if the test hook names this step (a documented test hook)."""
    if os.environ.get(FAIL_ENV) == step:
        log.error("%s=%s: exiting now (fault-injection test hook)", FAIL_ENV, step)
        logging.shutdown()
        os._exit(137)


# -- the policy ------------------------------------------------------------------


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


def _tier_for(index_cold: str, policy: RetentionPolicy | None) -> Tier | None:
    """Where the cold files are: the location the move checkpoints recorded
    (else the policy's), reached with the policy's endpoint and timeouts."""
    location = index_cold or (policy.cold if policy else "")
    if not location:
        return None
    if policy is None:
        return tier_from_uri(location)
    return tier_from_uri(location, endpoint_url=policy.endpoint_url, region=policy.region,
                         timeout_s=policy.timeout_s)


def cold_tier(data: DataDir, toml: dict[str, Any]) -> Tier | None:
    """The cold tier (pyarrow filesystem + root): where the move checkpoints
    put files, else where the policy would; None without either."""
    return _tier_for(ColdIndex.load(data, rebuild=True).cold, load_policy(toml))


# -- the cold index --------------------------------------------------------------


def _entry_json(e: FileEntry) -> dict[str, Any]:
    return e.to_json()


@dataclass
class ColdIndex:
    """Which cold files hold live data (from the move/expire checkpoints), kept
    in DIR/state/cold-index.json so a query needs no checkpoint scan.

    The checkpoints are the truth; the index is rebuilt from them when it is
    missing and brought up to date at the start of every retention run."""

    path: Path
    cold: str = ""
    #: Highest move/expire checkpoint seal applied, per writer.
    through: dict[str, int] = field(default_factory=dict)
    #: cold relative path -> {FileEntry fields..., "hot": hot relative path, "seal": n}
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: cold files an expire tombstone removed that may still exist.
    pending_delete: list[str] = field(default_factory=list)
    #: checkpoints whose meta-audit event is not stored yet: [{"writer", "seal", "kind", "day", ...}]
    unannounced: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def load(cls, data: DataDir, *, rebuild: bool = False) -> ColdIndex:
        """The saved index; when absent and ``rebuild``, rebuilt (in memory)
        from the checkpoints."""
        path = data.state / "cold-index.json"
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            index = cls(path)
            if rebuild:
                index.refresh(data)
            return index
        return cls(path, raw.get("cold", ""), dict(raw.get("through", {})), dict(raw.get("files", {})),
                    list(raw.get("pending_delete", [])), list(raw.get("unannounced", [])))

    def save(self) -> None:
        """Atomically write the index (temp file, fsync, rename)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump({"version": 1, "cold": self.cold, "through": self.through, "files": self.files,
                       "pending_delete": self.pending_delete, "unannounced": self.unannounced}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        fsync_dir(self.path.parent)

    def refresh(self, data: DataDir) -> int:
        """Apply every move/expire checkpoint newer than the index; returns
        how many were applied."""
        applied = 0
        if not data.checkpoints.exists():
            return 0
        for folder in sorted(p for p in data.checkpoints.iterdir() if p.is_dir()):
            done = self.through.get(folder.name, 0)
            found = []
            with os.scandir(folder) as it:
                for e in it:
                    if e.name.endswith(("-move.json", "-expire.json")):
                        seal = int(e.name.split("-", 1)[0])
                        if seal > done:
                            found.append((seal, Path(e.path)))
            for _, p in sorted(found):
                doc = json.loads(p.read_bytes())
                doc.pop("signature", None)
                self.apply(ChainCheckpoint.from_body(doc), announced=False)
                applied += 1
        return applied

    def apply(self, cp: ChainCheckpoint, *, announced: bool) -> None:
        """Record a move or expire checkpoint in the index."""
        if cp.kind == "move":
            cold = cp.extra.get("cold", "")
            if cold:
                self.cold = cold
            for new, old in zip(cp.files, cp.removed, strict=True):
                rel = new.path[len(COLD_PREFIX):]
                self.files[rel] = {**_entry_json(new), "hot": old.path, "seal": cp.seal}
                if rel in self.pending_delete:
                    self.pending_delete.remove(rel)
        elif cp.kind == "expire":
            for gone in cp.removed:
                rel = gone.path[len(COLD_PREFIX):]
                self.files.pop(rel, None)
                if rel not in self.pending_delete:
                    self.pending_delete.append(rel)
        else:
            return
        self.through[cp.writer_id] = max(self.through.get(cp.writer_id, 0), cp.seal)
        if not announced:
            self.unannounced.append(_announcement(cp))

    def live_cold_files(self, lake: Path) -> list[tuple[str, dict[str, Any]]]:
        """Cold files a query reads: committed by a move checkpoint, and whose
        hot copy is gone (while both exist the view reads the hot one, so an
        event is never counted twice)."""
        return [(rel, e) for rel, e in sorted(self.files.items()) if not (lake / e["hot"]).exists()]


def _announcement(cp: ChainCheckpoint) -> dict[str, Any]:
    """The meta-audit due for a move/expire checkpoint: per day, its files, rows, bytes."""
    entries = cp.files if cp.kind == "move" else cp.removed
    days: dict[str, dict[str, int]] = {}
    for e in entries:
        rel = e.path[len(COLD_PREFIX):] if e.path.startswith(COLD_PREFIX) else e.path
        d = days.setdefault(_day_of_rel(rel).isoformat(), {"files": 0, "rows": 0, "bytes": 0})
        d["files"] += 1
        d["rows"] += e.rows
        d["bytes"] += e.bytes
    return {"writer": cp.writer_id, "seal": cp.seal, "kind": cp.kind, "days": days}


def _day_of_rel(rel: str) -> dt.date:
    """The partition date of ``events/date=YYYY-MM-DD/name``."""
    return dt.date.fromisoformat(rel.split("/")[1][len("date="):])


# -- the query side --------------------------------------------------------------


def cold_generation(data: DataDir) -> int:
    """Changes whenever the set of files the ``events`` view reads changes
    because of retention (a move committed, hot copies removed, an expiry):
    a component that keeps a DuckDB connection open (the admin search)
    reconnects when it differs from the value at connect time."""
    try:
        return (data.state / "cold-index.json").stat().st_mtime_ns
    except FileNotFoundError:
        return 0


def cold_file_uris(data: DataDir, toml: dict[str, Any]) -> list[str]:
    """URIs of the live cold files, for engines outside auditlake."""
    index = ColdIndex.load(data, rebuild=True)
    policy = load_policy(toml)
    base = (index.cold or (policy.cold if policy else "")).rstrip("/")
    return [f"{base}/{rel}" for rel, _ in index.live_cold_files(data.lake)]


def cold_dataset(data: DataDir, toml: dict[str, Any]) -> pads.Dataset | None:
    """The live cold files as one pyarrow dataset with a ``date`` partition
    expression per file (no file is opened to build it), or None."""
    index = ColdIndex.load(data, rebuild=True)
    live = index.live_cold_files(data.lake)
    if not live:
        return None
    tier = _tier_for(index.cold, load_policy(toml))
    assert tier is not None
    schema = EVENT_SCHEMA.append(pa.field("date", pa.date32()))
    return pads.FileSystemDataset.from_paths(
        [tier.path(rel) for rel, _ in live],
        schema=schema,
        format=pads.ParquetFileFormat(),
        filesystem=tier.filesystem,
        partitions=[pads.field("date") == pa.scalar(_day_of_rel(rel), pa.date32()) for rel, _ in live],
    )


_DATASETS: dict[tuple[str, int, str], pads.Dataset | None] = {}
_DATASETS_LOCK = threading.Lock()


def register_cold(con: Any, data: DataDir, toml: dict[str, Any] | None = None) -> None:
    """Register the cold relation on ``con`` — a connection or a *cursor*:
    DuckDB cursors do not see objects registered on their parent connection,
    so a component that hands out ``con.cursor()`` calls this on each one.
    An empty table stands in when no file is cold.  Cached per cold
    generation, so a call costs a stat and a dict lookup."""
    cfg = load_toml(data.config_file) if toml is None else toml
    key = (str(data.root), cold_generation(data), json.dumps(cfg.get("retention", {}), sort_keys=True, default=str))
    with _DATASETS_LOCK:
        if key not in _DATASETS:
            if len(_DATASETS) > 16:
                _DATASETS.clear()
            _DATASETS[key] = cold_dataset(data, cfg)
        dataset = _DATASETS[key]
    con.register(COLD_RELATION, dataset if dataset is not None
                 else EVENT_SCHEMA.append(pa.field("date", pa.date32())).empty_table())


def prepare_connection(con: Any, data: DataDir, toml: dict[str, Any] | None = None) -> str | None:
    """Register the cold tier on DuckDB connection ``con``; returns the SQL
    relation to ``UNION ALL BY NAME`` into the ``events`` view, or None when
    no file is cold.  DuckDB pushes ``date`` filters into the dataset, so a
    query for recent dates never touches cold storage."""
    dataset = cold_dataset(data, load_toml(data.config_file) if toml is None else toml)
    if dataset is None:
        return None
    con.register(COLD_RELATION, dataset)
    return f"SELECT * FROM {COLD_RELATION}"


# -- the job ---------------------------------------------------------------------


def _uuid7(ms: int) -> str:
    raw = bytearray(ms.to_bytes(6, "big") + os.urandom(10))
    raw[6] = 0x70 | (raw[6] & 0x0F)
    raw[8] = 0x80 | (raw[8] & 0x3F)
    return str(uuid.UUID(bytes=bytes(raw)))


def meta_events(action: str, items: list[tuple[str, dict[str, Any]]], *,
                resource_type: str = "partition", user_id: str = SYSTEM_ACTOR,
                outcome: str = "success", reason: str = "") -> pa.Table:
    """System-tenant audit events about auditlake itself, one per
    (resource_id, metadata) item, as one validated WIRE_SCHEMA table."""
    from auditlake.collector.inbox import SYSTEM_TENANT  # noqa: PLC0415

    now_us = time.time_ns() // 1000
    n = len(items)
    cols: dict[str, list[Any]] = {name: [""] * n for name in WIRE_SCHEMA.names}
    cols["id"] = [_uuid7(now_us // 1000) for _ in items]
    cols["resource_id"] = [rid for rid, _ in items]
    cols["metadata"] = [json.dumps(meta, sort_keys=True) for _, meta in items]
    cols["created_at"] = [now_us] * n
    for name, value in (("tenant_id", SYSTEM_TENANT), ("user_id", user_id), ("action", action),
                        ("resource_type", resource_type), ("outcome", outcome), ("reason", reason),
                        ("service", "auditlake")):
        cols[name] = [value] * n
    arrays = [pa.array(cols[f.name], pa.int64()).cast(f.type) if f.name == "created_at"
              else pa.array(cols[f.name], f.type) for f in WIRE_SCHEMA]
    table = normalize(pa.Table.from_arrays(arrays, schema=WIRE_SCHEMA))
    problems = validate(table, now_us, Limits())
    if problems:
        raise ValueError(f"meta-audit event is invalid: {problems[0]}")
    return table


def meta_event(action: str, resource_id: str, metadata: dict[str, Any], **kwargs: Any) -> pa.Table:
    """One system-tenant audit event (see ``meta_events``)."""
    return meta_events(action, [(resource_id, metadata)], **kwargs)


#: Stores one batch of events under a batch id (idempotent per id).
Emitter = Callable[[str, pa.Table], None]
#: Appends a checkpoint of a kind to the writer's chain.
CheckpointAppender = Callable[[str, list[FileEntry], list[FileEntry], dict[str, Any]], ChainCheckpoint]


def collector_emitter(collector: Any) -> Emitter:
    """An Emitter storing through a Collector's WAL (started or not); a batch
    id already stored is skipped, so re-announcing after a crash is harmless."""

    def emit(batch_id: str, table: pa.Table) -> None:
        owned, _ = collector.batches.claim(batch_id)
        if not owned:
            return
        batch = AcceptedBatch(batch_id, time.time_ns() // 1000, table, False)
        try:
            collector.store(batch).result()
        except BaseException:
            collector.batches.finish(batch_id, None)
            raise
        collector.batches.finish(batch_id, table.num_rows)

    return emit


def sealer_appender(sealer: Any) -> CheckpointAppender:
    """``Sealer.append_checkpoint`` (the contract), with a stand-in for
    sealers that predate it (single-threaded use only: no seal may run
    concurrently)."""
    if hasattr(sealer, "append_checkpoint"):
        method: CheckpointAppender = sealer.append_checkpoint
        return method

    def append(kind: str, files: list[FileEntry], removed: list[FileEntry], extra: dict[str, Any]) -> ChainCheckpoint:
        st = sealer.state
        cp = ChainCheckpoint(
            writer_id=sealer.writer_id, seal=st.seal + 1, seq=st.seq, chain_hash=st.chain_hash,
            time=dt.datetime.now(dt.UTC).isoformat(timespec="microseconds"), kind=kind,
            files=tuple(files), removed=tuple(removed), previous=st.checkpoint_digest, extra=extra,
        )
        st.seal = cp.seal
        st.checkpoint_digest = cp.digest()
        st.last = {"files": [], "checkpoint": cp.body()}
        sealer._save_state()
        write_checkpoint(cp, sealer.key, sealer.checkpoint_dirs)
        return cp

    return append


@dataclass
class DayPlan:
    """What the job will do to one day partition."""

    day: dt.date
    action: str  # "move", "finish_move", "expire", "hold"
    files: list[str] = field(default_factory=list)
    bytes: int = 0
    rows: int = 0
    reasons: list[str] = field(default_factory=list)

    def line(self) -> str:
        what = {"move": "move to cold", "finish_move": "finish move (remove hot copy)",
                "expire": "expire (delete)", "hold": "keep (legal hold)",
                "finish_expire": "finish expiry (delete cold copy)"}[self.action]
        extra = f" — {'; '.join(self.reasons)}" if self.reasons else ""
        return (f"{self.day.isoformat()}  {what:32s} {len(self.files):4d} files "
                f"{self.bytes:>14,d} B {self.rows:>12,d} events{extra}")


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
        return {k: v for k, v in self.__dict__.items() if k != "plan"} | {
            "plan": [{"day": p.day.isoformat(), "action": p.action, "files": p.files, "bytes": p.bytes,
                      "rows": p.rows, "reasons": p.reasons} for p in self.plan]
        }


class Cancelled(Exception):
    """The job was asked to stop between two steps."""


def _hot_file_entry(data: DataDir, path: Path) -> FileEntry:
    """The checkpoint entry of a hot file: digest, size, rows, seq range."""
    md = pq.read_metadata(path)
    idx = md.schema.to_arrow_schema().get_field_index("seq")
    lo: int | None = None
    hi: int | None = None
    for g in range(md.num_row_groups):
        st = md.row_group(g).column(idx).statistics
        if st is None or not st.has_min_max:
            lo = hi = None
            break
        lo = st.min if lo is None else min(lo, st.min)
        hi = st.max if hi is None else max(hi, st.max)
    if lo is None or hi is None:
        seqs = pq.read_table(path, columns=["seq"]).column("seq")
        lo, hi = int(pc.min(seqs).as_py()), int(pc.max(seqs).as_py())
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return FileEntry(path.relative_to(data.lake).as_posix(), h.hexdigest(), path.stat().st_size,
                     md.num_rows, int(lo), int(hi))


def _is_local(tier: Tier) -> bool:
    return isinstance(tier.filesystem, pafs.LocalFileSystem)


def copy_to_tier(src: Path, tier: Tier, rel: str) -> tuple[str, int]:
    """Copy ``src`` to ``rel`` in ``tier`` (local: temp + fsync + rename; the
    caller fsyncs the directory); returns (sha256, bytes) of what was sent."""
    dest = tier.path(rel)
    h = hashlib.sha256()
    size = 0
    if _is_local(tier):
        final = Path(dest)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(final.name + ".tmp")
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            for i, block in enumerate(iter(lambda: fin.read(_CHUNK), b"")):
                fout.write(block)
                h.update(block)
                size += len(block)
                if i == 0:
                    fout.flush()
                    _fail_point("mid_copy")
            fout.flush()
            os.fsync(fout.fileno())
        os.replace(tmp, final)  # the caller fsyncs the directory (once per day)
        return h.hexdigest(), size
    tier.filesystem.create_dir(dest.rsplit("/", 1)[0], recursive=True)
    with open(src, "rb") as fin, tier.filesystem.open_output_stream(dest) as out:
        for i, block in enumerate(iter(lambda: fin.read(_CHUNK), b"")):
            out.write(block)
            h.update(block)
            size += len(block)
            if i == 0:
                _fail_point("mid_copy")
    return h.hexdigest(), size


def digest_in_tier(tier: Tier, rel: str) -> tuple[str, int]:
    """(sha256, bytes) of a file as the tier holds it (read back in full)."""
    h = hashlib.sha256()
    size = 0
    with tier.filesystem.open_input_stream(tier.path(rel)) as f:
        while True:
            block = f.read(_CHUNK)
            if not block:
                break
            h.update(block)
            size += len(block)
    return h.hexdigest(), size


def _seq_ranges(table: pa.Table) -> list[list[Any]]:
    """Contiguous runs of ``seq`` with the chain hash of each run's last seq."""
    t = table.sort_by("seq")
    seqs = t.column("seq").to_pylist()
    hashes = t.column("chain_hash").to_pylist()
    out: list[list[Any]] = []
    for s, h in zip(seqs, hashes, strict=True):
        if out and s == out[-1][1] + 1:
            out[-1][1], out[-1][2] = s, h
        else:
            out.append([s, s, h])
    return out


class RetentionJob:
    """One run of the policy over one data dir: plan, move, expire."""

    def __init__(self, data: DataDir, policy: RetentionPolicy, *,
                 append_checkpoint: CheckpointAppender | None = None,
                 emit: Emitter | None = None, writer_id: str = "",
                 today: dt.date | None = None, cancel: threading.Event | None = None,
                 lock: contextlib.AbstractContextManager[Any] | None = None) -> None:
        self.data = data
        self.policy = policy
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
        self._tenant_cache: dict[dt.date, set[str]] = {}

    # -- planning ------------------------------------------------------------

    def _hot_days(self) -> dict[dt.date, list[Path]]:
        out: dict[dt.date, list[Path]] = {}
        if not self.data.events.exists():
            return out
        cutoff = self.policy.move_before(self.today)
        for d in self.data.events.iterdir():
            if not d.name.startswith("date="):
                continue
            try:
                day = dt.date.fromisoformat(d.name[5:])
            except ValueError:
                continue
            if day < cutoff:
                files = sorted(d.glob("*.parquet"))
                if files:
                    out[day] = files
        return out

    def _tenants(self, day: dt.date) -> set[str]:
        """Tenants with events in the day's cold files (read from the files)."""
        if day not in self._tenant_cache:
            tenants: set[str] = set()
            for rel, _ in self._cold_files(day):
                with self.tier.filesystem.open_input_file(self.tier.path(rel)) as f:
                    col = pq.read_table(f, columns=["tenant_id"]).column("tenant_id")
                tenants.update(pc.unique(col).to_pylist())
            self._tenant_cache[day] = tenants
        return self._tenant_cache[day]

    def _cold_files(self, day: dt.date) -> list[tuple[str, dict[str, Any]]]:
        prefix = f"events/date={day.isoformat()}/"
        return [(rel, e) for rel, e in sorted(self.index.files.items()) if rel.startswith(prefix)]

    def plan(self) -> list[DayPlan]:
        """What a run would do now, oldest day first."""
        plans: list[DayPlan] = []
        committed_hot = {e["hot"] for e in self.index.files.values()}
        for day, files in sorted(self._hot_days().items()):
            rels = [p.relative_to(self.data.lake).as_posix() for p in files]
            new = [r for r in rels if r not in committed_hot]
            done = [r for r in rels if r in committed_hot]
            if done:
                plans.append(DayPlan(day, "finish_move", done, sum((self.data.lake / r).stat().st_size for r in done)))
            if new:
                rows = 0
                for r in new:
                    with contextlib.suppress(OSError, pa.ArrowException):
                        rows += pq.read_metadata(self.data.lake / r).num_rows
                plans.append(DayPlan(day, "move", new, sum((self.data.lake / r).stat().st_size for r in new), rows))
        pending_days = sorted({_day_of_rel(r) for r in self.index.pending_delete})
        for day in pending_days:
            rels = [r for r in self.index.pending_delete if _day_of_rel(r) == day]
            plans.append(DayPlan(day, "finish_expire", rels))
        before = self.policy.expire_before(self.today)
        if before is not None:
            cold_days = sorted({_day_of_rel(r) for r in self.index.files} | {
                p.day for p in plans if p.action == "move"})
            for day in cold_days:
                if day >= before:
                    continue
                moving = [p for p in plans if p.day == day and p.action == "move"]
                cold_files = self._cold_files(day)
                reasons = [h.reason for h in self.policy.legal_holds if h.covers_date(day) and h.tenant is None]
                if not reasons:
                    tenant_holds = [h for h in self.policy.legal_holds if h.covers_date(day) and h.tenant]
                    if tenant_holds:
                        tenants = self._tenants(day)
                        if moving:
                            tenants = tenants | self._hot_tenants(moving[0])
                        reasons = [h.reason for h in tenant_holds if h.tenant in tenants]
                if reasons:
                    plans.append(DayPlan(day, "hold", [r for r, _ in cold_files] + (moving[0].files if moving else []),
                                         reasons=reasons))
                else:
                    mv = moving[0] if moving else DayPlan(day, "move")
                    rels = [r for r, _ in cold_files] + [f"(after move) {r}" for r in mv.files]
                    plans.append(DayPlan(day, "expire", rels,
                                         sum(int(e["bytes"]) for _, e in cold_files) + mv.bytes,
                                         sum(int(e["rows"]) for _, e in cold_files) + mv.rows))
        order = {"finish_move": 0, "move": 1, "finish_expire": 2, "hold": 3, "expire": 4}
        plans.sort(key=lambda p: (order[p.action], p.day))
        return plans

    def _hot_tenants(self, plan: DayPlan) -> set[str]:
        tenants: set[str] = set()
        for r in plan.files:
            col = pq.read_table(self.data.lake / r, columns=["tenant_id"]).column("tenant_id")
            tenants.update(pc.unique(col).to_pylist())
        return tenants

    # -- running -------------------------------------------------------------

    def dry_run(self) -> RetentionReport:
        """The plan; changes nothing (the index is refreshed in memory only)."""
        self.index.refresh(self.data)
        return RetentionReport(dry_run=True, plan=self.plan())

    def run(self) -> RetentionReport:
        """Finish interrupted work, move, expire; returns what was done."""
        if self.append_checkpoint is None or self.emit is None:
            raise ValueError("RetentionJob.run needs append_checkpoint and emit (use dry_run to plan)")
        started = time.monotonic()
        if self.index.refresh(self.data):
            self.index.save()
        if self.index.cold and self.index.files and self.index.cold.rstrip("/") != self.policy.cold.rstrip("/"):
            raise ConfigError(
                f"[retention] cold = {self.policy.cold!r}, but {len(self.index.files)} cold files live at "
                f"{self.index.cold!r} (the move checkpoints say so): copy them to the new location and set "
                "'cold' in DIR/state/cold-index.json, or keep the old location"
            )
        report = RetentionReport(dry_run=False)
        report.plan = self.plan()
        self._announce_pending()
        progress = _Progress(len([p for p in report.plan if p.action in ("move", "expire")]))
        try:
            for action, group in _groups(report.plan):
                if self.cancel.is_set():
                    raise Cancelled
                with self.lock:
                    self._do_group(action, group, report, progress)
        except Cancelled:
            report.error = "stopped before finishing (the next run continues)"
        except (OSError, pa.ArrowException) as exc:
            report.error = f"{type(exc).__name__}: {exc} (the next run continues from here)"
            log.error("retention run stopped: %s", report.error)
        report.seconds = time.monotonic() - started
        return report

    def _do_group(self, action: str, group: list[DayPlan], report: RetentionReport, progress: _Progress) -> None:
        if action == "finish_move":
            for p in group:
                self._remove_hot(p.files)
        elif action == "move":
            self._move_days(group, report)
            progress.step(f"moved through {group[-1].day}", report, len(group))
        elif action == "finish_expire":
            self._delete_cold([f for p in group for f in p.files])
        elif action == "hold":
            for p in group:
                report.held_days += 1
                log.info("partition %s is under legal hold (%s): kept", p.day, "; ".join(p.reasons))
        elif action == "expire":
            self._expire_days(group, report)
            progress.step(f"expired through {group[-1].day}", report, len(group))

    def _announce_pending(self) -> None:
        """Store the meta-audit events of checkpoints not announced yet (one
        event per partition; the batch id is the checkpoint's, so a retry
        after a crash stores them once)."""
        assert self.emit is not None
        while self.index.unannounced:
            a = self.index.unannounced[0]
            action = "retention_move" if a["kind"] == "move" else "retention_expire"
            items = [
                (day, {**info, "day": day, "checkpoint_seal": a["seal"], "writer": a["writer"],
                       "cold": self.policy.cold,
                       **({"policy": self.policy.as_json()} if a["kind"] == "expire" else {})})
                for day, info in sorted(a["days"].items())
            ]
            if items:
                self.emit(f"retention-{a['kind']}-{a['writer']}-{a['seal']}", meta_events(action, items))
            self.index.unannounced.pop(0)
            self.index.save()

    def _move_days(self, plans: list[DayPlan], report: RetentionReport) -> None:
        """Move a group of day partitions under one signed move checkpoint."""
        assert self.append_checkpoint is not None
        rels = []
        for p in plans:
            self._remove_orphans(f"events/date={p.day.isoformat()}/")
            rels.extend(p.files)

        def describe(rel: str) -> FileEntry | None:
            try:
                return _hot_file_entry(self.data, self.data.lake / rel)
            except FileNotFoundError:
                log.info("%s vanished before its move (compacted?); the next run sees the new file", rel)
                return None

        def copy(e: FileEntry) -> tuple[str, int]:
            if self.cancel.is_set():
                raise Cancelled
            return copy_to_tier(self.data.lake / e.path, self.tier, e.path)

        def check(e: FileEntry) -> None:
            sha, size = digest_in_tier(self.tier, e.path)
            info = self.tier.filesystem.get_file_info(self.tier.path(e.path))
            if sent[e.path] != (e.sha256, e.bytes) or (sha, size) != (e.sha256, e.bytes) or info.size != e.bytes:
                raise StorageError(
                    f"cold copy of {e.path} does not match the hot file (sha256 {sha[:12]}… vs "
                    f"{e.sha256[:12]}…, {size} vs {e.bytes} B): hot copy kept"
                )

        # Files are copied, fsynced and read back a few at a time: the waits
        # (fsync, object-store round trips) overlap; hashing releases the GIL.
        with ThreadPoolExecutor(COPY_THREADS, thread_name_prefix="auditlake-retention") as pool:
            hot_entries = [e for e in pool.map(describe, rels) if e is not None]
            if not hot_entries:
                return
            pause = float(os.environ.get(PAUSE_ENV, "0") or 0)
            if pause:
                time.sleep(pause)
            sent = dict(zip([e.path for e in hot_entries], pool.map(copy, hot_entries), strict=True))
            if _is_local(self.tier):
                list(pool.map(fsync_dir, sorted({Path(self.tier.path(e.path)).parent for e in hot_entries})))
            _fail_point("copied")
            list(pool.map(check, hot_entries))
        _fail_point("verified")
        cold_entries = [FileEntry(COLD_PREFIX + e.path, e.sha256, e.bytes, e.rows, e.first_seq, e.last_seq)
                        for e in hot_entries]
        days = sorted({_day_of_rel(e.path).isoformat() for e in hot_entries})
        cp = self.append_checkpoint("move", cold_entries, hot_entries, {"days": days, "cold": self.policy.cold})
        _fail_point("move_checkpointed")
        self.index.apply(cp, announced=False)
        self.index.save()
        _fail_point("indexed")
        self._remove_hot([e.path for e in hot_entries])
        _fail_point("moved")
        self._announce_pending()
        report.moved_days += len(days)
        report.moved_files += len(hot_entries)
        report.moved_bytes += sum(e.bytes for e in hot_entries)
        report.moved_rows += sum(e.rows for e in hot_entries)

    def _remove_orphans(self, day_prefix: str) -> None:
        """Delete cold files of the day no move checkpoint committed (left by
        an interrupted copy): they were never part of the lake."""
        sel = pafs.FileSelector(self.tier.path(day_prefix.rstrip("/")), allow_not_found=True)
        for info in self.tier.filesystem.get_file_info(sel):
            if info.type != pafs.FileType.File:
                continue
            rel = day_prefix + info.base_name
            if rel not in self.index.files and rel not in self.index.pending_delete:
                log.info("removing %s from cold storage: left by an interrupted copy", rel)
                self.tier.filesystem.delete_file(info.path)

    def _remove_hot(self, rels: list[str]) -> None:
        for i, rel in enumerate(rels):
            path = self.data.lake / rel
            path.unlink(missing_ok=True)
            if i == 0:
                _fail_point("hot_removed_partly")
        # No fsync per day directory: the move is already signed, and a hot
        # copy that reappears after a power loss is removed by the next run.
        for folder in {(self.data.lake / r).parent for r in rels}:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty (late events may have arrived)
        fsync_dir(self.data.events)

    def _expire_days(self, plans: list[DayPlan], report: RetentionReport) -> None:
        """Delete a group of cold day partitions under one signed tombstone."""
        assert self.append_checkpoint is not None
        files = [f for p in plans for f in self._cold_files(p.day)]
        if not files:
            return
        removed = []
        ranges = []
        for rel, e in files:
            if self.cancel.is_set():
                raise Cancelled
            with self.tier.filesystem.open_input_file(self.tier.path(rel)) as f:
                t = pq.read_table(f, columns=["seq", "chain_hash"])
            removed.append(FileEntry(COLD_PREFIX + rel, e["sha256"], int(e["bytes"]), int(e["rows"]),
                                     int(e["first_seq"]), int(e["last_seq"])))
            ranges.append({"path": COLD_PREFIX + rel, "seq_ranges": _seq_ranges(t)})
        days = sorted({_day_of_rel(rel).isoformat() for rel, _ in files})
        extra = {
            "days": days,
            "policy": self.policy.as_json(),
            "legal_holds": [h.as_json() for h in self.policy.legal_holds],
            "ranges": ranges,
        }
        cp = self.append_checkpoint("expire", [], removed, extra)
        _fail_point("expire_checkpointed")
        self.index.apply(cp, announced=False)
        self.index.save()
        _fail_point("expire_indexed")
        self._delete_cold([rel for rel, _ in files])
        self._announce_pending()
        report.expired_days += len(days)
        report.expired_files += len(removed)
        report.expired_rows += sum(e.rows for e in removed)

    def _delete_cold(self, rels: list[str]) -> None:
        for i, rel in enumerate(rels):
            with contextlib.suppress(FileNotFoundError):
                self.tier.filesystem.delete_file(self.tier.path(rel))
            if i == 0:
                _fail_point("cold_removed_partly")
            if rel in self.index.pending_delete:
                self.index.pending_delete.remove(rel)
        self.index.save()


#: Days and bytes moved (or expired) under one checkpoint: bounds the work a
#: crash repeats, while a long backlog does not cost a checkpoint per day.
#: (AUDITLAKE_RETENTION_GROUP_DAYS overrides the days, for tests.)
GROUP_DAYS = 32
GROUP_BYTES = 256 * 1024 * 1024


def _groups(plan: list[DayPlan]) -> Iterable[tuple[str, list[DayPlan]]]:
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


class _Progress:
    """Logs progress of long runs (every 10 s or 5 % of the partitions)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.last = time.monotonic()

    def step(self, what: str, report: RetentionReport, n: int = 1) -> None:
        before = self.done
        self.done += n
        now = time.monotonic()
        tick = max(1, self.total // 20)
        if self.total and (now - self.last >= 10 or self.done >= self.total or before // tick != self.done // tick):
            self.last = now
            log.info("retention: %d/%d partitions (%s); moved %s B, %s events so far",
                     self.done, self.total, what, f"{report.moved_bytes:,}", f"{report.moved_rows:,}")


# -- running it: inside `auditlake serve`, or from the command line ---------------


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
    requests = _request_dir(collector.data)

    def loop() -> None:
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
                elif time.monotonic() >= next_run:
                    report = run_in_collector(collector, policy, cancel=stop)
                    log.info("%s", report.text().rstrip())
                    next_run = time.monotonic() + interval
            except Exception:  # noqa: BLE001 - the next tick retries; nothing is lost
                log.exception("retention run failed; it will be retried")
                next_run = time.monotonic() + min(interval or 60.0, 60.0)

    thread = threading.Thread(target=loop, name="auditlake-retention", daemon=True)
    thread.start()

    def stopper() -> None:
        stop.set()
        thread.join()

    return stopper


def finish_interrupted_moves(data: DataDir) -> int:
    """Remove hot copies whose move checkpoint is signed (left by a crash),
    before compaction could merge them into a new hot file; returns how many."""
    index = ColdIndex.load(data, rebuild=False)
    if index.refresh(data):
        index.save()
    done = 0
    for e in index.files.values():
        path = data.lake / e["hot"]
        if path.exists():
            path.unlink()
            fsync_dir(path.parent)
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
    from auditlake.collector.cli import config_path  # noqa: PLC0415
    from auditlake.collector.config import collector_config  # noqa: PLC0415
    from auditlake.collector.server import Collector, try_lock  # noqa: PLC0415

    data = DataDir.resolve(args.data)
    toml = load_toml(config_path(args, data))
    policy = load_policy(toml)
    if policy is None:
        print(f"auditlake retention: no [retention] policy in {config_path(args, data)}", file=sys.stderr)
        return 2
    if args.dry_run:
        report = RetentionJob(data, policy).dry_run()
        sys.stdout.write(report.text())
        return 0
    lock = try_lock(data)
    if lock is None:
        return _hand_to_collector(data, False, args.wait)
    lock.close()
    collector = Collector(data, collector_config(toml, http_listen=""))
    try:
        report = run_in_collector(collector, policy)
    finally:
        collector.stop()
    sys.stdout.write(report.text())
    return 1 if report.error else 0


def register(subparsers: Any) -> None:
    """Add `auditlake retention run`."""
    from auditlake.collector.cli import add_data_arg  # noqa: PLC0415

    p = subparsers.add_parser("retention", help="move old partitions to cold storage, expire past the policy")
    sub = p.add_subparsers(dest="retention_command", required=True, metavar="ACTION")
    r = sub.add_parser("run", help="run the [retention] policy now (the collector also runs it daily)")
    add_data_arg(r)
    r.add_argument("--config", metavar="FILE", help="TOML configuration (default DIR/auditlake.toml)")
    r.add_argument("--dry-run", action="store_true", help="print the plan; change nothing")
    r.add_argument("--wait", type=float, default=3600.0, metavar="SECONDS",
                   help="when a collector is running, how long to wait for it to run the job")
    r.set_defaults(func=cmd_run)
