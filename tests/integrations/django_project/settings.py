"""Settings of the test project: SQLite in a temporary directory, the
clinic app registered with auditlake, the middleware after Django's
authentication middleware."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

_DIR = Path(tempfile.mkdtemp(prefix="auditlake-django-"))
atexit.register(shutil.rmtree, _DIR, True)

SECRET_KEY = "test-only-not-secret"
DEBUG = False
USE_TZ = True
ALLOWED_HOSTS = ["*"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(_DIR / "test.sqlite3")}}
DATABASE_ROUTERS = ["tests.integrations.django_project.Router"]
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "tests.integrations.django_project.clinic",
    "auditlake.sdk.django",
]
# Tables straight from the models: the project has no migrations to run.
MIGRATION_MODULES = {"auth": None, "contenttypes": None, "clinic": None}
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "auditlake.sdk.django.middleware.AuditMiddleware",
]
# Sessions in a signed cookie: no session table, one user query per request.
SESSION_ENGINE = "django.contrib.sessions.backends.signed_cookies"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast, tests only
ROOT_URLCONF = "tests.integrations.django_project.urls"

AUDITLAKE = {
    "models": {
        "clinic.Patient": {"exclude": ["notes"], "redact": ["diagnosis"], "reads": 3},
        "clinic.Appointment": {},
        "clinic.Device": {"resource_type": "device", "actions": {"update": "edit"}},
        "auth.User": {"fields": ["username", "email", "is_staff", "password"]},
    },
    "trusted_proxies": ["10.0.0.0/8"],
}
