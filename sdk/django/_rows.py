"""A registered model's audited fields, and the ``changes`` between two row states.

Values are compared as Python values first (``Decimal("9.9") == Decimal("9.90")``
is no change), a value assigned in another type is brought to the field's
own first (``age = "5"`` on an ``IntegerField`` is 5, as the database
stores it), and only the fields that differ are turned into JSON values and
handed to the SDK's ``diff_dict`` (nested paths inside a ``JSONField``,
redaction by key fragment: the SDK's list, its ``redact`` setting and the
model's ``redact``).  A create lists every audited field that is not null
(before null), a delete every field the row had (after null).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal
from typing import Any, Final

from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.db.models import Field, Model
from django.db.models.fields.files import FieldFile

from auditlake.sdk._config import current_settings
from auditlake.sdk._diff import DEFAULT_REDACT, REDACTED, _matches, diff_dict
from auditlake.sdk.django._settings import ModelPolicy, Options

Changes = dict[str, dict[str, object]]
Row = dict[str, object]  # field name -> value, as the database returns it


class ModelShape:
    """One registered model: what its events are called and which fields they carry."""

    __slots__ = (
        "_redacted", "actions", "attnames", "by_name", "fields", "label", "model", "pk_attname",
        "pk_has_default", "reads", "redact", "resource_type",
    )

    def __init__(self, model: type[Model], policy: ModelPolicy, options: Options) -> None:
        meta = model._meta
        self.model = model
        self.label: str = meta.label
        self.resource_type = policy.resource_type or _resource_type(model, options.resource_type)
        self.actions: Mapping[str, str] = {**options.actions, **(policy.actions or {})}
        candidates = [
            f for f in meta.concrete_fields
            # The primary key is the event's resource_id; a generated column's
            # value is the database's, not known after a write without a read.
            if not f.primary_key and not getattr(f, "generated", False)
        ]
        names = {f.name for f in candidates} | {f.attname for f in candidates}
        for key, listed in (("fields", policy.fields or ()), ("exclude", policy.exclude)):
            unknown = [name for name in listed if name not in names]
            if unknown:
                raise ImproperlyConfigured(
                    f"AUDITLAKE['models'] for {self.label}: {key} names no audited field of the model: "
                    f"{', '.join(unknown)} (the primary key is the resource_id, never a field)"
                )
        if policy.fields is not None:
            wanted = set(policy.fields)
            candidates = [f for f in candidates if f.name in wanted or f.attname in wanted]
        excluded = set(policy.exclude)
        self.fields: tuple[Field[Any, Any], ...] = tuple(
            f for f in candidates if f.name not in excluded and f.attname not in excluded
        )
        self.attnames: tuple[str, ...] = tuple(f.attname for f in self.fields)
        self.by_name: dict[str, Field[Any, Any]] = {}
        for f in self.fields:
            self.by_name[f.name] = self.by_name[f.attname] = f
        self.redact: tuple[str, ...] = policy.redact
        self._redacted: tuple[tuple[str, ...], frozenset[str]] = ((), frozenset())
        self.reads: int | None = policy.reads
        self.pk_attname: str = meta.pk.attname
        pk = meta.pk
        self.pk_has_default: bool = pk is not None and (
            pk.has_default() or getattr(pk, "has_db_default", lambda: False)()
        )

    def __repr__(self) -> str:
        return f"<ModelShape {self.label} as {self.resource_type!r}: {', '.join(f.name for f in self.fields)}>"

    def audited(self, names: Iterable[str]) -> tuple[Field[Any, Any], ...]:
        """The audited fields among ``names`` (field names or attnames), in model order."""
        wanted = {self.by_name[name] for name in names if name in self.by_name}
        return tuple(f for f in self.fields if f in wanted)

    def values_of(self, instance: Model, fields: Iterable[Field[Any, Any]] | None = None) -> Row:
        """The loaded values of ``fields`` (default: every audited field) on
        ``instance``; a deferred field is left out rather than loaded."""
        loaded = instance.__dict__
        return {f.name: loaded[f.attname] for f in (self.fields if fields is None else fields) if f.attname in loaded}

    def patterns(self) -> tuple[str, ...]:
        """The key fragments redacted in this model's changes now (lower case)."""
        return tuple(p.lower().replace("-", "_") for p in DEFAULT_REDACT + current_settings().redact + self.redact)

    def redacted(self, patterns: tuple[str, ...]) -> frozenset[str]:
        """The field names whose values ``patterns`` hide (kept until the patterns change)."""
        known, names = self._redacted
        if known != patterns:
            names = frozenset(name for name in self.by_name if _matches(name, patterns))
            self._redacted = (patterns, names)
        return names

    def changes(self, before: Row | None, after: Row | None, patterns: tuple[str, ...]) -> Changes:
        """``{"field": {"before": x, "after": y}}`` between two states of a row
        (``before`` None: created; ``after`` None: deleted); {} when equal."""
        old: Row = {}
        new: Row = {}
        if before is None:
            for name, value in (after or {}).items():
                if value is not None:
                    new[name] = plain(coerced(self.by_name[name], value, None))
        elif after is None:
            for name, value in before.items():
                if value is not None:
                    old[name] = plain(value)
        else:
            for name, value in after.items():
                if name not in before:
                    continue
                previous = before[name]
                if same(previous, value):
                    continue
                value = coerced(self.by_name[name], value, previous)
                if same(previous, value):
                    continue
                old[name] = plain(previous)
                new[name] = plain(value)
        if not old and not new:
            return {}
        # Flat values (nearly all columns) the way the SDK's diff() words
        # them, without its walk; a JSON value goes through diff() itself
        # (dotted paths, secrets under any key).
        redacted = self.redacted(patterns)
        out: Changes = {}
        for name in new or old:  # an update sets both with the same names
            was, now = old.get(name), new.get(name)
            if isinstance(was, dict | list) or isinstance(now, dict | list):
                out.update(diff_dict({name: was} if name in old else {}, {name: now} if name in new else {},
                                     redact=patterns))
            elif name in redacted:
                out[name] = {"before": None if was is None else REDACTED, "after": None if now is None else REDACTED}
            else:
                out[name] = {"before": was, "after": now}
        return out


