"""smsagent as a real systemd service in a booted Debian 12 root, against an emulator on the host.

The container shares the host's network, so the agent inside reaches the emulator on 127.0.0.1.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Optional

import pytest

from tests.support import nspawn
from tests.support.emulator import EmulatorProcess

if TYPE_CHECKING:
    from tests.system.conftest import InstallDeb, Packages

pytestmark = [pytest.mark.slow, pytest.mark.root, pytest.mark.timeout(600)]

UNIT = "smsagent.service"
AK = "SYSTEMTESTAK00000001"
SK = "system-test-secret-key-0123456789"
POLL_ROUTE = "GET /v3/sources/{server_id}/command"
# Shorter than shipped so that a hung agent is caught and restarted within seconds here; the
# shipped values are checked in test_system_unit_file.py.
TIMING_DROPIN = """\
[Service]
WatchdogSec=6s
TimeoutAbortSec=3s
RestartSec=1s
"""
AGENT_TIMEOUT_S = 60.0


def env_file(emulator: EmulatorProcess, **extra: str) -> str:
    settings = {
        "SMSAGENT_ENDPOINT": emulator.url,
        "SMSAGENT_AK": AK,
        "SMSAGENT_SK": SK,
        "SMSAGENT_POLL_INTERVAL": "1",
        "SMSAGENT_ACTIVE_POLL_INTERVAL": "1",
        "SMSAGENT_BACKOFF_CAP": "5",
        "SMSAGENT_ACCEPT_PRIVACY_STATEMENT": "true",
        **extra,
    }
    return "".join(f"{name}={value}\n" for name, value in settings.items())


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    """An emulator on the host's loopback that accepts the agent's AK/SK."""
    process = EmulatorProcess(tmp_path_factory.mktemp("emulator"), ak=AK, sk=SK)
    with process.started() as started:
        yield started


@pytest.fixture(scope="module")
def agent(
    container: nspawn.Container,
    packages: Packages,
    install_deb: InstallDeb,
    emulator: EmulatorProcess,
) -> nspawn.Container:
    """The package installed, the env file filled, and the service started."""
    install_deb(container, packages.deb)
    container.path("/etc/smsagent/smsagent.env").write_text(env_file(emulator))
    dropin = container.path("/etc/systemd/system/smsagent.service.d/timing.conf")
    dropin.parent.mkdir(parents=True)
    dropin.write_text(TIMING_DROPIN)
    container.exec(["systemctl", "daemon-reload"])
    # Type=notify: this returns once the agent sent READY=1, and fails if it never does.
    started = container.exec(["systemctl", "start", UNIT], check=False)
    if started.returncode != 0:
        log = container.exec(["journalctl", "--no-pager", f"--unit={UNIT}", "--output=cat"])
        pytest.fail(f"smsagent.service did not start:\n{log.stdout[-4000:]}")
    return container


def state(container: nspawn.Container) -> dict[str, str]:
    names = ("ActiveState", "SubState", "MainPID", "NRestarts", "Result", "ExecMainStatus")
    return container.unit_properties(UNIT, *names)


def poll_count(emulator: EmulatorProcess) -> int:
    route: dict[str, Any] = emulator.state()["requests"].get(POLL_ROUTE, {})
    return int(route.get("count", 0))


def restarted_after(container: nspawn.Container, old_pid: str) -> dict[str, str]:
    """Wait until the service runs again under a new main PID, and return its state."""

    def running_again() -> Optional[dict[str, str]]:
        now = state(container)
        is_new = now["MainPID"] not in ("0", old_pid)
        return (
            now
            if is_new and (now["ActiveState"], now["SubState"]) == ("active", "running")
            else None
        )

    return container.wait_until(running_again, AGENT_TIMEOUT_S, "the agent to run again")


def status_rows(container: nspawn.Container) -> dict[str, str]:
    """`smsagent status` in the container, as its table's rows by name."""
    shown = container.exec(["smsagent", "status"]).stdout
    return {
        name: value.strip()
        for name, _, value in (line.partition("  ") for line in shown.splitlines())
    }


