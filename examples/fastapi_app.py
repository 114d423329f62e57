"""A FastAPI patient service audited with auditlake.

    AUDITLAKE_API_KEY=alk_... AUDITLAKE_SERVICE_NAME=patients \\
        uvicorn examples.fastapi_app:app

* ``AuditMiddleware`` sets the actor of every request (user and tenant from
  the demo bearer token ``Bearer <user>@<tenant>``, client address behind a
  trusted proxy, user agent, request id) and records every ``GET
  /patients/{id}`` as a ``read`` of a ``patient`` and the CSV export as an
  ``export``, when the response really ends.
* ``@audited`` on the service layer records updates (with a redacted diff)
  and deletions, ``denied`` when the caller is not allowed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, StreamingResponse

from auditlake import sdk
from auditlake.sdk.asgi import AuditMiddleware, RouteRule

PATIENTS: dict[str, dict[str, Any]] = {
    "p1": {"name": "Ada Lovelace", "dob": "1815-12-10", "ssn": "123-45-6789", "ward": "A"},
    "p2": {"name": "Alan Turing", "dob": "1912-06-23", "ssn": "987-65-4321", "ward": "B"},
}


def resolve_user(scope: MutableMapping[str, Any]) -> dict[str, str] | None:
    """Demo authentication: ``Authorization: Bearer user@tenant``."""
    for name, value in scope.get("headers", ()):
        if name == b"authorization" and value.startswith(b"Bearer "):
            user, _, tenant = value[7:].decode().partition("@")
            return {"user_id": user, "tenant_id": tenant}
    return None


class PatientService:
    """The domain layer; every state change is audited here."""

    @sdk.audited(
        "update",
        "patient",
        resource_id="patient_id",
        changes=lambda args, result: sdk.diff(args["before"], result),
    )
    async def update(self, patient_id: str, before: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(0)  # the database write
        after = {**before, **patch}
        PATIENTS[patient_id] = after
        return after

    @sdk.audited("delete", "patient", resource_id="patient_id")
    def delete(self, patient_id: str, user_id: str) -> None:
        if not user_id.startswith("admin"):
            raise PermissionError(f"{user_id} may not delete patients")
        PATIENTS.pop(patient_id, None)


service = PatientService()


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    if not sdk.is_configured():  # tests configure an in-memory SDK first
        sdk.configure(service_name="patients-fastapi")
    yield
    sdk.flush(timeout=5)


def create_app() -> FastAPI:
    """The application with the audit middleware installed."""
    api = FastAPI(lifespan=lifespan)

    @api.exception_handler(PermissionError)
    async def forbidden(request: Request, error: PermissionError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=403)

    @api.get("/patients/{patient_id}")
    async def get_patient(patient_id: str) -> dict[str, Any]:
        if patient_id not in PATIENTS:
            raise HTTPException(404)
        return {k: v for k, v in PATIENTS[patient_id].items() if k != "ssn"}

    @api.patch("/patients/{patient_id}")
    async def patch_patient(patient_id: str, patch: dict[str, Any]) -> dict[str, Any]:
        if patient_id not in PATIENTS:
            raise HTTPException(404)
        after = await service.update(patient_id, dict(PATIENTS[patient_id]), patch)
        return {k: v for k, v in after.items() if k != "ssn"}

    @api.delete("/patients/{patient_id}", status_code=204)
    def delete_patient(patient_id: str, request: Request) -> None:
        # A sync endpoint runs in a worker thread; the actor scope follows it.
        service.delete(patient_id, sdk.current_actor().user_id or "")

    @api.post("/login")
    async def login(credentials: dict[str, str]) -> dict[str, str]:
        if credentials.get("password") != "demo":
            # The collector needs a tenant; an unknown one is recorded as "public".
            sdk.login_failed(credentials.get("user", ""), reason="bad password",
                             tenant_id=credentials.get("tenant") or "public")
            raise HTTPException(401)
        sdk.login(credentials["user"], tenant_id=credentials.get("tenant"), method="password")
        return {"token": f"{credentials['user']}@{credentials.get('tenant', '')}"}

    @api.get("/export.csv")
    async def export_csv() -> StreamingResponse:
        async def rows() -> AsyncIterator[str]:
            yield "id,name\n"
            for patient_id, patient in list(PATIENTS.items()):
                await asyncio.sleep(0)
                yield f"{patient_id},{patient['name']}\n"

        return StreamingResponse(rows(), media_type="text/csv")

    api.add_middleware(
        AuditMiddleware,  # pure ASGI: wraps the whole app, streaming included
        resolver=resolve_user,
        trusted_proxies=["127.0.0.1", "10.0.0.0/8"],
        routes=[
            RouteRule("GET", "/patients/{patient_id}", "read", "patient"),
            RouteRule("GET", "/export.csv", "export", "patient"),
        ],
    )
    return api


app = create_app()
