"""Benchmark an idle `smsagent run`: memory and CPU against a sleeping Python, in the same run.

    python bench/idle.py [--seconds 60]

Starts an emulator and the agent with its default settings (only the endpoint, the credentials
and the state directory are set, and the privacy statement a fresh emulator asks for is
accepted) and with the interpreter settings of the systemd unit (`-OO`, a bytecode cache of its
own). The agent is started once to fill that cache, as the service's first start does, then
again for the window. Beside it run the same agent without the unit's `-OO`, a bare
`python -c 'import asyncio, time; time.sleep(N)'` baseline and the stack's floor
(`stack_floor.py`: aiohttp, structlog, pydantic and pydantic-settings polling the emulator at the
agent's interval, nothing of smsagent). For `--seconds` each is sampled: RSS (VmRSS in
/proc/PID/status) once a second, CPU (utime + stime in /proc/PID/stat) at the start and end of
the window. Prints the figures, the agent/baseline ratios, how far each agent sits above the
floor, PASS/FAIL per target for the agent as the unit runs it; exits 1 if a target is missed.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from smsagent.config import Settings
from tests.support.agent import child_environment
from tests.support.unit import CACHE_VARIABLE, unit_python_environment

RSS_TARGET_MB = 50.0
CPU_TARGET_PERCENT = 0.2
SAMPLE_INTERVAL_S = 1.0
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
COMMAND_ROUTE = "GET /v3/sources/{server_id}/command"
CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
DEFAULT_POLL_INTERVAL_S = float(Settings.model_fields["poll_interval"].default)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def memory_mb(pid: int) -> tuple[float, float]:
    """VmRSS and its private part RssAnon of a process, from /proc/PID/status, in MB."""
    fields: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "RssAnon"):
                fields[name] = int(value.split()[0]) / 1024
    if "VmRSS" not in fields:
        raise RuntimeError(f"process {pid} ended during the window; see its log")
    return fields["VmRSS"], fields.get("RssAnon", 0.0)


def cpu_s(pid: int) -> float:
    """CPU time used so far by a process (utime + stime, its own threads, not its children)."""
    with open(f"/proc/{pid}/stat") as stat:
        # The command name in parentheses may hold spaces; the fields after it do not.
        fields = stat.read().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLOCK_TICKS_PER_S


def wait_until(what: str, predicate: Callable[[], bool], timeout_s: float) -> None:
    """Poll `predicate` until it holds; fail naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.1)


def admin_state(url: str) -> dict[str, Any]:
    """The emulator's state dump."""
    with urllib.request.urlopen(f"{url}/_emulator/state", timeout=10) as answer:
        state: dict[str, Any] = json.load(answer)
        return state


def command_polls(url: str) -> int:
    """How often the agent has asked the emulator for a command."""
    return int(admin_state(url)["requests"].get(COMMAND_ROUTE, {}).get("count", 0))


def is_answering(url: str) -> bool:
    """Whether the emulator answers its health call."""
    try:
        with urllib.request.urlopen(f"{url}/_emulator/health", timeout=2):
            return True
    except OSError:
        return False


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it does not end."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def running(
    argv: Sequence[str], log_path: Path, env: Mapping[str, str]
) -> Iterator[subprocess.Popen[bytes]]:
    """Run a child with its output in `log_path`; always stop it."""
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env
        )
    try:
        yield process
    finally:
        stop(process)


def is_ready(agent: subprocess.Popen[bytes], log_path: Path) -> bool:
    """Whether the agent logged `agent_ready`; fails at once if it exited instead."""
    if agent.poll() is not None:
        tail = log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"the agent exited with {agent.returncode}:\n{tail}")
    return b'"agent_ready"' in log_path.read_bytes()


def has_polled(floor: subprocess.Popen[bytes], log_path: Path) -> bool:
    """Whether the stack floor logged its first poll; fails at once if it exited instead."""
    if floor.poll() is not None:
        tail = log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"the stack floor exited with {floor.returncode}:\n{tail}")
    return b'"polled"' in log_path.read_bytes()


