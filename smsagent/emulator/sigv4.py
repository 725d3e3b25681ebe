"""AWS Signature Version 4 as an S3 server checks it (the `Authorization` header form), for the
emulator's object store. OBS accepts the same signatures on its S3-compatible interface.

What is checked, in the order S3 checks it: the header's form, the access key, the date (the
`x-amz-date` header, the credential scope's day, at most 15 minutes off), the scope's region
and service, the signed headers (`host`, `x-amz-date` and every other `x-amz-*` header among
them, each present), the declared payload hash, then the signature over the canonical request.
The body is checked against the declared hash once it is read (`check_payload`). Presigned URLs
and chunked (`STREAMING-*`) uploads are refused as not implemented.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Final, Optional
from urllib.parse import unquote

ALGORITHM: Final = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD: Final = "UNSIGNED-PAYLOAD"
SERVICE: Final = "s3"
TERMINATOR: Final = "aws4_request"
MAX_SKEW_S: Final = 15 * 60
AMZ_DATE_FORMAT: Final = "%Y%m%dT%H%M%SZ"
HEADER_DATE: Final = "x-amz-date"
HEADER_CONTENT_SHA256: Final = "x-amz-content-sha256"

_UNRESERVED: Final = frozenset(string.ascii_letters + string.digits + "-._~")
_HEX64: Final = re.compile(r"[0-9a-f]{64}")
_AUTH_FIELDS: Final = re.compile(r"\s*(Credential|SignedHeaders|Signature)=([^,\s]*)\s*")
_SPACES: Final = re.compile(r"\s+")

# Header values as a request carries them: every value of a name, in order.
Headers = Mapping[str, Sequence[str]]


class SigV4Error(Exception):
    """The request is refused: the HTTP status and S3 error code it is answered with."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Authorization:
    """The parts of an `Authorization: AWS4-HMAC-SHA256 ...` header."""

    access_key: str
    day: str
    region: str
    service: str
    terminator: str
    signed_headers: tuple[str, ...]
    signature: str

    @property
    def scope(self) -> str:
        """The credential scope, `day/region/service/aws4_request`."""
        return f"{self.day}/{self.region}/{self.service}/{self.terminator}"


def _malformed(message: str) -> SigV4Error:
    return SigV4Error(400, "AuthorizationHeaderMalformed", message)


def parse_authorization(value: str) -> Authorization:
    """Split the header; a header of another form is refused naming what is wrong."""
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != ALGORITHM:
        given = algorithm or "(none)"
        msg = f"the authorization mechanism {given} is not supported; use {ALGORITHM}"
        raise SigV4Error(400, "InvalidArgument", msg)
    fields: dict[str, str] = {}
    for part in rest.split(","):
        match = _AUTH_FIELDS.fullmatch(part)
        if match is None:
            raise _malformed(f"the authorization header is malformed near {part.strip()[:40]!r}")
        fields[match.group(1)] = match.group(2)
    missing = [name for name in ("Credential", "SignedHeaders", "Signature") if name not in fields]
    if missing:
        raise _malformed(f"the authorization header has no {', '.join(missing)}")
    credential = fields["Credential"].split("/")
    if len(credential) != 5 or not all(credential):
        raise _malformed("the Credential must be AK/yyyymmdd/region/service/aws4_request")
    access_key, day, region, service, terminator = credential
    return Authorization(
        access_key=access_key,
        day=day,
        region=region,
        service=service,
        terminator=terminator,
        signed_headers=tuple(fields["SignedHeaders"].split(";")),
        signature=fields["Signature"],
    )


def uri_encode(text: str, *, keep_slash: bool) -> str:
    """Percent-encode every byte but the unreserved characters (and `/` when kept)."""
    out: list[str] = []
    for char in text:
        if char in _UNRESERVED or (keep_slash and char == "/"):
            out.append(char)
        else:
            out.extend(f"%{byte:02X}" for byte in char.encode("utf-8"))
    return "".join(out)


