"""TLS for the block data channel, from the task's certkey material (spec §3.13).

The source presents the task's source certificate (`cert`, `private_key`) and accepts only the
task's target data certificate (`target_data_cert`), signed by the task's CA (`ca`): chain and
pin both, so a certificate of another task, even from the same CA, is refused. The receiver
does the same the other way round. There is no plain-text mode.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from smsagent.api.models import ShowCertKeyResponse

ERROR_TLS = "SMS.0211"


class TlsMaterialError(Exception):
    """The task's certkey answer lacks what the data channel needs."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.error_code = ERROR_TLS
        self.message = message


@dataclass(frozen=True)
class TlsMaterial:
    """The PEM texts of one task's data channel (never logged: see `__repr__`)."""

    ca: str
    source_cert: str
    source_key: str
    target_cert: str
    target_key: str
    passphrase: Optional[str] = None

    def __repr__(self) -> str:
        return "TlsMaterial(<PEM hidden>)"

    @classmethod
    def from_answer(cls, answer: ShowCertKeyResponse, passphrase: Optional[str]) -> TlsMaterial:
        fields = {
            "ca": answer.ca,
            "cert": answer.cert,
            "private_key": answer.private_key,
            "target_data_cert": answer.target_data_cert,
            "target_data_private_key": answer.target_data_private_key,
        }
        missing = [name for name, value in fields.items() if not (value and value.strip())]
        if missing:
            raise TlsMaterialError(
                "the task's certkey answer has no " + ", ".join(missing)
                + " (block-level migration needs the data channel's certificates)"
            )  # fmt: skip
        return cls(
            ca=str(answer.ca),
            source_cert=str(answer.cert),
            source_key=str(answer.private_key),
            target_cert=str(answer.target_data_cert),
            target_key=str(answer.target_data_private_key),
            passphrase=passphrase,
        )

    def receiver_config(self) -> dict[str, Any]:
        """What the receiver needs of it (sent on its stdin over SSH, never in argv)."""
        return {
            "ca": self.ca,
            "data_cert": self.target_cert,
            "data_key": self.target_key,
            "source_cert": self.source_cert,
            "passphrase": self.passphrase,
        }

    @property
    def encrypted(self) -> bool:
        return "ENCRYPTED" in self.source_key or "ENCRYPTED" in self.target_key


def client_context(material: TlsMaterial, workdir: Path) -> ssl.SSLContext:
    """The source's context: its certificate, the task's CA; the peer is pinned by `is_target`."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # The target is reached by address and its certificate names no address: the chain to the
    # task's CA and the pin below are what identify it.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=material.ca)
    workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with tempfile.TemporaryDirectory(dir=workdir) as scratch:
        cert, key = Path(scratch, "source.crt"), Path(scratch, "source.key")
        for path, text in ((cert, material.source_cert), (key, material.source_key)):
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as handle:
                handle.write(text)
        context.load_cert_chain(cert, key, password=material.passphrase or None)
    return context


def is_target(peer_der: Optional[bytes], material: TlsMaterial) -> bool:
    """Whether the peer's certificate is the task's target data certificate."""
    expected = ssl.PEM_cert_to_DER_cert(material.target_cert.strip() + "\n")
    return peer_der is not None and peer_der == expected
