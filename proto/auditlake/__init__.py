"""auditlake: open audit logs for Python services.

`auditlake.sdk` is what applications import; `auditlake.collector` is the
service that stores, verifies and serves the events; `auditlake.v1` holds the
generated wire contract both use.
"""

__version__ = "0.1.0"


class AuditlakeError(Exception):
    """Root of every exception auditlake raises (``auditlake.sdk`` re-exports
    it; the collector's errors derive from it).  It lives here, import-free, so
    the collector need not import the SDK (gRPC, OpenTelemetry) to raise one."""
