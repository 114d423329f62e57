"""Context: what every admin route shares, built once by ``admin/app.py``
and stored on ``app.state.admin``; a handler reads it with
``admin_context(request)``.  Per-request state never goes here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import jinja2
from starlette.requests import Request

from auditlake.collector.admin.proofs import ProofSource

if TYPE_CHECKING:
    from auditlake.collector.admin.export_runs import ExportRegistry
    from auditlake.collector.admin.search import LakeReader
    from auditlake.collector.admin.server import IntegrityMonitor
    from auditlake.collector.admin.users import LoginThrottle, SessionStore, UserStore
    from auditlake.collector.storage.datadir import DataDir


@dataclass(frozen=True)
class AdminContext:
    """The parts of one AdminServer that its routes use."""

    #: The collector (or a read-only stand-in); its ``signing_key`` signs export manifests.
    collector: Any
    data: DataDir
    users: UserStore
    sessions: SessionStore
    throttle: LoginThrottle
    reader: LakeReader
    integrity: IntegrityMonitor
    templates: jinja2.Environment
    #: Record a meta-audit event (``AdminServer.audit``); it returns at once.
    audit: Callable[..., None]
    #: The same, returning once the event is durable (``AdminServer.audit_durably``).
    audit_durably: Callable[..., None]
    #: ``cached(key, ttl_s, compute)``: a value kept for ``ttl_s`` seconds (``AdminServer.cached``).
    cached: Callable[[tuple[Any, ...], float, Callable[[], Any]], Any]
    exports: ExportRegistry
    #: Merkle proofs, with the writers' trees kept between requests (one per
    #: application, so one per admin process).
    proofs: ProofSource = field(default_factory=ProofSource)


def admin_context(request: Request) -> AdminContext:
    """The context of the application serving ``request``."""
    context: AdminContext = request.app.state.admin
    return context
