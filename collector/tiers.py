"""Tiers: where lake files live.  ``hot`` is DIR/lake on local disk; ``cold``
is any pyarrow filesystem (a directory, s3://, gs://) that retention moves
old partitions to.  Checkpoints name a file by tier and relative path:
``events/date=YYYY-MM-DD/part-....parquet`` is hot, ``cold:events/...`` is cold.
"""

from __future__ import annotations

import os
import threading
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

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


# -- added by retention (additive) ---------------------------------------------

#: Held while a lake maintenance step (compaction, a retention move or
#: expiry) appends its checkpoint, so two steps never replace the same file.
maintenance_lock = threading.RLock()


def tier_from_uri(uri: str, *, endpoint_url: str = "", region: str = "", name: str = "cold",
                  timeout_s: float = 60.0) -> Tier:
    """A Tier for a location URI: a path or ``file:///path``; ``s3://bucket/prefix``
    (credentials from the usual AWS_* environment, endpoint from
    ``endpoint_url`` or AWS_ENDPOINT_URL[_S3]); any other scheme pyarrow knows
    (``gs://``, ``hdfs://``…), else any fsspec filesystem."""
    if "://" not in uri:
        return Tier(name, pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve()))
    scheme, rest = uri.split("://", 1)
    if scheme == "file":
        path = urllib.parse.unquote(urllib.parse.urlparse(uri).path)
        return Tier(name, pafs.LocalFileSystem(), str(Path(path).resolve()))
    if scheme in ("s3", "s3a"):
        kwargs: dict[str, object] = {"connect_timeout": min(10.0, timeout_s), "request_timeout": timeout_s,
                                     "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=3)}
        endpoint = (endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3")
                    or os.environ.get("AWS_ENDPOINT_URL") or "")
        if endpoint:
            parsed = urllib.parse.urlparse(endpoint if "://" in endpoint else "https://" + endpoint)
            kwargs["endpoint_override"] = parsed.netloc
            kwargs["scheme"] = parsed.scheme
        region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or ""
        if region:
            kwargs["region"] = region
        return Tier(name, pafs.S3FileSystem(**kwargs), rest.strip("/"))
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
        return Tier(name, fs, path.rstrip("/"))
    except (ValueError, OSError):
        import fsspec  # noqa: PLC0415

        ffs, fpath = fsspec.core.url_to_fs(uri)
        return Tier(name, pafs.PyFileSystem(pafs.FSSpecHandler(ffs)), str(fpath).rstrip("/"))
