"""TLS material for block-level tests, as `GET /v3/tasks/{id}/certkey` returns it (spec §3.13).

A CA, the source's certificate and key, and the target's data certificate and key, made with
the `openssl` command. EC P-256 keys in PKCS#8 PEM: Python's ssl loads them, and OpenSSH takes
the same key as an identity, so one `private_key` serves the task's SSH and its data channel,
as SMS hands out one.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from smsagent.api.models import ShowCertKeyResponse


@dataclass(frozen=True)
class CertKey:
    """The PEM texts of one task, and the CA's files to sign more with."""

    ca: str
    cert: str
    private_key: str
    target_data_cert: str
    target_data_private_key: str
    ca_cert_path: Path
    ca_key_path: Path

    def answer(self) -> ShowCertKeyResponse:
        return ShowCertKeyResponse(
            ca=self.ca,
            cert=self.cert,
            private_key=self.private_key,
            target_data_cert=self.target_data_cert,
            target_data_private_key=self.target_data_private_key,
        )

    def fields(self) -> dict[str, str]:
        """The admin body that sets them on the emulator's task."""
        return {
            "ca": self.ca,
            "cert": self.cert,
            "private_key": self.private_key,
            "target_data_cert": self.target_data_cert,
            "target_data_private_key": self.target_data_private_key,
        }


def _openssl(*argv: str) -> None:
    subprocess.run(["openssl", *argv], check=True, capture_output=True, timeout=60)


def _key(path: Path) -> None:
    _openssl(
        "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path)
    )
    path.chmod(0o600)


def make_ca(workdir: Path, name: str = "task-ca") -> tuple[Path, Path]:
    """A self-signed CA: (certificate, key)."""
    workdir.mkdir(parents=True, exist_ok=True)
    key, cert = workdir / f"{name}.key", workdir / f"{name}.crt"
    _key(key)
    _openssl(
        "req", "-x509", "-new", "-key", str(key), "-out", str(cert), "-days", "2",
        "-subj", f"/CN={name}",
    )  # fmt: skip
    return cert, key


def issue(workdir: Path, name: str, ca_cert: Path, ca_key: Path) -> tuple[str, str]:
    """A certificate signed by the CA: (certificate PEM, key PEM)."""
    key, csr, cert = workdir / f"{name}.key", workdir / f"{name}.csr", workdir / f"{name}.crt"
    _key(key)
    _openssl("req", "-new", "-key", str(key), "-out", str(csr), "-subj", f"/CN={name}")
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
        "-CAcreateserial", "-out", str(cert), "-days", "2",
    )  # fmt: skip
    return cert.read_text(), key.read_text()


def make_cert_key(workdir: Path) -> CertKey:
    """A task's material: its CA, source and target data certificates."""
    ca_cert, ca_key = make_ca(workdir)
    cert, private_key = issue(workdir, "source", ca_cert, ca_key)
    data_cert, data_key = issue(workdir, "target-data", ca_cert, ca_key)
    return CertKey(
        ca=ca_cert.read_text(),
        cert=cert,
        private_key=private_key,
        target_data_cert=data_cert,
        target_data_private_key=data_key,
        ca_cert_path=ca_cert,
        ca_key_path=ca_key,
    )


def ssh_public_key(private_key_pem: str, workdir: Path) -> str:
    """The OpenSSH public key of a PEM private key (for the target's authorized_keys)."""
    path = workdir / "ssh-identity.pem"
    path.write_text(private_key_pem)
    path.chmod(0o600)
    return subprocess.run(
        ["ssh-keygen", "-y", "-f", str(path)], check=True, capture_output=True, text=True
    ).stdout.strip()
