"""Local-disk primitives every durable write in the data directory uses.

Lake files and checkpoints go through a :class:`~.store.Store`; the files
here are the collector's own local state (DIR/state/*.json, logs), which
never leave the machine.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a rename, a new file) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_file(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically and durably: written to
    ``path.with_suffix(".tmp")``, fsynced, renamed over ``path``, the
    directory fsynced (a crash leaves the old file or the new one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def append_file(path: Path, data: bytes) -> None:
    """Append ``data`` to ``path`` (created if absent) and fsync it."""
    with open(path, "ab") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
