"""The admin server's listening socket: bound by the collector itself (so
"cannot listen" is its error, at once, and the port is never free for anyone
else to take while the admin process starts or restarts) and handed to the
admin process as an inherited file descriptor."""

from __future__ import annotations

import socket

from auditlake.collector.errors import ConfigError


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
