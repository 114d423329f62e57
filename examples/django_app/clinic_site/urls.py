"""The clinic's URLs."""

from __future__ import annotations

from django.urls import path
from patients import views

urlpatterns = [
    path("login/", views.sign_in),
    path("logout/", views.sign_out),
    path("patients/", views.patient_list),
    path("patients/discharge/", views.discharge_ward),
    path("patients/<int:patient_id>/", views.patient_detail),
    path("patients/<int:patient_id>/delete/", views.patient_delete),
]
