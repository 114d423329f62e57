"""A patient record: ``ssn`` is redacted by the SDK's own list, ``diagnosis``
by the settings, ``internal_notes`` is never audited."""

from __future__ import annotations

from django.db import models


class Patient(models.Model):
    """One patient of the clinic."""

    name = models.CharField(max_length=100)
    dob = models.DateField()
    ward = models.CharField(max_length=10, default="A")
    ssn = models.CharField(max_length=11)
    diagnosis = models.CharField(max_length=200, blank=True)
    internal_notes = models.TextField(blank=True)
