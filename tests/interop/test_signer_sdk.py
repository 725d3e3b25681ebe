"""Our SDK-HMAC-SHA256 signer against the official SDK's `Signer`, byte for byte."""

from __future__ import annotations

from datetime import datetime
from typing import Union
from urllib.parse import quote

from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.sdk_request import SdkRequest
from huaweicloudsdkcore.signer.signer import Signer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smsagent.api.signing import canonical_query_string, query_pairs, sign

QueryValue = Union[str, bool, list[str]]

AK = "AKEXAMPLE1234567890A"
SK = "SKEXAMPLESKEXAMPLESKEXAMPLESKEXAMPLE"

# Text as found in ids, names and header values: any character except surrogates and controls.
_text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=12)
_methods = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "get", "post"])
_hosts = st.sampled_from(
    ["sms.ap-southeast-3.myhuaweicloud.com", "127.0.0.1:8443", "[::1]:9000", "localhost"]
)
_header_names = st.from_regex(r"[A-Za-z][A-Za-z0-9_-]{0,15}", fullmatch=True)
_reserved = {"host", "x-sdk-date", "x-sdk-content-sha256", "content-type", "authorization"}


def _casing(name: str) -> st.SearchStrategy[str]:
    return st.sampled_from([name, name.lower(), name.upper()])


@st.composite
def _paths(draw: st.DrawFn) -> str:
    """A resource path built like the SDK builds one: each path parameter fully quoted."""
    segments = draw(st.lists(_text, min_size=1, max_size=5))
    trailing = draw(st.sampled_from(["", "/"]))
    return "/" + "/".join(quote(segment, safe="") for segment in segments) + trailing


@st.composite
def _query(draw: st.DrawFn) -> list[tuple[str, QueryValue]]:
    """SDK query params: strings, booleans, and repeated keys (as a list or as separate pairs)."""
    params = draw(
        st.dictionaries(
            st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=8),
            st.one_of(_text, st.booleans(), st.lists(_text, min_size=1, max_size=3)),
            max_size=5,
        )
    )
    pairs: list[tuple[str, QueryValue]] = []
    for key, value in params.items():
        if isinstance(value, list) and draw(st.booleans()):
            pairs.extend((key, item) for item in value)
        else:
            pairs.append((key, value))
    return pairs


@st.composite
def _headers(draw: st.DrawFn) -> dict[str, str]:
    """Headers in mixed case, some with underscores, plus the ones that steer the signer."""
    names = draw(st.lists(_header_names, max_size=5, unique_by=str.lower))
    headers = {name: draw(_text) for name in names if name.lower() not in _reserved}
    content_type = draw(
        st.sampled_from(
            [
                None,
                "application/json",
                "application/json;charset=UTF-8",
                "application/bson",
                "text/plain",
                "application/octet-stream",
            ]
        )
    )
    if content_type is not None:
        headers[draw(_casing("Content-Type"))] = content_type
    if draw(st.booleans()):
        declared = draw(st.sampled_from(["UNSIGNED-PAYLOAD", "ab" * 32]))
        headers[draw(_casing("X-Sdk-Content-Sha256"))] = declared
    if draw(st.booleans()):
        headers[draw(_casing("Host"))] = draw(_hosts)
    signed_at = draw(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 1, 1)))
    headers[draw(_casing("X-Sdk-Date"))] = signed_at.strftime("%Y%m%dT%H%M%SZ")
    return headers


def _url_query(pairs: list[tuple[str, QueryValue]]) -> str:
    """The query as a client would write it: unsorted, `%20` for spaces, booleans in lower case."""
    parts = []
    for key, value in pairs:
        values = value if isinstance(value, list) else [value]
        for item in values:
            text = str(item).lower() if isinstance(item, bool) else item
            parts.append(f"{quote(key, safe='')}={quote(text, safe='')}")
    return "&".join(parts)


def _sdk_sign(
    method: str,
    host: str,
    path: str,
    query: list[tuple[str, QueryValue]],
    headers: dict[str, str],
    body: bytes,
) -> SdkRequest:
    request = SdkRequest(
        method=method,
        schema="https",
        host=host,
        resource_path=path,
        # The SDK sorts list values in place; give it copies so our side sees the originals.
        query_params=[(k, list(v) if isinstance(v, list) else v) for k, v in query],
        header_params=dict(headers),
        body=body,
    )
    return Signer(BasicCredentials(ak=AK, sk=SK)).sign(request)


