"""The Django app ``auditlake.sdk.django`` (label ``auditlake``): at ``ready()``
it reads ``settings.AUDITLAKE``, configures the SDK when asked, and
installs the capture: save signals for the registered models, the wrapped
``QuerySet`` bulk methods and deletion collector, reads, auth signals.
It has no models and no migrations.
"""

from __future__ import annotations

import logging

from django.apps import AppConfig
from django.conf import settings

from auditlake.sdk._config import configure, is_configured
from auditlake.sdk.django import _auth, _bulk, _deletes, _reads, _saves
from auditlake.sdk.django._registry import SHAPES, register, resolve
from auditlake.sdk.django._settings import Options, load_options

log = logging.getLogger("auditlake.sdk")


class AuditlakeConfig(AppConfig):
    """auditlake's Django integration."""

    name = "auditlake.sdk.django"
    label = "auditlake"
    verbose_name = "auditlake"
    default = True

    def ready(self) -> None:
        """Read ``settings.AUDITLAKE`` and install the capture it asks for."""
        install(load_options(getattr(settings, "AUDITLAKE", None)))


def install(options: Options) -> None:
    """Capture what ``options`` asks for (again: replaces the previous registration)."""
    if options.configure is not None and not is_configured():
        # An application (or its tests) that configured the SDK itself keeps that.
        configure(**options.configure)
    shapes = resolve(options)
    dropped = [model for model in SHAPES if model not in shapes]
    register(options, shapes)
    _saves.disconnect(dropped)
    _saves.connect(list(shapes))
    if shapes:
        _bulk.install()
        _deletes.install()
    if any(shape.reads is not None for shape in shapes.values()):
        _reads.install()
    _auth.connect(options)
    log.debug("auditlake: capturing %s", ", ".join(sorted({s.label for s in shapes.values()})) or "no model")
