"""auditlake's exceptions.

    AuditlakeError
    ├── ConfigurationError(ValueError)   a bad argument, variable or file
    ├── NotConfiguredError               record() before configure()
    └── DeliveryError                    a durable event was not acknowledged
        ├── DeliveryRejected             the collector refused it for good
        └── DeliveryTimeout(TimeoutError)

gRPC statuses are mapped to these once, in ``_exporter.py``.
"""

from __future__ import annotations

# Defined in the root package, which the collector shares without importing the SDK.
from auditlake import AuditlakeError as AuditlakeError


class ConfigurationError(ValueError, AuditlakeError):
    """A configuration argument, environment variable or file is invalid."""


class NotConfiguredError(AuditlakeError):
    """The SDK was used before ``configure()``."""


class DeliveryError(AuditlakeError):
    """An event that had to be acknowledged (durable mode) was not."""


class DeliveryRejected(DeliveryError):
    """The collector refused the event with a status that retrying cannot fix."""


class DeliveryTimeout(TimeoutError, DeliveryError):
    """The collector did not acknowledge a durable event in time."""
