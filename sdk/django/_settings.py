"""``settings.AUDITLAKE``, parsed once at start-up into frozen values.

Every key, with its default::

    AUDITLAKE = {
        # Which models: "__all__", a list of labels, or labels mapped to a policy.
        # A label is "app_label" (every model of the app) or "app_label.Model";
        # "__all__" as a key gives the policy of every model no other key names.
        "models": {},
        "exclude_models": [],          # labels never captured (wins over "models")
        "actions": {"create": "create", "update": "update", "delete": "delete", "read": "read"},
        "resource_type": "label",      # label, label_lower, model_name, db_table, or callable(model) -> str
        "read_max_ids": 100,           # ids a read event names (then only the count grows)
        "configure": None,             # True: sdk.configure() at ready(); a dict: its arguments
        "trusted_proxies": [],         # the middleware: proxies whose X-Forwarded-For is believed
        "request_id_header": "X-Request-ID",
        "user_id": "pk",               # the attribute of request.user that is the event's user_id
        "resolver": None,              # callable(request) (or its dotted path) -> {"user_id", "tenant_id"}
        "auth_signals": True,          # login, logout and failed login events
    }

A model's policy (all keys optional)::

    {"fields": [...]}  or  {"exclude": [...]},   # audited fields (default: every concrete field)
    "redact": ["diagnosis"],                      # more key fragments whose values are hidden
    "reads": True,                                # or a number: record reads (bounded ids)
    "resource_type": "patient",                   # instead of the naming rule
    "actions": {"update": "edit"},                # instead of the global action names

A bad value is an ``ImproperlyConfigured`` naming the key, raised at start-up.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

ALL: Final = "__all__"
ACTIONS: Final = ("create", "update", "delete", "read")
RESOURCE_TYPE_RULES: Final = ("label", "label_lower", "model_name", "db_table")
_TOP_KEYS: Final = (
    "models", "exclude_models", "actions", "resource_type", "read_max_ids", "configure",
    "trusted_proxies", "request_id_header", "user_id", "resolver", "auth_signals",
)
_POLICY_KEYS: Final = ("fields", "exclude", "redact", "reads", "resource_type", "actions")


def _names(where: str, value: object) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, list | tuple | set | frozenset):
        raise ImproperlyConfigured(f"{where}: a list of names is required, got {value!r}")
    for item in value:
        if not isinstance(item, str) or not item:
            raise ImproperlyConfigured(f"{where}: {item!r} is not a name")
    return tuple(value)


def _actions(where: str, value: object, base: Mapping[str, str]) -> Mapping[str, str]:
    if not isinstance(value, Mapping):
        raise ImproperlyConfigured(f"{where}: a mapping of {', '.join(ACTIONS)} to names is required")
    unknown = sorted(set(value) - set(ACTIONS))
    if unknown:
        raise ImproperlyConfigured(f"{where}: unknown action(s) {', '.join(map(str, unknown))}")
    for name in value.values():
        if not isinstance(name, str) or not name:
            raise ImproperlyConfigured(f"{where}: {name!r} is not an action name")
    return MappingProxyType({**base, **value})


@dataclass(frozen=True, slots=True)
class ModelPolicy:
    """What is captured of the models one ``models`` key names."""

    #: Audited fields by name; None: every concrete field but the primary key.
    fields: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    #: Key fragments redacted on top of the SDK's list and its ``redact`` setting.
    redact: tuple[str, ...] = ()
    #: Record reads, naming at most this many ids per query; None: reads are not recorded.
    reads: int | None = None
    resource_type: str | None = None
    actions: Mapping[str, str] | None = None

    def __post_init__(self) -> None:
        if self.fields is not None and self.exclude:
            raise ImproperlyConfigured("fields and exclude: give one of the two")
        if self.reads is not None and self.reads < 1:
            raise ImproperlyConfigured(f"reads: at least 1 id per event (got {self.reads})")
        if self.resource_type is not None and not self.resource_type:
            raise ImproperlyConfigured("resource_type: must not be empty")


def _policy(key: str, value: object, read_max_ids: int) -> ModelPolicy:
    where = f"AUDITLAKE['models'][{key!r}]"
    if value is None:
        return ModelPolicy()
    if not isinstance(value, Mapping):
        raise ImproperlyConfigured(f"{where}: a mapping of {', '.join(_POLICY_KEYS)} is required")
    unknown = sorted(set(value) - set(_POLICY_KEYS))
    if unknown:
        raise ImproperlyConfigured(f"{where}: unknown key(s) {', '.join(map(str, unknown))}")
    reads = value.get("reads", False)
    if reads is True:
        max_ids: int | None = read_max_ids
    elif reads is False or reads is None:
        max_ids = None
    elif isinstance(reads, int):
        max_ids = reads
    else:
        raise ImproperlyConfigured(f"{where}['reads']: True, False or a number of ids, got {reads!r}")
    resource_type = value.get("resource_type")
    if resource_type is not None and not isinstance(resource_type, str):
        raise ImproperlyConfigured(f"{where}['resource_type']: a string is required")
    try:
        return ModelPolicy(
            fields=_names(f"{where}['fields']", value["fields"]) if "fields" in value else None,
            exclude=_names(f"{where}['exclude']", value.get("exclude", ())),
            redact=_names(f"{where}['redact']", value.get("redact", ())),
            reads=max_ids,
            resource_type=resource_type,
            actions=_actions(f"{where}['actions']", value["actions"], {}) if "actions" in value else None,
        )
    except ImproperlyConfigured as error:
        if str(error).startswith("AUDITLAKE"):
            raise
        raise ImproperlyConfigured(f"{where}: {error}") from None


ResourceTypeRule = str | Callable[[Any], str]
Resolver = Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class Options:
    """``settings.AUDITLAKE``, validated."""

    models: tuple[tuple[str, ModelPolicy], ...] = ()
    exclude_models: tuple[str, ...] = ()
    actions: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({a: a for a in ACTIONS}))
    resource_type: ResourceTypeRule = "label"
    read_max_ids: int = 100
    configure: Mapping[str, Any] | None = None
    trusted_proxies: tuple[str, ...] = ()
    request_id_header: str = "X-Request-ID"
    user_id: str = "pk"
    resolver: Resolver | None = None
    auth_signals: bool = True


def load_options(raw: object) -> Options:
    """``raw`` (the ``AUDITLAKE`` setting, or None) as :class:`Options`."""
    if raw is None:
        return Options()
    if not isinstance(raw, Mapping):
        raise ImproperlyConfigured("AUDITLAKE: a dict is required")
    unknown = sorted(set(raw) - set(_TOP_KEYS))
    if unknown:
        raise ImproperlyConfigured(f"AUDITLAKE: unknown key(s) {', '.join(map(str, unknown))}")
    read_max_ids = raw.get("read_max_ids", 100)
    if isinstance(read_max_ids, bool) or not isinstance(read_max_ids, int) or read_max_ids < 1:
        raise ImproperlyConfigured(f"AUDITLAKE['read_max_ids']: a positive number, got {read_max_ids!r}")
    return Options(
        models=_models(raw.get("models", {}), read_max_ids),
        exclude_models=_names("AUDITLAKE['exclude_models']", raw.get("exclude_models", ())),
        actions=_actions("AUDITLAKE['actions']", raw.get("actions", {}), {a: a for a in ACTIONS}),
        resource_type=_resource_type(raw.get("resource_type", "label")),
        read_max_ids=read_max_ids,
        configure=_configure(raw.get("configure")),
        trusted_proxies=_proxies(raw.get("trusted_proxies", ())),
        request_id_header=_text("request_id_header", raw.get("request_id_header", "X-Request-ID")),
        user_id=_text("user_id", raw.get("user_id", "pk")),
        resolver=_resolver(raw.get("resolver")),
        auth_signals=_flag("auth_signals", raw.get("auth_signals", True)),
    )


def _models(value: object, read_max_ids: int) -> tuple[tuple[str, ModelPolicy], ...]:
    if value == ALL:
        return ((ALL, ModelPolicy()),)
    if isinstance(value, list | tuple):
        return tuple((label, ModelPolicy()) for label in _names("AUDITLAKE['models']", value))
    if not isinstance(value, Mapping):
        raise ImproperlyConfigured("AUDITLAKE['models']: '__all__', a list of labels or a dict of them")
    for key in value:
        if not isinstance(key, str) or not key or key.count(".") > 1:
            raise ImproperlyConfigured(f"AUDITLAKE['models']: {key!r} is not 'app_label' or 'app_label.Model'")
    return tuple((key, _policy(key, policy, read_max_ids)) for key, policy in value.items())


def _resource_type(value: object) -> ResourceTypeRule:
    if callable(value):
        return value
    if value not in RESOURCE_TYPE_RULES:
        raise ImproperlyConfigured(
            f"AUDITLAKE['resource_type']: one of {', '.join(RESOURCE_TYPE_RULES)} or a callable, got {value!r}"
        )
    return str(value)


def _configure(value: object) -> Mapping[str, Any] | None:
    if value is None or value is False:
        return None
    if value is True:
        return MappingProxyType({})
    if not isinstance(value, Mapping):
        raise ImproperlyConfigured("AUDITLAKE['configure']: True or a dict of configure() arguments")
    return MappingProxyType(dict(value))


def _proxies(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [part for part in value.split(",") if part.strip()]
    return _names("AUDITLAKE['trusted_proxies']", value)


def _text(name: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ImproperlyConfigured(f"AUDITLAKE[{name!r}]: a non-empty string is required, got {value!r}")
    return value


def _flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ImproperlyConfigured(f"AUDITLAKE[{name!r}]: True or False, got {value!r}")
    return value


def _resolver(value: object) -> Resolver | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = import_string(value)
        except ImportError as error:
            raise ImproperlyConfigured(f"AUDITLAKE['resolver']: cannot import {value!r}: {error}") from None
    if not callable(value):
        raise ImproperlyConfigured("AUDITLAKE['resolver']: a callable or its dotted path is required")
    return value
