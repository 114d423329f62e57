"""Configuration and the one provider behind ``configure()``.

Every setting has one name, used three ways, in this order of precedence:

1. an argument to ``configure()`` (``spool_dir=...``),
2. an environment variable (``AUDITLAKE_SPOOL_DIR``),
3. a key in the TOML file named by ``AUDITLAKE_CONFIG`` or ``configure(config_file=...)``
   (``spool_dir = "..."`` at the top level or under an ``[auditlake]`` table),

then the default below.  ``docs/sdk.md`` has the same table, and
tests/sdk/test_settings_table.py holds the two together.  Settings that
belong to a policy object (``BatchPolicy``, ``RetryPolicy``, ``SpoolPolicy``)
are listed in ``POLICY_FIELDS``; ``configure(batch=...)`` passes the whole
object as an argument instead, and never together with one of its settings.
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
from typing import Any, Final, TypeVar

from auditlake.sdk._event import ANONYMOUS_TENANT, reseed_ids
from auditlake.sdk._exceptions import ConfigurationError, NotConfiguredError
from auditlake.sdk._exporter import ClientTls, Exporter, GrpcExporter, parse_endpoint
from auditlake.sdk._policies import BatchPolicy, FullPolicy, RetryPolicy, SpoolPolicy
from auditlake.sdk._processor import BatchProcessor, DroppedEvents, ReplayResult, Stats
from auditlake.sdk._spool import DEAD_LETTER_MAX_BYTES
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
    "anonymous_tenant": ("AUDITLAKE_ANONYMOUS_TENANT", str, ANONYMOUS_TENANT),
    "tls": ("AUDITLAKE_TLS", _boolean, False),
    "tls_ca_file": ("AUDITLAKE_TLS_CA_FILE", str, ""),
    "tls_cert_file": ("AUDITLAKE_TLS_CERT_FILE", str, ""),
    "tls_key_file": ("AUDITLAKE_TLS_KEY_FILE", str, ""),
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
    "retry_multiplier": ("AUDITLAKE_RETRY_MULTIPLIER", float, _RETRY.multiplier),
    "retry_jitter": ("AUDITLAKE_RETRY_JITTER", float, _RETRY.jitter),
    "spool_dir": ("AUDITLAKE_SPOOL_DIR", str, ""),
    "spool_max_bytes": ("AUDITLAKE_SPOOL_MAX_BYTES", int, _SPOOL.max_bytes),
    "spool_full": ("AUDITLAKE_SPOOL_FULL", str, _SPOOL.full),
    "spool_enabled": ("AUDITLAKE_SPOOL_ENABLED", _boolean, _SPOOL.enabled),
    "dead_letter_max_bytes": ("AUDITLAKE_DEAD_LETTER_MAX_BYTES", int, DEAD_LETTER_MAX_BYTES),
}

#: setting -> (the ``configure()`` argument of its policy object, the field in it).
#: Every field of the three policies is here: one value, reachable by its setting
#: name (argument, variable, TOML key) or as a field of the policy object.
POLICY_FIELDS: Final[dict[str, tuple[str, str]]] = {
    "batch_max_size": ("batch", "max_batch_size"),
    "batch_delay": ("batch", "schedule_delay"),
    "queue_max_size": ("batch", "max_queue_size"),
    "export_timeout": ("batch", "export_timeout"),
    "retry_max_attempts": ("retry", "max_attempts"),
    "retry_initial_backoff": ("retry", "initial_backoff"),
    "retry_max_backoff": ("retry", "max_backoff"),
    "retry_multiplier": ("retry", "multiplier"),
    "retry_jitter": ("retry", "jitter"),
    "spool_dir": ("spool", "directory"),
    "spool_max_bytes": ("spool", "max_bytes"),
    "spool_full": ("spool", "full"),
    "spool_enabled": ("spool", "enabled"),
}

_POLICY_TYPES: Final[dict[str, type[BatchPolicy | RetryPolicy | SpoolPolicy]]] = {
    "batch": BatchPolicy,
    "retry": RetryPolicy,
    "spool": SpoolPolicy,
}

# What a non-text value (an argument, a TOML value) may be, per parser of text.
# bool is an int to Python, never a count or a duration here.
_ACCEPTED: Final[dict[Callable[[str], Any], tuple[type, ...]]] = {
    str: (str,),
    int: (int,),
    float: (int, float),
    _boolean: (bool,),
    _names: (list, tuple),
}


def _coerce(name: str, value: Any) -> Any:
    """``value`` of setting ``name`` as the SDK uses it: text is parsed as
    its variable would be (``tls = "true"`` in TOML is True, not a truthy
    string); other values must have the setting's type."""
    _, parse, _ = SETTINGS[name]
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, str):
        try:
            return parse(value)
        except ValueError as error:
            raise ConfigurationError(f"{name}: {error}") from error
    accepted = _ACCEPTED.get(parse)
    if accepted is None:  # a setting with its own parser checks its value itself
        return value
    wrong = isinstance(value, bool) and bool not in accepted or not isinstance(value, accepted)
    if wrong:
        raise ConfigurationError(f"{name}: expected {' or '.join(t.__name__ for t in accepted)}, got {value!r}")
    if parse is float:
        return float(value)
    if parse is _names:
        return tuple(str(part) for part in value)
    return value


