"""Views the middleware and auth-signal tests drive through Django's test client."""

from __future__ import annotations

from django.contrib.auth import authenticate, login, logout
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path

from auditlake import sdk
from tests.integrations.django_project.clinic.models import Patient


def sign_in(request: HttpRequest) -> HttpResponse:
    user = authenticate(request, username=request.POST.get("username"), password=request.POST.get("password"))
    if user is None:
        return HttpResponse(status=401)
    login(request, user)
    return HttpResponse("ok")


def sign_out(request: HttpRequest) -> HttpResponse:
    logout(request)
    return HttpResponse("bye")


def move_patient(request: HttpRequest, patient_id: int) -> HttpResponse:
    patient = Patient.objects.get(pk=patient_id)
    patient.ward = request.POST["ward"]
    patient.save()
    return HttpResponse("moved")


def whoami(request: HttpRequest) -> JsonResponse:
    return JsonResponse(sdk.current_actor()._asdict())


urlpatterns = [
    path("login", sign_in),
    path("logout", sign_out),
    path("patients/<int:patient_id>/move", move_patient),
    path("whoami", whoami),
]
