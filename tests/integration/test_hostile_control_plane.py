"""The whole agent (`smsagent run`) behind a hostile control plane: a proxy in front of the
emulator redirects the poll or the result, answers the poll with 50 MB or 800 MB, repeats one
command forever, or sends a 10,000-character task id.

Each scenario runs one agent, its own emulator and its own proxy. The proxy turns hostile when
the scenario's 30 s window opens; over the window it records every request. At the window's
end the test reads what a user would notice:

- the agent polled at most once a second: at most 31 command requests in 30 s, none less than
  0.9 s after the one before (the agent starts two polls at least 1.0 s apart whatever woke it;
  a poll that first sends an owed result reaches the proxy a little after it started);
- it still runs, and its peak resident memory (VmHWM) stayed under 100 MB;
- once the proxy is honest again, every result it owed reaches the emulator, each result key
  once, including the result held back while the proxy was hostile;
- its log holds no traceback.

Redirects and big bodies run with the fast test settings (1 s poll interval, 2 s backoff cap),
each with a STOP queued at the emulator as the window opens; repeats and the long id with a 5 s
poll interval and a 60 s cap, counting the agent's answers to the repeated command. A baseline
runs the same window through an honest proxy.

The scenarios of one kind run at once and share the wall clock, each timing its own window.
The ones that make the agent act on a command (repeats, the long id) run apart from the ones
that only refuse answers, so that a busy agent in one cannot skew the timings of the others.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Final, Optional, Union

import pytest

from smsagent.agent.backoff import JITTER
from tests.support.agent import RAW_EVENT, AgentProcess, Event
from tests.support.emulator import EmulatorProcess
from tests.support.hostile import MIB, POLL, RESULT, HostileProxy, Status, task_route

pytestmark = pytest.mark.slow

WINDOW_S: Final = 30.0
# One poll a second, counting the poll that opens the window.
MAX_POLLS: Final = int(WINDOW_S) + 1
POLL_FLOOR_S: Final = 0.9
PEAK_RSS_LIMIT_KIB: Final = 100 * 1024
# Commands the proxy repeats are acted on again only after a delay that starts at the poll
# interval and doubles up to the cap: at most once at the window's start and once per interval.
REPEAT_INTERVAL_S: Final = 5.0
REPEAT_CAP_S: Final = 60.0
MAX_ANSWERS: Final = 1 + int(WINDOW_S / REPEAT_INTERVAL_S)
REPEAT_SETTINGS: Final[Mapping[str, str]] = {
    "SMSAGENT_POLL_INTERVAL": str(REPEAT_INTERVAL_S),
    # As long as the idle interval: a task the repeat starts must not be what makes polls close.
    "SMSAGENT_ACTIVE_POLL_INTERVAL": str(REPEAT_INTERVAL_S),
    "SMSAGENT_BACKOFF_CAP": str(REPEAT_CAP_S),
}
LONG_ID: Final = "0123456789abcdef" * 625
# Scenarios starting their processes at once: enough to overlap, few enough that a small
# machine starts each emulator and agent well within their deadlines.
STARTUP_SLOTS: Final = 4
READY_TIMEOUT_S: Final = 60.0
# Results held back are sent at the next poll or the next outbox attempt, both under the cap.
ROUTE_RECOVERY_S: Final = 30.0
COMMAND_RECOVERY_S: Final = REPEAT_CAP_S + 15.0
LIVENESS_CHECK_S: Final = 0.5
SHOWN_CHARS: Final = 1500
# The baseline: the idle interval, and what a poll adds to the delay before the next one.
BASELINE_INTERVAL_S: Final = 1.0
POLL_WORK_S: Final = 0.5
CLOCK_TOLERANCE_S: Final = 0.01


@dataclass
class Run:
    """One scenario's processes, for the steps that turn its proxy hostile."""

    emulator: EmulatorProcess
    proxy: HostileProxy
    agent: AgentProcess
    server_id: str


@dataclass(frozen=True)
class Scenario:
    """A hostile behaviour and what the agent runs with under it.

    Attributes:
        name: the test id.
        turn_hostile: switches the proxy when the window opens.
        settings: `SMSAGENT_*` over the fast test settings.
        queued: a command queued at the emulator as the window opens: its result is owed.
        watched: the command the proxy repeats, whose answers the window counts.
        recovery_s: how long the results may take to arrive once the proxy is honest.
    """

    name: str
    turn_hostile: Callable[[Run], None]
    settings: Mapping[str, str] = field(default_factory=dict)
    queued: Optional[str] = None
    watched: Optional[str] = None
    recovery_s: float = ROUTE_RECOVERY_S


