"""A small Django project for tests/integrations/test_django.py.

Django can be configured once per process: :func:`setup` does it with
``settings.py`` (SQLite in a temporary file); the PostgreSQL database is
added as a second alias once the session's server runs (:func:`add_database`),
and :class:`Router` sends every model query to the alias a test selects, so
one test body runs on both.
"""

from __future__ import annotations

import importlib
from typing import Any

import django
from django.conf import settings as django_settings
from django.db import connections


class Router:
    """Send every query to ``Router.alias`` (a module-wide switch, so threads follow it)."""

    alias = "default"

    def db_for_read(self, model: Any, **hints: Any) -> str:
        return Router.alias

    def db_for_write(self, model: Any, **hints: Any) -> str:
        return Router.alias

    def allow_relation(self, obj1: Any, obj2: Any, **hints: Any) -> bool:
        return True

    def allow_migrate(self, db: str, app_label: str, **hints: Any) -> bool:
        return True


def setup() -> None:
    """Configure Django with this project's settings (once per process).

    ``settings.configure()`` rather than DJANGO_SETTINGS_MODULE: the
    variable would leak into every subprocess a test starts (an example's
    ``manage.py`` among them).
    """
    if not django_settings.configured:
        project = importlib.import_module("tests.integrations.django_project.settings")
        django_settings.configure(**{name: getattr(project, name) for name in dir(project) if name.isupper()})
        django.setup()


def add_database(alias: str, config: dict[str, Any]) -> None:
    """Add a database alias after start-up (Django reads DATABASES once)."""
    databases = connections.settings
    if alias not in databases:
        databases[alias] = dict(config)
        connections.configure_settings(databases)
