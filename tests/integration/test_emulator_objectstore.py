"""The emulator's object store checks SigV4 as S3 does: requests signed by botocore (a client
the agent does not use) with the emulator's AK/SK pass; a wrong key, region, date, body or an
unsigned `x-amz-*` header is refused with S3's status and code; a denied bucket answers 403."""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Optional
from xml.etree import ElementTree

import boto3
import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

from tests.support.emulator import EmulatorProcess

BUCKET = "smsagent-logs"
DENIED = "refusing-bucket"
REGION = "ap-southeast-3"


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[EmulatorProcess]:
    """An emulator serving an object store with one open and one refusing bucket."""
    process = EmulatorProcess(tmp_path / "emulator")
    with process.started(obs_port=0, obs_bucket=BUCKET, obs_deny_bucket=DENIED) as started:
        yield started


def s3(emulator: EmulatorProcess, *, sk: Optional[str] = None, region: str = REGION) -> object:
    return boto3.client(
        "s3",
        endpoint_url=emulator.obs_url,
        aws_access_key_id=emulator.ak,
        aws_secret_access_key=sk or emulator.sk,
        region_name=region,
        config=Config(
            signature_version="s3v4", s3={"addressing_style": "path"}, retries={"max_attempts": 1}
        ),
    )


def signed(
    emulator: EmulatorProcess,
    method: str,
    path: str,
    body: bytes = b"",
    headers: Optional[Mapping[str, str]] = None,
) -> AWSRequest:
    """A request botocore signed with the emulator's AK/SK (payload hash in the header)."""
    request = AWSRequest(method=method, url=emulator.obs_url + path, data=body)
    request.headers["x-amz-content-sha256"] = hashlib.sha256(body).hexdigest()
    for name, value in (headers or {}).items():
        request.headers[name] = value
    S3SigV4Auth(Credentials(emulator.ak, emulator.sk), "s3", REGION).add_auth(request)
    return request


def send(
    request: AWSRequest, *, body: Optional[bytes] = None, **changed: str
) -> tuple[int, Optional[str]]:
    """Send `request` (with headers `changed` after signing); the status and S3 error code."""
    headers = {name: str(value) for name, value in request.headers.items()}
    headers.update({name.replace("_", "-"): value for name, value in changed.items()})
    data = request.body if body is None else body
    call = urllib.request.Request(request.url, data=data or None, method=request.method)
    for name, value in headers.items():
        call.add_header(name, value)
    try:
        with urllib.request.urlopen(call, timeout=10) as answer:
            return answer.status, None
    except urllib.error.HTTPError as exc:
        payload = exc.read()
        code = ElementTree.fromstring(payload).findtext("Code") if payload else None
        return exc.code, code


def test_a_signed_put_is_read_back(emulator: EmulatorProcess) -> None:
    client = s3(emulator)
    client.put_object(Bucket=BUCKET, Key="dir/a b+c.txt", Body=b"hello")  # type: ignore[attr-defined]
    answer = client.get_object(Bucket=BUCKET, Key="dir/a b+c.txt")  # type: ignore[attr-defined]
    assert answer["Body"].read() == b"hello"
    objects = emulator.state()["obs"]["buckets"][BUCKET]["objects"]
    assert [(o["key"], o["size"]) for o in objects] == [("dir/a b+c.txt", 5)]


def test_a_wrong_secret_key_does_not_match(emulator: EmulatorProcess) -> None:
    client = s3(emulator, sk="not-the-secret-key-0123456789")
    with pytest.raises(client.exceptions.ClientError) as caught:  # type: ignore[attr-defined]
        client.put_object(Bucket=BUCKET, Key="k", Body=b"x")  # type: ignore[attr-defined]
    assert caught.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    assert emulator.state()["obs"]["buckets"][BUCKET]["objects"] == []


@pytest.mark.parametrize(
    ("change", "status", "code"),
    [
        ({"body": b"tampered"}, 400, "XAmzContentSHA256Mismatch"),
        ({"x_amz_meta_note": "added after signing"}, 403, "AccessDenied"),
        ({"Authorization": ""}, 403, "AccessDenied"),
        ({"content_type": "text/plain"}, 403, "SignatureDoesNotMatch"),
    ],
    ids=["body", "unsigned-amz-header", "anonymous", "changed-signed-header"],
)
def test_a_changed_request_is_refused(
    emulator: EmulatorProcess, change: dict[str, object], status: int, code: str
) -> None:
    request = signed(emulator, "PUT", f"/{BUCKET}/k", b"payload", {"Content-Type": "a/b"})
    body = change.pop("body", None)
    headers = {k: str(v) for k, v in change.items()}
    assert send(request, body=body if isinstance(body, bytes) else None, **headers) == (
        status,
        code,
    )


def test_a_request_from_twenty_minutes_ago_is_too_skewed(emulator: EmulatorProcess) -> None:
    request = signed(emulator, "GET", f"/{BUCKET}/k")
    then = datetime.now(timezone.utc) - timedelta(minutes=20)
    assert send(request, x_amz_date=then.strftime("%Y%m%dT%H%M%SZ")) == (
        403,
        "RequestTimeTooSkewed",
    )


def test_another_region_and_an_unknown_key_are_refused(emulator: EmulatorProcess) -> None:
    client = s3(emulator, region="cn-north-4")
    with pytest.raises(client.exceptions.ClientError) as caught:  # type: ignore[attr-defined]
        client.put_object(Bucket=BUCKET, Key="k", Body=b"x")  # type: ignore[attr-defined]
    assert caught.value.response["Error"]["Code"] == "AuthorizationHeaderMalformed"
    request = AWSRequest(method="GET", url=f"{emulator.obs_url}/{BUCKET}/k")
    request.headers["x-amz-content-sha256"] = hashlib.sha256(b"").hexdigest()
    S3SigV4Auth(Credentials("UNKNOWNAK0000000001", emulator.sk), "s3", REGION).add_auth(request)
    assert send(request) == (403, "InvalidAccessKeyId")


def test_unsigned_payload_is_accepted(emulator: EmulatorProcess) -> None:
    request = AWSRequest(method="PUT", url=f"{emulator.obs_url}/{BUCKET}/u", data=b"body")
    request.headers["x-amz-content-sha256"] = "UNSIGNED-PAYLOAD"
    S3SigV4Auth(Credentials(emulator.ak, emulator.sk), "s3", REGION).add_auth(request)
    assert send(request) == (200, None)


def test_buckets_deny_or_do_not_exist(emulator: EmulatorProcess) -> None:
    assert send(signed(emulator, "PUT", f"/{DENIED}/k", b"x")) == (403, "AccessDenied")
    assert send(signed(emulator, "PUT", "/no-such-bucket/k", b"x")) == (404, "NoSuchBucket")
    assert send(signed(emulator, "GET", f"/{BUCKET}/absent")) == (404, "NoSuchKey")
