"""Tiers: where lake files live.  ``hot`` is DIR/lake on local disk; ``cold``
is any pyarrow filesystem (a directory, s3://, gs://) that retention moves
old partitions to.  Checkpoints name a file by tier and relative path:
``events/date=YYYY-MM-DD/part-....parquet`` is hot, ``cold:events/...`` is cold.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow.fs as pafs

from auditlake.collector.datadir import DataDir

COLD_PREFIX = "cold:"


@dataclass(frozen=True)
class Tier:
    """A filesystem and the root path of the lake inside it."""

    name: str
    filesystem: pafs.FileSystem
    root: str

    def path(self, relative: str) -> str:
        """The full path (inside ``filesystem``) of a lake-relative path."""
        return f"{self.root.rstrip('/')}/{relative}"


def hot_tier(data: DataDir) -> Tier:
    """The local hot lake."""
    return Tier("hot", pafs.LocalFileSystem(), str(data.lake))


def split_checkpoint_path(path: str) -> tuple[str, str]:
    """``(tier name, relative path)`` of a path as written in a checkpoint."""
    if path.startswith(COLD_PREFIX):
        return "cold", path[len(COLD_PREFIX):]
    return "hot", path
