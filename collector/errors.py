"""The collector's exceptions.

    AuditlakeError                      (the root, auditlake.AuditlakeError, shared with the SDK)
    └── CollectorError
        ├── ConfigError(ValueError)     a bad setting or file
        ├── StorageError(OSError)       the disk or a store failed
        ├── AuthError                   unknown or missing credential
        └── IntegrityError              a check of the lake failed

Errors are mapped to gRPC / HTTP statuses once, at the boundary.
"""

from __future__ import annotations

# Not `auditlake.sdk`: importing the SDK would start every collector command with gRPC.
from auditlake import AuditlakeError


class CollectorError(AuditlakeError):
    """Base of every error the collector raises."""


class ConfigError(ValueError, CollectorError):
    """A setting, flag or configuration file is invalid."""


class StorageError(OSError, CollectorError):
    """Writing or reading the data directory or a store failed."""


class AuthError(CollectorError):
    """A credential is missing, unknown or not allowed to do this."""


class IntegrityError(CollectorError):
    """The lake does not match its chain or checkpoints."""
