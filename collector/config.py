"""Collector configuration, in one place: command-line arguments win, then
``AUDITLAKE_*`` environment variables, then ``auditlake.toml`` in the data
dir (or the file ``--config`` names), then the defaults below.

Each table of the TOML file maps to one section here: ``[collector]`` to
CollectorConfig; other stages (``[retention]``, ``[admin]``) read their own
table through ``load_toml``.
"""

from __future__ import annotations

import argparse
import os
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from auditlake.collector.errors import ConfigError

DEFAULT_GRPC_LISTEN = "127.0.0.1:4317"
DEFAULT_HTTP_LISTEN = "127.0.0.1:8080"


@dataclass(frozen=True)
class CollectorConfig:
    """Settings of `auditlake serve` (TOML table ``[collector]``)."""

    grpc_listen: str = DEFAULT_GRPC_LISTEN
    #: Admin UI and API address; "" disables the HTTP server.
    http_listen: str = DEFAULT_HTTP_LISTEN
    #: Seconds between seals: an acknowledged event is queryable within about this.
    seal_interval_s: float = 1.0
    #: Unsealed events above which Export answers RESOURCE_EXHAUSTED.
    max_unsealed_events: int = 500_000
    #: Free disk below which Export answers RESOURCE_EXHAUSTED.
    min_free_disk_bytes: int = 256 * 1024 * 1024
    #: Write-ahead log bytes on disk above which Export answers RESOURCE_EXHAUSTED.
    max_wal_bytes: int = 1024 * 1024 * 1024
    #: Batch ids remembered (state/batches.log) so a retried batch is stored once.
    dedupe_batches: int = 200_000
    #: Event ids remembered (the newest sealed) so a re-sent event is stored once.
    dedupe_window_events: int = 2_000_000
    #: Seconds between compaction runs inside `auditlake serve` (0: never).
    compact_interval_s: float = 3600.0
    #: Seconds the lake's maintenance lease lasts without renewal (a shared
    #: lake): how long a dead holder keeps the others from compacting and
    #: running retention.
    maintenance_lease_s: float = 60.0
    #: A second folder (another disk) for signed checkpoints; "" for none.
    checkpoint_mirror: str = ""
    grpc_workers: int = 16
    #: Largest gRPC message accepted (bytes; the SDK sends up to 64 MiB).
    max_message_bytes: int = 64 * 1024 * 1024
    #: gRPC calls handled at once; more answer RESOURCE_EXHAUSTED at once, so
    #: requests held in memory never exceed this many messages.
    max_concurrent_rpcs: int = 32
    #: Concurrent calls one client connection may open (HTTP/2 streams).
    max_streams_per_connection: int = 32
    #: TLS for gRPC ingest and the admin HTTP listener: the server's
    #: certificate (PEM, leaf first, then intermediates) and its private key
    #: (PEM).  Both or neither; "" serves plain text.  Re-read when the files
    #: change, so a renewed certificate needs no restart (docs/operations.md).
    tls_cert: str = ""
    tls_key: str = ""
    #: PEM bundle of the CAs whose client certificates gRPC ingest accepts;
    #: when set, every gRPC client must present one (mutual TLS).  The admin
    #: listener asks for none: its users log in.
    tls_client_ca: str = ""

    def __post_init__(self) -> None:
        for name in ("grpc_listen",):
            value = getattr(self, name)
            if value.rpartition(":")[0] == "" or not value.rpartition(":")[2].isdigit():
                raise ConfigError(f"{name} must be HOST:PORT, got {value!r}")
        if self.seal_interval_s <= 0:
            raise ConfigError("seal_interval_s must be positive")
        if self.max_unsealed_events <= 0:
            raise ConfigError("max_unsealed_events must be positive")
        if self.max_wal_bytes <= 0:
            raise ConfigError("max_wal_bytes must be positive")
        if self.dedupe_batches <= 0 or self.dedupe_window_events < 0:
            raise ConfigError("dedupe_batches must be positive and dedupe_window_events >= 0")
        if self.maintenance_lease_s < 3:
            raise ConfigError("maintenance_lease_s must be at least 3 seconds")
        if self.compact_interval_s < 0:
            raise ConfigError("compact_interval_s must be >= 0")
        for name in ("grpc_workers", "max_message_bytes", "max_concurrent_rpcs", "max_streams_per_connection"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("tls_cert and tls_key go together: give both (TLS) or neither (plain text)")
        if self.tls_client_ca and not self.tls_cert:
            raise ConfigError("tls_client_ca (mutual TLS) needs tls_cert and tls_key: the server's own certificate")

    @property
    def tls(self) -> ServerTls | None:
        """The certificate files to serve with, or None for plain text."""
        if not self.tls_cert:
            return None
        return ServerTls(Path(self.tls_cert), Path(self.tls_key),
                         Path(self.tls_client_ca) if self.tls_client_ca else None)


@dataclass(frozen=True)
class ServerTls:
    """The PEM files a TLS listener serves with: ``cert`` and ``key``, and
    ``client_ca`` when clients must present a certificate (mutual TLS)."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def read(self) -> tuple[bytes, bytes, bytes | None]:
        """(certificate chain, private key, client CA bundle or None) as
        bytes; ConfigError naming the file that cannot be read or holds no PEM."""
        cert = _read_pem(self.cert, "tls_cert", b"CERTIFICATE")
        key = _read_pem(self.key, "tls_key", b"PRIVATE KEY")
        ca = _read_pem(self.client_ca, "tls_client_ca", b"CERTIFICATE") if self.client_ca else None
        import ssl  # noqa: PLC0415 - only TLS listeners need it; verify and query start without it

        try:
            # The pair must match (a renewal replaces the two files one after
            # the other); an encrypted key fails here rather than prompting.
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(self.cert, self.key, password=lambda: b"")
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"tls_cert {self.cert} and tls_key {self.key} cannot be used together "
                              f"(a key of another certificate, or an encrypted key): {exc}") from exc
        return cert, key, ca

    def stamp(self) -> tuple[tuple[int, int], ...]:
        """What changes when any of the files is replaced or rewritten
        (modification time and size of each; (0, 0) for one that is missing)."""
        out = []
        for path in (self.cert, self.key, self.client_ca):
            try:
                st = path.stat() if path is not None else None
            except OSError:
                st = None
            out.append((st.st_mtime_ns, st.st_size) if st is not None else (0, 0))
        return tuple(out)


def _read_pem(path: Path, setting: str, kind: bytes) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot read {path}: {exc.strerror or exc}") from exc
    # "BEGIN PRIVATE KEY", "BEGIN EC PRIVATE KEY", "BEGIN RSA PRIVATE KEY" all end so.
    if b"-----BEGIN " not in data or kind + b"-----" not in data:
        raise ConfigError(f"{setting}: {path} holds no PEM {kind.decode().lower()}")
    return data


def load_toml(path: Path | None) -> dict[str, Any]:
    """The parsed TOML file, or {} when there is none."""
    if path is None or not path.exists():
        return {}
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read configuration {path}: {exc}") from exc


def _coerce(name: str, value: Any, kind: Any) -> Any:
    try:
        if kind in (int, "int"):
            return int(value)
        if kind in (float, "float"):
            return float(value)
        return str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name}: expected {kind}, got {value!r}") from exc


def collector_config(toml: dict[str, Any], **overrides: Any) -> CollectorConfig:
    """CollectorConfig from the TOML ``[collector]`` table, then environment
    variables ``AUDITLAKE_<FIELD>``, then non-None ``overrides``."""
    cfg = CollectorConfig()
    erasure_config(toml)  # a bad [erasure] table stops `auditlake serve` at start, not at its first batch
    table = toml.get("collector", {})
    known = {f.name: f.type for f in fields(CollectorConfig)}
    unknown = set(table) - set(known)
    if unknown:
        raise ConfigError(f"unknown setting(s) in [collector]: {', '.join(sorted(unknown))}")
    values: dict[str, Any] = {}
    for name, kind in known.items():
        if name in table:
            values[name] = _coerce(f"[collector].{name}", table[name], kind)
        env = os.environ.get(f"AUDITLAKE_{name.upper()}")
        if env is not None:
            values[name] = _coerce(f"AUDITLAKE_{name.upper()}", env, kind)
        if overrides.get(name) is not None:
            values[name] = _coerce(f"--{name.replace('_', '-')}", overrides[name], kind)
    return replace(cfg, **values)


#: Columns ``[erasure] fields`` may not name: what identifies, routes and
#: classifies an event (and the subject's tenant) stays readable after erasure.
ERASURE_FORBIDDEN = frozenset({"id", "tenant_id", "action", "resource_type", "outcome"})


@dataclass(frozen=True)
class ErasureConfig:
    """Crypto-shredding of personal fields (TOML table ``[erasure]``,
    docs/erasure.md): off by default; when on, ``fields`` are stored
    encrypted with a key per subject (tenant_id, user_id)."""

    enabled: bool = False
    fields: tuple[str, ...] = ("user_id", "ip_address", "user_agent", "changes", "metadata")

    def __post_init__(self) -> None:
        from auditlake.collector.schema import STRING_FIELDS  # noqa: PLC0415 - foundation beside this one

        if not self.fields:
            raise ConfigError("[erasure] fields must name at least one column")
        for name in self.fields:
            if name not in STRING_FIELDS or name in ERASURE_FORBIDDEN:
                allowed = ", ".join(f for f in STRING_FIELDS if f not in ERASURE_FORBIDDEN)
                raise ConfigError(f"[erasure] fields: {name!r} cannot be encrypted (allowed: {allowed})")
        if len(set(self.fields)) != len(self.fields):
            raise ConfigError("[erasure] fields: a column is named twice")


def erasure_config(toml: dict[str, Any]) -> ErasureConfig:
    """ErasureConfig from the TOML ``[erasure]`` table (``AUDITLAKE_ERASURE``
    = true/false overrides ``enabled``)."""
    table = toml.get("erasure", {})
    unknown = set(table) - {"enabled", "fields"}
    if unknown:
        raise ConfigError(f"unknown setting(s) in [erasure]: {', '.join(sorted(unknown))}")
    enabled = table.get("enabled", False)
    env = os.environ.get("AUDITLAKE_ERASURE")
    if env is not None:
        enabled = env.strip().lower() in ("1", "true", "yes", "on")
    if not isinstance(enabled, bool):
        raise ConfigError(f"[erasure].enabled: expected true or false, got {enabled!r}")
    fields_ = table.get("fields", ErasureConfig.fields)
    if not isinstance(fields_, list | tuple) or not all(isinstance(f, str) for f in fields_):
        raise ConfigError(f"[erasure].fields: expected a list of column names, got {fields_!r}")
    return ErasureConfig(enabled=enabled, fields=tuple(fields_))


# -- the arguments every command shares ---------------------------------------------


def add_data_arg(p: argparse.ArgumentParser) -> None:
    """``--data DIR`` (default ``AUDITLAKE_DATA`` or ./auditlake-data) and
    ``--lake URL`` (default ``AUDITLAKE_LAKE``, the ``[lake]`` table's
    ``uri``, else DIR/lake)."""
    p.add_argument(
        "--data",
        metavar="DIR",
        default=None,
        help="data directory (default: $AUDITLAKE_DATA or ./auditlake-data)",
    )
    p.add_argument(
        "--lake",
        metavar="URL",
        default=None,
        help="where the lake is, when not DIR/lake: s3://bucket/prefix (a lake shared by "
        "several collectors; endpoint and credentials from the AWS environment or the "
        "[lake] table) or a folder (default: $AUDITLAKE_LAKE, else [lake] uri)",
    )


def add_tls_args(p: argparse.ArgumentParser) -> None:
    """``--tls-cert``, ``--tls-key`` and ``--tls-client-ca`` (``[collector]``
    ``tls_cert``, ``tls_key``, ``tls_client_ca``; ``AUDITLAKE_TLS_CERT``, ...)."""
    p.add_argument("--tls-cert", metavar="FILE",
                   help="serve gRPC and the admin UI over TLS with this PEM certificate (chain)")
    p.add_argument("--tls-key", metavar="FILE", help="the PEM private key of --tls-cert")
    p.add_argument("--tls-client-ca", metavar="FILE",
                   help="require gRPC clients to present a certificate signed by a CA in this PEM bundle (mTLS)")


def tls_overrides(args: argparse.Namespace) -> dict[str, str | None]:
    """The TLS arguments of ``add_tls_args`` as ``collector_config`` overrides."""
    return {name: getattr(args, name, None) for name in ("tls_cert", "tls_key", "tls_client_ca")}


def config_path(args: argparse.Namespace, default: Path) -> Path:
    """The TOML file: ``--config``, else ``default`` (the data dir's auditlake.toml)."""
    given = getattr(args, "config", None)
    return Path(given) if given else default


# -- file modes --------------------------------------------------------------------

#: The process umask for everything auditlake writes: the WAL holds event
#: text uncompressed, so by default only the collector's own user reads the
#: data directory (dirs 0700, files 0600).  AUDITLAKE_UMASK=027 lets a group
#: read it (dirs 0750, files 0640).
DEFAULT_UMASK = 0o077


def data_umask() -> int:
    """The umask from ``AUDITLAKE_UMASK`` (octal), else DEFAULT_UMASK; it
    always removes every permission for "other"."""
    raw = os.environ.get("AUDITLAKE_UMASK", "")
    if not raw:
        return DEFAULT_UMASK
    try:
        value = int(raw, 8)
    except ValueError as exc:
        raise ConfigError(f"AUDITLAKE_UMASK must be octal (e.g. 077 or 027), got {raw!r}") from exc
    if not 0 <= value <= 0o777:
        raise ConfigError(f"AUDITLAKE_UMASK must be between 000 and 777, got {raw!r}")
    return value | 0o007