@dataclass
class Observation:
    """What one scenario's window and the recovery after it showed.

    Attributes:
        polls: arrival times of the command requests inside the window, oldest first.
        hostile_answers: requests inside the window the proxy answered itself.
        long_paths: requests inside the window whose path holds `LONG_ID`.
        answers: `result_queued` events of the watched command logged inside the window.
        ended: how the agent ended during the window, if it did.
        peak_rss_kib: the agent's VmHWM at the window's end.
        stored_at_close: the results the emulator held when the window closed.
        owed: every result key the agent queued, up to the end of the recovery.
        stored: the results the emulator held after the recovery.
        recovery_error: why the recovery wait gave up, if it did.
        tracebacks: log lines that are not JSON, and events carrying an exception.
        problems: `AgentProcess.problems()` at the end.
    """

    scenario: Scenario
    polls: list[float]
    hostile_answers: int
    long_paths: int
    answers: list[Event]
    ended: Optional[str]
    peak_rss_kib: Optional[int]
    stored_at_close: list[dict[str, Any]]
    owed: list[str] = field(default_factory=list)
    stored: list[dict[str, Any]] = field(default_factory=list)
    recovery_error: Optional[str] = None
    tracebacks: list[Event] = field(default_factory=list)
    problems: list[Event] = field(default_factory=list)


# --- scenarios ---


def honest(run: Run) -> None:
    """Leave the proxy honest: the baseline."""


def redirecting(route_name: str, status: int) -> Callable[[Run], None]:
    route = {"poll": POLL, "result": RESULT}[route_name]

    def turn(run: Run) -> None:
        run.proxy.redirect(route, status)

    return turn


def oversized(size_bytes: int, content_length: bool) -> Callable[[Run], None]:
    def turn(run: Run) -> None:
        run.proxy.big_body(size_bytes, content_length=content_length)

    return turn


def repeating(command: str, **param: str) -> Callable[[Run], None]:
    def turn(run: Run) -> None:
        run.proxy.repeat({"command_name": command, "command_param": param})

    return turn


def repeating_unreadable_start(run: Run) -> None:
    """START of a task that exists but whose every read answers 404."""
    task_id = run.emulator.create_task(run.server_id)
    run.proxy.answer(task_route(task_id), Status(404, "SMS.7703", "the task does not exist"))
    run.proxy.repeat({"command_name": "START", "command_param": {"task_id": task_id}})


BASELINE: Final = Scenario(
    "honest", honest, {"SMSAGENT_POLL_INTERVAL": str(BASELINE_INTERVAL_S)}, queued="STOP"
)
REDIRECTS: Final = [
    Scenario(f"{route}-{status}", redirecting(route, status), queued="STOP")
    for route in ("poll", "result")
    for status in (301, 302, 307)
]
BIG_BODIES: Final = [
    Scenario(
        f"{size // MIB}MB-{'length' if with_length else 'chunked'}",
        oversized(size, with_length),
        queued="STOP",
    )
    for size in (50 * MIB, 800 * MIB)
    for with_length in (True, False)
]
REPEATS: Final = [
    Scenario(name, turn, REPEAT_SETTINGS, watched=command, recovery_s=COMMAND_RECOVERY_S)
    for name, command, turn in (
        ("DELETE-unknown-task", "DELETE", repeating("DELETE", task_id="task-unknown-here")),
        ("UPLOAD_LOG", "UPLOAD_LOG", repeating("UPLOAD_LOG", bucket="smsagent-logs")),
        ("SKIP", "SKIP", repeating("SKIP", task_id="task-unknown-here")),
        ("START-unreadable-task", "START", repeating_unreadable_start),
    )
]
LONG_IDS: Final = [
    Scenario(
        f"{command}-10k-id",
        repeating(command, task_id=LONG_ID),
        REPEAT_SETTINGS,
        watched=command,
        recovery_s=COMMAND_RECOVERY_S,
    )
    for command in ("START", "STOP")
]


# --- running them ---


