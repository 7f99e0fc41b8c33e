"""``storeml serve`` over TLS: the certificate and key settings reach uvicorn; plain HTTP is refused."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from storeml.settings import Settings
from tests.api_server import start_server


def _self_signed(folder: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_file.chmod(0o600)
    return cert_file, key_file


def test_serve_speaks_tls_with_the_configured_certificate(
    settings: Settings, tmp_path: Path
) -> None:
    cert, key = _self_signed(tmp_path)
    tls = settings.model_copy(update={"serve_ssl_certfile": cert, "serve_ssl_keyfile": key})
    server = start_server(
        tls, tmp_path / "serve.log", admin=False, scheme="https", verify=str(cert)
    )
    try:
        with httpx.Client(base_url=server.url, verify=str(cert), timeout=10) as api:
            assert api.get("/healthz").json() == {"status": "ok"}
            assert api.get("/v1/stores/s1/customers/c1").status_code == 401
        plain = server.url.replace("https://", "http://")
        with pytest.raises(httpx.HTTPError):
            answer: Any = httpx.get(f"{plain}/healthz", timeout=5)
            answer.raise_for_status()
    finally:
        server.stop()
