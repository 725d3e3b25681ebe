"""Our `SmsClient` and the official SDK replay one flow on twin emulators and leave the same state.

The flow is data (`tests.support.flows`); one driver turns each step into the SDK's request
objects, the other into our models. Each drives its own fresh emulator process (same flags,
same seed). Then the two state dumps, the per-task documents the dump leaves out and every
answer are normalized and compared.

What normalization hides, and why it differs between any two runs:
* generated ids (sources, tasks, commands: random hex) become placeholders: the flow's saved
  ids by their name, any other in order of first appearance;
* wall-clock times become a marker, so their presence is still compared but not their value:
  `add_date`, `create_date`, `start_date`, `finish_date`, `end_date`, `last_visit_time`,
  `state_action_time`, `stage_action_time`, `estimate_complete_time` (epoch ms set on arrival),
  `total_time` (ms between two of those), `received_at`, `created_at`, `delivered_at`,
  `completed_at` (epoch s set on arrival) and each route's `at` list (arrival of each request;
  its length is the route's `count`, which is compared).
Request ids are only in headers and error bodies, and this flow has no error.
"""

from __future__ import annotations

import asyncio
import json
import re
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Final

import huaweicloudsdksms.v3 as sdk
import pytest
from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.http.http_config import HttpConfig
from huaweicloudsdkcore.utils.http_utils import sanitize_for_serialization
from pydantic import BaseModel, SecretStr

from smsagent.api.auth import AkSkCredentials
from smsagent.api.client import SmsClient
from tests.support.emulator import EmulatorFactory, EmulatorProcess
from tests.support.flows import CONSOLE_AND_AGENT_FLOW, PROJECT_ID, AdminStep, FlowStep, Step

EMULATOR_FLAGS: Final[Mapping[str, Any]] = {"command_delivery": "once", "seed": 7}
PER_RUN_FIELDS: Final = frozenset(
    {
        "add_date",
        "create_date",
        "start_date",
        "finish_date",
        "end_date",
        "last_visit_time",
        "state_action_time",
        "stage_action_time",
        "estimate_complete_time",
        "total_time",
        "received_at",
        "created_at",
        "delivered_at",
        "completed_at",
        "at",
    }
)
TIME_MARKER: Final = "<time>"
HEX_ID: Final = re.compile(r"\b[0-9a-f]{32}\b")
# Hex ids the flow itself sends (the project id) are data, not generated.
SENT_IDS: Final = frozenset(HEX_ID.findall(repr(CONSOLE_AND_AGENT_FLOW)))
# Per-task documents the state dump does not show, read back the same way for both runs.
TASK_DOCUMENTS: Final = ("speed-limit", "configuration-setting", "consistency-result")

pytestmark = pytest.mark.timeout(60)


@dataclass
class Run:
    """What one driver saw: each step's operation and answer (wire JSON), and the saved ids."""

    answers: list[tuple[str, Any]] = field(default_factory=list)
    saved: dict[str, str] = field(default_factory=dict)

    def record(self, step: FlowStep, answer: Any) -> None:
        name = step.operation if isinstance(step, Step) else f"{step.method} {step.path}"
        self.answers.append((name, answer))
        if isinstance(step, Step) and step.save:
            self.saved[step.save] = answer["id"]


def camel(operation: str) -> str:
    """`update_task_speed` -> `UpdateTaskSpeed`, the SDK's name stem for its request classes."""
    return "".join(part.title() for part in operation.split("_"))


def plain(value: Any) -> Any:
    """JSON values only: the SDK parses every float as a Decimal."""
    return json.loads(json.dumps(value, default=float))


def carried_by(parsed: Any, wire: Any) -> bool:
    """Every field the SDK parsed is in the wire answer with the same value."""
    if isinstance(parsed, dict):
        return isinstance(wire, dict) and all(
            key in wire and carried_by(value, wire[key]) for key, value in parsed.items()
        )
    if isinstance(parsed, list):
        return (
            isinstance(wire, list)
            and len(parsed) == len(wire)
            and all(carried_by(item, other) for item, other in zip(parsed, wire))
        )
    return bool(parsed == wire)


# --- the official SDK ---


def sdk_client(emulator: EmulatorProcess) -> Any:
    """The SDK's SmsClient on the emulator; with a project id it never calls IAM."""
    credentials = BasicCredentials(emulator.ak, emulator.sk, PROJECT_ID)
    credentials.with_iam_endpoint(emulator.url)
    config = HttpConfig.get_default_config()
    config.timeout = (5, 10)
    builder = sdk.SmsClient.new_builder().with_credentials(credentials)
    return builder.with_endpoint(emulator.url).with_http_config(config).build()


def sdk_call(client: Any, step: Step, saved: Mapping[str, str]) -> Any:
    """One step through the SDK; answers the body as sent once the SDK's parse of it checks out."""
    params, body = step.resolved(saved)
    wire_request = {**params, **({} if body is None else {"body": body})}
    # The SDK's own deserializer builds the request class and every nested body model.
    request = client._deserialize(wire_request, f"{camel(step.operation)}Request")
    response = getattr(client, step.operation)(request)
    assert isinstance(response, getattr(sdk, f"{camel(step.operation)}Response"))
    assert response.status_code == 200
    answer = response.to_json_object() or {}
    parsed = plain(sanitize_for_serialization(response))
    assert carried_by(parsed, answer), (step.operation, parsed, answer)
    return answer


