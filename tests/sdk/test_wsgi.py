"""The WSGI middleware: actor scope, events at the end of the body, proxies."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import pytest
from werkzeug.test import Client

from auditlake import sdk
from auditlake.sdk.testing import AuditEvents
from auditlake.sdk.wsgi import AuditMiddleware, RouteRule

closed: list[bool] = []


class Body:
    """A streamed body that notes whether the server closed it."""

    def __init__(self, chunks: list[bytes], fail: bool = False) -> None:
        self.chunks = chunks
        self.fail = fail

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.chunks:
            if sdk.is_configured():
                sdk.record("inner", "chunk", chunk.decode())  # runs in the request scope
            yield chunk
        if self.fail:
            raise OSError("disk gone")

    def close(self) -> None:
        closed.append(True)


def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    path = environ["PATH_INFO"]
    if path == "/boom":
        raise RuntimeError("boom")
    status = "403 Forbidden" if path.endswith("/secret") else "200 OK"
    start_response(status, [("Content-Type", "text/plain")])
    return Body([b"a", b"b"], fail=path == "/broken")


def client(**options: Any) -> Client:
    wrapped = AuditMiddleware(
        app,
        resolver=lambda environ: {"user_id": environ.get("HTTP_X_USER"), "tenant_id": "t1"},
        routes=[RouteRule("GET", "/docs/{id}", "read", "doc"), RouteRule("*", "/boom", "x", "y"),
                RouteRule("GET", "/broken", "export", "doc")],
        **options,
    )
    return Client(wrapped)


def test_streamed_response_records_after_the_body_with_the_actor(memory: AuditEvents) -> None:
    closed.clear()
    response = client().get("/docs/d1", headers={"X-User": "u1", "X-Request-ID": "rq"},
                            environ_base={"REMOTE_ADDR": "192.0.2.1"})
    assert response.get_data() == b"ab"
    response.close()
    chunk_a, chunk_b, event = memory.events
    assert (event["action"], event["resource_id"], event["outcome"]) == ("read", "d1", "success")
    assert (event["user_id"], event["tenant_id"], event["ip_address"], event["request_id"]) == (
        "u1", "t1", "192.0.2.1", "rq")
    assert chunk_a["user_id"] == chunk_b["user_id"] == "u1"
    assert closed == [True]


def test_denied_status_and_app_exception(memory: AuditEvents) -> None:
    client().get("/docs/secret").close()  # a server always closes the body
    with pytest.raises(RuntimeError):
        client().get("/boom")
    denied = memory.find(action="read")[0]
    assert (denied["outcome"], denied["reason"]) == ("denied", "HTTP 403")
    failed = memory.find(action="x")[0]
    assert (failed["outcome"], failed["reason"]) == ("failure", "RuntimeError")


def test_error_while_streaming_records_failure(memory: AuditEvents) -> None:
    with pytest.raises(OSError):
        client().get("/broken").get_data()
    event = memory.find(action="export")[0]
    assert (event["outcome"], event["reason"]) == ("failure", "OSError")


def test_forwarded_for_only_from_a_trusted_proxy(memory: AuditEvents) -> None:
    headers = {"X-Forwarded-For": "198.51.100.8, 10.2.3.4"}
    client(trusted_proxies=["10.0.0.0/8"]).get(
        "/docs/1", headers=headers, environ_base={"REMOTE_ADDR": "10.9.9.9"}).close()
    client(trusted_proxies=["10.0.0.0/8"]).get(
        "/docs/2", headers=headers, environ_base={"REMOTE_ADDR": "192.0.2.50"}).close()
    ips = {e["resource_id"]: e["ip_address"] for e in memory.find(action="read")}
    assert ips == {"1": "198.51.100.8", "2": "192.0.2.50"}


def test_unconfigured_sdk_does_not_break_requests() -> None:
    sdk.shutdown()
    response = client().get("/docs/1")
    assert response.status_code == 200 and response.get_data() == b"ab"
    response.close()