def _resource_type(model: type[Model], rule: str | Callable[[Any], str]) -> str:
    meta = model._meta
    if callable(rule):
        name = rule(model)
        if not isinstance(name, str) or not name:
            raise ImproperlyConfigured(f"AUDITLAKE['resource_type'] gave {name!r} for {meta.label}")
        return name
    return {
        "label": meta.label,
        "label_lower": meta.label_lower,
        "model_name": meta.model_name or "",
        "db_table": meta.db_table,
    }[rule]


def same(before: object, after: object) -> bool:
    """Whether two values of a field are the same value (a type change is a change)."""
    if before is after:
        return True
    if type(before) is not type(after):
        return False
    try:
        return bool(before == after)
    except Exception:  # naive against aware datetimes, odd custom types: a change
        return False


def coerced(field: Field[Any, Any], value: object, like: object) -> object:
    """``value`` as the field's Python type, when it was assigned as another
    (a string on an IntegerField); as given when it cannot be converted."""
    if value is None or type(value) is type(like) or hasattr(value, "resolve_expression"):
        return value
    if isinstance(value, Model):  # a related object given for a foreign key
        return value.pk
    try:
        return field.to_python(value)
    except (ValidationError, TypeError, ValueError):
        return value


_PLAIN: Final = (str, int, float, bool)


def plain(value: object) -> object:
    """``value`` as JSON can carry it (dates in ISO 8601, Decimal as text,
    binary as its length and digest, never its bytes)."""
    if value is None or type(value) in _PLAIN:
        return value
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        return f"<{len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()[:16]}>"
    if isinstance(value, FieldFile):
        return value.name
    # Subclasses (Django's TextChoices, IntegerChoices) as the plain value.
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, str):
        return value + ""
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return str(value)
