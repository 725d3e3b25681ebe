"""UPLOAD_LOG end to end: a running agent bundles its logs and puts them into the bucket the
console named, through the emulator's object store (which checks the SigV4 signature); boto3, a
client the agent does not use, reads the archive back. The archive holds the task's lines and no
secret; a bucket that refuses gives a `fail` result, and the agent goes on with the next command.
"""

from __future__ import annotations

import base64
import io
import json
import secrets
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from smsagent.target.session import store_private_key
from tests.support.agent import AgentProcess
from tests.support.emulator import EmulatorProcess
from tests.support.fscopy import CopyJob

BUCKET = "smsagent-logs"
DENIED = "refusing-bucket"
REGION = "ap-southeast-3"
RESULT_TIMEOUT_S = 90.0


def fake_private_key() -> str:
    """A PEM block of random bytes: shaped like a key, so a leak of it is found by grep."""
    body = base64.b64encode(secrets.token_bytes(600)).decode()
    lines = [body[i : i + 70] for i in range(0, len(body), 70)]
    return "\n".join(
        ["-----BEGIN OPENSSH PRIVATE KEY-----", *lines, "-----END OPENSSH PRIVATE KEY-----", ""]
    )


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[EmulatorProcess]:
    """An emulator serving an object store with one open and one refusing bucket."""
    process = EmulatorProcess(tmp_path / "emulator")
    with process.started(obs_port=0, obs_bucket=BUCKET, obs_deny_bucket=DENIED) as started:
        yield started


@pytest.fixture
def agent(emulator: EmulatorProcess, tmp_path: Path) -> Iterator[AgentProcess]:
    """An agent whose OBS endpoint is the emulator's object store."""
    settings = {"SMSAGENT_OBS_ENDPOINT": emulator.obs_url}
    process = AgentProcess(emulator, tmp_path / "agent", settings=settings).start()
    yield process
    process.stop()


def result_for(emulator: EmulatorProcess, command: str, count: int = 1) -> dict[str, Any]:
    """The `count`th result the agent sent for `command`."""
    results: list[dict[str, Any]] = emulator.wait_for(
        lambda state: (
            [[r for r in state["command_results"] if r["command_name"] == command][count - 1]]
            if len([r for r in state["command_results"] if r["command_name"] == command]) >= count
            else None
        ),
        timeout_s=RESULT_TIMEOUT_S,
    )
    return results[0]


def read_back(emulator: EmulatorProcess, key: str) -> dict[str, bytes]:
    """The archive's members, read with boto3 and SigV4 of its own."""
    client = boto3.client(
        "s3",
        endpoint_url=emulator.obs_url,
        aws_access_key_id=emulator.ak,
        aws_secret_access_key=emulator.sk,
        region_name=REGION,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )
    data = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return {
            member.name.split("/", 1)[1]: tar.extractfile(member).read()  # type: ignore[union-attr]
            for member in tar.getmembers()
        }


@pytest.mark.slow
def test_upload_log_puts_the_bundle_without_secrets(
    emulator: EmulatorProcess, agent: AgentProcess, tmp_path: Path
) -> None:
    source_id = agent.wait_for_event("agent_ready")["server_id"]
    task_id = CopyJob.build(tmp_path / "tree", files=5).create_task(emulator, source_id)
    key = fake_private_key()
    emulator.set_cert_key(task_id, private_key=key, cert="cert", ca="ca")
    # MIGRATE_FILE keeps the task key in the state directory before it copies; it needs a
    # target host, so the key is put where it would be while the test task type copies.
    store_private_key(agent.state_dir, task_id, key)
    emulator.action(task_id, "start")
    assert result_for(emulator, "START")["result"] == "success"

    emulator.collect_log(task_id, BUCKET)

    result = result_for(emulator, "UPLOAD_LOG")
    assert result["result"] == "success", result
    detail = result["result_detail"]
    assert detail["bucket"] == BUCKET
    task = emulator.request("GET", f"/v3/tasks/{task_id}").json()
    assert (task["log_collect_status"], task["log_bucket"]) == ("UPLOADED", BUCKET)

    members = read_back(emulator, detail["object"])
    assert {"manifest.json", "agent-log.jsonl", "check.json", "inventory.json"} <= set(members)
    assert {"unit-status.txt", "state/task.json", "state/agent.json"} <= set(members)
    assert members["unit-status.txt"].startswith(b"unknown: ")
    events = [json.loads(line) for line in members["agent-log.jsonl"].splitlines()]
    copied = [e for e in events if e["event"] == "fscopy_file_copied"]
    assert len(copied) >= 5
    assert all(e["task_id"] == task_id for e in copied)
    assert json.loads(members["state/task.json"])["task_id"] == task_id
    assert json.loads(members["inventory.json"].split(b"\n---")[0])["os_type"] == "LINUX"
    assert json.loads(members["check.json"].split(b"\n---")[0])
    assert json.loads(members["manifest.json"])["task_id"] == task_id
    assert not any(name.startswith("state/keys/") for name in members)

    everything = b"\n".join(members.values())
    assert emulator.sk.encode() not in everything
    assert emulator.token.encode() not in everything
    for line in key.splitlines()[1:-1]:
        assert line.encode() not in everything
    assert b"PRIVATE KEY-----\n" not in everything


@pytest.mark.slow
def test_a_refusing_bucket_fails_and_the_next_upload_is_done(
    emulator: EmulatorProcess, agent: AgentProcess
) -> None:
    source_id = agent.wait_for_event("agent_ready")["server_id"]
    task_id = emulator.create_task(source_id)

    emulator.collect_log(task_id, DENIED)

    refused = result_for(emulator, "UPLOAD_LOG")
    assert refused["result"] == "fail"
    detail = refused["result_detail"]
    assert detail["error_code"] == "SMSAGENT.LOG_UPLOAD_FAILED"
    assert "AccessDenied (HTTP 403)" in detail["message"]
    task = emulator.request("GET", f"/v3/tasks/{task_id}").json()
    assert task["log_collect_status"] == "UPLOAD_FAIL"

    emulator.collect_log(task_id, BUCKET)

    assert result_for(emulator, "UPLOAD_LOG", count=2)["result"] == "success"
    assert agent.running
    assert agent.problems() == []
    statuses = [(r["method"], r["status"]) for r in emulator.state()["obs"]["requests"]]
    assert statuses == [("PUT", 403), ("PUT", 200)]
