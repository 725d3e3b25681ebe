"""`smsagent run` as a real child process against an emulator, with its JSON log read live.

    agent = AgentProcess(emulator, tmp_path / "agent").start()
    agent.wait_for_event("agent_ready")
    agent.kill_on("result_queued")          # SIGKILL from the reader thread, right after that line
    agent.wait_exit()
    agent.restart()
    agent.terminate()                       # SIGTERM; returns the exit code

A thread reads the child's stderr line by line: each line is parsed as JSON (a line that is not
JSON is kept as `{"event": "_raw", "line": ...}`), tagged with the run it came from (`_run`, 0
for the first start) and written to `agent.log` in the work directory, which is registered for
the secret-leak check together with the emulator's secrets. The state directory is kept across
restarts, as on a server.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Callable, Final, Optional

from tests.support import secrets
from tests.support.emulator import EmulatorProcess
from tests.support.unit import NO_CACHE_VARIABLE, unit_python_environment

Event = dict[str, Any]
Predicate = Callable[[Event], bool]

POLL_ROUTE: Final = "GET /v3/sources/{server_id}/command"

EXIT_TIMEOUT_S: Final = 15.0
WAIT_TIMEOUT_S: Final = 30.0
RAW_EVENT: Final = "_raw"
RUN_FIELD: Final = "_run"
# Kept between runs, like the unit's cache directory: each agent start after the first reads
# its bytecode instead of compiling every module again. The entries name their Python.
BYTECODE_CACHE: Final = Path(tempfile.gettempdir()) / "smsagent-tests-bytecode"

# Fast polling and JSON logs: what every test agent runs with unless a test says otherwise.
FAST_SETTINGS: Final[Mapping[str, str]] = {
    "SMSAGENT_ACCEPT_PRIVACY_STATEMENT": "true",
    "SMSAGENT_POLL_INTERVAL": "1",
    "SMSAGENT_ACTIVE_POLL_INTERVAL": "0.5",
    "SMSAGENT_BACKOFF_CAP": "2",
    "SMSAGENT_PROGRESS_INTERVAL": "1",
    "SMSAGENT_STOP_GRACE": "5",
    "SMSAGENT_LOG_FORMAT": "json",
    "SMSAGENT_SERVER_NAME": "agent-test-source",
}


def child_environment(
    settings: Mapping[str, str], python: Optional[Mapping[str, str]] = None
) -> dict[str, str]:
    """This process's environment without any `SMSAGENT_*` variable, with the interpreter
    settings `python` (default: the systemd unit's, `-OO` with a bytecode cache shared by the
    suite's agents), plus `settings`."""
    inherited = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("SMSAGENT_") and name != NO_CACHE_VARIABLE
    }
    if python is None:
        python = unit_python_environment(BYTECODE_CACHE)
    return {**inherited, **python, **settings}


def parse_line(line: str) -> Event:
    """One stderr line as an event; a line that is not a JSON object becomes a `_raw` event."""
    try:
        parsed = json.loads(line)
    except ValueError:
        return {"event": RAW_EVENT, "line": line}
    return parsed if isinstance(parsed, dict) else {"event": RAW_EVENT, "line": line}


def matches(event: Event, name: str, predicate: Optional[Predicate]) -> bool:
    """Whether `event` is called `name` and passes `predicate`."""
    return event.get("event") == name and (predicate is None or predicate(event))


class _KillTrigger:
    """A SIGKILL the reader thread sends right after the first line that matches."""

    def __init__(self, name: str, predicate: Optional[Predicate]) -> None:
        self.name = name
        self.predicate = predicate
        self.fired: Optional[Event] = None

    def fires_on(self, event: Event) -> bool:
        """Whether `event` is the first matching line since the trigger was armed."""
        if self.fired is not None or not matches(event, self.name, self.predicate):
            return False
        self.fired = event
        return True