def polls_continue(emulator: EmulatorProcess) -> None:
    before = poll_count(emulator)
    emulator.wait_for(lambda _: poll_count(emulator) >= before + 2, timeout_s=AGENT_TIMEOUT_S)


class TestService:
    def test_runs_after_reporting_ready(self, agent: nspawn.Container) -> None:
        """`systemctl start` returned (READY=1 arrived) and the agent is active (running)."""
        now = state(agent)
        main = agent.exec(["cat", f"/proc/{now['MainPID']}/cmdline"]).stdout.split("\0")

        assert (now["ActiveState"], now["SubState"], now["NRestarts"]) == ("active", "running", "0")
        assert main[0].startswith("/usr/lib/smsagent/venv/bin/python")

    def test_runs_at_oo_with_its_bytecode_cached(self, agent: nspawn.Container) -> None:
        """The agent runs at -OO, and its bytecode of that level is kept for the next start
        in the unit's cache directory (/usr is read-only to it)."""
        cache = "/var/cache/smsagent/bytecode"
        found = agent.exec(["find", cache, "-name", "service.*.opt-2.pyc"]).stdout.split()
        mode = agent.exec(["stat", "--format=%a", "/var/cache/smsagent"]).stdout.strip()

        assert [path for path in found if "/smsagent/service." in path]
        assert mode == "700"

    def test_registers_and_polls(self, agent: nspawn.Container, emulator: EmulatorProcess) -> None:
        """The server shows up under its hostname and the agent keeps asking for commands."""
        sources = emulator.wait_for(lambda s: s["sources"], timeout_s=AGENT_TIMEOUT_S)
        polls_continue(emulator)

        assert [s["name"] for s in sources] == [nspawn.HOSTNAME]

    def test_answers_a_start_stop_pair(
        self, agent: nspawn.Container, emulator: EmulatorProcess
    ) -> None:
        """A console START then STOP each get a result, and the service stays up."""
        source_id = emulator.state()["sources"][0]["id"]
        task_id = emulator.create_task(source_id)

        def result_of(name: str) -> Any:
            return lambda s: [r for r in s["command_results"] if r["command_name"] == name]

        emulator.action(task_id, "start")
        emulator.wait_for(result_of("START"), timeout_s=AGENT_TIMEOUT_S)
        emulator.action(task_id, "stop")
        stopped = emulator.wait_for(result_of("STOP"), timeout_s=AGENT_TIMEOUT_S)

        assert stopped[-1]["result"] == "success"
        assert (state(agent)["ActiveState"], state(agent)["NRestarts"]) == ("active", "0")

    def test_logs_structured_fields_to_the_journal(self, agent: nspawn.Container) -> None:
        """The journal holds the agent's events with task fields, and never the secret key."""
        entries = agent.journal(f"--unit={UNIT}", "SYSLOG_IDENTIFIER=smsagent")
        with_command = [e for e in entries if e.get("COMMAND") in ("START", "STOP")]

        sample = entries[-1]["MESSAGE"] if entries else None
        assert with_command, f"no COMMAND field in {len(entries)} entries, e.g. MESSAGE={sample!r}"
        assert all(e.get("TASK_ID") for e in with_command)
        assert {e["PRIORITY"] for e in entries} <= {"2", "3", "4", "5", "6", "7"}
        assert not [e for e in entries if SK in str(e)]

    def test_restarted_after_kill_9(
        self, agent: nspawn.Container, emulator: EmulatorProcess
    ) -> None:
        """A killed agent is started again by systemd and resumes polling."""
        before = state(agent)

        agent.exec(["kill", "-KILL", before["MainPID"]])
        after = restarted_after(agent, before["MainPID"])
        polls_continue(emulator)

        assert int(after["NRestarts"]) == int(before["NRestarts"]) + 1

    def test_restarted_after_a_watchdog_timeout(
        self, agent: nspawn.Container, emulator: EmulatorProcess
    ) -> None:
        """A frozen agent (SIGSTOP) stops pinging; systemd aborts and restarts it."""
        before = state(agent)

        agent.exec(["kill", "-STOP", before["MainPID"]])
        after = restarted_after(agent, before["MainPID"])
        polls_continue(emulator)
        log = agent.exec(["journalctl", "--no-pager", f"--unit={UNIT}", "--output=cat"]).stdout

        assert int(after["NRestarts"]) == int(before["NRestarts"]) + 1
        assert "Watchdog timeout" in log

    def test_status_follows_the_service(
        self, agent: nspawn.Container, emulator: EmulatorProcess
    ) -> None:
        """`smsagent status` says the service is active and the agent runs under its main PID;
        stopped, that no agent runs, with the time of the last good poll."""
        agent.exec(["systemctl", "start", UNIT])  # already running: changes nothing
        polls_continue(emulator)
        pid = state(agent)["MainPID"]

        running = status_rows(agent)
        agent.exec(["systemctl", "stop", UNIT])
        stopped = status_rows(agent)
        agent.exec(["systemctl", "start", UNIT])  # as the next tests expect it

        assert running["service"] == "active"
        assert running["agent"].startswith(f"running (pid {pid}), started ")
        assert running["connection"] == "ok"
        assert stopped["service"] == "inactive"
        assert stopped["agent"].startswith("not running; the last one stopped ")
        assert stopped["connection"] == "none: no agent runs"
        assert stopped["last good poll"].endswith(" s ago)"), stopped

    def test_stops_cleanly_within_the_stop_timeout(self, agent: nspawn.Container) -> None:
        """`systemctl stop` ends the agent itself (no SIGKILL at the timeout), leaving nothing."""
        shown = agent.unit_properties(UNIT, "TimeoutStopUSec")["TimeoutStopUSec"]
        timeout_s = nspawn.timespan_s(shown)
        started_s = time.monotonic()

        agent.exec(["systemctl", "stop", UNIT])
        elapsed_s = time.monotonic() - started_s
        now = state(agent)

        assert elapsed_s < timeout_s
        assert (now["ActiveState"], now["Result"]) == ("inactive", "success")
        assert [p for p in agent.processes() if "smsagent" in p] == []

    def test_bad_env_file_fails_once_without_a_restart_loop(
        self, agent: nspawn.Container, emulator: EmulatorProcess
    ) -> None:
        """A bad setting is exit 2: the unit stays failed, the journal names the variable."""
        env = agent.path("/etc/smsagent/smsagent.env")
        env.write_text(env_file(emulator, SMSAGENT_POLL_INTERVAL="often"))
        agent.exec(["systemctl", "reset-failed", UNIT], check=False)

        started = agent.exec(["systemctl", "start", UNIT], check=False)
        now = state(agent)
        log = agent.exec(["journalctl", "--no-pager", f"--unit={UNIT}", "--output=cat"]).stdout
        env.write_text(env_file(emulator))
        agent.exec(["systemctl", "reset-failed", UNIT])

        assert started.returncode != 0
        assert (now["ActiveState"], now["ExecMainStatus"], now["NRestarts"]) == ("failed", "2", "0")
        assert "SMSAGENT_POLL_INTERVAL" in log
        assert "Traceback" not in log

    def test_purge_leaves_nothing_running(self, agent: nspawn.Container) -> None:
        """`apt purge` stops a running agent and removes it with its state."""
        agent.exec(["systemctl", "start", UNIT])

        agent.exec(["apt-get", "purge", "--yes", "--quiet", "smsagent"])
        left = ("/usr/lib/smsagent", "/var/lib/smsagent", "/var/cache/smsagent", "/etc/smsagent")

        assert [p for p in agent.processes() if "smsagent" in p] == []
        assert [p for p in left if agent.path(p).exists()] == []
