"""Helpers for the compliance minimum, with fixed action names.

=====================  ==================  ====================================
helper                 action              resource
=====================  ==================  ====================================
login                  login               session / user id
logout                 logout              session / user id
login_failed           login_failed        session / attempted user name
permission_grant       permission_grant    the subject that gains a permission
permission_revoke      permission_revoke   the subject that loses it
data_access            read                whatever was read (PII)
=====================  ==================  ====================================
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from auditlake.sdk._record import record


def login(
    user_id: str,
    *,
    tenant_id: str | None = None,
    method: str = "",
    metadata: Mapping[str, Any] | None = None,
    durable: bool = False,
) -> None:
    """A successful sign-in of ``user_id`` (``method``: password, sso, mfa, ...)."""
    record(
        "login",
        "session",
        user_id,
        user_id=user_id,
        tenant_id=tenant_id,
        metadata={**(metadata or {}), **({"method": method} if method else {})},
        durable=durable,
    )


def logout(
    user_id: str,
    *,
    tenant_id: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> None:
    """A sign-out of ``user_id``."""
    record("logout", "session", user_id, user_id=user_id, tenant_id=tenant_id, metadata=metadata)


def login_failed(
    username: str,
    *,
    reason: str = "",
    tenant_id: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> None:
    """A refused sign-in for ``username`` (recorded with outcome ``failure``)."""
    record(
        "login_failed",
        "session",
        username,
        user_id=username,
        tenant_id=tenant_id,
        outcome="failure",
        reason=reason,
        metadata=metadata,
    )


def permission_grant(
    subject_id: str,
    permission: str,
    *,
    subject_type: str = "user",
    tenant_id: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    durable: bool = False,
) -> None:
    """The acting user gave ``permission`` (a role, a scope) to ``subject_id``."""
    record(
        "permission_grant",
        subject_type,
        subject_id,
        tenant_id=tenant_id,
        changes={"permission": {"before": None, "after": permission}},
        metadata={**(metadata or {}), "permission": permission},
        durable=durable,
    )


def permission_revoke(
    subject_id: str,
    permission: str,
    *,
    subject_type: str = "user",
    tenant_id: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    durable: bool = False,
) -> None:
    """The acting user took ``permission`` away from ``subject_id``."""
    record(
        "permission_revoke",
        subject_type,
        subject_id,
        tenant_id=tenant_id,
        changes={"permission": {"before": permission, "after": None}},
        metadata={**(metadata or {}), "permission": permission},
        durable=durable,
    )


def data_access(
    resource_type: str,
    resource_id: str,
    *,
    fields: Iterable[str] | None = None,
    purpose: str = "",
    tenant_id: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    durable: bool = False,
) -> None:
    """The acting user read ``resource_type/resource_id`` (e.g. PII): action ``read``."""
    extra: dict[str, Any] = dict(metadata or {})
    if fields is not None:
        extra["fields"] = list(fields)
    if purpose:
        extra["purpose"] = purpose
    record(
        "read",
        resource_type,
        resource_id,
        tenant_id=tenant_id,
        metadata=extra or None,
        durable=durable,
    )
