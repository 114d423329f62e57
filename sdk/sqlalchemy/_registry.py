"""The registry of models and tables whose changes are captured, and the
public ``register`` / ``unregister`` / ``registered``."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any, Final

from sqlalchemy import inspect
from sqlalchemy.exc import NoInspectionAvailable
from sqlalchemy.orm import (
    Mapper,
)
from sqlalchemy.schema import Table

from auditlake.sdk.sqlalchemy._keys import log
from auditlake.sdk.sqlalchemy._policy import CapturePolicy, _Capture, _model_capture, _table_capture


class _Registry:
    """Registered models, bases and tables, and their resolved captures (cached)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.classes: dict[type, CapturePolicy] = {}
        self.tables: dict[Table, CapturePolicy] = {}
        self._by_class: dict[type, _Capture | None] = {}
        self._by_table: dict[Table, _Capture | None] = {}
        self._reaches: dict[Mapper[Any], bool] = {}
        self.reads = False

    def __bool__(self) -> bool:
        return bool(self.classes or self.tables)

    def forget_resolved(self) -> None:
        self._by_class = {}
        self._by_table = {}
        self._reaches = {}
        self.reads = any(p.reads for p in self.classes.values())

    def reaches_reads(self, mapper: Mapper[Any]) -> bool:
        """Whether a query of ``mapper`` may load a read-captured model: the
        model itself, or one related to it (a joined eager load)."""
        try:
            return self._reaches[mapper]
        except KeyError:
            pass
        related = [mapper, *(r.mapper for r in mapper.relationships)]
        reaches = any((c := self.for_class(m.class_)) is not None and c.policy.reads for m in related)
        self._reaches[mapper] = reaches
        return reaches

    def for_class(self, cls: type) -> _Capture | None:
        """The capture of instances of ``cls``, or None when not registered."""
        try:
            return self._by_class[cls]
        except KeyError:
            pass
        capture = None
        for klass in cls.__mro__:
            policy = self.classes.get(klass)
            if policy is not None:
                mapper = _mapper_of(cls)
                capture = _resolved(_model_capture, policy, mapper) if mapper is not None else None
                break
        self._by_class[cls] = capture
        return capture

    def for_table(self, table: Any) -> _Capture | None:
        """The capture of statements on ``table``, or None when not registered."""
        try:
            return self._by_table[table]
        except KeyError:
            pass
        except TypeError:  # an unhashable FROM (never a Table)
            return None
        capture = None
        if isinstance(table, Table):
            # ORM statements carry an annotated copy of the table.
            capture = self._resolve_table(table._deannotate())
        self._by_table[table] = capture
        return capture

    def _resolve_table(self, table: Table) -> _Capture | None:
        owner = None
        for cls in list(self.classes):
            for mapper in _mappers_under(cls):
                if mapper.local_table is table and (mapper.inherits is None
                                                    or mapper.inherits.local_table is not table):
                    owner = mapper
                    break
            if owner is not None:
                break
        policy = self.tables.get(table)
        if policy is None and owner is not None:
            found = self.for_class(owner.class_)
            policy = found.policy if found is not None else None
        return None if policy is None else _resolved(_table_capture, policy, table, owner)


def _resolved(build: Callable[..., _Capture], *args: Any) -> _Capture | None:
    try:
        return build(*args)
    except ValueError as exc:  # e.g. a table without a primary key under a registered base
        log.warning("auditlake: not capturing: %s", exc)
        return None


def _mapper_of(cls: type) -> Mapper[Any] | None:
    try:
        mapper: object = inspect(cls)
    except NoInspectionAvailable:
        return None
    return mapper if isinstance(mapper, Mapper) else None


def _mappers_under(cls: type) -> Iterator[Mapper[Any]]:
    """Mappers of ``cls`` and of its mapped subclasses (a base: all its models)."""
    mapper = _mapper_of(cls)
    if mapper is not None:
        yield from mapper.self_and_descendants
        return
    registry = getattr(cls, "registry", None)
    for mapper in getattr(registry, "mappers", ()):
        if issubclass(mapper.class_, cls):
            yield mapper


REGISTRY: Final = _Registry()


def register(target: Any, policy: CapturePolicy | None = None, **options: Any) -> CapturePolicy:
    """Capture creates, updates and deletes of ``target``: a mapped class
    (and its subclasses), a declarative base (every model under it, defined
    now or later) or a Core :class:`~sqlalchemy.Table`.

    ``options`` are :class:`CapturePolicy` fields (``include``, ``exclude``,
    ``redact``, ``resource_type``, ``reads``, ...), or pass a ``policy``.
    Registering a target again replaces its policy.  Raises ``ValueError``
    for an unknown field name, a table without a primary key, or a target
    that is neither of the three.
    """
    if policy is None:
        policy = CapturePolicy(**options)
    elif options:
        raise ValueError("pass either a policy or its fields, not both")
    with REGISTRY.lock:
        if isinstance(target, Table):
            _table_capture(policy, target, None, strict=True)  # a bad field name fails here, not in a flush
            REGISTRY.tables[target] = policy
        elif isinstance(target, type) and (_mapper_of(target) is not None
                                            or hasattr(getattr(target, "registry", None), "mappers")):
            mapper = _mapper_of(target)
            if mapper is not None:
                _model_capture(policy, mapper, strict=True)
            REGISTRY.classes[target] = policy
        else:
            raise ValueError(f"register: a mapped class, a declarative base or a Table is required, got {target!r}")
        REGISTRY.forget_resolved()
        from auditlake.sdk.sqlalchemy._listeners import _LISTENERS  # noqa: PLC0415 - they import the registry

        _LISTENERS.install()
    return policy


def unregister(target: Any = None) -> None:
    """Stop capturing ``target``; with no argument, everything (and remove
    the SQLAlchemy listeners).  Events already captured are still sent when
    their transaction commits."""
    with REGISTRY.lock:
        if target is None:
            REGISTRY.classes.clear()
            REGISTRY.tables.clear()
        else:
            REGISTRY.classes.pop(target, None)
            REGISTRY.tables.pop(target, None)
        REGISTRY.forget_resolved()
        if not REGISTRY:
            from auditlake.sdk.sqlalchemy._listeners import _LISTENERS  # noqa: PLC0415 - they import the registry

            _LISTENERS.remove()


def registered(target: Any) -> CapturePolicy | None:
    """The policy ``target`` (a mapped class or a Table) is captured with, or None."""
    capture = REGISTRY.for_table(target) if isinstance(target, Table) else (
        REGISTRY.for_class(target) if isinstance(target, type) else None)
    return None if capture is None else capture.policy


