"""SDK test fixtures: an in-memory SDK, and a clean SDK after every test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from auditlake import sdk
from auditlake.sdk.testing import AuditEvents, audit_events, configure_for_tests

__all__ = ["audit_events"]  # the public fixture, exercised by the tests too


@pytest.fixture(autouse=True)
def _sdk_is_shut_down_after_each_test(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    # Never spool into the real home directory from a test.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
    for name in ("AUDITLAKE_ENDPOINT", "AUDITLAKE_API_KEY", "AUDITLAKE_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    yield
    sdk.shutdown(timeout=5.0)


@pytest.fixture
def memory() -> AuditEvents:
    """The SDK configured with an in-memory exporter (no spool, 10 ms batches).

    Events naming no tenant get ``t-default`` (the collector requires one).
    """
    return configure_for_tests(tenant_id="t-default")
