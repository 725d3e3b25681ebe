"""Fault injection: latency, 5xx with Retry-After, resets, malformed JSON, budgets, seeds."""

from __future__ import annotations

import http.client
import json
import time

import pytest

from tests.support.emulator import AdminError, EmulatorFactory, EmulatorProcess


def statuses(process: EmulatorProcess, count: int) -> list[int]:
    return [process.request("GET", "/v3/config").status for _ in range(count)]


def test_latency_delays_sms_calls_only(emulator: EmulatorProcess) -> None:
    """`latency_s` delays every SMS answer; the admin API answers at once."""
    emulator.set_faults(latency_s=1.0)
    started = time.monotonic()
    assert emulator.request("GET", "/v3/config").status == 200
    assert time.monotonic() - started >= 1.0
    started = time.monotonic()
    emulator.state()
    assert time.monotonic() - started < 1.0


def test_injected_503_carries_retry_after(emulator: EmulatorProcess) -> None:
    """`error_rate` 1 answers 503 with Retry-After and an SMS-style body."""
    emulator.set_faults(error_rate=1.0, retry_after_s=3)
    answer = emulator.request("GET", "/v3/config")
    assert answer.status == 503
    assert answer.headers["Retry-After"] == "3"
    assert answer.json()["error_code"] == "SMS.2007"
    assert answer.headers["X-Request-Id"] == answer.json()["request_id"]


def test_injected_500_without_retry_after(emulator: EmulatorProcess) -> None:
    """`error_status` 500 with `retry_after_s` null answers 500 without the header."""
    emulator.set_faults(error_rate=1.0, error_status=500, retry_after_s=None)
    answer = emulator.request("GET", "/v3/config")
    assert answer.status == 500
    assert "Retry-After" not in answer.headers


def test_max_faults_stops_after_the_budget(emulator: EmulatorProcess) -> None:
    """With `max_faults` 2, two calls fail and the rest are served."""
    emulator.set_faults(error_rate=1.0, max_faults=2)
    assert statuses(emulator, 4) == [503, 503, 200, 200]
    assert emulator.state()["faults_injected"] == 2


def test_reset_drops_the_connection(emulator: EmulatorProcess) -> None:
    """`reset_rate` 1 resets the connection; the request log records status 0."""
    emulator.set_faults(reset_rate=1.0, max_faults=1)
    with pytest.raises((OSError, http.client.HTTPException)):
        emulator.request("GET", "/v3/config")
    assert emulator.request("GET", "/v3/config").status == 200
    assert emulator.state()["requests"]["GET /v3/config"]["statuses"] == {"0": 1, "200": 1}


def test_malformed_answer_is_not_json(emulator: EmulatorProcess) -> None:
    """`malformed_rate` 1 answers 200 with a JSON body cut short."""
    emulator.set_faults(malformed_rate=1.0)
    answer = emulator.request("GET", "/v3/config")
    assert answer.status == 200
    assert answer.headers["Content-Type"].startswith("application/json")
    with pytest.raises(json.JSONDecodeError):
        json.loads(answer.body)


def test_path_pattern_limits_faults(emulator: EmulatorProcess) -> None:
    """With `path_pattern`, only matching paths fail."""
    source_id = emulator.register_source()
    emulator.set_faults(error_rate=1.0, path_pattern=r"/command$")
    assert emulator.request("GET", "/v3/config").status == 200
    assert emulator.request("GET", f"/v3/sources/{source_id}/command").status == 503


def test_admin_calls_are_never_faulted(emulator: EmulatorProcess) -> None:
    """Errors and resets on every SMS call leave the admin API working."""
    emulator.set_faults(error_rate=1.0, reset_rate=1.0)
    assert emulator.state()["faults"]["reset_rate"] == 1.0
    emulator.set_faults()
    assert emulator.request("GET", "/v3/config").status == 200


def test_same_seed_same_faults(start_emulator: EmulatorFactory) -> None:
    """Two emulators with the same seed fail the same calls of the same sequence."""
    runs = [statuses(start_emulator(seed=42, error_rate=0.5), 40) for _ in range(2)]
    assert runs[0] == runs[1]
    assert set(runs[0]) == {200, 503}


def test_reset_restores_start_up_faults_and_forgets_data(start_emulator: EmulatorFactory) -> None:
    """`POST /_emulator/reset` forgets sources and requests and restores the flags' faults."""
    process = start_emulator(error_rate=1.0, fault_path="/v3/tasks", seed=1)
    process.register_source()
    process.set_faults()
    process.reset()
    state = process.state()
    assert (state["sources"], state["requests"]) == ([], {})
    assert (state["faults"]["error_rate"], state["faults"]["path_pattern"]) == (1.0, "/v3/tasks")


def test_start_up_fault_flags(start_emulator: EmulatorFactory) -> None:
    """Fault flags act from the first request."""
    process = start_emulator(error_rate=1, error_status=500, retry_after=9, max_faults=1)
    answer = process.request("GET", "/v3/config")
    assert (answer.status, answer.headers["Retry-After"]) == (500, "9")
    assert process.request("GET", "/v3/config").status == 200


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"error_rate": 2}, "error_rate"),
        ({"error_status": 502}, "error_status"),
        ({"path_pattern": "("}, "path_pattern"),
        ({"latency": 1}, "latency"),
    ],
)
def test_bad_fault_settings_are_refused(
    emulator: EmulatorProcess, settings: dict[str, object], field: str
) -> None:
    """A bad fault setting answers 400 naming it and changes nothing."""
    with pytest.raises(AdminError) as raised:
        emulator.admin("PUT", "/faults", settings)
    assert raised.value.status == 400
    assert f"Invalid field '{field}'" in raised.value.body["error_msg"]
    assert emulator.state()["faults"]["error_rate"] == 0.0
