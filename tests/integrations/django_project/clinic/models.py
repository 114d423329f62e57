"""Models of the test clinic.

``Patient`` is registered (notes excluded, diagnosis redacted, reads
recorded); ``PlainPatient`` has the same columns and is not registered: the
baseline every query count is compared with.
"""

from __future__ import annotations

import uuid

from django.db import models


class PatientColumns(models.Model):
    name = models.CharField(max_length=100)
    ward = models.CharField(max_length=10, default="A")
    age = models.IntegerField(null=True)
    ssn = models.CharField(max_length=11, blank=True)
    diagnosis = models.CharField(max_length=200, blank=True)
    notes = models.TextField(blank=True)
    balance = models.DecimalField(max_digits=10, decimal_places=2, default=0)
    data = models.JSONField(default=dict)

    class Meta:
        abstract = True


class Patient(PatientColumns):
    pass


class PlainPatient(PatientColumns):
    pass


class VipPatient(Patient):
    class Meta:
        proxy = True


class Room(models.Model):
    number = models.CharField(max_length=10)


class Appointment(models.Model):
    patient = models.ForeignKey(Patient, on_delete=models.CASCADE, related_name="appointments")
    room = models.ForeignKey(Room, on_delete=models.SET_NULL, null=True, related_name="appointments")
    status = models.CharField(max_length=20, default="booked")


class PlainAppointment(models.Model):
    patient = models.ForeignKey(PlainPatient, on_delete=models.CASCADE, related_name="appointments")
    room = models.ForeignKey(Room, on_delete=models.SET_NULL, null=True, related_name="plain_appointments")
    status = models.CharField(max_length=20, default="booked")


class DeviceColumns(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4)
    serial = models.CharField(max_length=20, unique=True)
    location = models.CharField(max_length=20, default="store")

    class Meta:
        abstract = True


class Device(DeviceColumns):
    pass


class PlainDevice(DeviceColumns):
    pass
