"""The data directory's layout: one place that names every path in it.

    DIR/lake/events/date=YYYY-MM-DD/*.parquet   the hot lake
    DIR/wal/                                    write-ahead log segments
    DIR/state/                                  sealer state (how far sealed)
    DIR/checkpoints/<writer>/                   signed chain heads
    DIR/keys/                                   ingest keys, signing key
    DIR/writer_id                               this collector's stable writer id
    DIR/auditlake.toml                          configuration (optional)

With ``--lake URL`` (``AUDITLAKE_LAKE``, or ``uri`` in the ``[lake]`` table)
the lake lives elsewhere, usually in a bucket shared by a fleet of
collectors: ``URL/events/...`` holds the sealed Parquet, ``URL/checkpoints/``
every writer's signed checkpoints, ``URL/_auditlake/`` the fleet's shared
state (writers, ingest keys, users).  DIR keeps what is one collector's own:
the WAL, the sealer state, the signing key (storage/tiers.py names the stores).
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from auditlake.collector.config import load_toml
from auditlake.collector.errors import ConfigError

DEFAULT_DATA_DIR = "./auditlake-data"

#: Settings of the ``[lake]`` table besides ``uri``: how to reach the bucket
#: when the AWS environment (AWS_ENDPOINT_URL, AWS_REGION...) does not say.
LAKE_OPTIONS = ("endpoint_url", "region", "timeout_s")

log = logging.getLogger(__name__)

#: Data directories already warned about in this process.
_WARNED: set[Path] = set()


@dataclass(frozen=True)
class DataDir:
    """Paths inside one collector data directory."""

    root: Path
    #: Where the lake is when it is not DIR/lake (``s3://bucket/prefix``, a
    #: shared folder); "" for the local lake.
    lake_uri: str = ""
    #: The ``[lake]`` table's ``endpoint_url``, ``region`` and ``timeout_s``, as (name, value) pairs.
    lake_options: tuple[tuple[str, str], ...] = ()

    @classmethod
    def resolve(cls, path: str | os.PathLike[str] | None, lake: str | None = None,
                config: Path | None = None) -> DataDir:
        """The data dir from an argument, else ``AUDITLAKE_DATA``, else the
        default; its lake from ``lake``, else ``AUDITLAKE_LAKE``, else the
        ``[lake]`` table's ``uri`` in ``config`` (default DIR/auditlake.toml),
        else DIR/lake."""
        chosen = path or os.environ.get("AUDITLAKE_DATA") or DEFAULT_DATA_DIR
        root = Path(chosen).expanduser().resolve()
        if root.exists() and not root.is_dir():
            raise ConfigError(f"data directory {root} exists and is not a directory")
        table = dict(load_toml(config or root / "auditlake.toml").get("lake", {}) or {})
        unknown = set(table) - {"uri", *LAKE_OPTIONS}
        if unknown:
            raise ConfigError(f"unknown setting(s) in [lake]: {', '.join(sorted(unknown))}")
        uri = lake or os.environ.get("AUDITLAKE_LAKE") or str(table.get("uri", "") or "")
        options = tuple((k, str(table[k])) for k in LAKE_OPTIONS if table.get(k) not in (None, ""))
        return cls(root, normalize_lake_uri(uri), options if uri else ())

    @classmethod
    def from_args(cls, args: Any) -> DataDir:
        """The data dir and lake of a command's ``--data``, ``--lake`` and ``--config``."""
        config = getattr(args, "config", None)
        return cls.resolve(getattr(args, "data", None), getattr(args, "lake", None),
                           Path(config) if config else None)

    @property
    def shared_lake(self) -> bool:
        """True when the lake is not this data dir's own (``--lake``)."""
        return bool(self.lake_uri)

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


def normalize_lake_uri(uri: str) -> str:
    """``uri`` without a trailing slash; a plain path made absolute."""
    uri = uri.strip()
    if not uri:
        return ""
    if "://" not in uri:
        return str(Path(uri).expanduser().resolve())
    scheme, rest = uri.split("://", 1)
    rest = rest.rstrip("/")
    if scheme in ("s3", "s3a", "gs", "gcs") and not rest:
        raise ConfigError(f"--lake {uri}: name a bucket (s3://bucket/prefix)")
    return f"{scheme}://{rest}"


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
