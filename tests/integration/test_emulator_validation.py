"""Bad input to a running emulator: a 400/404/413 with an SMS-style body naming the field, and the
emulator keeps serving."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest

from tests.support.emulator import AdminError, EmulatorProcess, HttpAnswer

GOOD_SOURCE: dict[str, Any] = {
    "name": "web01",
    "ip": "192.0.2.10",
    "os_type": "LINUX",
    "os_version": "Debian GNU/Linux 12",
    "agent_version": "0.1.0",
}
GOOD_PROGRESS: dict[str, Any] = {
    "subtask_name": "MIGRATE_LINUX_FILE",
    "progress": 10,
    "replicatesize": 1,
    "totalsize": 10,
    "process_trace": "",
}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    """One emulator for the whole table: every case must leave it serving."""
    with EmulatorProcess(tmp_path_factory.mktemp("emulator")).started() as process:
        yield process


@pytest.fixture(scope="module")
def task_id(served: EmulatorProcess) -> str:
    return served.create_task(served.register_source(name="validation-source"))


def with_(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    merged = {**base, **changes}
    return {key: value for key, value in merged.items() if value is not None}


def assert_error(answer: HttpAnswer, status: int, code: str, field: Optional[str]) -> None:
    assert answer.status == status, answer
    body = answer.json()
    assert body["error_code"] == code
    assert body["request_id"] == answer.headers["X-Request-Id"]
    assert answer.headers["Date"]
    if field is not None:
        assert f"Invalid field '{field}'" in body["error_msg"], body["error_msg"]
    assert "Traceback" not in body["error_msg"]


def assert_still_serving(process: EmulatorProcess) -> None:
    answer = process.request("GET", "/v3/config")
    assert answer.status == 200
    assert answer.json()["config"]
    assert answer.headers["X-Request-Id"] and answer.headers["Date"]


BODY_CASES = [
    pytest.param("POST", "/v3/sources", with_(GOOD_SOURCE, cpu_quantity="many"), "cpu_quantity",
                 id="wrong-type"),
    pytest.param("POST", "/v3/sources", with_(GOOD_SOURCE, os_type=None), "os_type",
                 id="missing-required"),
    pytest.param("POST", "/v3/sources", with_(GOOD_SOURCE, name="n" * 300), "name",
                 id="oversized-string"),
    pytest.param("POST", "/v3/sources", with_(GOOD_SOURCE, os_type="BEOS"), "os_type",
                 id="not-an-enum-value"),
    pytest.param("POST", "/v3/sources",
                 with_(GOOD_SOURCE, disks=[{"name": "/dev/vda", "device_use": "OS", "size": "big",
                                            "used_size": 1}]),
                 "disks[0].size", id="nested-field"),
    pytest.param("POST", "/v3/sources", [], "body", id="not-an-object"),
    pytest.param("PUT", "/v3/tasks/{task}/progress", with_(GOOD_PROGRESS, progress=150),
                 "progress", id="progress-over-100"),
    pytest.param("PUT", "/v3/tasks/{task}/progress", with_(GOOD_PROGRESS, subtask_name="NAP"),
                 "subtask_name", id="unknown-subtask"),
    pytest.param("POST", "/v3/tasks/{task}/action", {"operation": "explode"}, "operation",
                 id="unknown-operation"),
    pytest.param("POST", "/v3/tasks/{task}/speed-limit",
                 {"speed_limit": [{"start": "25:00", "end": "26:00", "speed": 10}]},
                 "speed_limit[0].start", id="bad-time-window"),
    pytest.param("PUT", "/v3/tasks/{task}", {"clone_server": {"name": 5}}, "clone_server.name",
                 id="bad-clone-server"),
    pytest.param("PUT", "/v3/tasks/{task}", {"target_server": {"disks": [{"size": "big"}]}},
                 "target_server.disks[0].size", id="bad-target-on-update"),
    pytest.param("PUT", "/v3/sources/{source}/changestate", {"copystate": "replicate"},
                 "migrationcycle", id="changestate-missing-field"),
    pytest.param("POST", "/v3/sources/{source}/command_result",
                 {"command_name": "START", "result": "maybe"}, "result", id="bad-result"),
    pytest.param("POST", "/v3/tasks",
                 {"name": "t", "type": "MIGRATE_FILE", "source_server": {"id": "nope"},
                  "region_name": "r", "region_id": "r", "project_name": "p", "project_id": "p"},
                 "source_server.id", id="task-for-unknown-source"),
]  # fmt: skip


@pytest.mark.parametrize(("method", "path", "body", "field"), BODY_CASES)
def test_bad_body_names_the_field(
    served: EmulatorProcess, task_id: str, method: str, path: str, body: Any, field: str
) -> None:
    """A body that breaks the wire model answers 400 SMS.9001 naming the first bad field."""
    source_id = served.state()["tasks"][0]["source_server"]["id"]
    path = path.format(task=task_id, source=source_id)
    assert_error(served.request(method, path, body), 400, "SMS.9001", field)
    assert_still_serving(served)


@pytest.mark.parametrize(
    "raw",
    [b"{not json", b"", b"\xff\xfe\x00", b'{"name": "a"'],
    ids=["garbage", "empty", "binary", "cut"],
)
def test_non_json_body_is_refused(served: EmulatorProcess, raw: bytes) -> None:
    """A body that is not JSON answers 400 naming the body."""
    assert_error(served.request("POST", "/v3/sources", raw=raw), 400, "SMS.9001", "body")
    assert_still_serving(served)


@pytest.mark.parametrize(
    ("path", "status", "code", "field"),
    [
        pytest.param("/v3/tasks/" + "a" * 300, 400, "SMS.9001", "task_id", id="id-300-chars"),
        pytest.param("/v3/tasks/..%2F..%2Fconfig", 400, "SMS.9001", "task_id", id="encoded-dotdot"),
        pytest.param("/v3/sources/a%20b/command", 400, "SMS.9001", "server_id", id="space-in-id"),
        pytest.param("/v3/tasks/../../etc/passwd", 404, "APIGW.0101", None, id="dotdot-path"),
        pytest.param("/v3/tasks/" + "f" * 32, 404, "SMS.7703", None, id="unknown-task"),
        pytest.param("/v3/sources/" + "f" * 32 + "/command", 404, "SMS.7701", None,
                     id="unknown-source"),
        pytest.param("/v3/no-such-api", 404, "APIGW.0101", None, id="unknown-route"),
        pytest.param("/v3/sources?limit=many", 400, "SMS.9001", "limit", id="bad-query"),
    ],
)  # fmt: skip
def test_bad_path_or_query(
    served: EmulatorProcess, path: str, status: int, code: str, field: Optional[str]
) -> None:
    """A malformed id or query is a 400 naming the parameter; an unknown one is an SMS 404."""
    assert_error(served.request("GET", path), status, code, field)
    assert_still_serving(served)


def test_unknown_config_key_is_refused(served: EmulatorProcess, task_id: str) -> None:
    """`?config_key=` must be one of the documented keys."""
    answer = served.request("GET", f"/v3/tasks/{task_id}/configuration-setting?config_key=NOPE")
    assert_error(answer, 400, "SMS.9001", "config_key")


def test_oversized_body_is_refused(served: EmulatorProcess) -> None:
    """A body over the size limit answers 413 and the emulator keeps serving."""
    raw = b'{"name": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    assert_error(served.request("POST", "/v3/sources", raw=raw), 413, "SMS.9001", "body")
    assert_still_serving(served)


def test_bad_target_server_names_the_nested_field(served: EmulatorProcess) -> None:
    """A target server that ShowTask could not serve is refused when the task is created."""
    source_id = served.register_source(name="target-check", ip="192.0.2.98")
    with pytest.raises(AdminError) as raised:
        served.create_task(source_id, target_server={"disks": "vda"})
    assert raised.value.status == 400
    assert "Invalid field 'target_server.disks'" in raised.value.body["error_msg"]
    assert_still_serving(served)


def test_second_task_for_a_source_is_refused(served: EmulatorProcess, task_id: str) -> None:
    """A source holds one task: creating another answers 400 SMS.7705."""
    task = next(t for t in served.state()["tasks"] if t["id"] == task_id)
    with pytest.raises(AdminError) as raised:
        served.create_task(task["source_server"]["id"])
    assert (raised.value.status, raised.value.body["error_code"]) == (400, "SMS.7705")


def test_good_request_after_bad_one_is_served_and_recorded(tmp_path: Path) -> None:
    """After a refused body the same call with a good body registers the source."""
    with EmulatorProcess(tmp_path).started() as process:
        assert process.request("POST", "/v3/sources", {"name": 1}).status == 400
        answer = process.request("POST", "/v3/sources", GOOD_SOURCE)
        assert answer.status == 200
        assert [s["id"] for s in process.state()["sources"]] == [answer.json()["id"]]
        statuses = process.state()["requests"]["POST /v3/sources"]["statuses"]
        assert statuses == {"400": 1, "200": 1}
