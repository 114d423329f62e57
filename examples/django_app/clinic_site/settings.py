"""Settings of the example clinic: what auditlake captures is all in ``AUDITLAKE``."""

from __future__ import annotations

SECRET_KEY = "example-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
ROOT_URLCONF = "clinic_site.urls"
# In memory: `manage.py demo` builds its data on every run.
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
MIGRATION_MODULES = {"auth": None, "contenttypes": None, "patients": None}
SESSION_ENGINE = "django.contrib.sessions.backends.signed_cookies"

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "patients",
    "auditlake.sdk.django",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # After AuthenticationMiddleware: request.user is the actor of every event.
    "auditlake.sdk.django.middleware.AuditMiddleware",
]

AUDITLAKE = {
    "models": {
        # resource_type "patient", as the rest of the demo lake names patients.
        "patients.Patient": {"exclude": ["internal_notes"], "redact": ["diagnosis"], "reads": True,
                             "resource_type": "patient"},
        "auth.User": {"fields": ["username", "email", "is_staff", "is_active", "password"]},
    },
    "trusted_proxies": ["10.0.0.0/8"],  # the load balancer in front of the app
    # AUDITLAKE_ENDPOINT and AUDITLAKE_API_KEY come from the environment.
    "configure": {"service_name": "clinic-django", "tenant_id": "acme-health"},
}
