"""auditlake: open audit logs for Python services.

`auditlake.sdk` is what applications import; `auditlake.collector` is the
service that stores, verifies and serves the events; `auditlake.v1` holds the
generated wire contract both use.
"""

__version__ = "0.1.0"
