"""The AK/SK signer and the gateway-side verifier."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Optional

import pytest

from smsagent.api.enums import ConfigKey
from smsagent.api.signing import (
    EMPTY_PAYLOAD_SHA256,
    SignatureError,
    canonical_request,
    format_sdk_date,
    parse_authorization,
    parse_query,
    query_pairs,
    sign,
    verify,
)

AK = "AKEXAMPLE1234567890A"
SK = "SKEXAMPLESKEXAMPLESKEXAMPLESKEXAMPLE"
NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
HOST = "sms.ap-southeast-3.myhuaweicloud.com"
PATH = "/v3/sources/0123-abc/command_result"
QUERY = "a=1&b=x%20y"
BODY = b'{"command_name":"START","result":"success","result_detail":{}}'


def _signed_headers(
    method: str = "POST", body: bytes = BODY, sdk_date: Optional[str] = None
) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "X-Project-Id": "p-1"}
    headers.update(
        sign(
            ak=AK,
            sk=SK,
            method=method,
            url=f"https://{HOST}{PATH}?{QUERY}",
            headers=headers,
            body=body,
            sdk_date=sdk_date or format_sdk_date(NOW),
        )
    )
    return headers


def _verify(
    *,
    method: str = "POST",
    path: str = PATH,
    raw_query: str = QUERY,
    headers: Optional[dict[str, str]] = None,
    body: bytes = BODY,
    now: datetime = NOW,
) -> str:
    return verify(
        method=method,
        path=path,
        raw_query=raw_query,
        headers=_signed_headers() if headers is None else headers,
        body=body,
        secret_for={AK: SK}.get,
        now=now,
    )


def _assert_safe(exc: SignatureError) -> None:
    """Neither the secret key nor any signature appears in what the gateway answers."""
    assert SK not in str(exc)
    assert re.search(r"[0-9a-f]{64}", str(exc)) is None


class TestVerify:
    def test_accepts_what_sign_produces(self) -> None:
        """A request signed by sign() verifies and yields its access key."""
        assert _verify() == AK

    def test_header_names_are_matched_in_any_case(self) -> None:
        """A proxy that lower-cases header names does not break verification."""
        headers = {name.lower(): value for name, value in _signed_headers().items()}
        assert _verify(headers=headers) == AK

    def test_unsigned_extra_headers_do_not_matter(self) -> None:
        """Headers added after signing (Accept, underscored names) are not part of the check."""
        headers = {**_signed_headers(), "Accept": "*/*", "X_Trace_Id": "t-1"}
        assert _verify(headers=headers) == AK

    def test_query_order_does_not_matter(self) -> None:
        """The query is canonicalised, so the order on the wire is irrelevant."""
        assert _verify(raw_query="b=x%20y&a=1") == AK

    @pytest.mark.parametrize(
        "tampered",
        [
            {"body": BODY.replace(b"START", b"STOP_")},
            {"path": PATH.replace("abc", "abd")},
            {"raw_query": "a=2&b=x%20y"},
            {"raw_query": QUERY + "&c=1"},
            {"method": "PUT"},
            {"headers": {**_signed_headers(), "X-Project-Id": "p-2"}},
            {"headers": {**_signed_headers(), "Host": "evil.example.com"}},
        ],
        ids=["body", "path", "query-value", "query-added", "method", "header", "host"],
    )
    def test_rejects_a_tampered_request(self, tampered: dict[str, object]) -> None:
        """Changing any signed part of the request fails with APIGW.0301 'signature fail'."""
        with pytest.raises(SignatureError) as caught:
            _verify(**tampered)  # type: ignore[arg-type]
        assert caught.value.error_code == "APIGW.0301"
        assert "verify aksk signature fail" in caught.value.error_msg
        _assert_safe(caught.value)

    def test_rejects_a_body_whose_declared_hash_is_wrong(self) -> None:
        """A declared X-Sdk-Content-Sha256 must be the hash of the body received."""
        headers = _signed_headers()
        headers["X-Sdk-Content-Sha256"] = EMPTY_PAYLOAD_SHA256
        with pytest.raises(SignatureError, match="signature fail"):
            _verify(headers=headers)

    def test_rejects_an_unknown_access_key(self) -> None:
        """An AK the gateway does not know is reported as such, without the SK."""
        with pytest.raises(SignatureError) as caught:
            verify(
                method="POST",
                path=PATH,
                raw_query=QUERY,
                headers=_signed_headers(),
                body=BODY,
                secret_for=lambda ak: None,
                now=NOW,
            )
        assert caught.value.error_code == "APIGW.0301"
        assert "ak not exist" in caught.value.error_msg
        _assert_safe(caught.value)

    def test_rejects_a_missing_authorization_header(self) -> None:
        headers = _signed_headers()
        del headers["Authorization"]
        with pytest.raises(SignatureError, match="Authorization not found"):
            _verify(headers=headers)

    @pytest.mark.parametrize(
        "value",
        [
            "",
            "Bearer abc",
            "SDK-HMAC-SHA256",
            f"SDK-HMAC-SHA256 Access={AK}",
            f"SDK-HMAC-SHA256 Access={AK}, SignedHeaders=host;x-sdk-date, Signature=xyz",
            f"SDK-HMAC-SHA256 Access=, SignedHeaders=host;x-sdk-date, Signature={'a' * 64}",
            f"SDK-HMAC-SHA256 Access={AK}, SignedHeaders=host;;x-sdk-date, Signature={'a' * 64}",
            f"SDK-HMAC-SHA256 Access={AK}, Access={AK}, SignedHeaders=host, Signature={'a' * 64}",
            f"SDK-HMAC-SM3 Access={AK}, SignedHeaders=host;x-sdk-date, Signature={'a' * 64}",
        ],
    )
    def test_rejects_a_malformed_authorization_header(self, value: str) -> None:
        """Anything but a complete SDK-HMAC-SHA256 value is an APIGW.0301 before any lookup."""
        headers = {**_signed_headers(), "Authorization": value}
        with pytest.raises(SignatureError) as caught:
            _verify(headers=headers)
        assert caught.value.error_code == "APIGW.0301"

    def test_rejects_a_signature_that_does_not_cover_the_date(self) -> None:
        """x-sdk-date must be signed, or a captured request could be replayed at any time."""
        headers = _signed_headers()
        headers["Authorization"] = headers["Authorization"].replace(";x-sdk-date", "")
        with pytest.raises(SignatureError, match="x-sdk-date is not among the signed headers"):
            _verify(headers=headers)

    def test_rejects_a_signed_header_that_was_not_sent(self) -> None:
        headers = _signed_headers()
        del headers["X-Project-Id"]
        with pytest.raises(SignatureError, match="x-project-id not found"):
            _verify(headers=headers)

    @pytest.mark.parametrize("skew", [timedelta(minutes=16), -timedelta(minutes=16)])
    def test_rejects_a_clock_skew_of_sixteen_minutes(self, skew: timedelta) -> None:
        """A request signed 16 minutes away from the server clock gets its own message."""
        with pytest.raises(SignatureError) as caught:
            _verify(now=NOW + skew)
        assert caught.value.error_code == "APIGW.0301"
        assert "differs from the server time by 960 s" in caught.value.error_msg
        assert "clock" in caught.value.error_msg
        _assert_safe(caught.value)

    def test_accepts_a_clock_skew_of_fourteen_minutes(self) -> None:
        assert _verify(now=NOW + timedelta(minutes=14)) == AK

    def test_naive_now_is_utc(self) -> None:
        assert _verify(now=NOW.replace(tzinfo=None)) == AK


class TestParseAuthorization:
    def test_splits_the_three_parts(self) -> None:
        parsed = parse_authorization(
            f"SDK-HMAC-SHA256 Access={AK}, SignedHeaders=content-type;host;x-sdk-date, "
            f"Signature={'0f' * 32}"
        )
        assert parsed.access == AK
        assert parsed.signed_headers == ("content-type", "host", "x-sdk-date")
        assert parsed.signature == "0f" * 32


class TestSign:
    def test_canonical_request_of_the_signing_guide(self) -> None:
        """canonical_request() reproduces the signing guide's canonical request exactly."""
        headers = {
            "Content-Type": "application/json",
            "Host": "service.region.example.com",
            "X-Sdk-Date": "20191115T033655Z",
        }
        text = canonical_request(
            "GET",
            "/v1/77b6a44cba5143ab91d13ab9a8ff44fd/vpcs",
            [("marker", "13551d6b-755d-4757-b956-536f674975c0"), ("limit", "2")],
            headers,
            ["content-type", "host", "x-sdk-date"],
            EMPTY_PAYLOAD_SHA256,
        )
        assert text == (
            "GET\n"
            "/v1/77b6a44cba5143ab91d13ab9a8ff44fd/vpcs/\n"
            "limit=2&marker=13551d6b-755d-4757-b956-536f674975c0\n"
            "content-type:application/json\n"
            "host:service.region.example.com\n"
            "x-sdk-date:20191115T033655Z\n"
            "\n"
            "content-type;host;x-sdk-date\n"
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        )

    def test_headers_already_present_are_not_added(self) -> None:
        """A caller's Host and X-Sdk-Date win; only Authorization is added."""
        added = sign(
            ak=AK,
            sk=SK,
            method="GET",
            url="https://127.0.0.1:8443/v3/config",
            headers={"host": "sms.example.com", "x-sdk-date": "20260101T000000Z"},
            body=b"",
            sdk_date="20300101T000000Z",
        )
        assert list(added) == ["Authorization"]

    def test_host_keeps_the_port(self) -> None:
        added = sign(
            ak=AK, sk=SK, method="GET", url="http://127.0.0.1:8080/v3/config", headers={}, body=b""
        )
        assert added["Host"] == "127.0.0.1:8080"
        assert re.fullmatch(r"\d{8}T\d{6}Z", added["X-Sdk-Date"])

    def test_non_json_content_is_an_unsigned_payload(self) -> None:
        """A body that is not JSON or BSON is declared and signed as UNSIGNED-PAYLOAD."""
        added = sign(
            ak=AK,
            sk=SK,
            method="PUT",
            url=f"https://{HOST}/upload",
            headers={"Content-Type": "application/octet-stream"},
            body=b"\x00\x01",
            sdk_date="20260101T000000Z",
        )
        assert added["X-Sdk-Content-Sha256"] == "UNSIGNED-PAYLOAD"
        assert "x-sdk-content-sha256" in added["Authorization"]

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"ak": ""}, "ak must not be empty"),
            ({"sk": ""}, "sk must not be empty"),
            ({"sdk_date": "2026-01-01T00:00:00Z"}, "X-Sdk-Date"),
        ],
    )
    def test_bad_input_is_named(self, kwargs: dict[str, str], message: str) -> None:
        arguments = {
            "ak": AK,
            "sk": SK,
            "method": "GET",
            "url": f"https://{HOST}/v3/config",
            "headers": {},
            "body": b"",
            **kwargs,
        }
        with pytest.raises(ValueError, match=message):
            sign(**arguments)  # type: ignore[arg-type]


class TestQuery:
    def test_typed_params_render_like_the_sdk(self) -> None:
        """None is dropped, booleans are lower case, enums are their value, lists repeat."""
        pairs = query_pairs(
            {
                "connected": False,
                "limit": 10,
                "name": None,
                "state": ["a", "b"],
                "config_key": ConfigKey.LINUX_CPU_LIMIT,
            }
        )
        assert pairs == [
            ("connected", "false"),
            ("limit", "10"),
            ("state", "a"),
            ("state", "b"),
            ("config_key", "LINUX_CPU_LIMIT"),
        ]

    def test_raw_query_keeps_repeats_blanks_and_plus(self) -> None:
        assert parse_query("a=1&a=2&b=&c&d=x%20y+z") == [
            ("a", "1"),
            ("a", "2"),
            ("b", ""),
            ("c", ""),
            ("d", "x y+z"),
        ]