class AgentProcess:
    """One agent (`python -m smsagent run`) at a time in a work directory, restartable.

    Args:
        emulator: the running emulator the agent talks to (AK/SK from it).
        workdir: holds `state/` (the state directory), `smsagent.env` and `agent.log`.
        settings: `SMSAGENT_*` variables over `FAST_SETTINGS` and the emulator's endpoint and keys.
        args: extra `smsagent run` arguments.
    """

    def __init__(
        self,
        emulator: EmulatorProcess,
        workdir: Path,
        *,
        settings: Optional[Mapping[str, str]] = None,
        args: Sequence[str] = (),
    ) -> None:
        self.emulator = emulator
        self.workdir = workdir
        self.state_dir = workdir / "state"
        self.env_file = workdir / "smsagent.env"
        self.log_path = secrets.register_file(workdir / "agent.log")
        secrets.register(emulator.sk)
        secrets.register(emulator.token)
        secrets.register_file(emulator.log_path)
        self.settings = {
            **FAST_SETTINGS,
            **emulator.agent_env(),
            "SMSAGENT_STATE_DIR": str(self.state_dir),
            **(settings or {}),
        }
        self.args = list(args)
        self.run_count = 0
        self._process: Optional[subprocess.Popen[bytes]] = None
        self._reader: Optional[threading.Thread] = None
        self._events: list[Event] = []
        self._changed = threading.Condition()
        self._trigger: Optional[_KillTrigger] = None

    def __repr__(self) -> str:
        # Never the settings: they hold the SK.
        return f"AgentProcess(pid={self.pid}, runs={self.run_count}, workdir={self.workdir})"

    @property
    def pid(self) -> Optional[int]:
        return None if self._process is None else self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # --- lifecycle ---

    def start(self) -> AgentProcess:
        """Start a run (the previous one must have ended)."""
        if self.running:
            raise RuntimeError("the agent is already running")
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.env_file.exists():
            # An env file of its own, so that a settings file installed on this machine is not read.
            self.env_file.write_text("# settings come from the environment\n")
        self._join_reader()
        run = self.run_count
        self.run_count += 1
        self._process = subprocess.Popen(
            [sys.executable, "-m", "smsagent", "run", "--env-file", str(self.env_file), *self.args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=child_environment(self.settings),
        )
        assert self._process.stderr is not None
        self._reader = threading.Thread(
            target=self._read, args=(self._process, self._process.stderr, run), daemon=True
        )
        self._reader.start()
        return self

    def restart(self) -> AgentProcess:
        """Start the next run after the last one ended (killed or terminated)."""
        self.wait_exit()
        return self.start()

    def kill9(self) -> int:
        """SIGKILL now and reap; returns the exit code (-9)."""
        process = self._require_process()
        if process.poll() is None:
            process.kill()
        return self.wait_exit()

    def kill_on(self, name: str, predicate: Optional[Predicate] = None) -> None:
        """Arm a SIGKILL that the reader thread sends right after the next line of this run
        named `name` (and passing `predicate`); `wait_exit()` then reaps the agent."""
        with self._changed:
            self._trigger = _KillTrigger(name, predicate)

    def killed_at(self) -> Optional[Event]:
        """The line that fired the armed kill, if it fired."""
        with self._changed:
            return None if self._trigger is None else self._trigger.fired

    def terminate(self, timeout_s: float = EXIT_TIMEOUT_S) -> int:
        """SIGTERM and wait for the exit; returns the exit code."""
        process = self._require_process()
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        return self.wait_exit(timeout_s)

    def wait_exit(self, timeout_s: float = EXIT_TIMEOUT_S) -> int:
        """Wait until the run ended and its log is read; returns the exit code.

        Raises:
            AssertionError: the agent still runs after `timeout_s`.
        """
        process = self._require_process()
        try:
            code = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the agent did not exit within {timeout_s} s") from None
        self._join_reader()
        return code

    def stop(self) -> None:
        """End the run however it is (SIGKILL if it still runs); for finalizers."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
        if self._process is not None:
            self._process.wait()
        self._join_reader()

    # --- the log ---

    def events(self, name: Optional[str] = None, *, run: Optional[int] = None) -> list[Event]:
        """The events read so far (all runs, or run `run`), optionally only those named `name`."""
        with self._changed:
            return [
                event
                for event in self._events
                if (name is None or event.get("event") == name)
                and (run is None or event[RUN_FIELD] == run)
            ]

    def wait_for_event(
        self,
        name: str,
        predicate: Optional[Predicate] = None,
        timeout_s: float = WAIT_TIMEOUT_S,
        *,
        any_run: bool = False,
    ) -> Event:
        """The first event of the current run (or of any run) named `name` passing `predicate`.

        Raises:
            AssertionError: none came within `timeout_s`, or the agent exited first.
        """
        return self.wait_for_count(name, 1, predicate, timeout_s, any_run=any_run)[0]

    def wait_for_count(
        self,
        name: str,
        count: int,
        predicate: Optional[Predicate] = None,
        timeout_s: float = WAIT_TIMEOUT_S,
        *,
        any_run: bool = False,
    ) -> list[Event]:
        """The first `count` events of the current run (or of any run) named `name` passing
        `predicate`.

        Raises:
            AssertionError: they did not come within `timeout_s`, or the agent exited first.
        """
        deadline = time.monotonic() + timeout_s
        run = None if any_run else self.run_count - 1
        with self._changed:
            while True:
                found = [
                    event
                    for event in self._events
                    if (run is None or event[RUN_FIELD] == run) and matches(event, name, predicate)
                ]
                if len(found) >= count:
                    return found[:count]
                remaining_s = deadline - time.monotonic()
                if remaining_s <= 0 or not self._reader_alive():
                    raise AssertionError(self._missing(name, count, len(found), timeout_s))
                self._changed.wait(min(remaining_s, 0.5))

    def problems(self) -> list[Event]:
        """Lines that are not JSON (a traceback), and events logged at error level or above."""
        return [
            event
            for event in self.events()
            if event.get("event") == RAW_EVENT
            or event.get("level") in ("error", "critical", "exception")
        ]

    def _missing(self, name: str, count: int, found: int, timeout_s: float) -> str:
        tail = [event.get("event") for event in self._events[-40:]]
        state = "still running" if self.running else f"exited with {self._exit_code()}"
        return (
            f"{found} of {count} {name!r} events within {timeout_s} s; agent {state}; "
            f"last events: {tail}"
        )

    def _exit_code(self) -> Optional[int]:
        return None if self._process is None else self._process.poll()

    def _reader_alive(self) -> bool:
        return self._reader is not None and self._reader.is_alive()

    def _read(self, process: subprocess.Popen[bytes], stream: IO[bytes], run: int) -> None:
        with stream, open(self.log_path, "ab") as log:
            for raw in stream:
                log.write(raw)
                log.flush()
                event = parse_line(raw.decode("utf-8", errors="replace").rstrip("\n"))
                event[RUN_FIELD] = run
                self._take(process, event)
        with self._changed:
            self._changed.notify_all()

    def _take(self, process: subprocess.Popen[bytes], event: Event) -> None:
        with self._changed:
            if self._trigger is not None and self._trigger.fires_on(event):
                process.kill()
            self._events.append(event)
            self._changed.notify_all()

    def _join_reader(self) -> None:
        if self._reader is not None:
            self._reader.join(timeout=EXIT_TIMEOUT_S)
            self._reader = None

    def _require_process(self) -> subprocess.Popen[bytes]:
        if self._process is None:
            raise RuntimeError("the agent was never started")
        return self._process


# --- what the server received ---


def result_pairs(state: Mapping[str, Any], source_id: str) -> list[tuple[str, str]]:
    """`(command_name, result)` of each command result stored for the source, oldest first,
    from an emulator state dump."""
    return [
        (r["command_name"], r["result"])
        for r in state["command_results"]
        if r["source_id"] == source_id
    ]


def copy_states(state: Mapping[str, Any], source_id: str) -> list[str]:
    """The `copystate` of each changestate the source sent, oldest first, from a state dump."""
    return [c["copystate"] for c in state["changestates"] if c["source_id"] == source_id]


def wait_for_polls(emulator: EmulatorProcess, count: int, timeout_s: float = 10.0) -> None:
    """Wait until agents polled for commands `count` more times than now: by then a command
    handed out, or a result resent, would have been seen."""

    def polls(state: Mapping[str, Any]) -> int:
        return int(state["requests"].get(POLL_ROUTE, {}).get("count", 0))

    start = polls(emulator.state())
    emulator.wait_for(lambda state: polls(state) >= start + count, timeout_s)
