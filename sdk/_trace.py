"""OpenTelemetry correlation: span ids at the call, service name from the Resource.

Only the API package is used; the SDK's Resource is read duck-typed, so an
application without the OpenTelemetry SDK works too.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace

INVALID_SPAN = trace.INVALID_SPAN


def _context_getter() -> Callable[[], Any]:
    # The caller's path captures OpenTelemetry's current Context (immutable)
    # and the export thread looks the span up in it later.  Reading the
    # runtime's ContextVar directly is one C call instead of four Python
    # ones; any other runtime context goes through the public API.
    runtime = getattr(otel_context, "_RUNTIME_CONTEXT", None)
    variable = getattr(runtime, "_current_context", None)
    if isinstance(variable, contextvars.ContextVar):
        return variable.get
    return otel_context.get_current


current_context = _context_getter()


def span_ids_in(context: Any) -> tuple[str, str]:
    """(trace_id, span_id) of the span current in an OpenTelemetry Context."""
    if not context:
        return "", ""
    return span_ids(trace.get_current_span(context))


def span_ids(span: Any) -> tuple[str, str]:
    """(trace_id, span_id) as lowercase hex, or ("", "") without a valid span."""
    if span is None:
        return "", ""
    context = span.get_span_context()
    if not context.is_valid:
        return "", ""
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


def resource_service_name() -> str | None:
    """service.name of the application's TracerProvider Resource, if it set one."""
    provider = trace.get_tracer_provider()
    resource = getattr(provider, "resource", None)
    attributes = getattr(resource, "attributes", None)
    if not attributes:
        return None
    name = attributes.get("service.name")
    if not isinstance(name, str) or not name or name.startswith("unknown_service"):
        return None
    return name
