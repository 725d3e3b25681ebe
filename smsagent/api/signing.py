"""AK/SK request signing (`SDK-HMAC-SHA256`) and its verification (the emulator's gateway).

The signer reproduces the official SDK byte for byte (spec §5.1): the canonical request is built
from the method, the path with a trailing slash, the sorted query, the lower-cased headers whose
names hold no underscore, and the payload hash; the signature is an HMAC-SHA256 of the string to
sign keyed with the secret key.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from typing import Callable, Final, Optional
from urllib.parse import quote, unquote, urlsplit

ALGORITHM: Final = "SDK-HMAC-SHA256"
SDK_DATE_FORMAT: Final = "%Y%m%dT%H%M%SZ"
EMPTY_PAYLOAD_SHA256: Final = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
UNSIGNED_PAYLOAD: Final = "UNSIGNED-PAYLOAD"

HEADER_AUTHORIZATION: Final = "Authorization"
HEADER_SDK_DATE: Final = "X-Sdk-Date"
HEADER_HOST: Final = "Host"
HEADER_CONTENT_SHA256: Final = "X-Sdk-Content-Sha256"
HEADER_CONTENT_TYPE: Final = "Content-Type"
HEADER_PROJECT_ID: Final = "X-Project-Id"


# Bodies of these types are hashed; any other declared type is sent as an unsigned payload.
_HASHED_CONTENT_TYPES: Final = ("application/json", "application/bson")

APIGW_AUTH_FAILED: Final = "APIGW.0301"
_IAM_PREFIX: Final = "Incorrect IAM authentication information"


class SignatureError(Exception):
    """A request's AK/SK signature was missing, malformed, unknown, stale or wrong.

    Carries the API-gateway error code and message a gateway answers with (HTTP 401).
    """

    def __init__(self, error_code: str, error_msg: str) -> None:
        super().__init__(f"{error_code}: {error_msg}")
        self.error_code = error_code
        self.error_msg = error_msg


@dataclass(frozen=True)
class ParsedAuthorization:
    """The three parts of an `SDK-HMAC-SHA256` Authorization header."""

    access: str
    signed_headers: tuple[str, ...]
    signature: str


# Canonical parts (pure functions over strings)


def _encode(text: str) -> str:
    """Percent-encode everything except the RFC 3986 unreserved characters, as the SDK does."""
    return quote(text, safe="~")


def canonical_uri(path: str) -> str:
    """The path as signed: decoded, each segment re-encoded, always ending with `/`."""
    uri = "/".join(_encode(segment) for segment in unquote(path).split("/"))
    return uri if uri.endswith("/") else uri + "/"


def canonical_query_string(query: Sequence[tuple[str, str]]) -> str:
    """`k=v` pairs sorted by key then value, both encoded (space is `%20`), joined by `&`.

    The same string is what a client sends after `?`, so signer and server agree on it.
    """
    return "&".join(f"{_encode(key)}={_encode(value)}" for key, value in sorted(query))


def parse_query(raw_query: str) -> list[tuple[str, str]]:
    """Decode a raw query string into pairs, keeping repeated keys and blank values.

    `+` stays a literal plus: the signer encodes a space as `%20`, never as `+`.
    """
    pairs: list[tuple[str, str]] = []
    for part in raw_query.split("&"):
        if part:
            key, _, value = part.partition("=")
            pairs.append((unquote(key), unquote(value)))
    return pairs


def query_pairs(params: Mapping[str, object]) -> list[tuple[str, str]]:
    """Render typed query parameters the way the SDK does.

    `None` is dropped, booleans become `true`/`false`, enums their value, and a list or tuple
    repeats its key once per item.
    """
    pairs: list[tuple[str, str]] = []
    for key, value in params.items():
        items = value if isinstance(value, (list, tuple)) else [value]
        pairs.extend((key, _query_value(item)) for item in items if item is not None)
    return pairs


def _query_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Enum):
        return str(value.value)
    return str(value)


def _header_ignore_case(headers: Mapping[str, str], name: str) -> Optional[str]:
    """The first header whose name matches `name` in any case (the SDK's lookup)."""
    wanted = name.lower()
    for key, value in headers.items():
        if key.lower() == wanted:
            return value
    return None


def signed_header_names(headers: Mapping[str, str]) -> list[str]:
    """Lower-cased, sorted names of the headers to sign: every header without `_` in its name."""
    return sorted(name.lower() for name in headers if "_" not in name)


def payload_hash(headers: Mapping[str, str], body: bytes) -> str:
    """The hex payload hash: the empty-body hash, a declared `X-Sdk-Content-Sha256`, or SHA-256."""
    if not body:
        return EMPTY_PAYLOAD_SHA256
    declared = _header_ignore_case(headers, HEADER_CONTENT_SHA256)
    if declared:
        return declared
    return hashlib.sha256(body).hexdigest()


def canonical_request(
    method: str,
    path: str,
    query: Sequence[tuple[str, str]],
    headers: Mapping[str, str],
    signed_headers: Sequence[str],
    payload_hash: str,
) -> str:
    """The canonical request of spec §5.1 step 8.

    Args:
        method: HTTP method, any case.
        path: the request path as sent (percent-encoded), without the query.
        query: decoded query pairs; repeated keys allowed.
        headers: all request headers; for a name given twice in different cases the last wins.
        signed_headers: lower-cased names to sign, in order.
        payload_hash: hex hash of the body, see `payload_hash()`.

    Raises:
        ValueError: a name in `signed_headers` is not among `headers`.
    """
    values = {name.lower(): str(value).strip() for name, value in headers.items()}
    lines = []
    for name in signed_headers:
        if name not in values:
            msg = f"signed header {name!r} is not among the request headers"
            raise ValueError(msg)
        lines.append(f"{name}:{values[name]}\n")
    return "\n".join(
        [
            method.upper(),
            canonical_uri(path),
            canonical_query_string(query),
            "".join(lines),
            ";".join(signed_headers),
            payload_hash,
        ]
    )


def string_to_sign(sdk_date: str, canonical: str) -> str:
    """`SDK-HMAC-SHA256`, the signing time, and the hex SHA-256 of the canonical request."""
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    return f"{ALGORITHM}\n{sdk_date}\n{digest}"


def _hmac_hex(sk: str, message: str) -> str:
    return hmac.new(sk.encode("utf-8"), message.encode("utf-8"), hashlib.sha256).hexdigest()


def authorization_value(ak: str, signed_headers: Sequence[str], signature: str) -> str:
    """The Authorization header value: algorithm, access key, signed header names, signature."""
    names = ";".join(signed_headers)
    return f"{ALGORITHM} Access={ak}, SignedHeaders={names}, Signature={signature}"


def format_sdk_date(moment: datetime) -> str:
    """`YYYYMMDDTHHMMSSZ` in UTC; a naive datetime is taken to be UTC already."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc)
    return moment.strftime(SDK_DATE_FORMAT)


def parse_sdk_date(value: str) -> datetime:
    """An aware UTC datetime from an `X-Sdk-Date` value.

    Raises:
        ValueError: the value is not `YYYYMMDDTHHMMSSZ`.
    """
    try:
        return datetime.strptime(value, SDK_DATE_FORMAT).replace(tzinfo=timezone.utc)
    except ValueError:
        msg = f"X-Sdk-Date {value!r} is not in the form YYYYMMDDTHHMMSSZ"
        raise ValueError(msg) from None


# Signing


def sign(
    *,
    ak: str,
    sk: str,
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    sdk_date: Optional[str] = None,
) -> dict[str, str]:
    """Sign a request exactly as the official SDK does and return the headers to add.

    The result always holds `Authorization`; `X-Sdk-Date` when `headers` has none (from
    `sdk_date`, else now); `Host` (the URL's `host[:port]`) when `headers` has none; and
    `X-Sdk-Content-Sha256: UNSIGNED-PAYLOAD` when `Content-Type` is neither JSON nor BSON. An
    `X-Sdk-Date` already in `headers` wins over `sdk_date`. The caller must send the query as
    `canonical_query_string(parse_query(query))` if it is not already in that form.

    Raises:
        ValueError: `ak` or `sk` is empty, or an `X-Sdk-Date` is malformed.
    """
    if not ak:
        raise ValueError("ak must not be empty")
    if not sk:
        raise ValueError("sk must not be empty")
    parts = urlsplit(url)
    added = _headers_to_add(headers, parts.netloc, sdk_date)
    all_headers = {**headers, **added}
    date_value = _header_ignore_case(all_headers, HEADER_SDK_DATE) or ""
    # The SDK re-formats the parsed date for the string to sign; the header keeps its text.
    signing_time = format_sdk_date(parse_sdk_date(date_value))
    signed = signed_header_names(all_headers)
    canonical = canonical_request(
        method,
        parts.path,
        parse_query(parts.query),
        all_headers,
        signed,
        payload_hash(all_headers, body),
    )
    signature = _hmac_hex(sk, string_to_sign(signing_time, canonical))
    added[HEADER_AUTHORIZATION] = authorization_value(ak, signed, signature)
    return added


def _headers_to_add(
    headers: Mapping[str, str], netloc: str, sdk_date: Optional[str]
) -> dict[str, str]:
    """The headers the SDK adds before signing, in the SDK's order."""
    added: dict[str, str] = {}
    # The SDK looks Content-Type up by this exact spelling; signatures must agree with it.
    content_type = headers.get(HEADER_CONTENT_TYPE)
    if content_type and not content_type.startswith(_HASHED_CONTENT_TYPES):
        added[HEADER_CONTENT_SHA256] = UNSIGNED_PAYLOAD
    if _header_ignore_case(headers, HEADER_SDK_DATE) is None:
        added[HEADER_SDK_DATE] = sdk_date or format_sdk_date(datetime.now(timezone.utc))
    if _header_ignore_case(headers, HEADER_HOST) is None:
        added[HEADER_HOST] = netloc.rpartition("@")[2]
    return added


# Verification (the gateway side)


def parse_authorization(value: str) -> ParsedAuthorization:
    """Split `SDK-HMAC-SHA256 Access=.., SignedHeaders=..;.., Signature=..` into its parts.

    Raises:
        SignatureError: another algorithm, a missing or empty part, or a signature that is not
            64 lower-case hex digits.
    """
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise _auth_failed("the authorization algorithm is not " + ALGORITHM)
    fields: dict[str, str] = {}
    for item in rest.split(","):
        name, sep, field_value = item.strip().partition("=")
        if not sep or name in fields:
            raise _auth_failed("the Authorization header is malformed")
        fields[name] = field_value.strip()
    access = fields.get("Access", "")
    names = tuple(fields.get("SignedHeaders", "").split(";"))
    signature = fields.get("Signature", "")
    if not access or not all(names) or not _is_hex_digest(signature):
        raise _auth_failed("the Authorization header is malformed")
    return ParsedAuthorization(access=access, signed_headers=names, signature=signature)


def _is_hex_digest(text: str) -> bool:
    return len(text) == 64 and all(char in "0123456789abcdef" for char in text)


def _auth_failed(reason: str) -> SignatureError:
    return SignatureError(APIGW_AUTH_FAILED, f"{_IAM_PREFIX}: {reason}")


def verify(
    *,
    method: str,
    path: str,
    raw_query: str,
    headers: Mapping[str, str],
    body: bytes,
    secret_for: Callable[[str], Optional[str]],
    now: datetime,
    max_skew_s: float = 900,
) -> str:
    """Check a request's AK/SK signature as the API gateway does and return its access key.

    Args:
        method: the request method.
        path: the path as received, still percent-encoded, without the query.
        raw_query: the query string as received, without `?`.
        headers: the request headers (case-insensitive lookups are done here).
        body: the raw body bytes.
        secret_for: the secret key of an access key, or None when the key is unknown.
        now: the server's time; naive means UTC.
        max_skew_s: the largest accepted distance between `X-Sdk-Date` and `now`.

    Raises:
        SignatureError: code `APIGW.0301` with a message saying what failed; a clock skew has its
            own message. Neither the secret key nor the expected signature is ever included.
    """
    value = _header_ignore_case(headers, HEADER_AUTHORIZATION)
    if value is None:
        raise _auth_failed("Authorization not found")
    parsed = parse_authorization(value)
    signed_at = _signed_date(parsed, headers)
    secret = secret_for(parsed.access)
    if secret is None:
        raise _auth_failed("Get secretKey failed, err: ak not exist")
    _check_skew(signed_at, now, max_skew_s)
    expected = _hmac_hex(
        secret,
        string_to_sign(
            format_sdk_date(signed_at),
            canonical_request(
                method,
                path,
                parse_query(raw_query),
                headers,
                parsed.signed_headers,
                _verified_payload_hash(headers, body),
            ),
        ),
    )
    if not hmac.compare_digest(expected, parsed.signature):
        raise _auth_failed("verify aksk signature fail")
    return parsed.access


def _signed_date(parsed: ParsedAuthorization, headers: Mapping[str, str]) -> datetime:
    """The signing time, after checking that every signed header, x-sdk-date included, is sent."""
    if HEADER_SDK_DATE.lower() not in parsed.signed_headers:
        raise _auth_failed("x-sdk-date is not among the signed headers")
    for name in parsed.signed_headers:
        if _header_ignore_case(headers, name) is None:
            raise _auth_failed(f"signed header {name} not found")
    try:
        return parse_sdk_date(_header_ignore_case(headers, HEADER_SDK_DATE) or "")
    except ValueError:
        raise _auth_failed("x-sdk-date is not in the form YYYYMMDDTHHMMSSZ") from None


def _check_skew(signed_at: datetime, now: datetime, max_skew_s: float) -> None:
    if now.tzinfo is None:
        now = now.replace(tzinfo=timezone.utc)
    skew_s = abs((now - signed_at).total_seconds())
    if skew_s > max_skew_s:
        raise _auth_failed(
            f"x-sdk-date differs from the server time by {skew_s:.0f} s, more than the "
            f"{max_skew_s:.0f} s allowed; check the client clock"
        )


def _verified_payload_hash(headers: Mapping[str, str], body: bytes) -> str:
    """The payload hash to verify with; a declared body hash must match the body received."""
    declared = payload_hash(headers, body)
    if body and declared != UNSIGNED_PAYLOAD and declared != hashlib.sha256(body).hexdigest():
        raise _auth_failed("verify aksk signature fail")
    return declared