@dataclass(frozen=True, slots=True)
class Settings:
    """The resolved configuration the SDK runs with."""

    endpoint: str = "127.0.0.1:4317"
    api_key: str = ""
    service_name: str = ""
    tenant_id: str = ""
    #: The tenant of events that name none when ``tenant_id`` is not set
    #: (anonymous requests of a multi-tenant service); "" refuses them.
    anonymous_tenant: str = ANONYMOUS_TENANT
    tls: bool = False
    #: PEM CA bundle to trust instead of the system roots; a client
    #: certificate and its key for a collector that asks for one (mTLS).
    #: Any of them turns TLS on.
    tls_ca_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""
    durable_timeout: float = 5.0
    redact: tuple[str, ...] = ()
    batch: BatchPolicy = field(default_factory=BatchPolicy)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    spool: SpoolPolicy = field(default_factory=SpoolPolicy)
    denied_exceptions: tuple[type[BaseException], ...] = (PermissionError,)
    #: Bound of the dead-letter spool (refused batches); 0 keeps none.
    dead_letter_max_bytes: int = DEAD_LETTER_MAX_BYTES

    def __post_init__(self) -> None:
        if not self.endpoint:
            raise ConfigurationError("endpoint: must not be empty")
        try:
            parse_endpoint(self.endpoint)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from exc
        if self.durable_timeout <= 0:
            raise ConfigurationError("durable_timeout: must be positive")
        if self.dead_letter_max_bytes < 0:
            raise ConfigurationError("dead_letter_max_bytes: must be 0 (none kept) or more")

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

    def get(self, name: str) -> Any:
        """The value of the setting called ``name`` (a key of the settings
        table): ``get("batch_delay")`` is ``batch.schedule_delay``.  A setting
        not kept in a policy object is the field of the same name."""
        if name not in SETTINGS:
            raise KeyError(f"{name}: unknown setting")
        if name in POLICY_FIELDS:
            policy, field_name = POLICY_FIELDS[name]
            return getattr(getattr(self, policy), field_name)
        return getattr(self, name)


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


_Policy = TypeVar("_Policy", BatchPolicy, RetryPolicy, SpoolPolicy)


