"""The patients app."""

from __future__ import annotations

from django.apps import AppConfig


class PatientsConfig(AppConfig):
    """Patients of the clinic."""

    name = "patients"
