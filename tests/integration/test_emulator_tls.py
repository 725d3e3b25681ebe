"""The emulator over TLS with a certificate made for the test."""

from __future__ import annotations

import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.support.emulator import EmulatorFactory


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


def test_https_with_token_and_signature(
    start_emulator: EmulatorFactory, certificate: tuple[Path, Path]
) -> None:
    """Given a cert and key the emulator serves HTTPS; tokens and signatures work over it."""
    cert, key = certificate
    process = start_emulator(ca_file=cert, tls_cert=cert, tls_key=key)
    assert process.url.startswith("https://")
    assert process.request("GET", "/v3/config").status == 200
    assert process.signed_request("GET", "/v3/sources").status == 200


def test_plain_http_to_the_tls_port_fails(
    start_emulator: EmulatorFactory, certificate: tuple[Path, Path]
) -> None:
    """A plain HTTP request to the TLS port gets no HTTP answer."""
    cert, key = certificate
    process = start_emulator(ca_file=cert, tls_cert=cert, tls_key=key)
    plain = process.url.replace("https://", "http://") + "/_emulator/health"
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(plain, timeout=5)
