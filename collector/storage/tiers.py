"""Tiers: where lake files live, each a :class:`Store`.  ``hot`` is DIR/lake
on local disk; ``cold`` is any store (a directory, s3://, gs://) that
retention moves old partitions to.  Checkpoints name a file by tier and
relative path: ``events/date=YYYY-MM-DD/part-....parquet`` is hot,
``cold:events/...`` is cold.
"""

from __future__ import annotations

import functools
import json
import os
import threading
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from auditlake.collector.errors import ConfigError
from auditlake.collector.storage.conditional import S3Conditional
from auditlake.collector.storage.datadir import DataDir
from auditlake.collector.storage.store import LocalStore, ObjectStore, Store

COLD_PREFIX = "cold:"


#: A tier is a store with a role; the name stays for readers of checkpoints.
Tier = Store


#: Folders of a lake given by ``--lake URL``, under URL.
CHECKPOINTS = "checkpoints"
FLEET = "_auditlake"


def hot_tier(data: DataDir) -> Tier:
    """The hot lake: DIR/lake, or the ``--lake`` location."""
    if data.lake_uri:
        return _staged(data, lake_root(data))
    return LocalStore(data.lake, "hot")


def checkpoint_tier(data: DataDir) -> Store:
    """Where the signed checkpoints are (one folder per writer):
    DIR/checkpoints, or URL/checkpoints of a ``--lake``."""
    if data.lake_uri:
        return _staged(data, lake_root(data)).child(CHECKPOINTS, "checkpoints")
    return LocalStore(data.checkpoints, "checkpoints")


#: Where a collector stages what it publishes to an object-store lake: DIR/state/staging.
STAGING = "staging"


def _staged(data: DataDir, store: Store) -> Store:
    """``store`` staging in DIR/state/staging when it is an object store (a
    stage is a local file, publishing it one conditional PUT)."""
    if isinstance(store, ObjectStore):
        return store.with_staging(data.state / STAGING)
    return store


def fleet_state(data: DataDir) -> Store:
    """Where state every collector of a lake shares lives (ingest keys,
    users, the writers registry): DIR/keys for a local lake, URL/_auditlake
    for a ``--lake``."""
    if data.lake_uri:
        return lake_root(data).child(FLEET, "fleet state")
    return LocalStore(data.keys, "keys")


def lake_root(data: DataDir) -> Store:
    """The store at ``data.lake_uri`` (one per process and location: an S3
    client and its connection pool are built once)."""
    options = dict(data.lake_options)
    try:
        timeout_s = float(options.get("timeout_s", 60.0))
    except ValueError as exc:
        raise ConfigError(f"[lake] timeout_s must be a number, got {options['timeout_s']!r}") from exc
    # The environment is part of the key: it names the endpoint and credentials.
    env = tuple(os.environ.get(k, "") for k in _AWS_ENVIRONMENT)
    return _lake_root(data.lake_uri, options.get("endpoint_url", ""), options.get("region", ""), timeout_s, env)


_AWS_ENVIRONMENT = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION",
                    "AWS_ACCESS_KEY_ID", "AWS_PROFILE")


