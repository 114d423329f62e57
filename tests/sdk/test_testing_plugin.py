"""auditlake.sdk.testing: a pytest plugin an application's tests get by
installing auditlake, the examples its docs give, and failure messages that
say what differed."""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from auditlake import sdk
from auditlake.sdk import asgi, wsgi
from auditlake.sdk.testing import AuditEvents, InMemoryExporter

DOCS = Path(__file__).resolve().parents[2] / "docs" / "sdk.md"

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

def test_loading_the_plugin_configured_nothing(request):
    assert request.config.pluginmanager.has_plugin("auditlake.sdk.testing")
    assert not sdk.is_configured()

def test_audit_client_without_an_app_fixture_names_it(audit_client):
    pass
'''


def run_pytest(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """pytest in ``directory`` as an application's test run would be: its own
    rootdir, plugins from entry points (auditlake's among them)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "PYTEST_ADDOPTS")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rf", *args, str(directory)],
        capture_output=True, text=True, cwd=directory, timeout=120, env=env,
    )


def test_installing_auditlake_is_enough_to_get_the_fixtures(tmp_path: Path) -> None:
    (tmp_path / "test_app.py").write_text(APP_TEST)
    result = run_pytest(tmp_path)
    out = result.stdout + result.stderr
    assert "3 passed" in out and "1 error" in out, out
    assert "fixture 'app' not found" in out, out


def test_an_older_pytest_plugins_line_still_works(tmp_path: Path) -> None:
    # Registered under its module's name, the entry point is not loaded twice.
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["auditlake.sdk.testing"]\n')
    (tmp_path / "test_app.py").write_text(APP_TEST.split("def test_audit_client")[0])
    result = run_pytest(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout


def test_the_plugin_can_be_turned_off(tmp_path: Path) -> None:
    (tmp_path / "test_app.py").write_text("def test_x(audit_events):\n    pass\n")
    result = run_pytest(tmp_path, "-p", "no:auditlake.sdk.testing")
    assert "fixture 'audit_events' not found" in result.stdout, result.stdout


def _docs_example() -> str:
    text = DOCS.read_text()
    section = text.split("### Simulating the collector", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None, "docs/sdk.md: no python example under 'Simulating the collector'"
    return match.group(1)


def _docstring_example() -> str:
    doc = inspect.getdoc(InMemoryExporter) or ""
    block = doc.split("::\n", 1)[1]
    lines = []
    for line in block.splitlines():
        if line and not line.startswith(" "):
            break
        lines.append(line)
    return textwrap.dedent("\n".join(lines))


def test_the_documented_answer_examples_run(tmp_path: Path) -> None:
    (tmp_path / "test_docs_example.py").write_text(_docs_example())
    (tmp_path / "test_docstring_example.py").write_text(_docstring_example())
    result = run_pytest(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout, result.stdout


def test_answer_returning_none_stores_the_batch_as_usual(audit_events: AuditEvents) -> None:
    seen: list[str] = []
    audit_events.exporter.answer = lambda request: seen.append(request.batch_id)  # type: ignore[func-returns-value]
    sdk.record("read", "doc", "d1", tenant_id="t1")
    audit_events.assert_recorded(resource_id="d1")
    assert len(seen) == 1


def _failure(audit_events: AuditEvents, **fields: Any) -> str:
    with pytest.raises(AssertionError) as caught:
        audit_events.assert_recorded(**fields)
    return str(caught.value)


def test_a_failed_assert_recorded_shows_every_field_and_how_each_event_differs(
    audit_events: AuditEvents,
) -> None:
    assert "found none: no event was recorded" in _failure(audit_events, action="read")
    with sdk.actor(user_id="dr.who", tenant_id="clinic"):
        sdk.record("update", "patient", "41")
        sdk.record("read", "patient", "42", user_id="nurse.k")
    message = _failure(audit_events, action="read", resource_id="42", user_id="dr.who")
    assert message.splitlines() == [
        "expected exactly one audit event with",
        "    action = 'read'",
        "    resource_id = '42'",
        "    user_id = 'dr.who'",
        "found none among 2 recorded events; how each differs (closest first):",
        "  #2 read patient/42 by nurse.k in tenant clinic (success)",
        "      user_id: 'nurse.k', expected 'dr.who'",
        "  #1 update patient/41 by dr.who in tenant clinic (success)",
        "      action: 'update', expected 'read'",
        "      resource_id: '41', expected '42'",
    ]
    assert "      recource_id: not a field of an event" in _failure(audit_events, recource_id="42")
    several = _failure(audit_events, tenant_id="clinic")
    assert "found 2 matching events:" in several
    assert re.search(r"  #1 update patient/41 .*, id [0-9a-f-]{36}", several), several


def test_json_columns_compare_with_a_mapping(audit_events: AuditEvents) -> None:
    sdk.record("update", "patient", "p1", tenant_id="t1", metadata={"ward": "A"})
    audit_events.assert_recorded(metadata={"ward": "A"})
    assert "metadata: '{\"ward\":" in _failure(audit_events, metadata={"ward": "B"})


def _record_read(path_id: str) -> dict[str, str]:
    sdk.record("read", "patient", path_id)  # the actor comes from the middleware
    return {"id": path_id}


def _resolver(_: Any) -> dict[str, str]:
    return {"user_id": "dr.who", "tenant_id": "clinic"}


def _fastapi_app() -> Any:
    from fastapi import FastAPI

    api = FastAPI()

    @api.get("/patients/{pid}")
    def read(pid: str) -> dict[str, str]:
        return _record_read(pid)

    return asgi.AuditMiddleware(api, resolver=_resolver)


def _flask_app() -> Any:
    from flask import Flask

    flask_app = Flask("patients")

    @flask_app.get("/patients/<pid>")
    def read(pid: str) -> dict[str, str]:
        return _record_read(pid)

    flask_app.wsgi_app = wsgi.AuditMiddleware(flask_app.wsgi_app, resolver=_resolver)  # type: ignore[method-assign]
    return flask_app


def _plain_wsgi_app() -> Any:
    def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        _record_read(environ["PATH_INFO"].rsplit("/", 1)[1])
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    return wsgi.AuditMiddleware(application, resolver=_resolver)


@pytest.fixture(params=[_fastapi_app, _flask_app, _plain_wsgi_app], ids=["fastapi", "flask", "wsgi"])
def app(request: pytest.FixtureRequest) -> Any:
    """What an application's conftest.py provides for ``audit_client``."""
    return request.param()


def test_audit_client_drives_the_applications_app_fixture(audit_client: Any, audit_events: AuditEvents) -> None:
    response = audit_client.get("/patients/42")
    assert response.status_code == 200
    event = audit_events.assert_recorded(action="read", resource_type="patient", resource_id="42")
    assert (event["user_id"], event["tenant_id"]) == ("dr.who", "clinic")
