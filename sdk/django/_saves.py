"""``Model.save()``: one event per save that creates a row or changes an audited field.

``pre_save`` reads the row's stored values (one ``SELECT``, locked inside
a transaction: see ``_before``) when the save may update an existing row:
the primary key is set and is not a fresh default (a UUID made in Python).
A new row with a database-assigned key costs no query.  ``post_save``
compares them with the values just written (only the loaded fields, and
only ``update_fields`` when given) and hands the event to ``on_commit``.

A save that changes no audited field records nothing.  Saves of proxy
models count as saves of their concrete model.
"""

from __future__ import annotations

from typing import Any

from django.db.models import Model
from django.db.models.signals import post_save, pre_save

from auditlake.sdk.django._before import read_one
from auditlake.sdk.django._emit import emit_on_commit
from auditlake.sdk.django._registry import SHAPES, capturing
from auditlake.sdk.django._rows import Row

#: Where pre_save leaves the stored values for post_save (on the instance:
#: the two signals share nothing else).
_BEFORE = "_auditlake_before"
_UNREAD = object()


def _fields_to_compare(shape: Any, instance: Model, update_fields: Any) -> tuple[Any, ...]:
    fields = shape.fields if update_fields is None else shape.audited(update_fields)
    loaded = instance.__dict__
    return tuple(f for f in fields if f.attname in loaded)  # deferred fields are not written


def before_save(sender: type[Model], instance: Model, raw: bool = False, using: str = "default",
                update_fields: Any = None, **kwargs: Any) -> None:
    """``pre_save``: read the stored values the save may overwrite."""
    shape = SHAPES.get(sender)
    if shape is None or not capturing():
        return
    pk = instance.pk
    if pk is None or (instance._state.adding and shape.pk_has_default):
        instance.__dict__[_BEFORE] = None  # an INSERT: nothing stored yet
        return
    fields = _fields_to_compare(shape, instance, update_fields)
    if not fields:
        instance.__dict__[_BEFORE] = {}
        return
    instance.__dict__[_BEFORE] = read_one(sender, using, pk, fields)


def after_save(sender: type[Model], instance: Model, created: bool = False, raw: bool = False,
               using: str = "default", update_fields: Any = None, **kwargs: Any) -> None:
    """``post_save``: the event, on commit."""
    shape = SHAPES.get(sender)
    before: Row | None | object = instance.__dict__.pop(_BEFORE, _UNREAD)
    if shape is None or not capturing() or (before is _UNREAD and not created):
        return  # an update pre_save did not see (registered in between): nothing to compare
    patterns = shape.patterns()
    resource_id = str(instance.pk)
    if created or not isinstance(before, dict):
        changes = shape.changes(None, shape.values_of(instance), patterns)
        emit_on_commit(using, [(shape.actions["create"], shape.resource_type, resource_id, changes, None)])
        return
    after = shape.values_of(instance, _fields_to_compare(shape, instance, update_fields))
    changes = shape.changes(before, after, patterns)
    if changes:
        emit_on_commit(using, [(shape.actions["update"], shape.resource_type, resource_id, changes, None)])


def connect(models: list[type[Model]]) -> None:
    """Connect the two receivers for these models (again: a no-op)."""
    for model in models:
        uid = f"auditlake:{model._meta.label_lower}"
        pre_save.connect(before_save, sender=model, dispatch_uid=uid)
        post_save.connect(after_save, sender=model, dispatch_uid=uid)


def disconnect(models: list[type[Model]]) -> None:
    """Disconnect them (models no longer registered)."""
    for model in models:
        uid = f"auditlake:{model._meta.label_lower}"
        pre_save.disconnect(sender=model, dispatch_uid=uid)
        post_save.disconnect(sender=model, dispatch_uid=uid)
