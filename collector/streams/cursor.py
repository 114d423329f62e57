"""Durable cursors and the status a stream publishes.

A stream's cursor is, per writer, the seq of the last event its destination
acknowledged (the chain position): ``DIR/state/streams/<name>.cursor.json``,
``{"writers": {"<writer_id>": <seq>, ...}}``, replaced atomically and fsynced
after each acknowledged request.  A crash between the acknowledgement and
the write sends that request again on restart: at least once, and each
repeated event carries its own id (and writer and seq) for the receiver to
drop.

The status (``<name>.status.json``, written at most once a second and on
every change of health) is what the admin API's ``GET /api/v1/streams`` and
the metrics read from another process: delivered counts, lag in events and
seconds, the last error (never a credential: errors are built from the
destination's address and status code, not from requests).

A lake shared by a fleet: each collector streams the writers it can see;
keep the cursor files in each collector's own DIR and give each stream to
exactly one collector of the fleet (docs/streams.md says why and how).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from auditlake.collector.storage.local import replace_file

#: Folder of the cursor and status files, under DIR.
STREAMS_DIR = Path("state") / "streams"
CURSOR_SUFFIX = ".cursor.json"
STATUS_SUFFIX = ".status.json"


def streams_dir(root: Path) -> Path:
    """``DIR/state/streams`` of a data directory ``root``."""
    return root / STREAMS_DIR


class StreamCursor:
    """One stream's positions (writer id -> last acknowledged seq), on disk."""

    def __init__(self, folder: Path, name: str) -> None:
        self.path = folder / f"{name}{CURSOR_SUFFIX}"
        self.positions: dict[str, int] = self._load()

    def _load(self) -> dict[str, int]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            # Never start over silently: that would re-send the whole lake.
            raise OSError(f"stream cursor {self.path} is unreadable ({exc}); fix or remove it") from None
        return {str(k): int(v) for k, v in raw.get("writers", {}).items()}

    def after(self, writer_id: str) -> int:
        """The last acknowledged seq of ``writer_id`` (0: none yet)."""
        return self.positions.get(writer_id, 0)

    def advance(self, writer_id: str, seq: int) -> None:
        """Record ``seq`` as acknowledged, durably, before the next request."""
        self.positions[writer_id] = seq
        replace_file(self.path, json.dumps({"writers": self.positions}, sort_keys=True).encode())


def write_status(folder: Path, name: str, status: dict[str, Any]) -> None:
    """Publish a stream's status (atomic rename; no fsync: it is rebuilt on start)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}{STATUS_SUFFIX}"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(status, sort_keys=True))
    os.replace(tmp, path)


def read_statuses(root: Path) -> list[dict[str, Any]]:
    """Every stream's last published status in data directory ``root``,
    by name (what a metrics exporter in another process calls)."""
    folder = streams_dir(root)
    out = []
    for path in sorted(folder.glob(f"*{STATUS_SUFFIX}")) if folder.is_dir() else []:
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue  # being replaced: the next read sees it
    return out
