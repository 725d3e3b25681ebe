"""The emulator's gateway: AK/SK signatures, clock skew, fixed and IAM-issued tokens, expiry."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone

import aiohttp
import pytest
from pydantic import SecretStr

from smsagent.api.auth import IamTokenCredentials
from smsagent.api.signing import format_sdk_date, sign
from tests.support.emulator import EmulatorFactory, EmulatorProcess, HttpAnswer

IAM_FLAGS = {"iam_user": "migrator", "iam_password": "s3cret-pw", "iam_domain": "example-account"}


def sdk_date(offset_s: float) -> str:
    return format_sdk_date(datetime.now(timezone.utc) + timedelta(seconds=offset_s))


def assert_refused(answer: HttpAnswer, code: str, words: str) -> None:
    assert answer.status == 401, answer
    body = answer.json()
    assert body["error_code"] == code
    assert words in body["error_msg"]
    assert body["request_id"] == answer.headers["X-Request-Id"]


def token_body(password: str = IAM_FLAGS["iam_password"]) -> dict[str, object]:
    user = {"name": "migrator", "password": password, "domain": {"name": "example-account"}}
    identity = {"methods": ["password"], "password": {"user": user}}
    return {"auth": {"identity": identity, "scope": {"domain": {"name": "example-account"}}}}


def test_signed_request_is_served(emulator: EmulatorProcess) -> None:
    """A request signed with the emulator's AK/SK passes the gateway."""
    answer = emulator.signed_request("GET", "/v3/sources?limit=10&offset=0")
    assert answer.status == 200
    assert answer.json() == {"count": 0, "source_servers": []}


def test_missing_signature_is_refused(emulator: EmulatorProcess) -> None:
    """No Authorization and no token: 401 APIGW.0301."""
    answer = emulator.request("GET", "/v3/config", with_token=False)
    assert_refused(answer, "APIGW.0301", "Authorization not found")


def test_wrong_secret_key_is_refused(emulator: EmulatorProcess) -> None:
    """A signature made with another SK does not verify."""
    answer = emulator.signed_request("GET", "/v3/config", sk="another-secret-key")
    assert_refused(answer, "APIGW.0301", "verify aksk signature fail")


def test_unknown_access_key_is_refused(emulator: EmulatorProcess) -> None:
    """An access key the emulator does not know is refused without checking the signature."""
    headers = {"Content-Type": "application/json"}
    url = emulator.url + "/v3/config"
    headers.update(
        sign(ak="UNKNOWNAK", sk=emulator.sk, method="GET", url=url, headers=headers, body=b"")
    )
    answer = emulator.request("GET", "/v3/config", headers=headers, with_token=False)
    assert_refused(answer, "APIGW.0301", "ak not exist")


def test_body_changed_after_signing_is_refused(emulator: EmulatorProcess) -> None:
    """The signature covers the body: another body with the same headers fails."""
    body = json.dumps({"copystate": "replicate", "migrationcycle": "replicating"}).encode()
    url = emulator.url + "/v3/sources/abc/changestate"
    headers = {"Content-Type": "application/json"}
    headers.update(
        sign(ak=emulator.ak, sk=emulator.sk, method="PUT", url=url, headers=headers, body=body)
    )
    tampered = body.replace(b"replicate", b"finished", 1)
    answer = emulator.request(
        "PUT", "/v3/sources/abc/changestate", raw=tampered, headers=headers, with_token=False
    )
    assert_refused(answer, "APIGW.0301", "signature")


@pytest.mark.parametrize("offset_s", [-16 * 60, 16 * 60], ids=["16-min-behind", "16-min-ahead"])
def test_clock_skew_over_15_minutes_is_refused(emulator: EmulatorProcess, offset_s: int) -> None:
    """A signature dated more than 15 minutes from the emulator's clock is refused, saying so."""
    answer = emulator.signed_request("GET", "/v3/config", sdk_date=sdk_date(offset_s))
    assert_refused(answer, "APIGW.0301", "check the client clock")


def test_clock_skew_under_15_minutes_is_accepted(emulator: EmulatorProcess) -> None:
    """Fourteen minutes of skew still passes."""
    assert emulator.signed_request("GET", "/v3/config", sdk_date=sdk_date(-14 * 60)).status == 200


