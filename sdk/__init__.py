"""auditlake SDK: record who did what, to which data, when, and from where."""

from __future__ import annotations

from auditlake.sdk._exceptions import (
    AuditlakeError,
    ConfigurationError,
    DeliveryError,
    DeliveryTimeout,
    NotConfiguredError,
)

__all__ = [
    "AuditlakeError",
    "ConfigurationError",
    "DeliveryError",
    "DeliveryTimeout",
    "NotConfiguredError",
]
