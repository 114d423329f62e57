"""auditlake.sdk.testing works as a pytest plugin in an application's own tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

APP_TEST = '''
from auditlake import sdk

@sdk.audited("read", "patient", resource_id="patient_id")
def view(patient_id):
    return {"id": patient_id}

def test_viewing_a_patient_is_audited(audit_events):
    with sdk.actor(user_id="dr.who", tenant_id="clinic"):
        view("p1")
    event = audit_events.assert_recorded(action="read", resource_id="p1")
    assert event["user_id"] == "dr.who"

def test_each_test_starts_empty(audit_events):
    assert audit_events.events == []

def test_a_missing_event_fails_with_what_was_recorded(audit_events):
    with sdk.actor(tenant_id="clinic"):
        view("p2")
    try:
        audit_events.assert_recorded(action="delete")
    except AssertionError as error:
        assert "'resource_id': 'p2'" in str(error)
    else:
        raise AssertionError("should have failed")
'''


def test_the_fixture_is_available_through_pytest_plugins(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["auditlake.sdk.testing"]\n')
    (tmp_path / "test_app.py").write_text(APP_TEST)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout
