"""auditlake SDK: record who did what, to which data, when, and from where.

    from auditlake import sdk as audit

    audit.configure(service_name="billing")        # or AUDITLAKE_* variables
    with audit.actor(user_id="u1", tenant_id="t1"):
        audit.record("update", "invoice", "inv-7", changes=audit.diff(old, new))

``record()`` only enqueues; a background thread batches, exports over gRPC,
retries and spools to disk while the collector is away.  See docs/sdk.md.

The modules, in the order an event meets them (all but the last three are
private; their public names are re-exported here):

    _context      actor(), set_actor(): who acts, for which tenant, from where
    _record       record(): capture and enqueue, the caller's whole cost
    _decorators   @audited: one event per call, with its outcome
    _compliance   login/logout/permission/data-access helpers (fixed actions)
    _diff         diff(): the ``changes`` column, secrets redacted
    _trace        the OpenTelemetry span and service name at the call
    _event        the captured event and its packed wire form
    _processor    the export thread: batches, retries, spools
    _refusals     refused and dropped events: dead-letter spool, on_drop, replays
    _exporter     one batch to the collector, and what its answer means
    _spool        batches on disk: the spool, and the dead-letter spool of refused ones
    _policies     Retry, Batch and Spool policies (frozen, validated)
    _config       configure(): arguments, then AUDITLAKE_*, then TOML
    _exceptions   the exception tree
    _http         what both middlewares share (client address, route rules)
    asgi, wsgi    the middleware
    sqlalchemy    create/update/delete capture for SQLAlchemy models (optional)
    django        the same for Django models, plus middleware and auth signals (optional)
    testing       an in-memory exporter and a pytest fixture for your tests
"""

from __future__ import annotations

from auditlake.sdk._compliance import (
    data_access,
    login,
    login_failed,
    logout,
    permission_grant,
    permission_revoke,
)
from auditlake.sdk._config import (
    Settings,
    configure,
    flush,
    is_configured,
    replay_dead_letters,
    shutdown,
    stats,
)
from auditlake.sdk._context import Actor, actor, current_actor, set_actor, start_thread
from auditlake.sdk._decorators import audited
from auditlake.sdk._diff import diff
from auditlake.sdk._exceptions import (
    AuditlakeError,
    ConfigurationError,
    DeliveryError,
    DeliveryRejected,
    DeliveryTimeout,
    NotConfiguredError,
)
from auditlake.sdk._exporter import Exporter, ExportResult, ExportStatus
from auditlake.sdk._policies import BatchPolicy, RetryPolicy, SpoolPolicy
from auditlake.sdk._processor import DroppedEvents, ReplayResult, Stats
from auditlake.sdk._record import record

__all__ = [
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
