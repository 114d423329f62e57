"""TLS on the ingest port: gRPC server credentials from the certificate
files named in ``[collector]`` (config.ServerTls), re-read when they change.

gRPC asks for the certificate before each new connection's handshake
(``grpc.dynamic_ssl_server_credentials``); a stat of the files tells whether
they were replaced (a renewal by certbot, cert-manager or an operator's
``mv``), so a renewed certificate is served without a restart while open
connections keep theirs.  Files that cannot be read at a renewal (half
written, a key that does not match yet) leave the previous certificate in
use and are tried again at the next connection.
"""

from __future__ import annotations

import logging
import threading

import grpc

from auditlake.collector.config import ServerTls
from auditlake.collector.errors import ConfigError

log = logging.getLogger(__name__)


def _certificate_configuration(tls: ServerTls) -> object:
    cert, key, client_ca = tls.read()
    return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=client_ca)


def server_credentials(tls: ServerTls) -> grpc.ServerCredentials:
    """Credentials for ``add_secure_port``: the certificate and key of
    ``tls``; with ``tls.client_ca``, clients must present a certificate that
    one of its CAs signed (mutual TLS).  ConfigError when a file cannot be
    read now."""
    initial = _certificate_configuration(tls)
    served = [tls.stamp()]
    lock = threading.Lock()

    def renewed() -> object | None:
        stamp = tls.stamp()
        with lock:
            if stamp == served[0]:
                return None
            try:
                configuration = _certificate_configuration(tls)
            except ConfigError as exc:
                log.warning("TLS certificate files changed but cannot be used yet (%s); "
                            "still serving the previous certificate", exc)
                return None
            served[0] = stamp
        log.info("TLS certificate files changed: new connections get the renewed certificate")
        return configuration

    return grpc.dynamic_ssl_server_credentials(
        initial, renewed, require_client_authentication=tls.client_ca is not None
    )