def _policy(cls: type[_Policy], kind: str, values: Mapping[str, Any]) -> _Policy:
    """Policy ``kind`` built from its settings; a bad value names the setting."""
    fields = {name: field_name for name, (k, field_name) in POLICY_FIELDS.items() if k == kind}
    arguments = {field_name: values[name] for name, field_name in fields.items()}
    if "directory" in arguments:  # spool_dir: "" is the per-service default
        directory = arguments["directory"]
        arguments["directory"] = Path(directory).expanduser() if directory else None
    try:
        return cls(**arguments)
    except ConfigurationError as error:
        field_name, _, message = str(error).partition(": ")
        setting = next((name for name, f in fields.items() if f == field_name), field_name)
        raise ConfigurationError(f"{setting}: {message} ({cls.__name__}.{field_name})") from error


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
    given: set[str] = set()  # settings that some source set
    path = config_file if config_file is not None else environ.get(ENV_CONFIG)
    if path:
        for name, value in _read_file(os.fspath(path)).items():
            values[name] = _coerce(name, value)
            given.add(name)
    for name, (variable, parse, _) in SETTINGS.items():
        text = environ.get(variable)
        if text is not None and text != "":
            try:
                values[name] = parse(text)
            except ValueError as error:
                raise ConfigurationError(f"{variable}: {error}") from error
            given.add(name)
    objects: dict[str, object | None] = {"batch": batch, "retry": retry, "spool": spool}
    for name, value in (arguments or {}).items():
        if name not in SETTINGS:
            raise ConfigurationError(f"{name}: unknown setting")
        if value is None:
            continue
        kind, field_name = POLICY_FIELDS.get(name, ("", ""))
        if objects.get(kind) is not None:
            # Which of the two was meant is a guess either way: say so.
            raise ConfigurationError(
                f"{name}: given together with {kind}=; set {_POLICY_TYPES[kind].__name__}"
                f"({field_name}=...) instead, or leave {kind}= out"
            )
        values[name] = _coerce(name, value)
        given.add(name)
    if "retry_max_backoff" not in given:
        # A longer first backoff alone must not trip over the default ceiling.
        values["retry_max_backoff"] = max(values["retry_max_backoff"], values["retry_initial_backoff"])
    try:
        batch = batch or _policy(BatchPolicy, "batch", values)
        retry = retry or _policy(RetryPolicy, "retry", values)
        spool = spool or _policy(SpoolPolicy, "spool", values)
        return Settings(
            endpoint=str(values["endpoint"]),
            api_key=str(values["api_key"]),
            service_name=str(values["service_name"]),
            tenant_id=str(values["tenant_id"]),
            anonymous_tenant=str(values["anonymous_tenant"]),
            tls=bool(values["tls"]),
            tls_ca_file=_path_text(values["tls_ca_file"]),
            tls_cert_file=_path_text(values["tls_cert_file"]),
            tls_key_file=_path_text(values["tls_key_file"]),
            durable_timeout=float(values["durable_timeout"]),
            redact=tuple(values["redact"]),
            batch=batch,
            retry=retry,
            spool=spool,
            denied_exceptions=tuple(denied_exceptions or (PermissionError,)),
            dead_letter_max_bytes=int(values["dead_letter_max_bytes"]),
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
    anonymous_tenant: str | None = None,
    tls: bool | None = None,
    tls_ca_file: str | os.PathLike[str] | None = None,
    tls_cert_file: str | os.PathLike[str] | None = None,
    tls_key_file: str | os.PathLike[str] | None = None,
    durable_timeout: float | None = None,
    redact: Sequence[str] | str | None = None,
    batch_max_size: int | None = None,
    batch_delay: float | None = None,
    queue_max_size: int | None = None,
    export_timeout: float | None = None,
    retry_max_attempts: int | None = None,
    retry_initial_backoff: float | None = None,
    retry_max_backoff: float | None = None,
    retry_multiplier: float | None = None,
    retry_jitter: float | None = None,
    spool_dir: str | os.PathLike[str] | None = None,
    spool_max_bytes: int | None = None,
    dead_letter_max_bytes: int | None = None,
    spool_full: FullPolicy | None = None,
    spool_enabled: bool | None = None,
    batch: BatchPolicy | None = None,
    retry: RetryPolicy | None = None,
    spool: SpoolPolicy | None = None,
    denied_exceptions: Sequence[type[BaseException]] | None = None,
    on_drop: Callable[[DroppedEvents], object] | None = None,
    exporter: Exporter | None = None,
    config_file: str | os.PathLike[str] | None = None,
) -> Settings:
    """Start (or restart) the SDK; returns the resolved settings.

    Every keyword down to ``spool_enabled`` is a setting of the table in
    docs/sdk.md (``SETTINGS``): the same name is an ``AUDITLAKE_*``
    variable and a TOML key.  Arguments win over the variables, which win
    over the TOML file; ``None`` leaves a setting to them.
    ``batch``, ``retry`` and ``spool`` give a whole policy object instead
    (it wins over variables and file); giving one together with one of its
    own settings (``batch=..., batch_delay=...``) is a ConfigurationError.
    A previous configuration is shut down first (its queue flushed or
    spooled).  Batches left in the spool by an earlier run are delivered.
    ``tenant_id`` is the tenant of events that name none (single-tenant
    services); the collector refuses events without a tenant.
    ``exporter`` replaces the gRPC exporter (see ``auditlake.sdk.testing``).
    ``on_drop(dropped: DroppedEvents)`` is called on the export thread for
    every group of events refused or dropped (an exception it raises is
    logged and ignored).
    """
    global _atexit_registered
    # Every parameter named like a setting is that setting: read them all
    # here, before any other local exists, so no keyword can be forgotten.
    arguments = {name: value for name, value in locals().items() if name in SETTINGS}
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

    # The certificate files are read here, so a missing one is an error of
    # configure(), not of a later export on the background thread.
    tls_files = None if exporter is not None else _client_tls(settings)

    def make_exporter() -> Exporter:
        if exporter is not None:
            return exporter
        return GrpcExporter(settings.endpoint, settings.api_key, tls=settings.tls, tls_files=tls_files)

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
            anonymous_tenant=settings.anonymous_tenant,
            dead_letter_max_bytes=settings.dead_letter_max_bytes,
            on_drop=on_drop,
        )
        if not _atexit_registered:
            atexit.register(_shutdown_at_exit)
            _atexit_registered = True
    return settings


def _path_text(value: Any) -> str:
    """A file setting as text, ``~`` expanded ("" stays unset)."""
    return os.path.expanduser(str(value)) if value else ""


def _client_tls(settings: Settings) -> ClientTls | None:
    """The TLS files of ``settings``, read; None when none is set."""
    try:
        return ClientTls.from_files(settings.tls_ca_file, settings.tls_cert_file, settings.tls_key_file)
    except ValueError as error:
        raise ConfigurationError(str(error)) from error


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


def replay_dead_letters() -> ReplayResult:
    """Resend the events the collector refused (kept in ``<spool>/dead-letter/``)
    once the cause is fixed: a new API key, a key granted the tenant.

    Each kept batch is sent once, with its events' ids (the collector stores
    an id once); events naming no tenant get ``tenant_id`` or
    ``anonymous_tenant``.  Returns the events delivered, refused again (still
    kept, with the new refusal) and pending (the collector was unavailable).
    """
    processor = PROVIDER.processor
    if processor is None:
        raise NotConfiguredError("call auditlake.sdk.configure() first")
    return processor.replay_dead_letters()


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
