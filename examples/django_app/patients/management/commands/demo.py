"""``manage.py demo``: a morning at the clinic, every step audited."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import BaseCommand
from django.test import Client

from auditlake import sdk
from patients.models import Patient

BROWSER = "Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0"


class Command(BaseCommand):
    """Create the data, then drive the views as a browser behind the load balancer would."""

    help = "Run the audited clinic story once and send its events to the collector."

    def handle(self, *args: Any, **options: Any) -> None:
        call_command("migrate", run_syncdb=True, verbosity=0)
        User.objects.create_user("dr.jones", "jones@acme-health.example", "correct horse", is_staff=True)
        User.objects.create_user("nurse.kim", "kim@acme-health.example", "battery staple")
        patients = Patient.objects.bulk_create([
            Patient(name=name, dob=dt.date(1950 + i * 7, 1 + i, 10 + i), ward="A" if i < 3 else "B",
                    ssn=f"123-45-{6780 + i}", diagnosis="observation", internal_notes="not audited")
            for i, name in enumerate(["Ada Lovelace", "Alan Turing", "Grace Hopper", "Edsger Dijkstra"])
        ])
        # Behind the load balancer (10.0.0.0/8, trusted): the client is the forwarded address.
        browser = Client(REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR="198.51.100.23", HTTP_USER_AGENT=BROWSER)
        steps = [
            browser.post("/login/", {"username": "dr.jones", "password": "wrong"}),
            browser.post("/login/", {"username": "dr.jones", "password": "correct horse"}),
            browser.get("/patients/", {"ward": "A"}),
            browser.get(f"/patients/{patients[0].pk}/"),
            browser.post(f"/patients/{patients[0].pk}/", {"ward": "C", "diagnosis": "recovering"}),
            browser.post("/patients/discharge/", {"ward": "B"}),
            browser.post(f"/patients/{patients[2].pk}/delete/"),
            browser.post("/logout/"),
        ]
        statuses = [response.status_code for response in steps]
        if statuses != [401, 200, 200, 200, 200, 200, 204, 200]:
            raise SystemExit(f"unexpected statuses: {statuses}")
        recorded = sdk.stats().recorded
        delivered = sdk.flush(timeout=30)
        sdk.shutdown(timeout=10)
        self.stdout.write(f"recorded {recorded} events; delivered: {'yes' if delivered else 'NO (spooled)'}")
