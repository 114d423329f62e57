"""@audited on functions, async functions and methods: one event per call."""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Mapping
from typing import Any

import pytest

from auditlake import sdk
from auditlake.sdk.testing import AuditEvents


@sdk.audited("update", "user", resource_id="user_id", changes="patch")
def update_user(user_id: str, patch: dict[str, Any], *, dry_run: bool = False) -> str:
    if patch.get("fail"):
        raise RuntimeError("nope")
    if patch.get("forbidden"):
        raise PermissionError("not yours")
    return "ok"


def test_success_records_resource_id_by_parameter_name_and_changes(memory: AuditEvents) -> None:
    assert update_user("u7", {"name": "x"}) == "ok"
    assert update_user(user_id="u8", patch={}) == "ok"
    first, second = memory.events
    assert (first["action"], first["resource_type"], first["resource_id"]) == ("update", "user", "u7")
    assert first["outcome"] == "success"
    assert json.loads(first["changes"]) == {"name": "x"}
    assert second["resource_id"] == "u8"


def test_exception_propagates_and_records_failure_with_its_type(memory: AuditEvents) -> None:
    with pytest.raises(RuntimeError):
        update_user("u1", {"fail": True})
    (event,) = memory.events
    assert (event["outcome"], event["reason"]) == ("failure", "RuntimeError")


def test_permission_error_records_denied(memory: AuditEvents) -> None:
    with pytest.raises(PermissionError):
        update_user("u1", {"forbidden": True})
    assert memory.events[0]["outcome"] == "denied"


class Forbidden(Exception):
    pass


def test_configured_denied_exceptions(memory: AuditEvents) -> None:
    @sdk.audited("delete", "doc", denied=(Forbidden,))
    def delete() -> None:
        raise Forbidden

    with pytest.raises(Forbidden):
        delete()
    assert memory.events[0]["outcome"] == "denied"


def test_resource_id_and_changes_from_callables_of_bound_arguments(memory: AuditEvents) -> None:
    def before_after(args: Mapping[str, Any], result: Any) -> str:
        return sdk.diff(args["old"], result)

    @sdk.audited("update", "doc", resource_id=lambda a: f"{a['folder']}/{a['name']}",
                 changes=before_after)
    def rename(folder: str, name: str = "readme", old: dict[str, str] | None = None) -> dict[str, str]:
        return {"title": "new"}

    rename("docs", old={"title": "old"})
    (event,) = memory.events
    assert event["resource_id"] == "docs/readme"
    assert json.loads(event["changes"]) == {"title": {"before": "old", "after": "new"}}


def test_methods_and_async_functions(memory: AuditEvents) -> None:
    class Service:
        @sdk.audited("read", "patient", resource_id="patient_id")
        def get(self, patient_id: str) -> str:
            return patient_id

        @sdk.audited(read=True, resource_type="patient", resource_id="patient_id")
        async def aget(self, patient_id: str) -> str:
            await asyncio.sleep(0)
            return patient_id

        @sdk.audited("delete", "patient", resource_id="patient_id")
        async def adelete(self, patient_id: str) -> None:
            raise PermissionError

    service = Service()
    assert service.get("p1") == "p1"
    assert asyncio.run(service.aget("p2")) == "p2"
    with pytest.raises(PermissionError):
        asyncio.run(service.adelete("p3"))
    assert [(e["action"], e["resource_id"], e["outcome"]) for e in memory.events] == [
        ("read", "p1", "success"), ("read", "p2", "success"), ("delete", "p3", "denied")]
    assert Service.get.__name__ == "get"
    assert inspect.iscoroutinefunction(Service.aget)


def test_bad_decorator_arguments_fail_at_decoration_time() -> None:
    with pytest.raises(ValueError, match="no parameter"):
        sdk.audited("read", "doc", resource_id="missing")(lambda doc_id: None)
    with pytest.raises(ValueError, match="action"):
        sdk.audited()
    with pytest.raises(ValueError, match="read=True"):
        sdk.audited("update", "doc", read=True)

    def rows() -> Any:
        yield 1

    with pytest.raises(TypeError, match="generator"):
        sdk.audited("export", "doc")(rows)


def test_events_inside_the_function_see_the_actor(memory: AuditEvents) -> None:
    @sdk.audited("export", "report")
    def export() -> None:
        pass

    with sdk.actor(user_id="auditor", tenant_id="t9"):
        export()
    assert (memory.events[0]["user_id"], memory.events[0]["tenant_id"]) == ("auditor", "t9")


def test_an_audited_call_before_configure_does_not_run() -> None:
    """No side effect without its event, and no exception after a side effect:
    the decorator refuses before the call (sync and async alike)."""
    import asyncio

    sdk.shutdown(timeout=5.0)
    done: list[str] = []

    @sdk.audited("invoice.pay", "invoice", resource_id="invoice_id")
    def pay(invoice_id: str) -> None:
        done.append(invoice_id)

    @sdk.audited("invoice.void", "invoice", resource_id="invoice_id")
    async def void(invoice_id: str) -> None:
        done.append(invoice_id)

    with pytest.raises(sdk.NotConfiguredError, match="pay is @audited.*it did not run"):
        pay("inv-1")
    with pytest.raises(sdk.NotConfiguredError, match="void is @audited"):
        asyncio.run(void("inv-2"))
    assert done == []