def canonical_uri(raw_path: str) -> str:
    """The path as S3 canonicalises it: decoded once, encoded once, no segment normalised."""
    return uri_encode(unquote(raw_path or "/"), keep_slash=True)


def canonical_query(raw_query: str) -> str:
    """`name=value` pairs encoded and sorted by name, then value (`+` is not a space)."""
    pairs: list[tuple[str, str]] = []
    for item in raw_query.split("&"):
        if not item:
            continue
        name, _, value = item.partition("=")
        pairs.append(
            (
                uri_encode(unquote(name), keep_slash=False),
                uri_encode(unquote(value), keep_slash=False),
            )
        )
    return "&".join(f"{name}={value}" for name, value in sorted(pairs))


def canonical_headers(headers: Headers, signed: Iterable[str]) -> str:
    """`name:value` lines of the signed headers: values trimmed, inner spaces collapsed, the
    values of a repeated header joined by `,`."""
    lines = []
    for name in signed:
        values = [_SPACES.sub(" ", value.strip()) for value in headers.get(name, ())]
        lines.append(f"{name}:{','.join(values)}\n")
    return "".join(lines)


def canonical_request(
    method: str,
    raw_path: str,
    raw_query: str,
    headers: Headers,
    signed: Sequence[str],
    payload_hash: str,
) -> str:
    """The canonical request whose hash is signed."""
    return "\n".join(
        [
            method.upper(),
            canonical_uri(raw_path),
            canonical_query(raw_query),
            canonical_headers(headers, signed),
            ";".join(signed),
            payload_hash,
        ]
    )


def string_to_sign(amz_date: str, scope: str, request: str) -> str:
    """The string the signing key signs."""
    digest = hashlib.sha256(request.encode("utf-8")).hexdigest()
    return f"{ALGORITHM}\n{amz_date}\n{scope}\n{digest}"


def signing_key(secret_key: str, day: str, region: str, service: str) -> bytes:
    """The key derived from the secret for one day, region and service."""
    key = ("AWS4" + secret_key).encode("utf-8")
    for part in (day, region, service, TERMINATOR):
        key = hmac.new(key, part.encode("utf-8"), hashlib.sha256).digest()
    return key


def signature(secret_key: str, auth: Authorization, amz_date: str, request: str) -> str:
    """The hex signature of a canonical request under `auth`'s scope."""
    key = signing_key(secret_key, auth.day, auth.region, auth.service)
    text = string_to_sign(amz_date, auth.scope, request)
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).hexdigest()


