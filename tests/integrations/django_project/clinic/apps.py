"""The clinic test app."""

from __future__ import annotations

from django.apps import AppConfig


class ClinicConfig(AppConfig):
    name = "tests.integrations.django_project.clinic"
    label = "clinic"
    default_auto_field = "django.db.models.BigAutoField"
