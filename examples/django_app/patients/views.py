"""JSON views: nothing here mentions auditing; the app's settings do it all."""

from __future__ import annotations

from django.contrib.auth import authenticate, login, logout
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404
from django.views.decorators.http import require_POST

from patients.models import Patient


@require_POST
def sign_in(request: HttpRequest) -> HttpResponse:
    """Password sign-in (a failure is the login_failed event)."""
    user = authenticate(request, username=request.POST.get("username"), password=request.POST.get("password"))
    if user is None:
        return JsonResponse({"detail": "invalid credentials"}, status=401)
    login(request, user)
    return JsonResponse({"user": user.get_username()})


@require_POST
def sign_out(request: HttpRequest) -> HttpResponse:
    """Sign out."""
    logout(request)
    return JsonResponse({})


@login_required
def patient_list(request: HttpRequest) -> HttpResponse:
    """Every patient of a ward: one read event naming their ids."""
    patients = Patient.objects.filter(ward=request.GET.get("ward", "A")).order_by("pk")
    return JsonResponse({"patients": [{"id": p.pk, "name": p.name} for p in patients]})


@login_required
def patient_detail(request: HttpRequest, patient_id: int) -> HttpResponse:
    """GET: the record (a read); POST: change its ward or diagnosis (an update with its diff)."""
    patient = get_object_or_404(Patient, pk=patient_id)
    if request.method == "POST":
        with transaction.atomic():
            for field in ("ward", "diagnosis"):
                if field in request.POST:
                    setattr(patient, field, request.POST[field])
            patient.save()
    return JsonResponse({"id": patient.pk, "name": patient.name, "ward": patient.ward})


@login_required
@require_POST
def discharge_ward(request: HttpRequest) -> HttpResponse:
    """Discharge a whole ward in one UPDATE: still one event per patient."""
    moved = Patient.objects.filter(ward=request.POST["ward"]).update(ward="discharged")
    return JsonResponse({"discharged": moved})


@login_required
@require_POST
def patient_delete(request: HttpRequest, patient_id: int) -> HttpResponse:
    """Delete a record (the event keeps what it held, secrets redacted)."""
    get_object_or_404(Patient, pk=patient_id).delete()
    return HttpResponse(status=204)
