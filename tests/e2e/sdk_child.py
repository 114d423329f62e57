"""Run by test_sdk_to_lake in its own process: records events through the
SDK exactly as an application would, then prints what it recorded."""

from __future__ import annotations

import json
import sys
import time

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from auditlake import sdk


def main() -> None:
    n = int(sys.argv[1])
    trace.set_tracer_provider(TracerProvider(resource=Resource.create({"service.name": "billing-api"})))
    tracer = trace.get_tracer("e2e")
    sdk.configure()  # endpoint, key, spool dir from AUDITLAKE_* variables
    expected = []
    t0 = time.time()
    with tracer.start_as_current_span("handle-request") as span:
        ctx = span.get_span_context()
        for i in range(n):
            event = {
                "action": ["read", "update", "delete", "export"][i % 4],
                "resource_type": "invoice",
                "resource_id": f"inv-{i:05d}",
                "user_id": f"user-{i % 13}",
                "tenant_id": ["acme", "globex"][i % 2],
                "changes": {
                    "total": {"before": i, "after": i + 1},
                    "note": {"before": None, "after": "ünïcødé, \"quoted\"\n"},
                },
                "ip_address": f"2001:db8::{i % 200:x}",
                "user_agent": f"e2e-agent/{i % 3}",
                "outcome": ["success", "failure", "denied"][i % 3],
                "reason": "" if i % 3 == 0 else f"reason {i}",
                "metadata": {"route": "/invoices/{id}", "n": i},
                "request_id": f"req-{i}",
            }
            sdk.record(**event)
            expected.append(event)
    ok = sdk.flush(timeout=60)
    sdk.shutdown()
    print(json.dumps({
        "ok": ok, "t0": t0, "t1": time.time(), "events": expected,
        "trace_id": format(ctx.trace_id, "032x"), "span_id": format(ctx.span_id, "016x"),
    }))


if __name__ == "__main__":
    main()
