"""The admin server's listening socket: bound by the collector itself (so
"cannot listen" is its error, at once, and the port is never free for anyone
else to take while the admin process starts or restarts) and handed to the
admin process as an inherited file descriptor.  With ``tls_cert`` and
``tls_key`` set, the admin process serves HTTPS on it (``HttpsContext``)."""

from __future__ import annotations

import logging
import socket
import ssl
import threading

from auditlake.collector.config import ServerTls
from auditlake.collector.errors import ConfigError

log = logging.getLogger(__name__)


def bind_listener(listen: str) -> socket.socket:
    """A listening TCP socket on ``HOST:PORT`` (port 0: any free port)."""
    host, _, port_s = listen.rpartition(":")
    if not host or not port_s.isdigit():
        raise ConfigError(f"http_listen must be HOST:PORT, got {listen!r}")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say so;
    # without it every keep-alive response waits out the 40 ms delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, int(port_s)))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen for HTTP on {listen}: {exc}") from exc
    sock.listen(128)
    return sock


def address_of(sock: socket.socket) -> str:
    """``host:port`` (``[host]:port`` for IPv6) a listening socket is bound to."""
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if sock.family == socket.AF_INET6 else f"{host}:{port}"


class HttpsContext:
    """The TLS context of the admin listener, from ``[collector]``'s
    certificate files: TLS 1.2 or newer, no client certificate asked (the
    admin UI has its own logins).  ``start_watching`` re-reads the files when
    they change, so new connections get a renewed certificate without a
    restart; files that cannot be used yet keep the previous one."""

    def __init__(self, tls: ServerTls) -> None:
        tls.read()  # a clear ConfigError naming the file, before the ssl module's own
        self.tls = tls
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.context.load_cert_chain(tls.cert, tls.key, password=lambda: b"")
        self._stamp = tls.stamp()
        self._stop = threading.Event()

    def refresh(self) -> bool:
        """Load the files again if they changed; True when it did."""
        stamp = self.tls.stamp()
        if stamp == self._stamp:
            return False
        try:
            self.tls.read()
            self.context.load_cert_chain(self.tls.cert, self.tls.key, password=lambda: b"")
        except (ConfigError, ssl.SSLError, OSError) as exc:
            log.warning("TLS certificate files changed but cannot be used yet (%s); "
                        "the admin listener still serves the previous certificate", exc)
            return False
        self._stamp = stamp
        log.info("TLS certificate files changed: the admin listener serves the renewed certificate")
        return True

    def start_watching(self, interval_s: float = 10.0) -> None:
        """Check the files every ``interval_s`` in a background thread until stop()."""
        def watch() -> None:
            while not self._stop.wait(interval_s):
                self.refresh()

        threading.Thread(target=watch, name="auditlake-https-reload", daemon=True).start()

    def stop(self) -> None:
        """Stop watching the files."""
        self._stop.set()
