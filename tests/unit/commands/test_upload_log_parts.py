"""The pure parts of UPLOAD_LOG: the bucket name, the OBS endpoint and region, the secrets a
bundle removes, and the handler's answers that need no upload."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import pytest

from smsagent.agent.handler_api import Action, CommandEnvelope
from smsagent.agent.store import Store
from smsagent.api.enums import CommandName, CommandResult
from smsagent.commands.logbundle import Bundle, Scrubber, settings_env, state_documents
from smsagent.commands.obsupload import UploadError, bucket_problem, obs_target
from smsagent.commands.upload_log import (
    ERROR_BAD_BUCKET,
    ERROR_NO_AKSK,
    UploadLogHandler,
    stored_task_id,
)
from smsagent.config import Settings
from smsagent.log import REDACTED, RecentEvents, redact_private_keys
from tests.support.agentcore import agent_settings, handler_context

KEY = (
    "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7bq0mK3yQ9Y\nabc\n"
    "-----END RSA PRIVATE KEY-----\n"
)


def aksk(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"token": None, "ak": "AKEXAMPLE0000000001", "sk": "sk-secret-0001"}
    return agent_settings(tmp_path, **{**values, **overrides})


@pytest.mark.parametrize(
    ("bucket", "ok"),
    [
        ("smsagent-logs", True),
        ("a.b-c9", True),
        (None, False),
        ("", False),
        ("ab", False),
        ("Upper", False),
        ("-leading", False),
        ("a..b", False),
        ("a.-b", False),
        ("192.168.1.1", False),
        ("x" * 64, False),
    ],
)
def test_bucket_names(bucket: Optional[str], ok: bool) -> None:
    assert (bucket_problem(bucket) is None) is ok


def test_the_endpoint_comes_from_the_task_region_and_the_sms_domain(tmp_path: Path) -> None:
    settings = aksk(tmp_path, endpoint="https://sms.cn-north-4.myhuaweicloud.com")
    target = obs_target(settings, "logs", "ap-southeast-3")
    assert (target.endpoint, target.region) == (
        "https://obs.ap-southeast-3.myhuaweicloud.com",
        "ap-southeast-3",
    )
    assert target.virtual_host_style
    assert obs_target(settings, "logs", None).region == "cn-north-4"


def test_a_set_endpoint_wins_and_is_addressed_by_path(tmp_path: Path) -> None:
    settings = aksk(tmp_path, obs_endpoint="http://127.0.0.1:9000")
    target = obs_target(settings, "logs", "ap-southeast-3")
    assert (target.endpoint, target.region) == ("http://127.0.0.1:9000", "ap-southeast-3")
    assert not target.virtual_host_style
    named = aksk(tmp_path, obs_endpoint="https://obs.eu-west-101.myhuaweicloud.eu")
    assert obs_target(named, "logs", "ap-southeast-3").region == "eu-west-101"


def test_no_region_anywhere_is_a_clear_failure(tmp_path: Path) -> None:
    with pytest.raises(UploadError, match="SMSAGENT_OBS_ENDPOINT"):
        obs_target(aksk(tmp_path), "logs", None)


def test_the_scrubber_removes_registered_extra_and_key_blocks() -> None:
    scrubber = Scrubber(["extra-secret-value", KEY])
    text = f"a extra-secret-value b {KEY} c MIIEowIBAAKCAQEA7bq0mK3yQ9Y"
    cleaned = scrubber.text(text)
    assert "extra-secret-value" not in cleaned
    assert "MIIEowIBAAKCAQEA7bq0mK3yQ9Y" not in cleaned
    nested = scrubber.value({"sk": "x", "list": [{"private_key": "y"}], "n": 1, "ok": "fine"})
    assert nested == {"sk": REDACTED, "list": [{"private_key": REDACTED}], "n": 1, "ok": "fine"}


def test_a_key_cut_short_is_still_redacted() -> None:
    cut = "before -----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA"
    assert redact_private_keys(cut) == f"before {REDACTED}"


def test_recent_events_keep_the_last_ones() -> None:
    recent = RecentEvents(2)
    for n in range(3):
        recent(None, "info", {"event": f"e{n}"})
    assert [e["event"] for e in recent.snapshot()] == ["e1", "e2"]


def test_state_documents_leave_the_keys_out(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "t1.key").write_text(KEY)
    (tmp_path / "keys" / "t1.json").write_text("{}")
    (tmp_path / "task.json").write_text(json.dumps({"task_id": "t1", "passphrase": "pp"}))
    bundle = Bundle()
    state_documents(tmp_path, Scrubber(), bundle)
    names = [member.name for member in bundle.members]
    assert names == ["state/task.json", "state-files.txt"]
    assert json.loads(bundle.members[0].data)["passphrase"] == REDACTED
    assert b"keys/t1.key" in bundle.members[1].data
    assert stored_task_id(tmp_path) == "t1"


def test_settings_become_variables_the_check_reads_back(tmp_path: Path) -> None:
    env = settings_env(aksk(tmp_path, disabled_handlers=["a", "b"]))
    assert env["SMSAGENT_SK"] == "sk-secret-0001"
    assert env["SMSAGENT_DISABLED_HANDLERS"] == "a,b"
    assert env["SMSAGENT_VERIFY_TLS"] == "true"
    assert "SMSAGENT_TOKEN" not in env


async def test_a_bad_bucket_or_no_aksk_fails_before_any_work(tmp_path: Path, store: Store) -> None:
    handler = UploadLogHandler()
    envelope = CommandEnvelope(CommandName.UPLOAD_LOG, Action.upload_log, 1, bucket="Bad_Name")
    with_aksk = replace(handler_context(store, agent_settings(tmp_path)), settings=aksk(tmp_path))
    outcome = await handler.handle(with_aksk, envelope)
    assert (outcome.result, outcome.error_code) == (CommandResult.fail, ERROR_BAD_BUCKET)
    assert "command_param.bucket" in outcome.message
    good = CommandEnvelope(CommandName.UPLOAD_LOG, Action.upload_log, 2, bucket="logs")
    outcome = await handler.handle(handler_context(store, agent_settings(tmp_path)), good)
    assert (outcome.result, outcome.error_code) == (CommandResult.fail, ERROR_NO_AKSK)
