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

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from auditlake.collector.errors import ConfigError

DEFAULT_DATA_DIR = "./auditlake-data"


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
        """Create the directory tree (idempotent)."""
        for p in (self.events, self.wal, self.state, self.checkpoints, self.keys):
            p.mkdir(parents=True, exist_ok=True)
        os.chmod(self.keys, 0o700)

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
