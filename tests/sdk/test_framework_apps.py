"""A FastAPI app and a Flask app written as their users write them: identity
from the framework's own authentication, rules keyed by the framework's
routes, one behaviour whichever way the middleware is installed."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException
from fastapi.responses import RedirectResponse, StreamingResponse
from flask import Flask, Response, abort, jsonify
from flask_login import LoginManager, UserMixin, current_user, login_required, login_user
from starlette.applications import Starlette
from starlette.authentication import AuthCredentials, AuthenticationBackend, SimpleUser
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient
from werkzeug.test import Client

from auditlake import sdk
from auditlake.sdk import asgi, wsgi
from auditlake.sdk.testing import AuditEvents

# --------------------------------------------------------------------------
# The FastAPI app: the user comes from a Depends() dependency.


@dataclass
class User:
    id: str
    tenant: str


def bearer(authorization: str) -> User:
    """Demo tokens: ``Bearer <user>@<tenant>``."""
    if not authorization.startswith("Bearer "):
        raise HTTPException(401)
    user, _, tenant = authorization[7:].partition("@")
    return User(user, tenant)


def sync_user(authorization: Annotated[str, Header()] = "") -> User:
    """A plain ``def`` dependency: FastAPI runs it in a thread, in a copy of the context."""
    user = bearer(authorization)
    sdk.set_actor(user_id=user.id, tenant_id=user.tenant)
    return user


async def async_user(authorization: Annotated[str, Header()] = "") -> User:
    """An ``async def`` dependency."""
    user = bearer(authorization)
    sdk.set_actor(user_id=user.id, tenant_id=user.tenant)
    return user


@sdk.audited("update", "patient", resource_id="patient_id")
def update_patient(patient_id: str, patch: dict[str, Any]) -> dict[str, Any]:
    """The service layer: its event is recorded inside the request."""
    return {"id": patient_id, **patch}


RULES = [
    asgi.RouteRule("GET", "/patients/{patient_id}", "read", "patient"),
    asgi.RouteRule("GET", "/reports/{report_id}", "export", "report"),
]


def fastapi_app(dependency: Callable[..., Any], installed: str) -> Any:
    app = FastAPI()
    authenticated = Depends(dependency)

    @app.get("/patients/{patient_id}")
    async def read_patient(patient_id: str, user: User = authenticated) -> dict[str, str]:
        sdk.record("query", "patient_table", patient_id)  # an event of the handler's own
        return {"id": patient_id, "reader": user.id}

    @app.patch("/patients/{patient_id}")
    def patch_patient(patient_id: str, patch: dict[str, Any], user: User = authenticated) -> dict[str, Any]:
        # A sync endpoint: another thread, another copy of the context.
        return update_patient(patient_id, patch)

    @app.get("/reports/{report_id}")
    async def report(report_id: str, user: User = authenticated) -> StreamingResponse:
        async def rows() -> Iterator[str]:  # type: ignore[misc]
            yield "a\n"
            await asyncio.sleep(0)
            sdk.record("row", "report", report_id)  # while streaming
            yield "b\n"

        return StreamingResponse(rows())  # type: ignore[arg-type]

    @app.delete("/patients/{patient_id}")
    @asgi.audit_route("delete", "patient")  # no second routing table
    async def delete_patient(patient_id: str, user: User = authenticated) -> None:
        if patient_id == "locked":
            raise RuntimeError("row locked")

    @app.post("/patients/{patient_id}/archive")
    @asgi.audit_route("archive", "patient")
    async def archive(patient_id: str, user: User = authenticated) -> RedirectResponse:
        return RedirectResponse(f"/patients/{patient_id}", status_code=303)

    if installed == "add_middleware":
        app.add_middleware(asgi.AuditMiddleware, routes=RULES)
        return app
    return asgi.AuditMiddleware(app, routes=RULES)


async def requests(app: Any, *calls: tuple[str, str, dict[str, Any]]) -> list[httpx.Response]:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://clinic",
                                 follow_redirects=True) as client:
        return [await client.request(method, url, **options) for method, url, options in calls]


DOCTOR = {"headers": {"Authorization": "Bearer dr.who@clinic"}}

DEPENDENCIES = pytest.mark.parametrize("dependency", [sync_user, async_user], ids=["def", "async-def"])
INSTALLED = pytest.mark.parametrize("installed", ["wrapped", "add_middleware"])


def by_request(events: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        grouped.setdefault(event["request_id"], []).append(event)
    return grouped


@DEPENDENCIES
@INSTALLED
def test_every_event_of_a_request_carries_the_user_its_dependency_authenticated(
    memory: AuditEvents, dependency: Callable[..., Any], installed: str
) -> None:
    app = fastapi_app(dependency, installed)
    read, patch, report = asyncio.run(requests(
        app,
        ("GET", "/patients/p1", DOCTOR),
        ("PATCH", "/patients/p1", {**DOCTOR, "json": {"ward": "C"}}),
        ("GET", "/reports/r9", DOCTOR),
    ))
    assert (read.status_code, patch.status_code, report.text) == (200, 200, "a\nb\n")
    events = memory.events
    assert sorted(e["action"] for e in events) == ["export", "query", "read", "row", "update"]
    for event in events:
        assert (event["user_id"], event["tenant_id"]) == ("dr.who", "clinic"), event
    assert len(by_request(events)) == 3  # one request id per request, shared by its events
    route_event = memory.assert_recorded(action="read")
    assert json.loads(route_event["metadata"]) == {
        "method": "GET", "path": "/patients/p1", "status": 200, "route": "/patients/{patient_id}"}
    assert json.loads(memory.assert_recorded(action="export")["metadata"])["route"] == "/reports/{report_id}"


@DEPENDENCIES
@INSTALLED
def test_a_marked_endpoint_records_with_its_path_parameter_and_the_user(
    memory: AuditEvents, dependency: Callable[..., Any], installed: str
) -> None:
    asyncio.run(requests(fastapi_app(dependency, installed), ("DELETE", "/patients/p2", DOCTOR)))
    event = memory.assert_recorded(action="delete", resource_type="patient", resource_id="p2")
    assert (event["user_id"], event["outcome"]) == ("dr.who", "success")
    assert json.loads(event["metadata"])["route"] == "/patients/{patient_id}"


@INSTALLED
def test_a_handler_exception_is_its_type_and_the_500_the_client_got(
    memory: AuditEvents, installed: str
) -> None:
    (response,) = asyncio.run(requests(fastapi_app(async_user, installed),
                                       ("DELETE", "/patients/locked", DOCTOR)))
    assert response.status_code == 500
    event = memory.assert_recorded(action="delete", resource_id="locked")
    assert (event["outcome"], event["reason"], event["user_id"]) == ("failure", "RuntimeError", "dr.who")
    assert json.loads(event["metadata"])["status"] == 500


@INSTALLED
def test_a_trailing_slash_redirect_is_one_event_and_no_failure(memory: AuditEvents, installed: str) -> None:
    (response,) = asyncio.run(requests(fastapi_app(async_user, installed), ("GET", "/patients/p1/", DOCTOR)))
    assert response.status_code == 200 and response.history[0].status_code == 307
    event = memory.assert_recorded(action="read")
    assert (event["outcome"], event["resource_id"]) == ("success", "p1")


@INSTALLED
def test_a_redirect_the_handler_chose_is_a_success(memory: AuditEvents, installed: str) -> None:
    asyncio.run(requests(fastapi_app(async_user, installed), ("POST", "/patients/p3/archive", DOCTOR)))
    archived = memory.assert_recorded(action="archive", resource_id="p3")
    assert (archived["outcome"], json.loads(archived["metadata"])["status"]) == ("success", 303)
    memory.assert_recorded(action="read", resource_id="p3")  # the page it redirected to


def test_a_denied_dependency_records_denied_without_a_user(memory: AuditEvents) -> None:
    (response,) = asyncio.run(requests(fastapi_app(async_user, "wrapped"), ("GET", "/patients/p1", {})))
    assert response.status_code == 401
    event = memory.assert_recorded(action="read")
    assert (event["outcome"], event["user_id"], event["tenant_id"]) == ("denied", "", "t-default")


def test_set_actor_does_not_rewrite_events_recorded_before_it(memory: AuditEvents) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        sdk.record("before", "x", "1")
        sdk.set_actor(user_id="late", tenant_id="t-late", metadata={"via": "token"})
        sdk.record("after", "x", "1")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    wrapped = asgi.AuditMiddleware(app, routes=[asgi.RouteRule("GET", "/x", "read", "x")])
    asyncio.run(requests(wrapped, ("GET", "/x", {})))
    before = memory.assert_recorded(action="before")
    assert (before["user_id"], before["tenant_id"], before["metadata"]) == ("", "t-default", "")
    for action in ("after", "read"):
        event = memory.assert_recorded(action=action)
        assert (event["user_id"], event["tenant_id"]) == ("late", "t-late")
        assert json.loads(event["metadata"])["via"] == "token"


def test_set_actor_outside_a_request_sets_the_current_context(memory: AuditEvents) -> None:
    def job() -> None:
        sdk.set_actor(user_id="cron", tenant_id="acme")
        sdk.set_actor(metadata={"job": "nightly"})  # amends: the user stays
        sdk.record("purge", "cache")

    contextvars.copy_context().run(job)
    sdk.record("outside", "cache", tenant_id="acme")
    purge = memory.assert_recorded(action="purge")
    assert (purge["user_id"], json.loads(purge["metadata"])) == ("cron", {"job": "nightly"})
    assert memory.assert_recorded(action="outside")["user_id"] == ""  # the job's context only
    assert sdk.current_actor().user_id is None


def test_the_actor_cannot_be_assigned_and_says_where_to_look() -> None:
    with pytest.raises(AttributeError):
        sdk.current_actor().user_id = "x"  # type: ignore[misc]
    assert "set_actor" in (sdk.current_actor.__doc__ or "")


# --------------------------------------------------------------------------
# Starlette's AuthenticationMiddleware: scope["user"] is used when the app
# sets nothing itself.


class HeaderAuth(AuthenticationBackend):
    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, SimpleUser] | None:
        name = conn.headers.get("x-user")
        return (AuthCredentials(["authenticated"]), SimpleUser(name)) if name else None


async def note(request: Request) -> PlainTextResponse:
    sdk.record("inner", "note", request.path_params["note_id"])
    return PlainTextResponse(request.user.display_name)


@pytest.mark.parametrize("audit_outside", [True, False], ids=["audit-outside-auth", "audit-inside-auth"])
def test_the_user_of_starlettes_authentication_middleware_is_used(
    memory: AuditEvents, audit_outside: bool
) -> None:
    rules = [asgi.RouteRule("GET", "/notes/{note_id}", "read", "note")]
    auth = Middleware(AuthenticationMiddleware, backend=HeaderAuth())
    audit = Middleware(asgi.AuditMiddleware, routes=rules)
    app = Starlette(routes=[Route("/notes/{note_id}", note)],
                    middleware=[audit, auth] if audit_outside else [auth, audit])
    asyncio.run(requests(app, ("GET", "/notes/n1", {"headers": {"x-user": "ann"}}),
                         ("GET", "/notes/n2", {})))
    for event in memory.find(resource_id="n1"):
        assert event["user_id"] == "ann"
    assert len(memory.find(resource_id="n1")) == 2
    assert {e["user_id"] for e in memory.find(resource_id="n2")} == {""}  # anonymous


# --------------------------------------------------------------------------
# Rules that match no route are named at start-up.


def test_rules_matching_no_route_are_named_at_startup(caplog: pytest.LogCaptureFixture) -> None:
    typo = asgi.RouteRule("GET", "/patient/{id}", "read", "patient")
    wrong_method = asgi.RouteRule("POST", "/reports/{report_id}", "export", "report")
    good = asgi.RouteRule("GET", "/patients/{id:str}", "read", "patient")  # names and converters aside
    app = FastAPI()

    @app.get("/patients/{patient_id}")
    async def read_patient(patient_id: str) -> None: ...

    @app.get("/reports/{report_id}")
    async def report(report_id: str) -> None: ...

    app.add_middleware(asgi.AuditMiddleware, routes=[typo, wrong_method, good])
    with caplog.at_level(logging.WARNING, logger="auditlake.sdk"), TestClient(app):
        pass  # the lifespan alone: no request yet
    warned = [r.getMessage() for r in caplog.records if "matches no route" in r.getMessage()]
    assert len(warned) == 2
    assert "'/patient/{id}'" in warned[0] and "'POST'" in warned[1]


def test_rules_are_checked_at_the_first_request_when_there_is_no_lifespan(
    memory: AuditEvents, caplog: pytest.LogCaptureFixture
) -> None:
    app = Starlette(routes=[Route("/notes/{note_id}", note)])
    wrapped = asgi.AuditMiddleware(app, routes=[asgi.RouteRule("GET", "/nots/{id}", "read", "note")])
    with caplog.at_level(logging.WARNING, logger="auditlake.sdk"):
        asyncio.run(requests(wrapped, ("GET", "/notes/1", {}), ("GET", "/notes/2", {})))
    assert [r.getMessage().count("/nots/{id}") for r in caplog.records] == [1]


# --------------------------------------------------------------------------
# The Flask app: Flask-Login.


@dataclass
class Clinician(UserMixin):  # type: ignore[misc]
    id: str
    tenant_id: str


CLINICIANS = {"nurse.kim": Clinician("nurse.kim", "clinic")}


def flask_app(installed: str, *, testing: bool = False) -> tuple[Flask, Client]:
    app = Flask(__name__)
    app.secret_key = "test"  # noqa: S105 - a test session key
    app.testing = testing  # True: Flask re-raises handler exceptions
    login = LoginManager(app)
    login.user_loader(CLINICIANS.get)

    @app.post("/login/<user_id>")
    def sign_in(user_id: str) -> str:
        login_user(CLINICIANS[user_id])
        return "ok"

    @app.get("/patients/<patient_id>")
    @login_required
    def read_patient(patient_id: str) -> Response:
        sdk.record("query", "patient_table", patient_id)
        return jsonify(id=patient_id, reader=current_user.id)

    @app.patch("/patients/<patient_id>")
    @login_required
    def patch_patient(patient_id: str) -> Response:
        return jsonify(update_patient(patient_id, {"ward": "C"}))

    @app.get("/export.csv")
    @wsgi.audit_route("export", "patient")
    def export() -> Response:
        def rows() -> Iterator[str]:
            yield "id\n"
            sdk.record("row", "patient", "p1")  # while the server iterates the body
            yield "p1\n"

        return Response(rows(), mimetype="text/csv")

    @app.delete("/patients/<patient_id>")
    @wsgi.audit_route("delete", "patient")
    def delete_patient(patient_id: str) -> tuple[str, int]:
        if patient_id == "locked":
            raise RuntimeError("row locked")
        if patient_id == "missing":
            abort(404)
        return "", 204

    @app.get("/wards/")
    def wards() -> str:
        return "A,B"

    rules = [wsgi.RouteRule("GET", "/patients/{patient_id}", "read", "patient"),
             wsgi.RouteRule("GET", "/wards/", "list", "ward")]
    if installed == "wsgi_app":
        app.wsgi_app = wsgi.AuditMiddleware(app.wsgi_app, routes=rules)  # type: ignore[method-assign]
        return app, app.test_client()
    return app, Client(wsgi.AuditMiddleware(app, routes=rules))


FLASK_INSTALLED = pytest.mark.parametrize("installed", ["wsgi_app", "wrapped"])


@FLASK_INSTALLED
def test_every_event_of_a_flask_request_carries_the_flask_login_user(
    memory: AuditEvents, installed: str
) -> None:
    _, client = flask_app(installed)
    client.post("/login/nurse.kim").close()
    assert client.get("/patients/p1").json == {"id": "p1", "reader": "nurse.kim"}
    assert client.patch("/patients/p1").json == {"id": "p1", "ward": "C"}
    assert client.get("/export.csv").get_data() == b"id\np1\n"
    events = memory.events
    assert sorted(e["action"] for e in events) == ["export", "query", "read", "row", "update"]
    for event in events:
        assert (event["user_id"], event["tenant_id"]) == ("nurse.kim", "clinic"), event
    assert json.loads(memory.assert_recorded(action="read")["metadata"]) == {
        "method": "GET", "path": "/patients/p1", "status": 200, "route": "/patients/<patient_id>"}
    assert json.loads(memory.assert_recorded(action="export")["metadata"])["route"] == "/export.csv"


@FLASK_INSTALLED
def test_flask_without_a_login_is_denied_and_anonymous(memory: AuditEvents, installed: str) -> None:
    _, client = flask_app(installed)
    assert client.get("/patients/p1").status_code == 401
    event = memory.assert_recorded(action="read")
    assert (event["outcome"], event["user_id"]) == ("denied", "")


@FLASK_INSTALLED
@pytest.mark.parametrize("testing", [False, True], ids=["flask-answers-500", "flask-re-raises"])
def test_a_flask_handler_exception_is_its_type_and_the_500(
    memory: AuditEvents, installed: str, testing: bool
) -> None:
    _, client = flask_app(installed, testing=testing)
    if testing:
        with pytest.raises(RuntimeError):
            client.delete("/patients/locked")
    else:
        assert client.delete("/patients/locked").status_code == 500
    client.delete("/patients/missing").close()
    event = memory.assert_recorded(action="delete", resource_id="locked")
    assert (event["outcome"], event["reason"], json.loads(event["metadata"])["status"]) == (
        "failure", "RuntimeError", 500)
    missing = memory.assert_recorded(action="delete", resource_id="missing")
    assert (missing["outcome"], missing["reason"]) == ("failure", "HTTP 404")


@FLASK_INSTALLED
def test_a_response_never_read_nor_closed_is_still_recorded(memory: AuditEvents, installed: str) -> None:
    _, client = flask_app(installed)
    client.post("/login/nurse.kim").close()
    assert client.get("/patients/p7").status_code == 200  # the body is never read
    assert client.get("/export.csv").status_code == 200  # a stream never iterated
    gc.collect()  # CPython has freed them already; other interpreters need this
    read = memory.assert_recorded(action="read", resource_id="p7")
    assert (read["outcome"], read["user_id"]) == ("success", "nurse.kim")
    assert memory.assert_recorded(action="export")["user_id"] == "nurse.kim"


@FLASK_INSTALLED
def test_werkzeugs_slash_redirect_is_one_event(memory: AuditEvents, installed: str) -> None:
    _, client = flask_app(installed)
    response = client.get("/wards", follow_redirects=True)
    assert response.get_data() == b"A,B" and response.history[0].status_code == 308
    event = memory.assert_recorded(action="list")
    assert (event["outcome"], json.loads(event["metadata"])["route"]) == ("success", "/wards/")


def test_flask_rules_matching_no_url_rule_are_named_at_the_first_request(
    memory: AuditEvents, caplog: pytest.LogCaptureFixture
) -> None:
    app = Flask(__name__)
    app.add_url_rule("/patients/<int:patient_id>", "read", lambda patient_id: "ok")
    app.wsgi_app = wsgi.AuditMiddleware(app.wsgi_app, routes=[  # type: ignore[method-assign]
        wsgi.RouteRule("GET", "/patients/{id}", "read", "patient"),
        wsgi.RouteRule("DELETE", "/patients/{id}", "delete", "patient"),
    ])
    with caplog.at_level(logging.WARNING, logger="auditlake.sdk"):
        app.test_client().get("/patients/4").close()
        app.test_client().get("/patients/5").close()
    warned = [r.getMessage() for r in caplog.records if "matches no route" in r.getMessage()]
    assert len(warned) == 1 and "'DELETE'" in warned[0]
    assert [e["resource_id"] for e in memory.find(action="read")] == ["4", "5"]


# --------------------------------------------------------------------------
# Routes under a prefix, converters, and a rule for every route.


def test_rules_follow_include_router_prefixes_mounts_and_converters(
    memory: AuditEvents, caplog: pytest.LogCaptureFixture
) -> None:
    api = APIRouter(prefix="/api")

    @api.get("/items/{item_id:int}")
    async def item(item_id: int) -> dict[str, int]:
        return {"id": item_id}

    app = FastAPI()
    app.include_router(api, prefix="/v1")
    app.mount("/legacy", Starlette(routes=[Route("/notes/{note_id}", note)]))
    rules = [
        asgi.RouteRule("GET", "/v1/api/items/{id}", "read", "item"),
        asgi.RouteRule("GET", "/legacy/notes/{id}", "read", "note"),
    ]
    wrapped = asgi.AuditMiddleware(app, routes=rules)
    with caplog.at_level(logging.WARNING, logger="auditlake.sdk"):
        asyncio.run(requests(wrapped, ("GET", "/v1/api/items/7", {}), ("GET", "/legacy/notes/n4", {}),
                             ("GET", "/v1/api/items/x", {})))
    assert not [r for r in caplog.records if "matches no route" in r.getMessage()]
    item_event = memory.assert_recorded(action="read", resource_type="item", resource_id="7")
    assert json.loads(item_event["metadata"])["route"] == "/v1/api/items/{item_id:int}"
    note_event = memory.assert_recorded(action="read", resource_type="note")
    assert (note_event["resource_id"], json.loads(note_event["metadata"])["route"]) == (
        "n4", "/legacy/notes/{note_id}")
    # "x" is no int: no route, so the rule's raw path decides: a failed read.
    missing = memory.assert_recorded(resource_type="item", resource_id="x")
    assert (missing["outcome"], missing["reason"]) == ("failure", "HTTP 404")
    assert "route" not in json.loads(missing["metadata"])


def test_a_rule_for_every_route_takes_each_routes_parameter(memory: AuditEvents) -> None:
    app = FastAPI()

    @app.get("/patients/{patient_id}")
    async def read_patient(patient_id: str) -> None: ...

    @app.get("/wards/{ward}/beds/{bed}")
    async def bed(ward: str, bed: str) -> None: ...

    @app.get("/health")
    async def health() -> None: ...

    wrapped = asgi.AuditMiddleware(app, routes=[asgi.RouteRule("GET", "*", "read", "api")])
    asyncio.run(requests(wrapped, ("GET", "/patients/p1", {}), ("GET", "/wards/A/beds/3", {}),
                         ("GET", "/health", {}), ("GET", "/nowhere", {})))
    seen = {(json.loads(e["metadata"])["route"], e["resource_id"]) for e in memory.find(action="read")}
    # Several parameters and none give no id; an unrouted request no event.
    assert seen == {("/patients/{patient_id}", "p1"), ("/wards/{ward}/beds/{bed}", ""), ("/health", "")}


def test_route_rules_read_either_frameworks_template_syntax() -> None:
    flask_style = wsgi.RouteRule("GET", "/files/<path:name>", "read", "file")
    starlette_style = asgi.RouteRule("GET", "/files/{name:path}", "read", "file")
    for rule in (flask_style, starlette_style):
        assert rule.match("GET", "/files/a/b.txt") == "a/b.txt"
        assert rule.matches_route("/files/{p:path}", {"GET"})
    assert asgi.RouteRule("GET", "/n/{id:int}", "read", "n").match("GET", "/n/x") is None
    with pytest.raises(ValueError, match="^path: 'patients'"):
        asgi.RouteRule("GET", "patients", "read", "patient")


def test_the_sdk_imports_no_framework_it_reads() -> None:
    import subprocess
    import sys

    code = (
        "import sys, auditlake.sdk, auditlake.sdk.asgi, auditlake.sdk.wsgi\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('flask', 'flask_login', 'starlette', 'fastapi', 'werkzeug')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