def run_with_sdk(emulator: EmulatorProcess, flow: Iterable[FlowStep]) -> Run:
    client = sdk_client(emulator)
    run = Run()
    for step in flow:
        if isinstance(step, AdminStep):
            run.record(step, admin_call(emulator, step, run.saved))
        else:
            run.record(step, sdk_call(client, step, run.saved))
    return run


# --- our SmsClient ---


async def our_call(client: SmsClient, step: Step, saved: Mapping[str, str]) -> Any:
    """One step through our client; answers the fields our model parsed from the body."""
    params, body = step.resolved(saved)
    method: Callable[..., Any] = getattr(client, step.operation)
    hints = typing.get_type_hints(method)
    if body is not None:
        params["body"] = hints["body"].model_validate(body)
    answer = await method(**params)
    if hints["return"] is type(None):
        assert answer is None
        return {}
    assert isinstance(answer, hints["return"])
    assert isinstance(answer, BaseModel)
    # The fields the answer carried, unknown ones included (response models keep them).
    return answer.model_dump(mode="json", exclude_unset=True)


async def run_with_ours(emulator: EmulatorProcess, flow: Iterable[FlowStep]) -> Run:
    credentials = AkSkCredentials(emulator.ak, SecretStr(emulator.sk), PROJECT_ID)
    run = Run()
    async with SmsClient(emulator.url, credentials) as client:
        for step in flow:
            if isinstance(step, AdminStep):
                answer = await asyncio.to_thread(admin_call, emulator, step, run.saved)
                run.record(step, answer)
            else:
                run.record(step, await our_call(client, step, run.saved))
    return run


# --- the emulator, read the same way for both ---


def admin_call(emulator: EmulatorProcess, step: AdminStep, saved: Mapping[str, str]) -> Any:
    path, body = step.resolved(saved)
    return emulator.admin(step.method, path, body)


def stored_state(emulator: EmulatorProcess) -> dict[str, Any]:
    """The state dump, then each task's speed limits, settings and consistency results."""
    state = emulator.state()
    documents: dict[str, Any] = {}
    for task in state["tasks"]:
        for document in TASK_DOCUMENTS:
            answer = emulator.request("GET", f"/v3/tasks/{task['id']}/{document}")
            assert answer.status == 200, answer
            documents[f"{task['id']} {document}"] = answer.json()
    state["task_documents"] = documents
    return state


# --- normalization ---


class Normalizer:
    """Placeholders for generated ids and markers for times, as the module says."""

    def __init__(self, saved: Mapping[str, str]) -> None:
        self._names = {value: f"<{name}>" for name, value in saved.items()}

    def __call__(self, value: Any) -> Any:
        if isinstance(value, dict):
            return {
                self._text(key): TIME_MARKER if key in PER_RUN_FIELDS else self(value[key])
                for key in sorted(value)
            }
        if isinstance(value, (list, tuple)):
            return [self(item) for item in value]
        if isinstance(value, str):
            return self._text(value)
        return value

    def _text(self, text: str) -> str:
        return HEX_ID.sub(self._placeholder, text)

    def _placeholder(self, match: re.Match[str]) -> str:
        found = match.group(0)
        if found in SENT_IDS:
            return found
        return self._names.setdefault(found, f"<id-{len(self._names) + 1}>")


def normalized(run: Run, state: dict[str, Any]) -> tuple[Any, Any]:
    """The state and the answers of one run, with one placeholder per id across both."""
    normalize = Normalizer(run.saved)
    return normalize(state), normalize(run.answers)


def assert_flow_took_effect(state: Mapping[str, Any]) -> None:
    """The compared state is the flow's, not two empty emulators that agree."""
    (task,) = state["tasks"]
    assert (task["id"], task["state"]) == ("<task_id>", "ABORT")
    assert [(c["command_name"], c["state"]) for c in state["commands"]] == [
        ("START", "superseded"),
        ("STOP", "done"),
    ]
    for section in ("sources", "command_results", "progress", "changestates", "actions"):
        assert state[section], section
    documents = state["task_documents"]
    assert documents["<task_id> speed-limit"]["speed_limit"]
    assert documents["<task_id> configuration-setting"]["configurations"]
    assert documents["<task_id> consistency-result"]["result_list"]


async def test_our_client_leaves_the_state_the_sdk_leaves(start_emulator: EmulatorFactory) -> None:
    """The same flow through the SDK and through our client: same stored state, same answers."""
    sdk_emulator = start_emulator(**EMULATOR_FLAGS)
    sdk_run = await asyncio.to_thread(run_with_sdk, sdk_emulator, CONSOLE_AND_AGENT_FLOW)
    sdk_state, sdk_answers = normalized(sdk_run, stored_state(sdk_emulator))

    our_emulator = start_emulator(**EMULATOR_FLAGS)
    our_run = await run_with_ours(our_emulator, CONSOLE_AND_AGENT_FLOW)
    our_state, our_answers = normalized(our_run, stored_state(our_emulator))

    assert_flow_took_effect(sdk_state)
    assert sorted(our_state["requests"]) == sorted(sdk_state["requests"])
    for section in sdk_state:
        assert our_state[section] == sdk_state[section], section
    assert sorted(our_state) == sorted(sdk_state)
    assert len(our_answers) == len(sdk_answers) == len(CONSOLE_AND_AGENT_FLOW)
    for index, (ours, theirs) in enumerate(zip(our_answers, sdk_answers)):
        assert ours == theirs, f"step {index}: {theirs[0]}"