def peak_rss_kib(pid: int) -> int:
    """The peak resident set size (VmHWM) of a running process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmHWM in /proc/{pid}/status")


def watch_window(agent: AgentProcess, closes_s: float) -> Optional[str]:
    """Wait out the window to `closes_s` (monotonic), checking that the agent still runs;
    None, or how it ended."""
    while True:
        if not agent.running:
            return f"the agent exited with {agent.wait_exit()} during the window"
        remaining_s = closes_s - time.monotonic()
        if remaining_s <= 0:
            return None
        time.sleep(min(LIVENESS_CHECK_S, remaining_s))


def command_of(result_key: str) -> str:
    """The command a result key (`task/COMMAND/sequence`) answers."""
    return result_key.rsplit("/", 2)[-2]


def owed_keys(agent: AgentProcess) -> list[str]:
    """Every result key the agent queued, in order."""
    return [str(event["result_key"]) for event in agent.events("result_queued")]


def tracebacks(agent: AgentProcess) -> list[Event]:
    """Log lines that are not JSON (a traceback printed raw) and events with an exception."""
    return [
        event for event in agent.events() if event.get("event") == RAW_EVENT or "exception" in event
    ]


def results_arrived(
    agent: AgentProcess, server_id: str, queued: Optional[str]
) -> Callable[[dict[str, Any]], bool]:
    """An emulator-state predicate: the source's results hold every key the agent queued so far,
    and a result for the command queued in the window."""

    def arrived(state: dict[str, Any]) -> bool:
        stored = [r for r in state["command_results"] if r["source_id"] == server_id]
        keys = {r["result_detail"].get("result_key") for r in stored}
        answered = queued is None or any(r["command_name"] == queued for r in stored)
        return answered and set(owed_keys(agent)) <= keys

    return arrived


def run_scenario(
    scenario: Scenario, workdir: Path, startup: AbstractContextManager[Any]
) -> Observation:
    """Start an emulator, a proxy and an agent; open the window; let the proxy turn honest at
    its end and wait for the owed results. `startup` limits how many scenarios start their
    processes at once. Every process and port is released before return."""
    with ExitStack() as cleanup:
        emulator = EmulatorProcess(workdir / "emulator")
        cleanup.callback(emulator.stop)
        with startup:
            emulator.start()
            proxy = HostileProxy(emulator.url).start()
            cleanup.callback(proxy.stop)
            settings = {**scenario.settings, "SMSAGENT_ENDPOINT": proxy.url}
            agent = AgentProcess(emulator, workdir / "agent", settings=settings).start()
            cleanup.callback(agent.stop)
            server_id = str(
                agent.wait_for_event("agent_ready", timeout_s=READY_TIMEOUT_S)["server_id"]
            )
        run = Run(emulator, proxy, agent, server_id)

        opens_s = time.monotonic()
        scenario.turn_hostile(run)
        if scenario.queued is not None:
            emulator.queue_command(server_id, scenario.queued)
        closes_s = opens_s + WINDOW_S
        ended = watch_window(agent, closes_s)
        peak = None if ended or agent.pid is None else peak_rss_kib(agent.pid)
        seen = proxy.requests(since=opens_s, until=closes_s)
        answers = [
            event
            for event in agent.events("result_queued")
            if scenario.watched is not None
            and command_of(str(event["result_key"])) == scenario.watched
        ]
        observation = Observation(
            scenario=scenario,
            polls=[request.at for request in proxy.requests(POLL, since=opens_s, until=closes_s)],
            hostile_answers=sum(1 for request in seen if request.hostile),
            long_paths=sum(1 for request in seen if LONG_ID in request.path),
            answers=answers,
            ended=ended,
            peak_rss_kib=peak,
            stored_at_close=emulator.results(server_id),
        )

        proxy.honest()
        if ended is None:
            try:
                emulator.wait_for(
                    results_arrived(agent, server_id, scenario.queued),
                    timeout_s=scenario.recovery_s,
                )
            except AssertionError as exc:
                observation.recovery_error = str(exc)
        observation.owed = owed_keys(agent)
        observation.stored = emulator.results(server_id)
        observation.tracebacks = tracebacks(agent)
        observation.problems = agent.problems()
        return observation


Observed = dict[str, Union[Observation, BaseException]]


def run_all(scenarios: Sequence[Scenario], workdir: Path) -> Observed:
    """Run the scenarios at once, each in a thread; a scenario the harness could not run holds
    its exception."""
    startup = threading.BoundedSemaphore(STARTUP_SLOTS)
    with ThreadPoolExecutor(max_workers=len(scenarios)) as pool:
        futures = {
            scenario.name: pool.submit(run_scenario, scenario, workdir / scenario.name, startup)
            for scenario in scenarios
        }
    observed: Observed = {}
    for name, future in futures.items():
        error = future.exception()
        observed[name] = error if error is not None else future.result()
    return observed


def observation_of(observed: Observed, name: str) -> Observation:
    """The scenario's observation; the harness's own failure is raised."""
    seen = observed[name]
    if isinstance(seen, BaseException):
        raise seen
    return seen


# --- what a user would notice ---


def shown(value: object) -> str:
    """`value` as text for a failure message: the long id abbreviated, the whole cut short."""
    text = str(value).replace(LONG_ID, "<10,000-character id>")
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "..."


def gaps(times: Sequence[float]) -> list[float]:
    return [later - earlier for earlier, later in zip(times, times[1:])]


def survival_failures(seen: Observation, floor_s: float = POLL_FLOOR_S) -> list[str]:
    """The agent ran through the window, polled at most once a second, stayed small, logged no
    traceback."""
    failures = []
    if seen.ended is not None:
        failures.append(seen.ended)
    if len(seen.polls) > MAX_POLLS:
        failures.append(f"{len(seen.polls)} polls in the {WINDOW_S:g} s window (most: {MAX_POLLS})")
    short = [gap for gap in gaps(seen.polls) if gap < floor_s]
    if short:
        failures.append(
            f"{len(short)} of {len(seen.polls) - 1} gaps between polls under {floor_s} s, "
            f"the shortest {min(short):.3f} s"
        )
    if seen.peak_rss_kib is not None and seen.peak_rss_kib >= PEAK_RSS_LIMIT_KIB:
        failures.append(f"peak RSS {seen.peak_rss_kib} KiB (limit {PEAK_RSS_LIMIT_KIB} KiB)")
    if seen.tracebacks:
        failures.append(f"tracebacks in the log: {shown(seen.tracebacks[:3])}")
    return failures


def delivery_failures(seen: Observation) -> list[str]:
    """Every result the agent queued reached the emulator, each key once and sent once."""
    failures = []
    if seen.recovery_error is not None:
        owed = set(seen.owed)
        keys = {r["result_detail"].get("result_key") for r in seen.stored}
        failures.append(
            f"results missing {seen.scenario.recovery_s:g} s after the proxy turned honest: "
            f"{len(owed - keys)} of {len(owed)} queued keys not stored "
            f"({shown(sorted(owed - keys)[:5])}); queued command answered: "
            f"{any(r['command_name'] == seen.scenario.queued for r in seen.stored)}"
        )
    keys = [r["result_detail"].get("result_key") for r in seen.stored]
    repeated = {key: count for key, count in Counter(keys).items() if count > 1}
    if repeated:
        failures.append(f"result keys stored more than once: {shown(repeated)}")
    unknown = set(keys) - set(seen.owed)
    if unknown:
        failures.append(f"results the agent never queued: {shown(sorted(map(str, unknown)))}")
    resent = [(r["result_detail"].get("result_key"), r["duplicates"]) for r in seen.stored]
    resent = [(key, count) for key, count in resent if count]
    if resent:
        failures.append(f"results sent again after the emulator stored them: {shown(resent)}")
    return failures


def held_back_failures(seen: Observation) -> list[str]:
    """The command queued in the window was answered exactly once, and only after the proxy
    turned honest."""
    command = seen.scenario.queued
    failures = []
    early = [r for r in seen.stored_at_close if r["command_name"] == command]
    if early:
        failures.append(f"{command} answered while the proxy was hostile: {shown(early)}")
    answered = [
        (r["command_name"], r["result"]) for r in seen.stored if r["command_name"] == command
    ]
    if answered != [(command, "success")]:
        failures.append(f"{command} results after honesty: {answered} (wanted one success)")
    return failures


def assert_none(failures: list[str], seen: Observation) -> None:
    """Fail with every failure of the scenario at once, and what its window counted."""
    if failures:
        context = (
            f"{len(seen.polls)} polls, {seen.hostile_answers} hostile answers, "
            f"peak RSS {seen.peak_rss_kib} KiB, {len(seen.owed)} results queued, "
            f"{len(seen.stored)} stored"
        )
        raise AssertionError(f"{seen.scenario.name}: " + "; ".join(failures) + f" [{context}]")


def exercised(seen: Observation) -> list[str]:
    """The proxy did answer something itself: the window tested what it claims to."""
    if seen.ended is None and seen.hostile_answers == 0:
        return ["the proxy answered nothing itself in the window"]
    return []


# --- the tests ---


@pytest.fixture(scope="module")
def refusals(tmp_path_factory: pytest.TempPathFactory) -> Observed:
    """The redirect and big-body scenarios, run together once for the module."""
    return run_all([*REDIRECTS, *BIG_BODIES], tmp_path_factory.mktemp("refusals"))


@pytest.fixture(scope="module")
def repeats(tmp_path_factory: pytest.TempPathFactory) -> Observed:
    """The repeated-command and long-id scenarios, run together once for the module."""
    return run_all([*REPEATS, *LONG_IDS], tmp_path_factory.mktemp("repeats"))


@pytest.mark.timeout(120)
def test_baseline_honest_proxy(tmp_path: Path) -> None:
    """Through an honest proxy the agent answers STOP once and polls at its interval: the
    harness passes what it forwards unchanged (signatures verify) and counts polls right."""
    seen = run_scenario(BASELINE, tmp_path, threading.Lock())
    # With nothing hostile the floor is the schedule's own: the shortest jittered interval.
    floor_s = (1 - JITTER) * BASELINE_INTERVAL_S - CLOCK_TOLERANCE_S
    failures = survival_failures(seen, floor_s) + delivery_failures(seen)
    stop_results = [(r["command_name"], r["result"]) for r in seen.stored]
    if stop_results != [("STOP", "success")]:
        failures.append(f"results: {stop_results} (wanted one STOP success)")
    if seen.problems:
        failures.append(f"problems in the log: {shown(seen.problems)}")
    assert_none(failures, seen)
    assert seen.hostile_answers == 0
    # And the count is real: the longest jittered interval plus a poll's work fit this often.
    assert len(seen.polls) >= int(WINDOW_S / ((1 + JITTER) * BASELINE_INTERVAL_S + POLL_WORK_S))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", [scenario.name for scenario in REDIRECTS])
def test_redirect(refusals: Observed, name: str) -> None:
    """A 301/302/307 to `https://elsewhere.invalid/...` on the poll or on the result: the
    agent keeps to one poll a second, and the STOP queued in the window is answered once,
    after the proxy turns honest."""
    seen = observation_of(refusals, name)
    failures = survival_failures(seen) + exercised(seen) + delivery_failures(seen)
    assert_none(failures + held_back_failures(seen), seen)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", [scenario.name for scenario in BIG_BODIES])
def test_oversized_poll_body(refusals: Observed, name: str) -> None:
    """A poll answered with 50 MB or 800 MB, with and without Content-Length: the agent
    refuses it without filling its memory, and answers the STOP queued meanwhile once the
    proxy is honest."""
    seen = observation_of(refusals, name)
    failures = survival_failures(seen) + exercised(seen) + delivery_failures(seen)
    assert_none(failures + held_back_failures(seen), seen)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", [scenario.name for scenario in REPEATS])
def test_repeated_command(repeats: Observed, name: str) -> None:
    """The same command on every poll: the agent answers it at least once and at most once
    per poll interval, keeps to one poll a second, and every answer reaches the emulator."""
    seen = observation_of(repeats, name)
    failures = survival_failures(seen) + exercised(seen)
    if not 1 <= len(seen.answers) <= MAX_ANSWERS:
        failures.append(
            f"{len(seen.answers)} answers to {seen.scenario.watched} in the window "
            f"(wanted 1 to {MAX_ANSWERS})"
        )
    assert_none(failures + delivery_failures(seen), seen)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", [scenario.name for scenario in LONG_IDS])
def test_ten_thousand_character_task_id(repeats: Observed, name: str) -> None:
    """START or STOP of a task whose id has 10,000 characters, on every poll: the agent answers
    `fail` or ignores it, never crashes, and asks about that id at most once per poll."""
    seen = observation_of(repeats, name)
    failures = survival_failures(seen) + exercised(seen)
    not_failed = [event["result"] for event in seen.answers if event.get("result") != "fail"]
    if not_failed:
        failures.append(f"answered {Counter(not_failed)} instead of fail")
    if len(seen.answers) > MAX_ANSWERS:
        failures.append(f"{len(seen.answers)} answers in the window (most: {MAX_ANSWERS})")
    if seen.long_paths > MAX_ANSWERS:
        failures.append(
            f"{seen.long_paths} requests with the id in their path in the window "
            f"(most: {MAX_ANSWERS}, one per poll interval)"
        )
    assert_none(failures + delivery_failures(seen), seen)