class TestSignerMatchesSdk:
    @settings(
        max_examples=600,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(
        method=_methods,
        host=_hosts,
        path=_paths(),
        query=_query(),
        headers=_headers(),
        body=st.one_of(st.binary(max_size=64), _text.map(str.encode)),
    )
    def test_authorization_is_byte_identical(
        self,
        method: str,
        host: str,
        path: str,
        query: list[tuple[str, QueryValue]],
        headers: dict[str, str],
        body: bytes,
    ) -> None:
        """For any request the SDK can sign, our Authorization header equals the SDK's."""
        url_query = _url_query(query)
        url = f"https://{host}{path}" + (f"?{url_query}" if url_query else "")

        ours = sign(ak=AK, sk=SK, method=method, url=url, headers=headers, body=body)
        theirs = _sdk_sign(method, host, path, query, headers, body)

        assert ours["Authorization"] == theirs.header_params["Authorization"]
        sent = {**headers, **ours}
        assert set(sent) == set(theirs.header_params)
        assert all(theirs.header_params[name] == value for name, value in ours.items())

    @settings(max_examples=200, deadline=None)
    @given(query=_query())
    def test_sent_query_is_the_sdk_uri(self, query: list[tuple[str, QueryValue]]) -> None:
        """The query our client sends for typed params is the one the SDK puts in its URI."""
        theirs = _sdk_sign(
            "GET", "localhost", "/v3/tasks", query, {"X-Sdk-Date": "20260101T000000Z"}, b""
        )
        typed: dict[str, object] = {}
        for key, value in query:
            previous = typed.get(key)
            if previous is None:
                typed[key] = value
            else:
                typed[key] = [*(previous if isinstance(previous, list) else [previous]), value]
        ours = canonical_query_string(query_pairs(typed))
        assert theirs.uri == "/v3/tasks" + (f"?{ours}" if ours else "")


class TestSpecVectors:
    def test_signing_guide_get_vector(self) -> None:
        """The signing guide's GET example gives its published signature."""
        added = sign(
            ak="QTWAOYTTINDUT2QVKYUC",
            sk="MFyfvK41ba2giqM7Uio6PznpdUKGpownRZlmVmHc",
            method="GET",
            url="https://service.region.example.com/v1/77b6a44cba5143ab91d13ab9a8ff44fd/vpcs"
            "?limit=2&marker=13551d6b-755d-4757-b956-536f674975c0",
            headers={"Content-Type": "application/json"},
            body=b"",
            sdk_date="20191115T033655Z",
        )
        assert added == {
            "X-Sdk-Date": "20191115T033655Z",
            "Host": "service.region.example.com",
            "Authorization": "SDK-HMAC-SHA256 Access=QTWAOYTTINDUT2QVKYUC, "
            "SignedHeaders=content-type;host;x-sdk-date, "
            "Signature=7be6668032f70418fcc22abc52071e57aff61b84a1d2381bb430d6870f4f6ebe",
        }

    def test_sms_command_result_post_vector(self) -> None:
        """The spec's SMS-shaped POST (query with a space) gives the recorded signature."""
        added = sign(
            ak="AKEXAMPLE1234567890A",
            sk="SKEXAMPLESKEXAMPLESKEXAMPLESKEXAMPLE",
            method="POST",
            url="https://sms.ap-southeast-3.myhuaweicloud.com/v3/sources/0123-abc/command_result"
            "?a=1&b=x%20y",
            headers={"Content-Type": "application/json", "X-Sdk-Date": "20260101T000000Z"},
            body=b'{"command_name":"START","result":"success","result_detail":{}}',
        )
        assert added["Authorization"] == (
            "SDK-HMAC-SHA256 Access=AKEXAMPLE1234567890A, "
            "SignedHeaders=content-type;host;x-sdk-date, "
            "Signature=a535b77797e81d5baaa749dd0925b830883933300cd2e9ac7d2f62e47af4c65f"
        )
        assert "X-Sdk-Date" not in added
