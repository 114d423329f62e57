"""The cold tier's read side: which cold files hold live data, and how a
DuckDB connection sees them next to the hot lake.

Owns: the cold index (:class:`ColdIndex`, DIR/state/cold-index.json, rebuilt
from the signed move/expire checkpoints, which are the truth), the cold
generation a long-lived connection watches, and the ``auditlake_cold_events``
relation the ``events`` view unions in.  Retention writes the cold tier and
brings this index up to date; the query view (``lake.query``) and the admin
search read through it.  docs/retention.md describes both sides.

Imports: ``integrity`` (checkpoints), ``storage`` and the foundation only.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
from dataclasses import dataclass, field
from typing import Any

import pyarrow.dataset as pads
import pyarrow.fs as pafs

from auditlake.collector.config import load_toml
from auditlake.collector.integrity.checkpoint import ChainCheckpoint
from auditlake.collector.lake.files import DATED_SCHEMA, day_dataset, partition_files
from auditlake.collector.storage.datadir import DataDir
from auditlake.collector.storage.store import LocalStore, Store
from auditlake.collector.storage.tiers import (
    COLD_INDEX,
    COLD_PREFIX,
    checkpoint_tier,
    cold_index_store,
    cold_tier_at,
    hot_tier,
)

#: The DuckDB relation name under which a connection sees the cold tier.
COLD_RELATION = "auditlake_cold_events"

#: Checkpoint kinds that change which files are cold.
_INDEXED_KINDS = ("-move.json", "-expire.json")


def partition_day(rel: str) -> dt.date:
    """The partition date of ``events/date=YYYY-MM-DD/name``."""
    return dt.date.fromisoformat(rel.split("/")[1][len("date="):])


def _state_store(data: DataDir) -> Store:
    # In a shared lake the index is the fleet's (any collector may run
    # retention, every collector's queries read it); else DIR/state.
    return cold_index_store(data)


def _checkpoint_keys(store: Store) -> list[tuple[str, str]]:
    """(writer, file name) of every move/expire checkpoint under ``store``.

    Read with ``os.scandir`` on the store's directory rather than
    ``Store.list``: the list stats every entry (a lake has one checkpoint per
    seal, tens of thousands), and a query connection pays this scan whenever
    there is no index yet.  An object store has only its listing."""
    if not isinstance(store, LocalStore):
        return [(o.key.split("/")[0], o.key.split("/")[1]) for o in store.list()
                if o.key.count("/") == 1 and o.key.endswith(_INDEXED_KINDS)]
    root = store.local_path("")
    if not root.is_dir():
        return []
    found: list[tuple[str, str]] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        with os.scandir(folder) as it:
            found.extend((folder.name, e.name) for e in it if e.name.endswith(_INDEXED_KINDS))
    return found


@dataclass
class ColdIndex:
    """Which cold files hold live data (from the move/expire checkpoints), kept
    in DIR/state/cold-index.json so a query needs no checkpoint scan.

    The checkpoints are the truth; the index is rebuilt from them when it is
    missing and brought up to date at the start of every retention run."""

    #: Where the index is saved (DIR/state).
    state: Store
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
        state = _state_store(data)
        try:
            raw = json.loads(state.read(COLD_INDEX))
        except FileNotFoundError:
            index = cls(state)
            if rebuild:
                index.refresh(data)
            return index
        return cls(state, raw.get("cold", ""), dict(raw.get("through", {})), dict(raw.get("files", {})),
                   list(raw.get("pending_delete", [])), list(raw.get("unannounced", [])))

    def save(self) -> None:
        """Atomically replace the saved index."""
        self.state.put(COLD_INDEX, json.dumps({
            "version": 1, "cold": self.cold, "through": self.through, "files": self.files,
            "pending_delete": self.pending_delete, "unannounced": self.unannounced}).encode())

    def refresh(self, data: DataDir) -> int:
        """Apply every move/expire checkpoint newer than the index; returns
        how many were applied."""
        store = checkpoint_tier(data)
        newer: dict[str, list[tuple[int, str]]] = {}
        for writer, name in _checkpoint_keys(store):
            seal = int(name.split("-", 1)[0])
            if seal > self.through.get(writer, 0):
                newer.setdefault(writer, []).append((seal, f"{writer}/{name}"))
        applied = 0
        for writer in sorted(newer):
            for _, key in sorted(newer[writer]):
                doc = json.loads(store.read(key))
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
                self.files[rel] = {**new.to_json(), "hot": old.path, "seal": cp.seal}
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

    def day_files(self, day: dt.date) -> list[tuple[str, dict[str, Any]]]:
        """The committed cold files of one day partition, by path."""
        prefix = f"events/date={day.isoformat()}/"
        return [(rel, e) for rel, e in sorted(self.files.items()) if rel.startswith(prefix)]

    def live_cold_files(self, hot: Store) -> list[tuple[str, dict[str, Any]]]:
        """Cold files a query reads: committed by a move checkpoint, and whose
        hot copy is gone (while both exist the view reads the hot one, so an
        event is never counted twice)."""
        if not self.files:
            return []
        hot_files = set(partition_files(hot, ".parquet"))  # one listing, not a request per cold file
        return [(rel, e) for rel, e in sorted(self.files.items()) if e["hot"] not in hot_files]


def _announcement(cp: ChainCheckpoint) -> dict[str, Any]:
    """The meta-audit due for a move/expire checkpoint: per day, its files, rows, bytes."""
    entries = cp.files if cp.kind == "move" else cp.removed
    days: dict[str, dict[str, int]] = {}
    for e in entries:
        rel = e.path[len(COLD_PREFIX):] if e.path.startswith(COLD_PREFIX) else e.path
        d = days.setdefault(partition_day(rel).isoformat(), {"files": 0, "rows": 0, "bytes": 0})
        d["files"] += 1
        d["rows"] += e.rows
        d["bytes"] += e.bytes
    return {"writer": cp.writer_id, "seal": cp.seal, "kind": cp.kind, "days": days}


# -- the query side --------------------------------------------------------------


def cold_generation(data: DataDir) -> int:
    """Changes whenever the set of files the ``events`` view reads changes
    because of retention (a move committed, hot copies removed, an expiry):
    a component that keeps a DuckDB connection open (the admin search)
    reconnects when it differs from the value at connect time."""
    # The index's modification time: every such change rewrites the index.
    store = _state_store(data)
    try:
        if isinstance(store, LocalStore):
            return store.local_path(COLD_INDEX).stat().st_mtime_ns
        info = store.filesystem.get_file_info(store.path(COLD_INDEX))
        return int(info.mtime_ns or 0) if info.type != pafs.FileType.NotFound else 0
    except FileNotFoundError:
        return 0


def cold_file_uris(data: DataDir, toml: dict[str, Any]) -> list[str]:
    """URIs of the live cold files, for engines outside auditlake."""
    index = ColdIndex.load(data, rebuild=True)
    live = index.live_cold_files(hot_tier(data))
    if not live:
        return []
    tier = cold_tier_at(index.cold, toml)
    base = (index.cold or (tier.uri if tier else "")).rstrip("/")
    return [f"{base}/{rel}" for rel, _ in live]


def cold_dataset(data: DataDir, toml: dict[str, Any]) -> pads.Dataset | None:
    """The live cold files as one pyarrow dataset with a ``date`` partition
    expression per file (no file is opened to build it), or None."""
    index = ColdIndex.load(data, rebuild=True)
    live = index.live_cold_files(hot_tier(data))
    if not live:
        return None
    tier = cold_tier_at(index.cold, toml)
    assert tier is not None  # the index names the location of the files it lists
    return day_dataset(tier, [rel for rel, _ in live])


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
    con.register(COLD_RELATION, dataset if dataset is not None else DATED_SCHEMA.empty_table())


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