@dataclass
class Figures:
    """What was measured for one process over the window."""

    rss_samples_mb: list[float]
    private_samples_mb: list[float]
    cpu_used_s: float
    wall_s: float

    @property
    def rss_peak_mb(self) -> float:
        return max(self.rss_samples_mb)

    @property
    def rss_median_mb(self) -> float:
        return statistics.median(self.rss_samples_mb)

    @property
    def private_median_mb(self) -> float:
        return statistics.median(self.private_samples_mb)

    @property
    def cpu_percent(self) -> float:
        """CPU used as a share of one core over the wall time, in percent."""
        return 100.0 * self.cpu_used_s / self.wall_s


def measure(pids: Mapping[str, int], seconds: float) -> dict[str, Figures]:
    """Sample RSS of every process once a second for `seconds`; CPU from the ends."""
    started = time.monotonic()
    cpu_start = {name: cpu_s(pid) for name, pid in pids.items()}
    rss: dict[str, list[float]] = {name: [] for name in pids}
    private: dict[str, list[float]] = {name: [] for name in pids}
    next_sample = started
    while True:
        for name, pid in pids.items():
            rss_now, private_now = memory_mb(pid)
            rss[name].append(rss_now)
            private[name].append(private_now)
        next_sample += SAMPLE_INTERVAL_S
        if next_sample - started > seconds:
            break
        time.sleep(max(0.0, next_sample - time.monotonic()))
    time.sleep(max(0.0, started + seconds - time.monotonic()))
    cpu_end = {name: cpu_s(pid) for name, pid in pids.items()}
    wall_s = time.monotonic() - started
    return {
        name: Figures(rss[name], private[name], cpu_end[name] - cpu_start[name], wall_s)
        for name in pids
    }


def agent_env(
    url: str, ak: str, sk: str, state_dir: Path, python: Mapping[str, str]
) -> dict[str, str]:
    """The process environment with no SMSAGENT_* settings but endpoint, keys and state dir,
    and the interpreter settings `python` (of the unit, or only a bytecode cache)."""
    settings = {
        "SMSAGENT_ENDPOINT": url,
        "SMSAGENT_AK": ak,
        "SMSAGENT_SK": sk,
        "SMSAGENT_STATE_DIR": str(state_dir),
        "SMSAGENT_ACCEPT_PRIVACY_STATEMENT": "true",
    }
    return child_environment(settings, python)


def ratio(agent: float, baseline: float) -> str:
    """`agent / baseline` as `2.8x`, or `n/a` when the baseline measured nothing."""
    return f"{agent / baseline:.1f}x" if baseline > 0 else "n/a (baseline 0)"


AGENT, PLAIN_AGENT, BASELINE, FLOOR = "agent", "agent no -OO", "baseline", "stack floor"


def print_report(figures: Mapping[str, Figures], polls: int) -> bool:
    """Print the figures, the ratios and the verdicts; True when every target is met."""
    agent, baseline, floor = figures[AGENT], figures[BASELINE], figures[FLOOR]
    print(
        f"window {agent.wall_s:.1f} s, {len(agent.rss_samples_mb)} RSS samples, "
        f"{polls} command polls by the two agents, cpus={os.cpu_count()}, "
        f"python={sys.version.split()[0]}"
    )
    header = ("RSS peak", "RSS median", "private median", "CPU s", "CPU % core")
    print(f"{'':<13}" + "".join(f"{title:>16}" for title in header))
    for name, item in figures.items():
        cells = (
            f"{item.rss_peak_mb:.1f} MB",
            f"{item.rss_median_mb:.1f} MB",
            f"{item.private_median_mb:.1f} MB",
            f"{item.cpu_used_s:.2f}",
            f"{item.cpu_percent:.3f} %",
        )
        print(f"{name:<13}" + "".join(f"{cell:>16}" for cell in cells))
    print(
        f"agent/baseline: RSS peak {ratio(agent.rss_peak_mb, baseline.rss_peak_mb)}, "
        f"RSS median {ratio(agent.rss_median_mb, baseline.rss_median_mb)}, "
        f"CPU {ratio(agent.cpu_used_s, baseline.cpu_used_s)}"
    )
    for name in (AGENT, PLAIN_AGENT):
        rss_over_mb = figures[name].rss_peak_mb - floor.rss_peak_mb
        private_over_mb = figures[name].private_median_mb - floor.private_median_mb
        print(
            f"{name} over the stack floor: RSS peak +{rss_over_mb:.1f} MB, "
            f"private median +{private_over_mb:.1f} MB"
        )
    rss_ok = agent.rss_peak_mb <= RSS_TARGET_MB
    cpu_ok = agent.cpu_percent <= CPU_TARGET_PERCENT
    print(
        f"{'PASS' if rss_ok else 'FAIL'} RSS peak {agent.rss_peak_mb:.1f} MB "
        f"(target <= {RSS_TARGET_MB:.0f} MB, the agent as the unit runs it)"
    )
    print(
        f"{'PASS' if cpu_ok else 'FAIL'} CPU {agent.cpu_percent:.3f} % of a core "
        f"(target <= {CPU_TARGET_PERCENT} %)"
    )
    return rss_ok and cpu_ok


