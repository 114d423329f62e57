"""Configuration and the one provider behind ``configure()``.

Every setting has one name, used three ways, in this order of precedence:

1. an argument to ``configure()`` (``spool_dir=...``),
2. an environment variable (``AUDITLAKE_SPOOL_DIR``),
3. a key in the TOML file named by ``AUDITLAKE_CONFIG`` or ``configure(config_file=...)``
   (``spool_dir = "..."`` at the top level or under an ``[auditlake]`` table),

then the default below.  ``docs/sdk.md`` has the same table.
"""

from __future__ import annotations

import atexit
import os
import re
import tempfile
import threading
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from auditlake.sdk._event import reseed_ids
from auditlake.sdk._exceptions import ConfigurationError, NotConfiguredError
from auditlake.sdk._exporter import Exporter, GrpcExporter, parse_endpoint
from auditlake.sdk._policies import BatchPolicy, RetryPolicy, SpoolPolicy
from auditlake.sdk._processor import BatchProcessor, Stats
from auditlake.sdk._trace import resource_service_name

ENV_CONFIG: Final = "AUDITLAKE_CONFIG"


def _boolean(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


_BATCH, _RETRY, _SPOOL = BatchPolicy(), RetryPolicy(), SpoolPolicy()

# name -> (environment variable, parser of its text, default)
SETTINGS: Final[dict[str, tuple[str, Callable[[str], Any], Any]]] = {
    "endpoint": ("AUDITLAKE_ENDPOINT", str, "127.0.0.1:4317"),
    "api_key": ("AUDITLAKE_API_KEY", str, ""),
    "service_name": ("AUDITLAKE_SERVICE_NAME", str, ""),
    "tenant_id": ("AUDITLAKE_TENANT_ID", str, ""),
    "tls": ("AUDITLAKE_TLS", _boolean, False),
    "durable_timeout": ("AUDITLAKE_DURABLE_TIMEOUT", float, 5.0),
    "redact": ("AUDITLAKE_REDACT", _names, ()),
    "batch_max_size": ("AUDITLAKE_BATCH_MAX_SIZE", int, _BATCH.max_batch_size),
    "batch_delay": ("AUDITLAKE_BATCH_DELAY", float, _BATCH.schedule_delay),
    "queue_max_size": ("AUDITLAKE_QUEUE_MAX_SIZE", int, _BATCH.max_queue_size),
    "export_timeout": ("AUDITLAKE_EXPORT_TIMEOUT", float, _BATCH.export_timeout),
    "retry_max_attempts": ("AUDITLAKE_RETRY_MAX_ATTEMPTS", int, _RETRY.max_attempts),
    "retry_initial_backoff": (
        "AUDITLAKE_RETRY_INITIAL_BACKOFF",
        float,
        _RETRY.initial_backoff,
    ),
    "retry_max_backoff": ("AUDITLAKE_RETRY_MAX_BACKOFF", float, _RETRY.max_backoff),
    "spool_dir": ("AUDITLAKE_SPOOL_DIR", str, ""),
    "spool_max_bytes": ("AUDITLAKE_SPOOL_MAX_BYTES", int, _SPOOL.max_bytes),
    "spool_full": ("AUDITLAKE_SPOOL_FULL", str, _SPOOL.full),
    "spool_enabled": ("AUDITLAKE_SPOOL_ENABLED", _boolean, _SPOOL.enabled),
}


@dataclass(frozen=True, slots=True)
class Settings:
    """The resolved configuration the SDK runs with."""

    endpoint: str = "127.0.0.1:4317"
    api_key: str = ""
    service_name: str = ""
    tenant_id: str = ""
    tls: bool = False
    durable_timeout: float = 5.0
    redact: tuple[str, ...] = ()
    batch: BatchPolicy = field(default_factory=BatchPolicy)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    spool: SpoolPolicy = field(default_factory=SpoolPolicy)
    denied_exceptions: tuple[type[BaseException], ...] = (PermissionError,)

    def __post_init__(self) -> None:
        if not self.endpoint:
            raise ConfigurationError("endpoint: must not be empty")
        try:
            parse_endpoint(self.endpoint)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from exc
        if self.durable_timeout <= 0:
            raise ConfigurationError("durable_timeout: must be positive")

    @property
    def spool_directory(self) -> Path:
        """The spool directory, the per-service default filled in."""
        if self.spool.directory is not None:
            return self.spool.directory
        cache_home = os.environ.get("XDG_CACHE_HOME")
        if cache_home:
            cache = Path(cache_home)
        else:
            try:
                cache = Path.home() / ".cache"
            except (RuntimeError, KeyError):  # no home directory (some containers)
                cache = Path(tempfile.gettempdir()) / f"auditlake-{os.getuid()}"
        service = re.sub(r"[^A-Za-z0-9_.-]", "_", self.service_name or "default")
        return cache / "auditlake" / "spool" / service


def _read_file(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ConfigurationError(f"{ENV_CONFIG}: cannot read {path}: {error}") from error
    table = data.get("auditlake", data)
    if not isinstance(table, dict):
        raise ConfigurationError(f"{path}: [auditlake] must be a table")
    unknown = sorted(set(table) - set(SETTINGS))
    if unknown:
        raise ConfigurationError(f"{path}: unknown setting(s) {', '.join(unknown)}")
    return table


def load_settings(
    arguments: Mapping[str, Any] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    config_file: str | os.PathLike[str] | None = None,
    batch: BatchPolicy | None = None,
    retry: RetryPolicy | None = None,
    spool: SpoolPolicy | None = None,
    denied_exceptions: Sequence[type[BaseException]] | None = None,
) -> Settings:
    """Resolve settings: arguments, then environment, then the TOML file, then defaults."""
    environ = os.environ if environ is None else environ
    values = {name: default for name, (_, _, default) in SETTINGS.items()}
    path = config_file if config_file is not None else environ.get(ENV_CONFIG)
    if path:
        for name, value in _read_file(os.fspath(path)).items():
            values[name] = tuple(value) if name == "redact" else value
    for name, (variable, parse, _) in SETTINGS.items():
        text = environ.get(variable)
        if text is not None and text != "":
            try:
                values[name] = parse(text)
            except ValueError as error:
                raise ConfigurationError(f"{variable}: {error}") from error
    for name, value in (arguments or {}).items():
        if name not in SETTINGS:
            raise ConfigurationError(f"{name}: unknown setting")
        if value is not None:
            values[name] = tuple(value) if name == "redact" else value
    try:
        batch = batch or BatchPolicy(
            max_batch_size=int(values["batch_max_size"]),
            schedule_delay=float(values["batch_delay"]),
            max_queue_size=int(values["queue_max_size"]),
            export_timeout=float(values["export_timeout"]),
        )
        retry = retry or RetryPolicy(
            max_attempts=int(values["retry_max_attempts"]),
            initial_backoff=float(values["retry_initial_backoff"]),
            max_backoff=max(float(values["retry_max_backoff"]), float(values["retry_initial_backoff"])),
        )
        spool_dir = values["spool_dir"]
        if spool is None:
            spool = SpoolPolicy(
                directory=Path(spool_dir).expanduser() if spool_dir else None,
                max_bytes=int(values["spool_max_bytes"]),
                full=values["spool_full"],
                enabled=bool(values["spool_enabled"]),
            )
        elif arguments and arguments.get("spool_dir"):
            spool = SpoolPolicy(
                directory=Path(spool_dir).expanduser(),
                max_bytes=spool.max_bytes,
                full=spool.full,
                enabled=spool.enabled,
            )
        return Settings(
            endpoint=str(values["endpoint"]),
            api_key=str(values["api_key"]),
            service_name=str(values["service_name"]),
            tenant_id=str(values["tenant_id"]),
            tls=bool(values["tls"]),
            durable_timeout=float(values["durable_timeout"]),
            redact=tuple(values["redact"]),
            batch=batch,
            retry=retry,
            spool=spool,
            denied_exceptions=tuple(denied_exceptions or (PermissionError,)),
        )
    except (TypeError, ValueError) as error:
        if isinstance(error, ConfigurationError):
            raise
        raise ConfigurationError(str(error)) from error


class _Provider:
    """The SDK's only global state: the settings and the running processor."""

    __slots__ = ("processor", "settings")

    def __init__(self) -> None:
        self.processor: BatchProcessor | None = None
        self.settings: Settings = Settings()


PROVIDER = _Provider()
_lock = threading.RLock()
_atexit_registered = False


def configure(
    endpoint: str | None = None,
    api_key: str | None = None,
    service_name: str | None = None,
    *,
    tenant_id: str | None = None,
    spool_dir: str | os.PathLike[str] | None = None,
    tls: bool | None = None,
    durable_timeout: float | None = None,
    redact: Sequence[str] | None = None,
    batch: BatchPolicy | None = None,
    retry: RetryPolicy | None = None,
    spool: SpoolPolicy | None = None,
    denied_exceptions: Sequence[type[BaseException]] | None = None,
    exporter: Exporter | None = None,
    config_file: str | os.PathLike[str] | None = None,
) -> Settings:
    """Start (or restart) the SDK; returns the resolved settings.

    Arguments win over ``AUDITLAKE_*`` variables, which win over the TOML
    file.  A previous configuration is shut down first (its queue flushed or
    spooled).  Batches left in the spool by an earlier run are delivered.
    ``tenant_id`` is the tenant of events that name none (single-tenant
    services); the collector refuses events without a tenant.
    ``exporter`` replaces the gRPC exporter (see ``auditlake.sdk.testing``).
    """
    global _atexit_registered
    arguments = {
        "endpoint": endpoint,
        "api_key": api_key,
        "service_name": service_name,
        "tenant_id": tenant_id,
        "spool_dir": os.fspath(spool_dir) if spool_dir is not None else None,
        "tls": tls,
        "durable_timeout": durable_timeout,
        "redact": redact,
    }
    settings = load_settings(
        arguments,
        config_file=config_file,
        batch=batch,
        retry=retry,
        spool=spool,
        denied_exceptions=denied_exceptions,
    )
    if not settings.service_name:
        otel_name = resource_service_name()
        if otel_name:
            settings = _replace_service(settings, otel_name)

    def make_exporter() -> Exporter:
        if exporter is not None:
            return exporter
        return GrpcExporter(settings.endpoint, settings.api_key, tls=settings.tls)

    def service() -> str:
        return resource_service_name() or settings.service_name or "unknown_service"

    with _lock:
        shutdown()
        PROVIDER.settings = settings
        PROVIDER.processor = BatchProcessor(
            make_exporter,
            batch=settings.batch,
            retry=settings.retry,
            spool=settings.spool,
            spool_dir=settings.spool_directory if settings.spool.enabled else None,
            service=service,
            default_tenant=settings.tenant_id,
        )
        if not _atexit_registered:
            atexit.register(_shutdown_at_exit)
            _atexit_registered = True
    return settings


def _replace_service(settings: Settings, name: str) -> Settings:
    values = {f: getattr(settings, f) for f in Settings.__dataclass_fields__}
    values["service_name"] = name
    return Settings(**values)


def is_configured() -> bool:
    """True between ``configure()`` and ``shutdown()``."""
    return PROVIDER.processor is not None


def current_settings() -> Settings:
    """The settings in force (defaults before ``configure()``)."""
    return PROVIDER.settings


def shutdown(timeout: float | None = 5.0) -> bool:
    """Deliver what is queued (spooling what cannot be) and stop the SDK.

    Returns True when everything was acknowledged.  Runs at interpreter exit.
    """
    with _lock:
        processor, PROVIDER.processor = PROVIDER.processor, None
    if processor is None:
        return True
    return processor.shutdown(timeout)


def flush(timeout: float | None = None) -> bool:
    """Wait until everything recorded so far is acknowledged by the collector.

    Without a timeout one delivery attempt is made (spooling what cannot be
    delivered); with one, delivery is retried until it passes.  Returns False
    when events remain spooled, or were dropped or refused since the
    previous flush.
    """
    processor = PROVIDER.processor
    if processor is None:
        raise NotConfiguredError("call auditlake.sdk.configure() first")
    return processor.flush(timeout)


def stats() -> Stats:
    """Counters of the running SDK: recorded, queued, exported, retried, spooled, ..."""
    processor = PROVIDER.processor
    if processor is None:
        return Stats(0, 0, 0, 0, 0, 0, 0, 0)
    return processor.stats()


def _shutdown_at_exit() -> None:
    shutdown(timeout=5.0)


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.RLock()
    reseed_ids()
    processor = PROVIDER.processor
    if processor is not None:
        processor.after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
