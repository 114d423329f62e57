"""Test helpers: an in-memory exporter and a pytest fixture for applications.

Enable the fixture in your ``conftest.py``::

    pytest_plugins = ["auditlake.sdk.testing"]

    def test_reading_a_patient_is_audited(client, audit_events):
        client.get("/patients/42")
        audit_events.assert_recorded(action="read", resource_type="patient", resource_id="42")

The fixture configures the SDK with an :class:`InMemoryExporter` (no
network, no spool) for the test and shuts it down afterwards.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

from auditlake.sdk._config import configure, flush, shutdown
from auditlake.sdk._event import decode_columns
from auditlake.sdk._exporter import ExportResult, ExportStatus
from auditlake.sdk._policies import BatchPolicy, SpoolPolicy
from auditlake.v1 import audit_pb2

__all__ = ["AuditEvents", "InMemoryExporter", "audit_events", "configure_for_tests"]


class InMemoryExporter:
    """Keeps every exported event as a dict; acknowledges like a collector.

    ``answer`` may be set to a callable returning an :class:`ExportResult`
    to script failures (it receives the request).  Batches are deduplicated
    by batch id, as the collector does.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.events: list[dict[str, Any]] = []
        self.batch_ids: list[str] = []
        self.calls = 0
        self.answer: Callable[[audit_pb2.ExportRequest], ExportResult] | None = None

    def export(self, request: audit_pb2.ExportRequest, timeout: float) -> ExportResult:
        """Store the batch (once per batch id) and acknowledge it."""
        with self._lock:
            self.calls += 1
            if self.answer is not None:
                result = self.answer(request)
                if result.status is not ExportStatus.OK:
                    return result
            if request.batch_id in self.batch_ids:
                return ExportResult(ExportStatus.OK, duplicate=True)
            self.batch_ids.append(request.batch_id)
            events = decode_columns(request)
            self.events.extend(events)
            return ExportResult(ExportStatus.OK, accepted=len(events))

    def close(self) -> None:
        """Nothing to release."""

    def clear(self) -> None:
        """Forget everything exported so far."""
        with self._lock:
            self.events.clear()
            self.batch_ids.clear()


class AuditEvents:
    """What a test sees: the events recorded so far (flushed on access)."""

    def __init__(self, exporter: InMemoryExporter) -> None:
        self.exporter = exporter

    @property
    def events(self) -> list[dict[str, Any]]:
        """Every event recorded so far, after a flush."""
        flush(timeout=5.0)
        return list(self.exporter.events)

    def find(self, **fields: Any) -> list[dict[str, Any]]:
        """The events whose fields equal all of ``fields``."""
        return [e for e in self.events if all(e.get(k) == v for k, v in fields.items())]

    def assert_recorded(self, **fields: Any) -> dict[str, Any]:
        """Fail unless exactly one event matches ``fields``; return it."""
        found = self.find(**fields)
        if len(found) != 1:
            seen = [{k: e[k] for k in ("action", "resource_type", "resource_id")} for e in self.events]
            raise AssertionError(
                f"expected one audit event with {fields}, found {len(found)}; recorded: {seen}"
            )
        return found[0]

    def clear(self) -> None:
        """Forget the events recorded so far."""
        flush(timeout=5.0)
        self.exporter.clear()


def configure_for_tests(**overrides: Any) -> AuditEvents:
    """Configure the SDK with an in-memory exporter and return its view."""
    exporter = InMemoryExporter()
    options: dict[str, Any] = {
        "service_name": "test",
        "batch": BatchPolicy(schedule_delay=0.01),
        "spool": SpoolPolicy(enabled=False),
    }
    options.update(overrides)
    configure(exporter=exporter, **options)
    return AuditEvents(exporter)


try:
    import pytest
except ImportError:  # pragma: no cover - the exporter works without pytest
    pass
else:

    @pytest.fixture
    def audit_events() -> Iterator[AuditEvents]:
        """The SDK configured in memory for one test; its recorded events."""
        view = configure_for_tests()
        try:
            yield view
        finally:
            shutdown(timeout=5.0)
