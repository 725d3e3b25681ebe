"""sd_notify: what reaches a real notification socket, through systemd-python and without it."""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from smsagent.sdnotify import Notifier


class Listener:
    """A bound AF_UNIX datagram socket playing systemd's side."""

    def __init__(self, address: str, sock: socket.socket) -> None:
        self.address = address
        self.sock = sock

    def received(self) -> str:
        return self.sock.recv(4096).decode()


@pytest.fixture(params=["path", "abstract"])
def listener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Listener]:
    """A socket at a file path, or in the abstract namespace (`@name`)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.settimeout(5)
    if request.param == "path":
        address = str(tmp_path / "notify.sock")
        sock.bind(address)
    else:
        name = f"smsagent-test-notify-{secrets.token_hex(6)}"
        sock.bind("\0" + name)
        address = "@" + name
    with sock:
        yield Listener(address, sock)


@pytest.fixture(params=[False, True], ids=["socket", "systemd-python"])
def use_systemd_python(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def _notifier(monkeypatch: pytest.MonkeyPatch, address: str, use_systemd_python: bool) -> Notifier:
    # systemd-python reads NOTIFY_SOCKET from the process environment, so set it there.
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    return Notifier(use_systemd_python=use_systemd_python)


class TestSending:
    def test_each_notice(
        self, monkeypatch: pytest.MonkeyPatch, listener: Listener, use_systemd_python: bool
    ) -> None:
        """READY, STATUS, WATCHDOG and STOPPING arrive as systemd expects them."""
        notifier = _notifier(monkeypatch, listener.address, use_systemd_python)
        assert notifier.enabled
        assert notifier.ready()
        assert listener.received() == "READY=1"
        assert notifier.status("polling\nevery 10 s")
        assert listener.received() == "STATUS=polling every 10 s"
        assert notifier.watchdog()
        assert listener.received() == "WATCHDOG=1"
        assert notifier.stopping()
        assert listener.received() == "STOPPING=1"

    def test_without_systemd_nothing_is_sent(
        self, monkeypatch: pytest.MonkeyPatch, use_systemd_python: bool
    ) -> None:
        """Outside systemd (no NOTIFY_SOCKET) every notice is a no-op."""
        monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
        notifier = Notifier(use_systemd_python=use_systemd_python)
        assert not notifier.enabled
        assert not notifier.ready() and not notifier.watchdog() and not notifier.stopping()

    def test_vanished_socket_does_not_raise(self, tmp_path: Path) -> None:
        """A socket that is gone makes the notice fail quietly, never the agent."""
        notifier = Notifier(
            {"NOTIFY_SOCKET": str(tmp_path / "gone.sock")}, use_systemd_python=False
        )
        assert not notifier.ready()


class TestWatchdog:
    @pytest.mark.parametrize(
        ("environ", "interval_s"),
        [
            ({"WATCHDOG_USEC": "90000000"}, 45.0),
            ({"WATCHDOG_USEC": "90000000", "WATCHDOG_PID": "4242"}, 45.0),
            ({"WATCHDOG_USEC": "90000000", "WATCHDOG_PID": "1"}, None),
            ({"WATCHDOG_USEC": "soon"}, None),
            ({"WATCHDOG_USEC": "0"}, None),
            ({}, None),
        ],
    )
    def test_interval(self, environ: dict[str, str], interval_s: float | None) -> None:
        """Half of WATCHDOG_USEC, and only when it is meant for this process."""
        assert (
            Notifier(environ, use_systemd_python=False, pid=4242).watchdog_interval_s()
            == interval_s
        )

    def test_own_pid_by_default(self) -> None:
        """Without an explicit pid the process's own is compared."""
        environ = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
        assert Notifier(environ, use_systemd_python=False).watchdog_interval_s() == 1.0
