"""A FastAPI patient service audited with auditlake.

    AUDITLAKE_API_KEY=alk_... AUDITLAKE_SERVICE_NAME=patients \\
        uvicorn examples.fastapi_app:app

* ``AuditMiddleware`` sets the actor of every request (client address behind
  a trusted proxy, user agent, request id) and records every ``GET
  /patients/{patient_id}`` as a ``read`` of a ``patient`` (a rule keyed by
  the route's own template) and the CSV export as an ``export`` (the
  endpoint marked with ``@audit_route``), when the response really ends.
* Who the user is, the app's own ``Depends()`` dependency works out (the
  demo bearer token ``Bearer <user>@<tenant>``) and hands to
  ``sdk.set_actor()``: the route's event and every event of the request
  carry it.
* ``@audited`` on the service layer records updates (with a redacted diff)
  and deletions, ``denied`` when the caller is not allowed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.responses import JSONResponse, StreamingResponse

from auditlake import sdk
from auditlake.sdk.asgi import AuditMiddleware, RouteRule, audit_route

PATIENTS: dict[str, dict[str, Any]] = {
    "p1": {"name": "Ada Lovelace", "dob": "1815-12-10", "ssn": "123-45-6789", "ward": "A"},
    "p2": {"name": "Alan Turing", "dob": "1912-06-23", "ssn": "987-65-4321", "ward": "B"},
}


@dataclass
class User:
    """The authenticated caller."""

    id: str
    tenant: str


def current_user(authorization: Annotated[str, Header()] = "") -> User:
    """Demo authentication: ``Authorization: Bearer user@tenant``.

    Once the user is known, ``set_actor`` hands it to the audit log (a plain
    ``def`` dependency runs in a worker thread; the request's actor is
    amended all the same).
    """
    if not authorization.startswith("Bearer "):
        raise HTTPException(401)
    user, _, tenant = authorization[7:].partition("@")
    sdk.set_actor(user_id=user, tenant_id=tenant)
    return User(user, tenant)


CurrentUser = Annotated[User, Depends(current_user)]


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
    async def get_patient(patient_id: str, user: CurrentUser) -> dict[str, Any]:
        if patient_id not in PATIENTS:
            raise HTTPException(404)
        return {k: v for k, v in PATIENTS[patient_id].items() if k != "ssn"}

    @api.patch("/patients/{patient_id}")
    async def patch_patient(patient_id: str, patch: dict[str, Any], user: CurrentUser) -> dict[str, Any]:
        if patient_id not in PATIENTS:
            raise HTTPException(404)
        after = await service.update(patient_id, dict(PATIENTS[patient_id]), patch)
        return {k: v for k, v in after.items() if k != "ssn"}

    @api.delete("/patients/{patient_id}", status_code=204)
    def delete_patient(patient_id: str, user: CurrentUser) -> None:
        # A sync endpoint runs in a worker thread; the actor scope follows it.
        service.delete(patient_id, user.id)

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
    @audit_route("export", "patient")  # the endpoint itself says what it records
    async def export_csv(user: CurrentUser) -> StreamingResponse:
        async def rows() -> AsyncIterator[str]:
            yield "id,name\n"
            for patient_id, patient in list(PATIENTS.items()):
                await asyncio.sleep(0)
                yield f"{patient_id},{patient['name']}\n"

        return StreamingResponse(rows(), media_type="text/csv")

    api.add_middleware(
        AuditMiddleware,  # pure ASGI: wraps the whole app, streaming included
        trusted_proxies=["127.0.0.1", "10.0.0.0/8"],
        # Checked against the app's routes at start-up: a typo is logged.
        routes=[RouteRule("GET", "/patients/{patient_id}", "read", "patient")],
    )
    return api


app = create_app()