def test_fixed_token_and_wrong_token(emulator: EmulatorProcess) -> None:
    """The `--token` is accepted as X-Auth-Token; any other token is refused."""
    assert emulator.request("GET", "/v3/config").status == 200
    wrong = emulator.request("GET", "/v3/config", headers={"X-Auth-Token": "guess"})
    assert_refused(wrong, "APIGW.0301", "token invalid")


def test_expire_tokens_fault_refuses_tokens_but_not_signatures(emulator: EmulatorProcess) -> None:
    """While tokens are expired a token gets "The token must be updated"; AK/SK still works, and
    switching the fault off accepts the token again."""
    emulator.set_faults(expire_tokens=True)
    assert_refused(emulator.request("GET", "/v3/config"), "APIGW.0307", "The token must be updated")
    assert emulator.signed_request("GET", "/v3/config").status == 200
    emulator.set_faults()
    assert emulator.request("GET", "/v3/config").status == 200


def test_expire_tokens_flag_at_start_up(start_emulator: EmulatorFactory) -> None:
    """`--expire-tokens` refuses the fixed token from the first request."""
    process = start_emulator(expire_tokens=True)
    assert_refused(process.request("GET", "/v3/config"), "APIGW.0307", "must be updated")


def test_iam_issues_tokens_that_outlive_an_expiry(start_emulator: EmulatorFactory) -> None:
    """An IAM-issued token works; after an expiry it is refused and a new one works."""
    process = start_emulator(**IAM_FLAGS)
    issued = process.request(
        "POST", "/v3/auth/tokens?nocatalog=true", token_body(), with_token=False
    )
    assert issued.status == 201
    token = issued.headers["X-Subject-Token"]
    expires_at = datetime.fromisoformat(issued.json()["token"]["expires_at"].replace("Z", "+00:00"))
    assert expires_at > datetime.now(timezone.utc) + timedelta(hours=23)
    with_token = {"X-Auth-Token": token}
    assert process.request("GET", "/v3/config", headers=with_token).status == 200

    process.set_faults(expire_tokens=True)
    assert_refused(
        process.request("GET", "/v3/config", headers=with_token), "APIGW.0307", "updated"
    )
    renewed = process.request("POST", "/v3/auth/tokens", token_body(), with_token=False)
    fresh = {"X-Auth-Token": renewed.headers["X-Subject-Token"]}
    assert process.request("GET", "/v3/config", headers=fresh).status == 200


def test_iam_refuses_a_wrong_password(start_emulator: EmulatorFactory) -> None:
    """A wrong password gets 401 and no token."""
    process = start_emulator(**IAM_FLAGS)
    answer = process.request("POST", "/v3/auth/tokens", token_body("guess"), with_token=False)
    assert_refused(answer, "APIGW.0301", "password is wrong")
    assert "X-Subject-Token" not in answer.headers


def test_iam_token_lifetime(start_emulator: EmulatorFactory) -> None:
    """A token issued with `--token-ttl 1` is refused once its second has passed."""
    process = start_emulator(token_ttl=1, **IAM_FLAGS)
    issued = process.request("POST", "/v3/auth/tokens", token_body(), with_token=False)
    with_token = {"X-Auth-Token": issued.headers["X-Subject-Token"]}
    deadline = time.monotonic() + 10
    while process.request("GET", "/v3/config", headers=with_token).status == 200:
        assert time.monotonic() < deadline, "the token never expired"
        time.sleep(0.1)
    assert_refused(
        process.request("GET", "/v3/config", headers=with_token), "APIGW.0307", "updated"
    )


async def test_agent_iam_credentials_get_a_token(start_emulator: EmulatorFactory) -> None:
    """The agent's IAM token provider gets a token from the emulator that the emulator accepts."""
    process = start_emulator(**IAM_FLAGS)
    credentials = IamTokenCredentials(
        iam_endpoint=process.url,
        user=IAM_FLAGS["iam_user"],
        password=SecretStr(IAM_FLAGS["iam_password"]),
        domain=IAM_FLAGS["iam_domain"],
    )
    async with aiohttp.ClientSession() as session:
        credentials.attach(session)
        url = process.url + "/v3/config"
        headers = await credentials.headers_for("GET", url, {}, b"")
        async with session.get(url, headers=headers) as answer:
            assert answer.status == 200
    assert credentials.fetch_count == 1
