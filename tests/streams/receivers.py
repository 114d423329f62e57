"""Real destinations for stream tests, on 127.0.0.1: an HTTP receiver
(webhook or Splunk HEC) that can fail, stall and answer 5xx on purpose and
checks every request's credential, and an RFC 5424 syslog listener over TCP
with octet-counted framing."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import socket
import socketserver
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

#: How far a webhook timestamp may be from the receiver's clock (replay window).
TOLERANCE_S = 300


def concatenated_json(body: bytes) -> list[dict[str, Any]]:
    """Objects written back to back (Splunk HEC's batch form)."""
    decoder = json.JSONDecoder()
    text, at, out = body.decode(), 0, []
    while True:
        while at < len(text) and text[at] in " \r\n\t":
            at += 1
        if at >= len(text):
            return out
        obj, at = decoder.raw_decode(text, at)
        out.append(obj)


@dataclass
class HttpReceiver:
    """A webhook (``mode="webhook"``, HMAC-checked) or Splunk HEC
    (``mode="splunk"``, token-checked) endpoint."""

    secret: str
    mode: str = "webhook"
    #: Events of each accepted request, in arrival order.
    batches: list[list[dict[str, Any]]] = field(default_factory=list)
    #: Requests refused because the signature or token was wrong.
    forged: int = 0
    #: Requests answered with an error on purpose.
    failed: int = 0
    #: While set, every request answers ``down_status``.
    down: bool = False
    down_status: int = 503
    #: The next N requests fail (5xx), then the next M drop the connection unanswered.
    fail_next: int = 0
    drop_next: int = 0
    #: Seconds each request waits before it is answered.
    delay_s: float = 0.0
    #: Serve HTTPS with this context.
    tls: ssl.SSLContext | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> HttpReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
                return

            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver.lock:
                    if receiver.delay_s:
                        time.sleep(receiver.delay_s)
                    if receiver.drop_next:
                        receiver.drop_next -= 1
                        receiver.failed += 1
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    if receiver.down or receiver.fail_next:
                        receiver.fail_next = max(0, receiver.fail_next - 1)
                        receiver.failed += 1
                        self._answer(receiver.down_status, b'{"text":"unavailable"}')
                        return
                    if not receiver.authentic(self.headers, body):
                        receiver.forged += 1
                        self._answer(401, b'{"text":"bad credential"}')
                        return
                    events = json.loads(body) if receiver.mode == "webhook" else concatenated_json(body)
                    receiver.batches.append(events)
                self._answer(200, b'{"text":"Success","code":0}')

            def _answer(self, status: int, payload: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if self.tls is not None:
            self.server.socket = self.tls.wrap_socket(self.server.socket, server_side=True)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    @property
    def url(self) -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}" + ("/hook" if self.mode == "webhook" else "")

    def authentic(self, headers: Any, body: bytes) -> bool:
        """The receiver's check, as docs/streams.md tells receivers to do it."""
        if self.mode == "splunk":
            return bool(headers.get("Authorization") == f"Splunk {self.secret}")
        stamp = headers.get("X-Auditlake-Timestamp", "")
        given = headers.get("X-Auditlake-Signature", "")
        if not stamp.isdigit() or abs(time.time() - int(stamp)) > TOLERANCE_S:
            return False
        expected = "sha256=" + hmac.new(self.secret.encode(), stamp.encode() + b"." + body,
                                        hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, given)

    def events(self) -> list[dict[str, Any]]:
        """Every event received, in arrival order (repeats included)."""
        with self.lock:
            return [e for b in self.batches for e in b]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


_RFC5424 = re.compile(
    r"<(?P<pri>\d{1,3})>1 (?P<ts>\S+) (?P<host>\S+) (?P<app>\S+) (?P<proc>\S+) (?P<msgid>\S+) "
    r"(?P<sd>\[(?:[^\]\\]|\\.)*\]) \ufeff(?P<msg>.*)\Z", re.S)
_SD_PARAM = re.compile(r'(\w+)="((?:[^"\\\]]|\\.)*)"')


@dataclass
class SyslogListener:
    """A TCP syslog receiver parsing octet-counted RFC 5424 frames."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    bad: list[bytes] = field(default_factory=list)
    #: Accept TLS (RFC 5425 transport) with this context.
    tls: ssl.SSLContext | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> SyslogListener:
        listener = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                buf = b""
                while True:
                    chunk = self.request.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                    while True:
                        space = buf.find(b" ")
                        if space <= 0:
                            break
                        length = int(buf[:space])
                        if len(buf) < space + 1 + length:
                            break
                        listener.take(buf[space + 1:space + 1 + length])
                        buf = buf[space + 1 + length:]

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if self.tls is not None:
            self.server.socket = self.tls.wrap_socket(self.server.socket, server_side=True)
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def take(self, frame: bytes) -> None:
        m = _RFC5424.match(frame.decode("utf-8"))
        with self.lock:
            if m is None:
                self.bad.append(frame)
                return
            sd = {k: re.sub(r"\\(.)", r"\1", v) for k, v in _SD_PARAM.findall(m["sd"])}
            self.messages.append({"pri": int(m["pri"]), "msgid": m["msgid"], "host": m["host"],
                                  "sd_id": m["sd"][1:].split(" ", 1)[0], "sd": sd, "event": json.loads(m["msg"])})

    def events(self) -> list[dict[str, Any]]:
        with self.lock:
            return [m["event"] for m in self.messages]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def self_signed(directory: Path, name: str = "receiver") -> tuple[Path, ssl.SSLContext]:
    """A certificate for 127.0.0.1 made now (its own CA: the file a client
    trusts) and a server context holding it and its key."""
    import datetime as dt  # noqa: PLC0415 - only the TLS tests need these
    import ipaddress  # noqa: PLC0415

    from cryptography import x509  # noqa: PLC0415
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
    from cryptography.x509.oid import NameOID  # noqa: PLC0415

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    return cert_path, context
