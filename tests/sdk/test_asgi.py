"""The pure ASGI middleware: actor scope, route events at the real end, proxies."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route

from auditlake import sdk
from auditlake.sdk.asgi import AuditMiddleware, RouteRule
from auditlake.sdk.testing import AuditEvents

stream_finished: list[bool] = []


async def patient(request: Request) -> JSONResponse:
    sdk.record("inner", "probe", request.path_params["id"])  # sees the request's actor
    status = 403 if request.path_params["id"] == "secret" else 200
    return JSONResponse({"id": request.path_params["id"]}, status_code=status)


async def export(request: Request) -> StreamingResponse:
    async def body() -> AsyncIterator[bytes]:
        for i in range(3):
            await asyncio.sleep(0.01)
            yield f"row {i}\n".encode()
        stream_finished.append(True)

    return StreamingResponse(body())


async def crash(request: Request) -> PlainTextResponse:
    raise RuntimeError("boom")


def resolver(scope: dict[str, Any]) -> dict[str, str] | None:
    headers = dict(scope["headers"])
    user = headers.get(b"x-user")
    return {"user_id": user.decode(), "tenant_id": "t1"} if user else None


def make_app(**options: Any) -> AuditMiddleware:
    app = Starlette(routes=[
        Route("/patients/{id}", patient),
        Route("/export", export),
        Route("/crash", crash),
    ])
    return AuditMiddleware(
        app,
        resolver=resolver,
        routes=[
            RouteRule("GET", "/patients/{id}", "read", "patient"),
            RouteRule("GET", "/export", "export", "report"),
            RouteRule("*", "/crash", "delete", "thing"),
        ],
        **options,
    )


async def call(app: Any, path: str, headers: dict[str, str] | None = None,
               client: tuple[str, int] = ("203.0.113.9", 5000)) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False, client=client)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        return await http.get(path, headers=headers)


def test_matching_route_records_one_event_with_the_request_actor(memory: AuditEvents) -> None:
    response = asyncio.run(call(make_app(), "/patients/42",
                                {"x-user": "doctor", "user-agent": "ua/2", "x-request-id": "r-1"}))
    assert response.status_code == 200
    inner, event = memory.events
    assert (event["action"], event["resource_type"], event["resource_id"]) == ("read", "patient", "42")
    assert (event["user_id"], event["tenant_id"], event["outcome"]) == ("doctor", "t1", "success")
    assert (event["ip_address"], event["user_agent"], event["request_id"]) == (
        "203.0.113.9", "ua/2", "r-1")
    assert json.loads(event["metadata"]) == {
        "method": "GET", "path": "/patients/42", "status": 200, "route": "/patients/{id}"}
    assert (inner["user_id"], inner["request_id"]) == ("doctor", "r-1")


def test_status_401_403_is_denied_and_request_id_is_generated(memory: AuditEvents) -> None:
    asyncio.run(call(make_app(), "/patients/secret"))
    asyncio.run(call(make_app(), "/patients/other"))
    event = memory.find(action="read")[0]
    assert (event["outcome"], event["reason"]) == ("denied", "HTTP 403")
    assert len(event["request_id"]) == 24 and int(event["request_id"], 16)
    # One request, one id: the endpoint's own event and the route event agree,
    # and the next request gets another.
    inner = memory.find(action="inner")
    assert inner[0]["request_id"] == event["request_id"]
    assert inner[1]["request_id"] == memory.find(action="read")[1]["request_id"] != event["request_id"]


def test_streaming_response_is_recorded_after_the_last_chunk(memory: AuditEvents) -> None:
    stream_finished.clear()
    response = asyncio.run(call(make_app(), "/export"))
    assert response.text == "row 0\nrow 1\nrow 2\n"
    (event,) = memory.events
    assert event["action"] == "export" and event["outcome"] == "success"
    assert stream_finished == [True]


def test_exception_records_failure_and_propagates(memory: AuditEvents) -> None:
    # Starlette answers 500 itself, then re-raises: the exception is the
    # reason, the 500 the client got the status.
    response = asyncio.run(call(make_app(), "/crash"))
    assert response.status_code == 500
    (event,) = memory.events
    assert (event["action"], event["outcome"], event["reason"]) == ("delete", "failure", "RuntimeError")
    assert json.loads(event["metadata"])["status"] == 500

    async def bare(scope: Any, receive: Any, send: Any) -> None:
        raise KeyError("no response at all")

    app = AuditMiddleware(bare, routes=[RouteRule("*", "/crash", "delete", "thing")])
    with pytest.raises(KeyError):
        asyncio.run(app({"type": "http", "method": "GET", "path": "/crash", "headers": []},
                        None, None))  # type: ignore[arg-type]
    assert memory.events[-1]["reason"] == "KeyError"
    # Nothing was sent: whatever is outside (the server) answers 500.
    assert json.loads(memory.events[-1]["metadata"])["status"] == 500


def test_unmatched_routes_record_nothing_but_still_set_the_actor(memory: AuditEvents) -> None:
    asyncio.run(call(make_app(), "/patients/1/notes"))
    assert memory.events == []


@pytest.mark.parametrize(
    ("peer", "headers", "expected"),
    [
        # An untrusted peer cannot claim another address.
        ("203.0.113.9", {"x-forwarded-for": "1.2.3.4"}, "203.0.113.9"),
        # A trusted proxy: the first untrusted hop from the right is the client.
        ("10.0.0.5", {"x-forwarded-for": "1.2.3.4, 198.51.100.7, 10.0.0.9"}, "198.51.100.7"),
        ("10.0.0.5", {"forwarded": 'for=192.0.2.60;proto=http, for="[2001:db8::1]:4711"'},
         "2001:db8::1"),
        ("10.0.0.5", {"forwarded": "for=192.0.2.60:8080"}, "192.0.2.60"),
        ("10.0.0.5", {}, "10.0.0.5"),
        ("10.0.0.5", {"x-forwarded-for": "10.0.0.7"}, "10.0.0.7"),
        ("10.0.0.5", {"x-forwarded-for": "garbage"}, "10.0.0.5"),
    ],
)
def test_forwarded_headers_are_believed_only_from_trusted_proxies(
    memory: AuditEvents, peer: str, headers: dict[str, str], expected: str
) -> None:
    asyncio.run(call(make_app(trusted_proxies=["10.0.0.0/8"]), "/patients/7", headers,
                     client=(peer, 1234)))
    assert memory.find(action="read")[0]["ip_address"] == expected


def test_non_http_scopes_pass_through_untouched(memory: AuditEvents) -> None:
    seen: list[str] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    app = AuditMiddleware(inner, routes=[RouteRule("*", "/{x}", "read", "x")])
    asyncio.run(app({"type": "lifespan"}, None, None))  # type: ignore[arg-type]
    asyncio.run(app({"type": "websocket", "path": "/a", "headers": []}, None, None))  # type: ignore[arg-type]
    assert seen == ["lifespan", "websocket"]
    assert memory.events == []


def test_concurrent_requests_keep_their_own_actor(memory: AuditEvents) -> None:
    app = make_app()

    async def main() -> None:
        await asyncio.gather(*(call(app, f"/patients/p{n}", {"x-user": f"user{n}"})
                               for n in range(30)))

    asyncio.run(main())
    for event in memory.find(action="read"):
        assert event["user_id"] == "user" + event["resource_id"][1:]
    assert len(memory.find(action="read")) == 30


def test_route_rules_validate_their_placeholder() -> None:
    with pytest.raises(ValueError, match="resource_id"):
        RouteRule("GET", "/a/{id}", "read", "a", resource_id="nope")
    rule = RouteRule("get", "/orgs/{org}/users/{user}", "read", "user", resource_id="user")
    assert rule.match("GET", "/orgs/o1/users/u2") == "u2"
    assert rule.match("POST", "/orgs/o1/users/u2") is None


def test_async_resolver_is_awaited(memory: AuditEvents) -> None:
    async def resolver(scope: Any) -> dict[str, str]:
        await asyncio.sleep(0)
        return {"user_id": "async-user", "tenant_id": "t2"}

    inner = Starlette(routes=[Route("/patients/{id}", patient)])
    app = AuditMiddleware(inner, resolver=resolver,
                          routes=[RouteRule("GET", "/patients/{id}", "read", "patient")])
    asyncio.run(call(app, "/patients/5"))
    event = memory.find(action="read")[0]
    assert (event["user_id"], event["tenant_id"]) == ("async-user", "t2")


def test_a_failing_resolver_does_not_fail_the_request(memory: AuditEvents) -> None:
    def broken(scope: Any) -> None:
        raise ValueError("bad token")

    inner = Starlette(routes=[Route("/patients/{id}", patient)])
    app = AuditMiddleware(inner, resolver=broken,
                          routes=[RouteRule("GET", "/patients/{id}", "read", "patient")])
    assert asyncio.run(call(app, "/patients/5")).status_code == 200
    assert memory.find(action="read")[0]["user_id"] == ""


def test_a_response_that_ends_without_a_final_body_message_uses_its_status(
    memory: AuditEvents,
) -> None:
    async def pathsend(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.pathsend", "path": "/tmp/x"})

    async def silent(scope: Any, receive: Any, send: Any) -> None:
        return None

    async def ignore(message: Any) -> None:
        return None

    rules = [RouteRule("*", "/f", "export", "file")]
    scope = {"type": "http", "method": "GET", "path": "/f", "headers": []}
    asyncio.run(AuditMiddleware(pathsend, routes=rules)(dict(scope), None, ignore))  # type: ignore[arg-type]
    asyncio.run(AuditMiddleware(silent, routes=rules)(dict(scope), None, ignore))  # type: ignore[arg-type]
    first, second = memory.find(action="export")
    assert (first["outcome"], second["outcome"], second["reason"]) == (
        "success", "failure", "no response")


@pytest.mark.parametrize("proxies", ["10.0.0.0/8", "10.0.0.0/8, 192.0.2.1", ["10.0.0.0/8"]])
def test_trusted_proxies_may_be_one_string_a_comma_list_or_a_list(memory: AuditEvents, proxies: Any) -> None:
    asyncio.run(call(make_app(trusted_proxies=proxies), "/patients/7", {"x-forwarded-for": "203.0.113.9"},
                     client=("10.1.2.3", 1234)))
    assert memory.find(action="read")[0]["ip_address"] == "203.0.113.9"


def test_no_trusted_proxies_and_bad_ones() -> None:
    from auditlake.sdk._http import TrustedProxies

    assert not TrustedProxies(None) and not TrustedProxies("")
    with pytest.raises(ValueError, match="^trusted_proxies: '10.0.0.300' is not an address or network"):
        TrustedProxies("10.0.0.300")
    with pytest.raises(ValueError, match="^trusted_proxies: 8 is not an address or network"):
        TrustedProxies([8])  # type: ignore[list-item]
