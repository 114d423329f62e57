"""Which models are captured, and the switch our own queries run under.

``SHAPES`` maps each registered model (and each proxy of one) to its
:class:`ModelShape`; ``READS`` the subset whose reads are recorded.  Both
are filled at ``ready()`` by :func:`resolve` and read on every capture, so
an unregistered model costs one dict lookup.

``internal()`` marks queries the capture makes itself (the before-values it
reads, the ``update()`` calls Django's ``bulk_update`` makes, the rows
Django's deletion collector loads): nothing inside is captured again, and
no read is recorded for them.
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from django.apps import apps
from django.core.exceptions import ImproperlyConfigured
from django.db.models import Model

from auditlake.sdk.django._rows import ModelShape
from auditlake.sdk.django._settings import ALL, ModelPolicy, Options, load_options

SHAPES: dict[type[Model], ModelShape] = {}
READS: dict[type[Model], ModelShape] = {}
_OPTIONS: list[Options] = []  # the options ready() installed


def current_options() -> Options:
    """The options ``ready()`` installed, else ``settings.AUDITLAKE`` read now."""
    if _OPTIONS:
        return _OPTIONS[0]
    from django.conf import settings

    return load_options(getattr(settings, "AUDITLAKE", None))

_INTERNAL: contextvars.ContextVar[bool] = contextvars.ContextVar("auditlake_django_internal", default=False)


def capturing() -> bool:
    """False inside :func:`internal`."""
    return not _INTERNAL.get()


@contextmanager
def internal() -> Iterator[None]:
    """Run the block without capturing anything it does."""
    token = _INTERNAL.set(True)
    try:
        yield
    finally:
        _INTERNAL.reset(token)


def wrap(owner: type, name: str, wrapper: Callable[..., Any], originals: dict[str, Callable[..., Any]]) -> None:
    """Replace ``owner.name`` by ``wrapper``, keeping the original in
    ``originals`` (once: a second call leaves the wrapper in place)."""
    current = getattr(owner, name)
    if getattr(current, "__auditlake__", False):
        return
    originals[name] = current
    functools.update_wrapper(wrapper, current)
    wrapper.__dict__["__auditlake__"] = True
    setattr(owner, name, wrapper)


def _label_of(key: str, where: str) -> tuple[str, bool]:
    """(label_lower of the concrete model, or the app label; True for a model)."""
    if "." in key:
        try:
            model = apps.get_model(key)
        except (LookupError, ValueError):
            raise ImproperlyConfigured(f"{where}: {key!r} is not an installed model") from None
        return model._meta.concrete_model._meta.label_lower, True
    try:
        apps.get_app_config(key)
    except LookupError:
        raise ImproperlyConfigured(f"{where}: {key!r} is not an installed app label") from None
    return key, False


def resolve(options: Options) -> dict[type[Model], ModelShape]:
    """The registered models of ``options`` among the installed ones
    (proxies share their concrete model's shape)."""
    by_model: dict[str, ModelPolicy] = {}
    by_app: dict[str, ModelPolicy] = {}
    every: ModelPolicy | None = None
    for key, policy in options.models:
        if key == ALL:
            every = policy
            continue
        label, is_model = _label_of(key, "AUDITLAKE['models']")
        (by_model if is_model else by_app)[label] = policy
    excluded_models: set[str] = set()
    excluded_apps: set[str] = set()
    for key in options.exclude_models:
        label, is_model = _label_of(key, "AUDITLAKE['exclude_models']")
        (excluded_models if is_model else excluded_apps).add(label)
    shapes: dict[type[Model], ModelShape] = {}
    installed = apps.get_models()
    for model in installed:
        meta = model._meta
        if meta.proxy or meta.app_label in excluded_apps or meta.label_lower in excluded_models:
            continue
        found = by_model.get(meta.label_lower) or by_app.get(meta.app_label) or every
        if found is not None:
            shapes[model] = ModelShape(model, found, options)
    for model in installed:
        if model._meta.proxy and model._meta.concrete_model in shapes:
            shapes[model] = shapes[model._meta.concrete_model]
    return shapes


def register(options: Options, shapes: dict[type[Model], ModelShape]) -> None:
    """Make ``shapes`` the captured models (replacing any before)."""
    _OPTIONS[:] = [options]
    SHAPES.clear()
    SHAPES.update(shapes)
    READS.clear()
    READS.update({model: shape for model, shape in shapes.items() if shape.reads is not None})
