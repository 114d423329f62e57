"""TLS on the ingest port and HTTPS on the admin listener, with certificates
the tests make (a CA, a server certificate for 127.0.0.1, client
certificates), never keys checked in: the SDK delivers over TLS with the
CA file it is given, a client that does not trust the CA hears why, a
collector that requires client certificates refuses a client without one,
and the admin UI answers over HTTPS."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from auditlake import sdk
from auditlake.collector.admin.listener import HttpsContext
from auditlake.collector.config import CollectorConfig, ServerTls
from auditlake.collector.errors import ConfigError
from auditlake.sdk._exporter import ClientTls, ExportStatus, GrpcExporter
from auditlake.v1 import audit_pb2
from tests.conftest import CollectorProcess, run_cli

# -- a small PKI, made per test module ------------------------------------------------


@dataclass(frozen=True)
class Issued:
    """A certificate and its key, as PEM files."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    """Two CAs and what they signed."""

    ca: Path  # the CA that signed server and client
    server: Issued  # CN collector, SAN IP 127.0.0.1 and DNS localhost
    client: Issued  # a client certificate from the same CA
    other_ca: Path  # an unrelated CA
    other_server: Issued  # a server certificate from the unrelated CA
    other_client: Issued  # a client certificate from the unrelated CA


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Issued:
    cert_path, key_path = path.with_suffix(".pem"), path.with_name(path.name + "-key.pem")
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return Issued(cert_path, key_path)


def _ca(directory: Path, cn: str) -> tuple[Issued, x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return _write(directory / cn, cert, key), cert, key


def _leaf(directory: Path, cn: str, ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey,
          *, server: bool) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca_cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                                     else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]), critical=False)
    return _write(directory / cn, builder.sign(ca_key, hashes.SHA256()), key)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca, ca_cert, ca_key = _ca(d, "test-ca")
    other, other_cert, other_key = _ca(d, "other-ca")
    return Pki(
        ca=ca.cert,
        server=_leaf(d, "collector", ca_cert, ca_key, server=True),
        client=_leaf(d, "app", ca_cert, ca_key, server=False),
        other_ca=other.cert,
        other_server=_leaf(d, "collector-renewed", other_cert, other_key, server=True),
        other_client=_leaf(d, "intruder", other_cert, other_key, server=False),
    )


def _tls_args(issued: Issued, client_ca: Path | None = None) -> tuple[str, ...]:
    args = ("--tls-cert", str(issued.cert), "--tls-key", str(issued.key))
    return (*args, "--tls-client-ca", str(client_ca)) if client_ca else args


@pytest.fixture
def sdk_shutdown() -> Iterator[None]:
    """The SDK is a process-wide provider: shut it down whatever the test did."""
    yield
    sdk.shutdown(timeout=5)


def _export_nothing(exporter: GrpcExporter) -> tuple[ExportStatus, str]:
    """Send an empty batch: enough to see whether the channel came up."""
    result = exporter.export(audit_pb2.ExportRequest(batch_id="tls-probe"), timeout=5)
    exporter.close()
    return result.status, result.message


def _health(endpoint: str, credentials: grpc.ChannelCredentials) -> int:
    with grpc.secure_channel(endpoint, credentials) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return int(stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status)


# -- the SDK to a TLS collector --------------------------------------------------------


def test_the_sdk_delivers_over_tls_with_the_collectors_ca(
    collector_factory: Callable[..., CollectorProcess], pki: Pki, tmp_path: Path, sdk_shutdown: None
) -> None:
    c = collector_factory(extra_args=_tls_args(pki.server))
    sdk.configure(endpoint=c.endpoint, api_key=c.api_key("acme"), service_name="tls-test", tenant_id="acme",
                  tls_ca_file=pki.ca, spool_dir=tmp_path / "spool", retry_max_attempts=2)
    for i in range(25):
        sdk.record("update", "invoice", f"inv-{i}", user_id="u-1")
    assert sdk.flush(timeout=30), "every event acknowledged over TLS"
    sdk.shutdown()
    assert c.wait_for_count(25, "service = 'tls-test'") == 25


def test_a_client_that_does_not_trust_the_collectors_ca_is_told_why(
    collector_factory: Callable[..., CollectorProcess], pki: Pki
) -> None:
    c = collector_factory(extra_args=_tls_args(pki.server))
    key = c.api_key("acme")
    for exporter in (GrpcExporter(c.endpoint, key, tls=True),  # the system roots
                     GrpcExporter(c.endpoint, key, tls_files=ClientTls.from_files(str(pki.other_ca)))):
        status, message = _export_nothing(exporter)
        assert status is ExportStatus.RETRY, message
        assert "UNAVAILABLE" in message and "tls_ca_file" in message, message
    # ... and with the right CA the same call goes through: an empty batch is simply stored empty.
    status, message = _export_nothing(GrpcExporter(c.endpoint, key, tls_files=ClientTls.from_files(str(pki.ca))))
    assert status is ExportStatus.OK, message


def test_a_missing_ca_file_is_an_error_of_configure(tmp_path: Path, sdk_shutdown: None) -> None:
    with pytest.raises(sdk.ConfigurationError, match="tls_ca_file: cannot read"):
        sdk.configure(endpoint="127.0.0.1:1", tls_ca_file=tmp_path / "nope.pem", spool_enabled=False)
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("hello\n")
    with pytest.raises(sdk.ConfigurationError, match="holds no PEM certificate"):
        sdk.configure(endpoint="127.0.0.1:1", tls_ca_file=not_pem, spool_enabled=False)
    with pytest.raises(sdk.ConfigurationError, match="tls_cert_file and tls_key_file"):
        sdk.configure(endpoint="127.0.0.1:1", tls_cert_file=not_pem, spool_enabled=False)


# -- mutual TLS -------------------------------------------------------------------------


def test_mutual_tls_refuses_clients_without_a_certificate_from_its_ca(
    collector_factory: Callable[..., CollectorProcess], pki: Pki, tmp_path: Path, sdk_shutdown: None
) -> None:
    c = collector_factory(extra_args=_tls_args(pki.server, client_ca=pki.ca))
    key = c.api_key("acme")
    refused = [
        ClientTls.from_files(str(pki.ca)),  # no client certificate
        ClientTls.from_files(str(pki.ca), str(pki.other_client.cert), str(pki.other_client.key)),  # another CA's
    ]
    for files in refused:
        status, message = _export_nothing(GrpcExporter(c.endpoint, key, tls_files=files))
        assert status is ExportStatus.RETRY and "UNAVAILABLE" in message, message
        assert "tls_cert_file" in message, message  # what to check, whichever way the handshake failed
    sdk.configure(endpoint=c.endpoint, api_key=key, service_name="mtls-test", tenant_id="acme",
                  tls_ca_file=pki.ca, tls_cert_file=pki.client.cert, tls_key_file=pki.client.key,
                  spool_dir=tmp_path / "spool")
    for i in range(10):
        sdk.record("read", "invoice", f"inv-{i}", user_id="u-1")
    assert sdk.flush(timeout=30)
    assert c.wait_for_count(10, "service = 'mtls-test'") == 10


# -- the admin listener ------------------------------------------------------------------


def test_the_admin_ui_and_api_answer_over_https(
    collector_factory: Callable[..., CollectorProcess], pki: Pki
) -> None:
    c = collector_factory(http=True, extra_args=_tls_args(pki.server, client_ca=pki.ca))
    trusted = ssl.create_default_context(cafile=str(pki.ca))
    base = f"https://127.0.0.1:{c.http_port}"
    with httpx.Client(verify=trusted, timeout=10) as client:
        login = client.get(f"{base}/login")
        assert login.status_code == 200 and "<form" in login.text
        assert client.get(f"{base}/api/v1/events").status_code == 401  # the API is there, behind its tokens
        # No client certificate asked: mutual TLS is for ingest; the UI has logins.
        assert client.get(f"{base}/healthz").status_code == 200
    with httpx.Client(timeout=10) as untrusting, pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        untrusting.get(f"{base}/login")
    with httpx.Client(timeout=10) as plain, pytest.raises(httpx.HTTPError):
        plain.get(f"http://127.0.0.1:{c.http_port}/login")


# -- certificates on disk ----------------------------------------------------------------


def test_a_renewed_certificate_is_served_to_new_connections_without_a_restart(
    collector_factory: Callable[..., CollectorProcess], pki: Pki, tmp_path: Path
) -> None:
    served = Issued(tmp_path / "served.pem", tmp_path / "served-key.pem")
    served.cert.write_bytes(pki.server.cert.read_bytes())
    served.key.write_bytes(pki.server.key.read_bytes())
    c = collector_factory(extra_args=_tls_args(served))
    old_ca = grpc.ssl_channel_credentials(pki.ca.read_bytes())
    new_ca = grpc.ssl_channel_credentials(pki.other_ca.read_bytes())
    assert _health(c.endpoint, old_ca) == health_pb2.HealthCheckResponse.SERVING
    # A renewal as certbot or cert-manager does it: each file replaced whole.
    for source, target in ((pki.other_server.key, served.key), (pki.other_server.cert, served.cert)):
        tmp = target.with_suffix(".new")
        tmp.write_bytes(source.read_bytes())
        os.replace(tmp, target)
    assert _health(c.endpoint, new_ca) == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as refused:
        _health(c.endpoint, old_ca)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_the_admin_listener_takes_a_renewed_certificate_only_once_it_is_usable(pki: Pki, tmp_path: Path) -> None:
    served = Issued(tmp_path / "served.pem", tmp_path / "served-key.pem")
    served.cert.write_bytes(pki.server.cert.read_bytes())
    served.key.write_bytes(pki.server.key.read_bytes())
    https = HttpsContext(ServerTls(served.cert, served.key))
    assert not https.refresh()  # nothing changed
    # Half a renewal: the new certificate beside the old key is not taken...
    served.cert.write_bytes(pki.other_server.cert.read_bytes())
    assert not https.refresh()
    # ... the whole renewal is.
    served.key.write_bytes(pki.other_server.key.read_bytes())
    assert https.refresh()
    assert not https.refresh()


def test_serve_refuses_certificate_files_it_cannot_use(pki: Pki, tmp_path: Path) -> None:
    cases = {
        "cannot read": ("--tls-cert", str(tmp_path / "missing.pem"), "--tls-key", str(pki.server.key)),
        "cannot be used together": ("--tls-cert", str(pki.server.cert), "--tls-key", str(pki.client.key)),
        "go together": ("--tls-cert", str(pki.server.cert)),
        "holds no PEM certificate": ("--tls-cert", str(pki.server.key), "--tls-key", str(pki.server.key)),
    }
    for i, (message, args) in enumerate(cases.items()):
        proc = run_cli("serve", "--data", str(tmp_path / f"data{i}"), "--grpc-listen", "127.0.0.1:0",
                       "--http-listen", "", *args, check=False, timeout=60)
        assert proc.returncode == 2, (message, proc.stdout, proc.stderr)
        assert message in proc.stderr, (message, proc.stderr)


def test_tls_settings_are_checked_together() -> None:
    with pytest.raises(ConfigError, match="go together"):
        CollectorConfig(tls_key="key.pem")
    with pytest.raises(ConfigError, match="needs tls_cert"):
        CollectorConfig(tls_client_ca="ca.pem")
    assert CollectorConfig().tls is None
    tls = CollectorConfig(tls_cert="c.pem", tls_key="k.pem", tls_client_ca="ca.pem").tls
    assert tls is not None and tls.client_ca == Path("ca.pem")