def lower_headers(pairs: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """A request's header pairs by lower-case name, values in order."""
    headers: dict[str, list[str]] = {}
    for name, value in pairs:
        headers.setdefault(name.lower(), []).append(value)
    return headers


def _amz_date(headers: Headers, now_s: float) -> str:
    values = headers.get(HEADER_DATE, ())
    if len(values) != 1:
        msg = "AWS authentication requires one valid x-amz-date header"
        raise SigV4Error(403, "AccessDenied", msg)
    try:
        sent = datetime.strptime(values[0], AMZ_DATE_FORMAT).replace(tzinfo=timezone.utc)
    except ValueError:
        msg = f"x-amz-date {values[0][:32]!r} is not in the form yyyymmddThhmmssZ"
        raise SigV4Error(403, "AccessDenied", msg) from None
    if abs(sent.timestamp() - now_s) > MAX_SKEW_S:
        msg = "the difference between the request time and the server's time is too large"
        raise SigV4Error(403, "RequestTimeTooSkewed", msg)
    return values[0]


def _check_scope(auth: Authorization, amz_date: str, region: str) -> None:
    if auth.day != amz_date[:8]:
        raise _malformed(f"the credential day {auth.day} is not the day of x-amz-date")
    if auth.region != region:
        raise _malformed(f"the region {auth.region!r} is wrong; expecting {region!r}")
    if auth.service != SERVICE or auth.terminator != TERMINATOR:
        raise _malformed(f"the credential scope must end in {SERVICE}/{TERMINATOR}")


def _check_signed_headers(auth: Authorization, headers: Headers) -> None:
    signed = auth.signed_headers
    if list(signed) != sorted(set(signed)) or any(name != name.lower() for name in signed):
        raise _malformed("SignedHeaders must be lower-case names, sorted, each once")
    for needed in ("host", HEADER_DATE):
        if needed not in signed:
            raise SigV4Error(403, "AccessDenied", f"the header {needed} must be signed")
    unsigned = sorted(n for n in headers if n.startswith("x-amz-") and n not in signed)
    if unsigned:
        msg = f"headers present in the request were not signed: {', '.join(unsigned)}"
        raise SigV4Error(403, "AccessDenied", msg)
    absent = [name for name in signed if name not in headers]
    if absent:
        msg = f"signed headers are missing from the request: {', '.join(absent)}"
        raise SigV4Error(403, "SignatureDoesNotMatch", msg)


def declared_payload_hash(headers: Headers) -> str:
    """The `x-amz-content-sha256` value: a SHA-256 in hex or `UNSIGNED-PAYLOAD`."""
    values = headers.get(HEADER_CONTENT_SHA256, ())
    if len(values) != 1:
        msg = f"missing required header for this request: {HEADER_CONTENT_SHA256}"
        raise SigV4Error(400, "InvalidRequest", msg)
    declared = values[0].strip()
    if declared.startswith("STREAMING-"):
        msg = f"{HEADER_CONTENT_SHA256} {declared} (chunked upload) is not implemented"
        raise SigV4Error(501, "NotImplemented", msg)
    if declared != UNSIGNED_PAYLOAD and _HEX64.fullmatch(declared) is None:
        msg = f"{HEADER_CONTENT_SHA256} must be a lower-case SHA-256 in hex or {UNSIGNED_PAYLOAD}"
        raise SigV4Error(400, "InvalidArgument", msg)
    return declared


def verify(
    method: str,
    raw_path: str,
    raw_query: str,
    headers: Headers,
    secret_for: Callable[[str], Optional[str]],
    region: str,
    now_s: float,
) -> Authorization:
    """Check a request's header signature; returns the authorization it carried.

    Args:
        method: the HTTP method.
        raw_path: the path as sent (percent-encoded), without the query.
        raw_query: the query as sent, without `?`.
        headers: the request's headers by lower-case name.
        secret_for: the secret key of an access key, None for an unknown one.
        region: the only region this store serves.
        now_s: the server's time, epoch seconds.

    Raises:
        SigV4Error: naming the first thing wrong, with S3's status and code.
    """
    values = [value for value in headers.get("authorization", ()) if value.strip()]
    if not values:
        if "X-Amz-Signature" in raw_query or "X-Amz-Credential" in raw_query:
            msg = "query-string (presigned) authentication is not implemented"
            raise SigV4Error(501, "NotImplemented", msg)
        raise SigV4Error(403, "AccessDenied", "anonymous requests are refused")
    auth = parse_authorization(values[0])
    secret = secret_for(auth.access_key)
    if secret is None:
        msg = "the access key id you provided does not exist in our records"
        raise SigV4Error(403, "InvalidAccessKeyId", msg)
    amz_date = _amz_date(headers, now_s)
    _check_scope(auth, amz_date, region)
    _check_signed_headers(auth, headers)
    payload_hash = declared_payload_hash(headers)
    request = canonical_request(
        method, raw_path, raw_query, headers, auth.signed_headers, payload_hash
    )
    expected = signature(secret, auth, amz_date, request)
    if not hmac.compare_digest(expected.encode(), auth.signature.encode()):
        msg = "the request signature we calculated does not match the signature you provided"
        raise SigV4Error(403, "SignatureDoesNotMatch", msg)
    return auth


def check_payload(declared: str, body: bytes) -> None:
    """Refuse a body whose SHA-256 is not the one the signed header declared."""
    if declared == UNSIGNED_PAYLOAD:
        return
    if not hmac.compare_digest(declared, hashlib.sha256(body).hexdigest()):
        msg = f"the provided {HEADER_CONTENT_SHA256} does not match what was computed"
        raise SigV4Error(400, "XAmzContentSHA256Mismatch", msg)
