"""The FastAPI, Flask and Django examples record what their docstrings promise."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from fastapi.testclient import TestClient

from auditlake.sdk.testing import AuditEvents

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_fastapi_example_audits_reads_updates_denials_and_logins(memory: AuditEvents) -> None:
    example = load("fastapi_app")
    doctor = {"Authorization": "Bearer dr.who@clinic", "X-Forwarded-For": "198.51.100.4"}
    with TestClient(example.app, client=("10.0.0.2", 5555)) as client:
        assert client.get("/patients/p1", headers=doctor).status_code == 200
        assert client.patch("/patients/p1", headers=doctor,
                            json={"ward": "C", "ssn": "000-00-0000"}).status_code == 200
        assert client.delete("/patients/p2", headers=doctor).status_code == 403
        assert client.post("/login", json={"user": "eve", "password": "x"}).status_code == 401
        assert client.get("/export.csv", headers=doctor).text.startswith("id,name")

    read = memory.assert_recorded(action="read", resource_type="patient", resource_id="p1")
    assert (read["user_id"], read["tenant_id"], read["ip_address"]) == ("dr.who", "clinic",
                                                                         "198.51.100.4")
    update = memory.assert_recorded(action="update", resource_id="p1")
    changes = json.loads(update["changes"])
    assert changes["ward"] == {"before": "A", "after": "C"}
    assert changes["ssn"] == {"before": "[REDACTED]", "after": "[REDACTED]"}
    assert update["user_id"] == "dr.who"
    denied = memory.assert_recorded(action="delete", resource_id="p2")
    assert (denied["outcome"], denied["reason"], denied["user_id"]) == (
        "denied", "PermissionError", "dr.who")
    assert memory.assert_recorded(action="login_failed")["user_id"] == "eve"
    assert memory.assert_recorded(action="export")["outcome"] == "success"


def test_flask_example_audits_reads_updates_denials_and_streams(memory: AuditEvents) -> None:
    example = load("flask_app")
    app = example.create_app()
    client = app.test_client()
    nurse = {"Authorization": "Bearer nurse.kim@clinic", "User-Agent": "tablet/1"}
    # A WSGI event is recorded when the server has read (or closed) the body,
    # as every server does, or, for a body nobody reads, when it is released.
    assert client.get("/patients/p1", headers=nurse).json["name"] == "Ada Lovelace"
    with client.get("/patients/nobody", headers=nurse) as missing_response:
        assert missing_response.status_code == 404
    assert client.patch("/patients/p2", headers=nurse, json={"dob": "1912-06-24"}).json
    assert client.delete("/patients/p1", headers=nurse).json["detail"]
    response = client.get("/export.csv", headers=nurse)
    assert response.get_data(as_text=True).startswith("id,name")

    read = memory.assert_recorded(action="read", resource_id="p1")
    assert (read["user_id"], read["tenant_id"], read["user_agent"], read["outcome"]) == (
        "nurse.kim", "clinic", "tablet/1", "success")
    missing = memory.assert_recorded(action="read", resource_id="nobody")
    assert (missing["outcome"], missing["reason"]) == ("failure", "HTTP 404")
    update = memory.assert_recorded(action="update", resource_id="p2")
    assert json.loads(update["changes"]) == {"dob": {"before": "1912-06-23", "after": "1912-06-24"}}
    assert memory.assert_recorded(action="delete", resource_id="p1")["outcome"] == "denied"
    assert memory.assert_recorded(action="export")["outcome"] == "success"


def test_django_example_lands_its_events_in_the_lake(collector, tmp_path: Path) -> None:  # noqa: ANN001
    env = {**os.environ, "AUDITLAKE_ENDPOINT": collector.endpoint,
           "AUDITLAKE_API_KEY": collector.api_key("acme-health"), "AUDITLAKE_SPOOL_DIR": str(tmp_path / "spool")}
    env.pop("DJANGO_SETTINGS_MODULE", None)  # manage.py names its own
    done = subprocess.run([sys.executable, str(EXAMPLES / "django_app" / "manage.py"), "demo"], env=env,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    assert "delivered: yes" in done.stdout, done.stdout + done.stderr
    recorded = int(done.stdout.split("recorded ")[1].split()[0])
    assert collector.wait_for_count(recorded, "service = 'clinic-django'") == recorded
    rows = collector.query("SELECT action, resource_type, resource_id, user_id, tenant_id, ip_address, "
                           "changes, metadata FROM events WHERE service = 'clinic-django' ORDER BY created_at, id")
    assert {r["tenant_id"] for r in rows} == {"acme-health"}
    failed = next(r for r in rows if r["action"] == "login_failed")
    assert (failed["user_id"], failed["ip_address"]) == ("dr.jones", "198.51.100.23")
    login = next(r for r in rows if r["action"] == "login")
    staff = {r["resource_id"]: json.loads(r["changes"]) for r in rows if r["resource_type"] == "auth.User"}
    assert staff[login["user_id"]]["username"]["after"] == "dr.jones"
    assert all(c["password"]["after"] == "[REDACTED]" for c in staff.values())
    edits = [json.loads(r["changes"]) for r in rows if r["action"] == "update"]
    assert edits == [
        {"ward": {"before": "A", "after": "C"}, "diagnosis": {"before": "[REDACTED]", "after": "[REDACTED]"}},
        {"ward": {"before": "B", "after": "discharged"}},  # the bulk discharge: one event per patient
    ]
    reads = [json.loads(r["metadata"]) for r in rows if r["action"] == "read"]
    assert {"count": 3, "ids": ["1", "2", "3"]} in reads  # the ward list: one event naming the ids
    deleted = next(r for r in rows if r["action"] == "delete")
    assert json.loads(deleted["changes"])["ssn"] == {"before": "[REDACTED]", "after": None}
    assert "internal_notes" not in json.dumps(rows)
    acting = {r["user_id"] for r in rows if r["action"] in ("read", "update", "delete")}
    assert acting == {login["user_id"]}
