"""A small clinic back office that emits realistic audit traffic through the
auditlake SDK: sign-ins (and failed ones), reads of patient records (PII),
record creation, updates with before/after diffs, deletion, role changes and
an export — across two tenants and a handful of staff.

    AUDITLAKE_ENDPOINT=127.0.0.1:4317 AUDITLAKE_API_KEY=alk_... python examples/clinic_app.py

`make demo` runs it against a local collector.
"""

from __future__ import annotations

import argparse
import random

from auditlake import sdk

TENANTS = {
    "acme-health": ["dr.jones", "nurse.kim", "admin.lee", "dr.patel"],
    "globex-clinic": ["dr.smith", "nurse.ortiz", "admin.chen"],
}
IPS = ["10.1.4.22", "10.1.4.23", "192.0.2.77", "198.51.100.9"]
BROWSER = "Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0"


class PatientStore:
    """The application's own data (a dict standing in for its database)."""

    def __init__(self) -> None:
        self.patients: dict[str, dict[str, object]] = {}

    @sdk.audited("create", "patient", resource_id=lambda args: args["patient_id"])
    def create(self, patient_id: str, record: dict[str, object]) -> None:
        self.patients[patient_id] = record

    @sdk.audited("read", "patient", resource_id="patient_id")
    def view(self, patient_id: str) -> dict[str, object]:
        return self.patients[patient_id]

    def update(self, patient_id: str, **fields: object) -> None:
        before = dict(self.patients[patient_id])
        after = {**before, **fields}
        self.patients[patient_id] = after
        sdk.record("update", "patient", patient_id, changes=sdk.diff(before, after))

    @sdk.audited("delete", "patient", resource_id="patient_id")
    def delete(self, patient_id: str) -> None:
        del self.patients[patient_id]


def run(rounds: int, seed: int = 7) -> int:
    """Emit ``rounds`` working sessions; returns the number of events recorded."""
    rng = random.Random(seed)
    store = PatientStore()
    count = 0
    for tenant, staff in TENANTS.items():
        for i in range(6):
            pid = f"{tenant[:4]}-p{i:03d}"
            with sdk.actor(user_id=staff[-1], tenant_id=tenant, ip_address=IPS[0], user_agent=BROWSER):
                store.create(pid, {"name": f"Patient {i}", "dob": f"19{60 + i}-0{1 + i % 9}-11",
                                   "ssn": f"000-00-{1000 + i}", "status": "admitted", "ward": "A"})
                count += 1
    for r in range(rounds):
        tenant = rng.choice(list(TENANTS))
        user = rng.choice(TENANTS[tenant])
        ip = rng.choice(IPS)
        ids = [p for p in store.patients if p.startswith(tenant[:4])]
        if rng.random() < 0.15:
            with sdk.actor(tenant_id=tenant, ip_address="203.0.113.66", user_agent="python-requests/2.31"):
                sdk.login_failed(user, reason="bad password")
            count += 1
        with sdk.actor(user_id=user, tenant_id=tenant, ip_address=ip, user_agent=BROWSER,
                       request_id=f"req-{r:05d}"):
            sdk.login(user_id=user)
            count += 1
            for pid in rng.sample(ids, k=min(3, len(ids))):
                store.view(pid)
                count += 1
            if ids and rng.random() < 0.5:
                pid = rng.choice(ids)
                store.update(pid, status=rng.choice(["admitted", "discharged", "in surgery"]),
                             ward=rng.choice("ABC"), ssn="000-00-9999")
                count += 1
            if rng.random() < 0.1:
                target = rng.choice(TENANTS[tenant])
                sdk.permission_grant(target, "role:prescriber")
                count += 1
            if rng.random() < 0.05:
                sdk.record("export", "patient", "ward-A", metadata={"format": "csv", "rows": 40})
                count += 1
            sdk.logout(user_id=user)
            count += 1
    # One deletion per tenant, by its administrator.
    for tenant, staff in TENANTS.items():
        administrator = next(s for s in staff if s.startswith("admin."))
        with sdk.actor(user_id=administrator, tenant_id=tenant, ip_address=IPS[1], user_agent=BROWSER):
            store.delete(f"{tenant[:4]}-p005")
            count += 1
    return count


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=120, help="working sessions to simulate")
    args = p.parse_args()
    sdk.configure(service_name="clinic-backoffice")
    n = run(args.rounds)
    delivered = sdk.flush(timeout=60)
    print(f"clinic app: recorded {n} audit events ({'all acknowledged' if delivered else 'some still spooled'})")
    sdk.shutdown()


if __name__ == "__main__":
    main()
