"""`smsagent run` tells systemd about itself through the real NOTIFY_SOCKET datagram socket."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.agent import AgentProcess
from tests.support.emulator import EmulatorProcess, free_port

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(0.5)
    try:
        yield sock
    finally:
        sock.close()


def _collect(sock: socket.socket, until: str, timeout_s: float) -> list[str]:
    """Messages received until one contains `until` (or the deadline passes)."""
    messages: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            messages.append(sock.recv(4096).decode())
        except socket.timeout:
            continue
        if until in messages[-1]:
            break
    return messages


def _agent(
    tmp_path: Path, emulator: EmulatorProcess, sock: socket.socket, **extra: str
) -> AgentProcess:
    settings = {
        "NOTIFY_SOCKET": sock.getsockname(),
        "WATCHDOG_USEC": "1000000",
        **extra,
    }
    return AgentProcess(emulator, tmp_path / "agent", settings=settings)


def test_ready_while_sms_is_unreachable_then_watchdog_pings(
    tmp_path: Path, emulator: EmulatorProcess, notify_socket: socket.socket
) -> None:
    """With SMS unreachable at start-up the agent still reports READY=1 (so systemd does not
    kill it for an outage it waits out), says it is registering, and keeps the watchdog fed."""
    unreachable = f"http://127.0.0.1:{free_port()}"
    agent = _agent(tmp_path, emulator, notify_socket, SMSAGENT_ENDPOINT=unreachable).start()
    try:
        messages = _collect(notify_socket, "WATCHDOG=1", timeout_s=30)
        messages += _collect(notify_socket, "WATCHDOG=1", timeout_s=5)
        assert "READY=1" in messages
        assert any(m == "STATUS=registering" for m in messages)
        assert messages.count("WATCHDOG=1") >= 2
        assert agent.running
    finally:
        assert agent.terminate() == 0


def test_status_while_polling_and_stopping_on_sigterm(
    tmp_path: Path, emulator: EmulatorProcess, notify_socket: socket.socket
) -> None:
    """Once registered, STATUS names the server and the poll outcome; SIGTERM sends STOPPING=1."""
    agent = _agent(tmp_path, emulator, notify_socket).start()
    try:
        messages = _collect(notify_socket, "results owed", timeout_s=30)
        assert any(m.startswith("STATUS=registered as ") for m in messages)
        assert any(m.startswith("STATUS=ok_idle; no task") for m in messages)
    finally:
        assert agent.terminate() == 0
    assert "STOPPING=1" in _collect(notify_socket, "STOPPING=1", timeout_s=10)