def run(seconds: float, workdir: Path) -> bool:
    """Start the emulator, both agents (each once before, to fill its bytecode cache), the
    baseline and the floor; measure, and report."""
    port, ak, sk = free_port(), "BENCHIDLEAK000000001", secrets.token_hex(20)
    url = f"http://127.0.0.1:{port}"
    emulator = [sys.executable, "-m", "smsagent", "emulator", "--bind", "127.0.0.1"]
    emulator += [f"--port={port}", f"--ak={ak}", f"--sk={sk}"]
    env_file = workdir / "smsagent.env"
    env_file.write_text("")  # no settings file of this machine leaks into the run
    agent = [sys.executable, "-m", "smsagent", "run", "--env-file", str(env_file)]
    cache = workdir / "bytecode"
    pythons = {
        AGENT: unit_python_environment(cache),
        PLAIN_AGENT: {CACHE_VARIABLE: str(cache)},
    }
    baseline = [sys.executable, "-c", f"import asyncio, time; time.sleep({seconds + 600})"]
    floor = [sys.executable, str(Path(__file__).with_name("stack_floor.py"))]
    floor += [f"{url}/_emulator/health", str(DEFAULT_POLL_INTERVAL_S)]
    with ExitStack() as children:
        children.enter_context(running(emulator, workdir / "emulator.log", os.environ))
        wait_until("the emulator", lambda: is_answering(url), READY_TIMEOUT_S)
        envs = {
            name: agent_env(url, ak, sk, workdir / f"state-{index}", python)
            for index, (name, python) in enumerate(pythons.items())
        }
        for name, env in envs.items():
            log_path = workdir / f"warm-up-{name.replace(' ', '-')}.log"
            with running(agent, log_path, env) as warm_up:
                wait_until(
                    f"the {name} to be ready (warm-up)",
                    functools.partial(is_ready, warm_up, log_path),
                    READY_TIMEOUT_S,
                )
        processes: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
        for name, env in envs.items():
            log_path = workdir / f"{name.replace(' ', '-')}.log"
            process = children.enter_context(running(agent, log_path, env))
            processes[name] = (process, log_path)
        baseline_process = children.enter_context(
            running(baseline, workdir / "baseline.log", os.environ)
        )
        floor_log = workdir / "floor.log"
        floor_process = children.enter_context(running(floor, floor_log, os.environ))
        for name, (process, log_path) in processes.items():
            wait_until(
                f"the {name} to be ready",
                functools.partial(is_ready, process, log_path),
                READY_TIMEOUT_S,
            )
        wait_until(
            "the stack floor to poll",
            lambda: has_polled(floor_process, floor_log),
            READY_TIMEOUT_S,
        )
        polls_before = command_polls(url)
        pids = {name: process.pid for name, (process, _) in processes.items()}
        pids.update({BASELINE: baseline_process.pid, FLOOR: floor_process.pid})
        figures = measure(pids, seconds)
        polls = command_polls(url) - polls_before
    return print_report(figures, polls)


def main(argv: Sequence[str] = sys.argv[1:]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the window")
    parser.add_argument("--keep", action="store_true", help="keep the logs and state directory")
    args = parser.parse_args(argv)
    if args.seconds <= 0:
        parser.error("--seconds must be more than 0")
    workdir = Path(tempfile.mkdtemp(prefix="smsagent-bench-idle-"))
    try:
        passed = run(args.seconds, workdir)
    finally:
        if args.keep:
            print(f"logs and state in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
