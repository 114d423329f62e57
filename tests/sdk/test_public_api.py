"""The public surface is pinned, and the import path stays light."""

from __future__ import annotations

import subprocess
import sys

import auditlake.sdk


def test_public_names_are_pinned_and_sorted() -> None:
    assert auditlake.sdk.__all__ == sorted(auditlake.sdk.__all__)
    assert auditlake.sdk.__all__ == [
        "Actor",
        "AuditlakeError",
        "BatchPolicy",
        "ConfigurationError",
        "DeliveryError",
        "DeliveryRejected",
        "DeliveryTimeout",
        "DroppedEvents",
        "ExportResult",
        "ExportStatus",
        "Exporter",
        "NotConfiguredError",
        "ReplayResult",
        "RetryPolicy",
        "Settings",
        "SpoolPolicy",
        "Stats",
        "actor",
        "audited",
        "configure",
        "current_actor",
        "data_access",
        "diff",
        "flush",
        "is_configured",
        "login",
        "login_failed",
        "logout",
        "permission_grant",
        "permission_revoke",
        "record",
        "replay_dead_letters",
        "set_actor",
        "shutdown",
        "start_thread",
        "stats",
    ]
    for name in auditlake.sdk.__all__:
        assert getattr(auditlake.sdk, name).__doc__, name


def test_sdk_import_path_pulls_in_no_duckdb_pyarrow_or_collector() -> None:
    code = (
        "import sys, auditlake.sdk, auditlake.sdk.asgi, auditlake.sdk.wsgi\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('duckdb', 'pyarrow')"
        " or m.startswith('auditlake.collector'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_exceptions_form_one_tree_with_stdlib_mixins() -> None:
    from auditlake.sdk import (
        AuditlakeError,
        ConfigurationError,
        DeliveryError,
        DeliveryRejected,
        DeliveryTimeout,
        NotConfiguredError,
    )

    assert issubclass(ConfigurationError, ValueError)
    assert issubclass(DeliveryTimeout, TimeoutError)
    for kind in (ConfigurationError, NotConfiguredError, DeliveryError, DeliveryRejected):
        assert issubclass(kind, AuditlakeError)
    assert issubclass(DeliveryTimeout, DeliveryError)
