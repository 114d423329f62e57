#!/usr/bin/env python
"""A Django clinic audited with auditlake.sdk.django (see clinic_site/settings.py).

    python examples/django_app/manage.py demo

runs the whole story in one command: an in-memory database, two staff
accounts, a failed and a successful sign-in, a patient list and a patient
record read, an edit, a bulk discharge (``QuerySet.update()``), a deletion
and a sign-out, through Django's own request handling.  Every event goes to
the collector at ``AUDITLAKE_ENDPOINT`` (default 127.0.0.1:4317) with
``AUDITLAKE_API_KEY``.  Into the demo lake, with ``make demo`` running::

    KEY=$(.venv/bin/auditlake keys create --data auditlake-demo --tenant acme-health)
    AUDITLAKE_API_KEY=$KEY .venv/bin/python examples/django_app/manage.py demo
    .venv/bin/auditlake query --data auditlake-demo \\
        "SELECT action, resource_type, resource_id, user_id, changes FROM events
         WHERE service = 'clinic-django' ORDER BY created_at"
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "clinic_site.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
