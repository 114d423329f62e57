"""The FastAPI and Flask examples record what their docstrings promise."""

from __future__ import annotations

import importlib.util
import json
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