@functools.lru_cache(maxsize=16)
def _lake_root(uri: str, endpoint_url: str, region: str, timeout_s: float, env: tuple[str, ...]) -> Store:
    if timeout_s <= 0:
        raise ConfigError(f"[lake] timeout_s must be positive, got {timeout_s}")
    return tier_from_uri(uri, endpoint_url=endpoint_url, region=region, name="hot", timeout_s=timeout_s)


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
        return LocalStore(Path(uri).expanduser().resolve(), name)
    scheme, rest = uri.split("://", 1)
    if scheme == "file":
        path = urllib.parse.unquote(urllib.parse.urlparse(uri).path)
        return LocalStore(Path(path).resolve(), name)
    if scheme in ("s3", "s3a"):
        kwargs: dict[str, object] = {"connect_timeout": min(10.0, timeout_s), "request_timeout": timeout_s,
                                     "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=3)}
        endpoint = (endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3")
                    or os.environ.get("AWS_ENDPOINT_URL") or "")
        if endpoint:
            parsed = urllib.parse.urlparse(endpoint if "://" in endpoint else "https://" + endpoint)
            kwargs["endpoint_override"] = parsed.netloc
            kwargs["scheme"] = parsed.scheme
            endpoint = f"{parsed.scheme}://{parsed.netloc}"
        region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or ""
        if region:
            kwargs["region"] = region
        bucket, _, prefix = rest.strip("/").partition("/")
        conditional = S3Conditional(bucket, prefix, endpoint_url=endpoint, region=region, timeout_s=timeout_s)
        return ObjectStore(pafs.S3FileSystem(**kwargs), rest.strip("/"), name, uri, conditional)
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
        return ObjectStore(fs, path.rstrip("/"), name, uri)
    except (ValueError, OSError):
        import fsspec  # noqa: PLC0415

        ffs, fpath = fsspec.core.url_to_fs(uri)
        return ObjectStore(pafs.PyFileSystem(pafs.FSSpecHandler(ffs)), str(fpath).rstrip("/"), name, uri)


# -- where the cold tier is (verify and retention) -------------------------------

#: Retention's index of cold files, in DIR/state; its "cold" field is the
#: location the move checkpoints recorded.
COLD_INDEX = "cold-index.json"

#: The ``[retention]`` settings that reach the cold tier; an
#: AUDITLAKE_RETENTION_<KEY> environment variable overrides each.
_COLD_KEYS = ("cold", "endpoint_url", "region", "timeout_s")
#: Named durations, accepted wherever ``[retention]`` takes seconds.
_NAMED_SECONDS = {"daily": 86400.0, "hourly": 3600.0, "weekly": 7 * 86400.0, "off": 0.0}


@dataclass(frozen=True)
class _ColdAccess:
    """How the ``[retention]`` table reaches the cold tier."""

    cold: str
    endpoint_url: str
    region: str
    timeout_s: float


def _seconds(name: str, value: Any) -> float:
    # The same forms retention's policy accepts: a number, a numeric string or a named duration.
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip().lower()
    if text in _NAMED_SECONDS:
        return _NAMED_SECONDS[text]
    try:
        return float(text)
    except ValueError as exc:
        raise ConfigError(f"[retention] {name} = {value!r}: expected a number of seconds") from exc


def _cold_access(toml: dict[str, Any]) -> _ColdAccess | None:
    """The cold-tier settings of the ``[retention]`` table; None without one."""
    table = dict(toml.get("retention", {}) or {})
    for key in _COLD_KEYS:
        env = os.environ.get(f"AUDITLAKE_RETENTION_{key.upper()}")
        if env is not None:
            table[key] = env
    if not table:
        return None
    cold = str(table.get("cold", ""))
    if not cold:
        raise ConfigError("[retention] cold is required: where old partitions go (file:///path or s3://bucket/prefix)")
    timeout_s = _seconds("timeout_s", table.get("timeout_s", 60.0))
    if timeout_s <= 0:
        raise ConfigError(f"[retention] timeout_s must be positive, got {timeout_s}")
    return _ColdAccess(cold, str(table.get("endpoint_url", "")), str(table.get("region", "")), timeout_s)


def recorded_cold_location(data: DataDir) -> str | None:
    """The cold location the move checkpoints recorded, as DIR/state/cold-index.json
    keeps it ("" when no move recorded one); None when there is no index yet."""
    try:
        raw = cold_index_store(data).read(COLD_INDEX)
    except FileNotFoundError:
        return None
    return str(json.loads(raw).get("cold", "") or "")


def cold_index_store(data: DataDir) -> Store:
    """Where retention's cold index is kept: DIR/state, or the fleet state
    of a shared lake (any collector may hold the maintenance lease)."""
    return fleet_state(data) if data.shared_lake else LocalStore(data.state, "state")


def cold_tier_at(location: str, toml: dict[str, Any]) -> Store | None:
    """The cold tier at ``location`` (else at the ``[retention]`` table's
    ``cold``), reached with that table's ``endpoint_url``, ``region`` and
    ``timeout_s``; None when neither names a location."""
    access = _cold_access(toml)
    location = location or (access.cold if access else "")
    if not location:
        return None
    if access is None:
        return tier_from_uri(location)
    return tier_from_uri(location, endpoint_url=access.endpoint_url, region=access.region,
                         timeout_s=access.timeout_s)


def cold_tier(data: DataDir, toml: dict[str, Any]) -> Store | None:
    """The cold tier: where the move checkpoints put files (the location
    DIR/state/cold-index.json records), else where the ``[retention]`` table
    says; None without either.  Without an index this does not scan the
    checkpoints: a caller holding them passes their location to
    :func:`cold_tier_at`."""
    return cold_tier_at(recorded_cold_location(data) or "", toml)
