"""The data directory's layout: one place that names every path in it.

    DIR/lake/events/date=YYYY-MM-DD/*.parquet   the hot lake
    DIR/wal/                                    write-ahead log segments
    DIR/state/                                  sealer state (how far sealed)
    DIR/checkpoints/<writer>/                   signed chain heads
    DIR/keys/                                   ingest keys, signing key
    DIR/writer_id                               this collector's stable writer id
    DIR/auditlake.toml                          configuration (optional)
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from auditlake.collector.errors import ConfigError

DEFAULT_DATA_DIR = "./auditlake-data"

log = logging.getLogger(__name__)

#: Data directories already warned about in this process.
_WARNED: set[Path] = set()


@dataclass(frozen=True)
class DataDir:
    """Paths inside one collector data directory."""

    root: Path

    @classmethod
    def resolve(cls, path: str | os.PathLike[str] | None) -> DataDir:
        """The data dir from an argument, else ``AUDITLAKE_DATA``, else the default."""
        chosen = path or os.environ.get("AUDITLAKE_DATA") or DEFAULT_DATA_DIR
        root = Path(chosen).expanduser().resolve()
        if root.exists() and not root.is_dir():
            raise ConfigError(f"data directory {root} exists and is not a directory")
        return cls(root)

    @property
    def lake(self) -> Path:
        return self.root / "lake"

    @property
    def events(self) -> Path:
        return self.root / "lake" / "events"

    @property
    def wal(self) -> Path:
        return self.root / "wal"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    @property
    def config_file(self) -> Path:
        return self.root / "auditlake.toml"

    def create(self) -> None:
        """Create the directory tree (idempotent), the root and keys/ without
        any access for other users; warn about looser modes found."""
        fresh = not self.root.exists()
        # 0700 even when a library caller never set the umask: a directory
        # others cannot enter keeps every file below it private.
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        for p in (self.lake, self.events, self.wal, self.state, self.checkpoints, self.keys):
            p.mkdir(mode=0o700, exist_ok=True)
        os.chmod(self.keys, 0o700)
        if fresh:
            os.chmod(self.root, 0o700)
        self.warn_loose_modes()

    def warn_loose_modes(self) -> list[str]:
        """Paths at the top of the data dir that other local users can read
        (each logged once as a warning); the WAL holds event text."""
        loose = []
        for p in (self.root, self.lake, self.wal, self.state, self.checkpoints, self.keys, self.root / "exports"):
            try:
                mode = p.stat().st_mode & 0o777
            except FileNotFoundError:
                continue
            if mode & 0o007:
                loose.append(f"{p} (mode {mode:04o})")
        if loose and self.root not in _WARNED:
            _WARNED.add(self.root)  # once per process and directory: commands call create() often
            log.warning("other local users can read audit data: %s; run chmod -R o-rwx %s",
                        ", ".join(loose), self.root)
        return loose

    def writer_id(self) -> str:
        """This data dir's stable writer id, created on first use."""
        path = self.root / "writer_id"
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            self.root.mkdir(parents=True, exist_ok=True)
            wid = "w" + secrets.token_hex(6)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(wid + "\n")
            os.replace(tmp, path)
            return wid


def try_lock(data: DataDir) -> TextIO | None:
    """Take the data dir's collector lock; None when another process holds it."""
    data.root.mkdir(parents=True, exist_ok=True)
    f = open(data.root / ".lock", "w")  # noqa: SIM115 - held while running
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    return f
