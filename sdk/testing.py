"""Test helpers for applications: an in-memory exporter, and a pytest plugin.

Installing auditlake registers this module as a pytest plugin (entry point
``pytest11``, named after the module), so an application's tests use its
fixtures with nothing to write or enable::

    def test_reading_a_patient_is_audited(audit_client, audit_events):
        audit_client.get("/patients/42")
        audit_events.assert_recorded(action="read", resource_type="patient", resource_id="42")

``audit_events`` configures the SDK with an :class:`InMemoryExporter` (no
network, no spool) for one test and shuts it down afterwards;
``audit_client`` is a test client of the application's own ``app``
fixture.  Loading the plugin does nothing else: the SDK is configured only
by a test that asks for a fixture.  ``-p no:auditlake.sdk.testing`` turns
it off.
"""

from __future__ import annotations

import inspect
import json
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from auditlake.sdk._config import POLICY_FIELDS, configure, flush, shutdown
from auditlake.sdk._event import decode_columns
from auditlake.sdk._exporter import ExportResult, ExportStatus

if TYPE_CHECKING:
    from auditlake.v1 import audit_pb2

__all__ = ["AuditEvents", "InMemoryExporter", "audit_client", "audit_events", "configure_for_tests"]

#: How many recorded events a failed ``assert_recorded`` describes.
_EXPLAINED_EVENTS = 10


