"""Export runs of the admin server: who may start one, how many run at once,
how a client finds its progress, and where finished manifests are kept.

- Export ids are made here, never by a client: a client may pass its own
  handle (``eid``) to poll progress, which is only ever looked up among
  *its own* exports, so no one can take, read or overwrite another user's.
- At most ``max_per_user`` exports run per user and ``max_total`` overall;
  one more is refused (``ExportLimitReached``: HTTP 429 with Retry-After)
  before any work starts.
- A finished export's signed manifest is written to DIR/exports/ with
  exclusive creation (an id is never reused, a file never replaced), and only
  the newest ``keep_manifests`` are kept there.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from auditlake.collector.errors import CollectorError

log = logging.getLogger(__name__)

#: Runs remembered (for progress and manifests) after they end.
_KEEP_RUNS = 200


class ExportLimitReached(CollectorError):
    """Too many exports run now (for this user, or in all); retry later."""

    def __init__(self, message: str, retry_after_s: int = 5) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass
class ExportEntry:
    """One export: its server-made id, who started it, its run, and whether
    it still holds a slot."""

    eid: str
    owner: str
    run: Any
    handle: str = ""
    running: bool = True


@dataclass
class ExportRegistry:
    """The admin server's exports (thread-safe)."""

    folder: Path
    max_per_user: int = 2
    max_total: int = 4
    keep_manifests: int = 10_000
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _entries: OrderedDict[str, ExportEntry] = field(default_factory=OrderedDict)
    _handles: dict[tuple[str, str], str] = field(default_factory=dict)

    def start(self, owner: str, run: Any, handle: str = "") -> ExportEntry:
        """Register a new export of ``owner`` (optionally known to its client
        as ``handle``); ExportLimitReached when no slot is free, ValueError
        when ``owner`` already used ``handle`` for another export."""
        with self._lock:
            running = [e for e in self._entries.values() if e.running]
            mine = sum(1 for e in running if e.owner == owner)
            if mine >= self.max_per_user:
                raise ExportLimitReached(f"{owner} already runs {mine} exports (the limit per user): "
                                         "wait for one to finish")
            if len(running) >= self.max_total:
                raise ExportLimitReached(f"{len(running)} exports are running (the limit): try again shortly")
            if handle and (owner, handle) in self._handles:
                raise ValueError("this export id is taken; choose another")
            entry = ExportEntry(secrets.token_urlsafe(12), owner, run, handle)
            self._entries[entry.eid] = entry
            if handle:
                self._handles[(owner, handle)] = entry.eid
            self._trim()
            return entry

    def finish(self, entry: ExportEntry) -> None:
        """Free the slot of an export that ended (complete or not)."""
        with self._lock:
            entry.running = False

    def find(self, key: str, user: str, is_admin: bool) -> ExportEntry | None:
        """The export ``user`` may see under ``key``: its server id (the
        owner's, or any for an admin), else ``user``'s own handle."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and (entry.owner == user or is_admin):
                return entry
            eid = self._handles.get((user, key))
            return self._entries.get(eid) if eid else None

    def running(self) -> int:
        """Exports running now."""
        with self._lock:
            return sum(1 for e in self._entries.values() if e.running)

    def save_manifest(self, eid: str, manifest: dict[str, Any]) -> Path:
        """Write a finished export's manifest (never over an existing file),
        then drop the oldest beyond ``keep_manifests``."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{eid}.manifest.json"
        with open(path, "x") as f:  # exclusive: a manifest is written once
            json.dump(manifest, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        self._prune()
        return path

    def load_manifest(self, eid: str) -> dict[str, Any] | None:
        """A kept manifest by export id, or None."""
        path = self.folder / f"{eid}.manifest.json"
        try:
            doc: dict[str, Any] = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        return doc

    def _prune(self) -> None:
        files = list(self.folder.glob("*.manifest.json"))
        extra = len(files) - self.keep_manifests
        if extra <= 0:
            return
        files.sort(key=lambda p: p.stat().st_mtime_ns)
        for p in files[:extra]:
            p.unlink(missing_ok=True)
        log.info("removed %d export manifest(s) beyond the newest %d", extra, self.keep_manifests)

    def _trim(self) -> None:
        done = [e for e in self._entries.values() if not e.running]
        for e in done[: max(0, len(self._entries) - _KEEP_RUNS)]:
            del self._entries[e.eid]
            if e.handle:
                self._handles.pop((e.owner, e.handle), None)
