"""OpenTelemetry correlation: span ids at the call, service name from the Resource.

Only the API package is used; the SDK's Resource is read duck-typed, so an
application without the OpenTelemetry SDK works too.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import trace

get_current_span = trace.get_current_span
INVALID_SPAN = trace.INVALID_SPAN


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