class InMemoryExporter:
    """Keeps every exported event as a dict; acknowledges like a collector.

    Batches are deduplicated by batch id, as the collector does.
    ``answer`` scripts the collector: a callable given each
    ``ExportRequest`` (``request.batch_id`` is the same on every retry of a
    batch), returning an :class:`ExportResult` to answer with, or ``None``
    to store the batch and acknowledge it as usual.  ``ExportStatus.RETRY``
    is a collector that is down (the SDK retries with backoff, then keeps
    the batch and tries again); ``ExportStatus.REJECTED`` is a refusal for
    good (a revoked key, a tenant the key may not write), counted in
    ``stats().rejected``, never retried.  ``calls`` counts export calls,
    answered or not.  A collector down for two tries::

        from auditlake import sdk
        from auditlake.sdk import ExportResult, ExportStatus

        def test_an_event_outlives_a_collector_restart(audit_events):
            down = iter([ExportResult(ExportStatus.RETRY, "restarting")] * 2)
            audit_events.exporter.answer = lambda request: next(down, None)
            with sdk.actor(user_id="u1", tenant_id="acme"):
                sdk.record("delete", "invoice", "inv-7")
            audit_events.assert_recorded(action="delete", resource_id="inv-7")
            assert audit_events.exporter.calls == 3  # two refusals, one ack

    docs/sdk.md ("Testing your application") shows a refusal too.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.events: list[dict[str, Any]] = []
        self.batch_ids: list[str] = []
        self.calls = 0
        self.answer: Callable[[audit_pb2.ExportRequest], ExportResult | None] | None = None

    def export(self, request: audit_pb2.ExportRequest, timeout: float) -> ExportResult:
        """Store the batch (once per batch id) and acknowledge it, unless ``answer`` says otherwise."""
        with self._lock:
            self.calls += 1
            if self.answer is not None:
                result = self.answer(request)
                if result is not None and result.status is not ExportStatus.OK:
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
    """What a test sees: the events recorded so far (flushed on access).

    Each event is a dict of the ``events`` columns (``changes`` and
    ``metadata`` as JSON text; ``created_at_us`` in microseconds).  In
    ``find`` and ``assert_recorded`` a mapping given for a JSON column is
    compared with its decoded value: ``metadata={"status": 200, ...}``.
    """

    def __init__(self, exporter: InMemoryExporter) -> None:
        self.exporter = exporter

    @property
    def events(self) -> list[dict[str, Any]]:
        """Every event recorded so far, after a flush (waits up to 5 s for delivery)."""
        flush(timeout=5.0)
        return list(self.exporter.events)

    def find(self, **fields: Any) -> list[dict[str, Any]]:
        """The events whose fields equal all of ``fields``."""
        return [e for e in self.events if not _differences(e, fields)]

    def assert_recorded(self, **fields: Any) -> dict[str, Any]:
        """Fail unless exactly one event matches ``fields``; return it.

        The failure lists every field compared and, for the recorded events
        (closest first), each field that differed and how.
        """
        __tracebackhide__ = True  # pytest shows the test's line, not this one
        events = self.events
        found = [e for e in events if not _differences(e, fields)]
        if len(found) != 1:
            raise AssertionError(_explain(fields, events, found))
        return found[0]

    def clear(self) -> None:
        """Forget the events recorded so far."""
        flush(timeout=5.0)
        self.exporter.clear()


def _equal(actual: Any, expected: Any) -> bool:
    if isinstance(expected, Mapping) and isinstance(actual, str):
        try:
            return bool(json.loads(actual or "{}") == expected)
        except ValueError:
            return False
    return bool(actual == expected)


def _differences(event: Mapping[str, Any], fields: Mapping[str, Any]) -> list[str]:
    """One line per field of ``fields`` that ``event`` does not match."""
    lines = []
    for name, expected in fields.items():
        if name not in event:
            lines.append(f"{name}: not a field of an event")
        elif not _equal(event[name], expected):
            lines.append(f"{name}: {_short(event[name])}, expected {_short(expected)}")
    return lines


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def _headline(event: Mapping[str, Any]) -> str:
    what = f"{event.get('action', '')} {event.get('resource_type', '')}/{event.get('resource_id', '')}"
    who = event.get("user_id") or "-"
    return f"{what} by {who} in tenant {event.get('tenant_id') or '-'} ({event.get('outcome', '')})"


def _explain(fields: Mapping[str, Any], events: list[dict[str, Any]], found: list[dict[str, Any]]) -> str:
    """Why ``assert_recorded(**fields)`` failed, readable at a glance."""
    lines = ["expected exactly one audit event with"]
    lines += [f"    {name} = {_short(value)}" for name, value in fields.items()]
    if found:
        lines.append(f"found {len(found)} matching events:")
        lines += [f"  #{events.index(e) + 1} {_headline(e)}, id {e.get('id', '')}" for e in found]
        return "\n".join(lines)
    if not events:
        lines.append("found none: no event was recorded")
        return "\n".join(lines)
    ranked = sorted(enumerate(events, 1), key=lambda item: len(_differences(item[1], fields)))
    lines.append(f"found none among {len(events)} recorded events; how each differs (closest first):")
    for number, event in ranked[:_EXPLAINED_EVENTS]:
        lines.append(f"  #{number} {_headline(event)}")
        lines += [f"      {line}" for line in _differences(event, fields)]
    if len(ranked) > _EXPLAINED_EVENTS:
        lines.append(f"  ... and {len(ranked) - _EXPLAINED_EVENTS} more")
    return "\n".join(lines)


def configure_for_tests(**overrides: Any) -> AuditEvents:
    """Configure the SDK with an in-memory exporter and return its view.

    Defaults: service ``test``, 10 ms batches, retries after 10 ms (at most
    100 ms apart), no spool.  ``overrides`` are ``configure()`` arguments;
    a policy object given there replaces these defaults for its settings.
    """
    exporter = InMemoryExporter()
    options: dict[str, Any] = {
        "service_name": "test",
        "batch_delay": 0.01,
        "retry_initial_backoff": 0.01,
        "retry_max_backoff": 0.1,
        "spool_enabled": False,
    }
    for name in list(options):
        # configure() refuses a policy object together with its own settings.
        if name in POLICY_FIELDS and POLICY_FIELDS[name][0] in overrides:
            del options[name]
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

    @pytest.fixture
    def audit_client(audit_events: AuditEvents, app: Any) -> Iterator[Any]:
        """A test client of the application's ``app`` fixture, the SDK recording in memory.

        Flask: ``app.test_client()``; an ASGI app (FastAPI, Starlette):
        Starlette's ``TestClient``, lifespan run; any other WSGI app:
        Werkzeug's ``Client``.  The application provides ``app`` (it may
        be parametrized): only it knows how it is built (factory,
        settings, database).  ``audit_events`` is set up first.
        """
        if callable(getattr(app, "test_client", None)):  # Flask
            yield app.test_client()
        elif inspect.iscoroutinefunction(app) or inspect.iscoroutinefunction(type(app).__call__):
            from starlette.testclient import TestClient  # noqa: PLC0415 - only ASGI apps need it

            with TestClient(app) as client:
                yield client
        else:
            from werkzeug.test import Client  # noqa: PLC0415 - only WSGI apps need it

            yield Client(app)
