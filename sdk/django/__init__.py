"""auditlake for Django: every committed create, update and delete of the
models you choose becomes an audit event, bulk operations included.

    INSTALLED_APPS = [..., "auditlake.sdk.django"]
    MIDDLEWARE = [..., "django.contrib.auth.middleware.AuthenticationMiddleware",
                  "auditlake.sdk.django.middleware.AuditMiddleware", ...]
    AUDITLAKE = {
        "models": {"clinic.Patient": {"exclude": ["notes"], "reads": True}, "billing": {}},
        "configure": {"service_name": "clinic"},
    }

Django is not a dependency of the SDK (``pip install django``).  See
docs/integrations.md ("Django") for the settings and what each operation
costs in queries.

The modules, in the order a change meets them:

    apps          the AppConfig: reads AUDITLAKE at ready(), installs the capture
    _settings     AUDITLAKE parsed and validated (frozen values)
    _rows         a registered model's audited fields; the ``changes`` of two row states
    _registry     which models are captured, and the switch our own queries run under
    _emit         events held until their transaction commits (on_commit)
    _saves        Model.save(): pre_save / post_save
    _bulk         QuerySet.update(), bulk_create(), bulk_update()
    _deletes      Model.delete() and QuerySet.delete() (Django's deletion Collector)
    _reads        opt-in reads: one event per query, naming the ids
    _auth         user_logged_in / user_logged_out / user_login_failed
    middleware    the actor of each request: request.user, client address, request id
"""

from __future__ import annotations

try:
    import django  # noqa: F401 - only to give a clear message when it is missing
except ImportError as error:  # pragma: no cover - exercised where Django is absent
    raise ImportError(
        "auditlake.sdk.django needs Django, which the SDK does not install: pip install django"
    ) from error

__all__: list[str] = []
