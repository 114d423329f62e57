"""Destinations: where a stream's encoded batches go, one request per batch.

- :class:`Webhook`: ``POST`` of a JSON array (``json`` or ``ocsf``), signed:
  ``X-Auditlake-Timestamp: <unix seconds>`` and ``X-Auditlake-Signature:
  sha256=<hex>``, the HMAC-SHA256, keyed with the stream's secret, of
  ``<timestamp>.<raw body>``; a receiver recomputes it, compares in constant
  time and refuses a timestamp older than its tolerance (replay).
  ``X-Auditlake-Batch: <writer>:<first seq>-<last seq>`` names the batch (the
  same on a retry).
- :class:`SplunkHec`: ``POST /services/collector/event`` with
  ``Authorization: Splunk <token>``, events concatenated.
- :class:`Syslog`: RFC 5424 messages over TCP (optionally TLS), octet-counted.

A send either returns (the destination took the batch: a 2xx answer, or
every byte written to the TCP connection) or raises :class:`DeliveryFailed`
with a message made of the address and the answer's status only: neither
a header nor a body we sent can reach a log.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import socket
import ssl
import time
import urllib.parse
from typing import Protocol

from auditlake.collector.errors import CollectorError
from auditlake.collector.streams.settings import HEC_PATH, StreamSettings

SIGNATURE_HEADER = "X-Auditlake-Signature"
TIMESTAMP_HEADER = "X-Auditlake-Timestamp"
BATCH_HEADER = "X-Auditlake-Batch"
#: An answer body kept for the error message at most (Splunk explains a refusal there).
_ANSWER_BYTES = 200


class DeliveryFailed(CollectorError):
    """The destination did not take a batch (it will be sent again)."""


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The ``X-Auditlake-Signature`` value of ``body`` sent at ``timestamp``."""
    return "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


class Destination(Protocol):
    """Something a stream sends batches to."""

    def send(self, body: bytes, batch_id: str) -> None:
        """Deliver one batch, or raise DeliveryFailed."""

    def close(self) -> None:
        """Drop the connection."""


def _tls_context(settings: StreamSettings) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=settings.ca_file or None)


class _HttpDestination:
    """One kept-alive HTTP(S) connection to a URL, re-opened after a failure."""

    content_type = "application/json"

    def __init__(self, settings: StreamSettings) -> None:
        self.settings = settings
        url = urllib.parse.urlsplit(settings.endpoint)
        self._https = url.scheme == "https"
        self._host = url.hostname or ""
        self._port = url.port or (443 if self._https else 80)
        self._path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        self._conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self._https:
                self._conn = http.client.HTTPSConnection(self._host, self._port, timeout=self.settings.timeout_s,
                                                         context=_tls_context(self.settings))
            else:
                self._conn = http.client.HTTPConnection(self._host, self._port, timeout=self.settings.timeout_s)
        return self._conn

    def headers(self, body: bytes, batch_id: str) -> dict[str, str]:
        """The request's headers (with its credential)."""
        return {"Content-Type": self.content_type, BATCH_HEADER: batch_id}

    def send(self, body: bytes, batch_id: str) -> None:
        """POST ``body``; a 2xx answer is the acknowledgement."""
        try:
            conn = self._connection()
            conn.request("POST", self._path, body=body, headers=self.headers(body, batch_id))
            answer = conn.getresponse()
            text = answer.read(_ANSWER_BYTES)
            answer.read()  # the rest, so the connection can be reused
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise DeliveryFailed(f"{self.settings.endpoint}: {type(exc).__name__}: {exc}") from None
        if not 200 <= answer.status < 300:
            if answer.will_close:
                self.close()
            shown = text.decode("utf-8", "replace").replace("\n", " ")
            raise DeliveryFailed(f"{self.settings.endpoint} answered {answer.status} {answer.reason}: {shown}")

    def close(self) -> None:
        """Drop the connection (the next send opens one)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class Webhook(_HttpDestination):
    """A generic HTTPS endpoint taking signed JSON arrays."""

    def headers(self, body: bytes, batch_id: str) -> dict[str, str]:
        """Content type, batch id, timestamp and the HMAC over both."""
        stamp = str(int(time.time()))
        return {**super().headers(body, batch_id), TIMESTAMP_HEADER: stamp,
                SIGNATURE_HEADER: sign(self.settings.secret.reveal().encode(), stamp, body)}


class SplunkHec(_HttpDestination):
    """Splunk's HTTP Event Collector."""

    def headers(self, body: bytes, batch_id: str) -> dict[str, str]:
        """The HEC token header."""
        return {**super().headers(body, batch_id), "Authorization": f"Splunk {self.settings.secret.reveal()}"}


class Syslog:
    """An RFC 5424 receiver over TCP (RFC 6587 octet counting), TLS optional."""

    def __init__(self, settings: StreamSettings) -> None:
        self.settings = settings
        host, _, port = settings.host.rpartition(":")
        self._address = (host.strip("[]"), int(port))
        self._sock: socket.socket | None = None

    def send(self, body: bytes, batch_id: str) -> None:
        """Write every byte of ``body`` (the frames) to the connection."""
        try:
            if self._sock is not None and _peer_closed(self._sock):
                self.close()  # the receiver restarted: bytes written now would be lost
            if self._sock is None:
                sock = socket.create_connection(self._address, timeout=self.settings.timeout_s)
                if self.settings.tls:
                    sock = _tls_context(self.settings).wrap_socket(sock, server_hostname=self._address[0])
                self._sock = sock
            self._sock.sendall(body)
        except OSError as exc:
            self.close()
            raise DeliveryFailed(f"{self.settings.endpoint}: {type(exc).__name__}: {exc}") from None

    def close(self) -> None:
        """Close the connection."""
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None


def _peer_closed(sock: socket.socket) -> bool:
    """True when the other end closed the connection (readable, and at end of stream)."""
    import select  # noqa: PLC0415 - only syslog needs it

    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    if isinstance(sock, ssl.SSLSocket):
        return True  # a syslog receiver sends nothing: readable means closing (TLS cannot peek)
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


def destination(settings: StreamSettings) -> Destination:
    """The destination a stream's settings describe."""
    if settings.type == "webhook":
        return Webhook(settings)
    if settings.type == "splunk":
        return SplunkHec(settings)
    return Syslog(settings)


__all__ = ["HEC_PATH", "DeliveryFailed", "Destination", "SplunkHec", "Syslog", "Webhook", "destination", "sign"]
