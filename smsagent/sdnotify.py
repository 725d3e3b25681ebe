"""Readiness, status, watchdog and stopping notices to systemd (`sd_notify`)."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import Callable, Final, Optional

# A notice is one datagram; systemd reads at most this much of a STATUS= text.
_MAX_STATUS_CHARS: Final = 1024


def _systemd_notify() -> Optional[Callable[[str], bool]]:
    try:
        import systemd.daemon as daemon
    except ImportError:
        return None

    def notify(state: str) -> bool:
        return bool(daemon.notify(state))

    return notify


def _socket_address(notify_socket: str) -> str:
    # A leading "@" names a socket in the abstract namespace, written with a NUL byte.
    return "\0" + notify_socket[1:] if notify_socket.startswith("@") else notify_socket


class Notifier:
    """Sends `sd_notify` states when the service runs under systemd; otherwise does nothing.

    systemd-python's `daemon.notify` is used when importable, else a datagram is written to
    `NOTIFY_SOCKET` directly (abstract `@` names included). systemd-python reads
    `NOTIFY_SOCKET` from the process environment itself. Every method returns whether a
    notice was sent; a failed send never raises, since systemd's bookkeeping must not stop the
    agent.

    Args:
        environ: the process environment (`NOTIFY_SOCKET`, `WATCHDOG_USEC`, `WATCHDOG_PID`).
        use_systemd_python: force (True) or avoid (False) systemd-python; None picks it when
            importable and systemd listens (it is not even imported otherwise: it costs the
            foreground agent most of a megabyte for nothing).
        pid: this process's id, for `WATCHDOG_PID`.
    """

    def __init__(
        self,
        environ: Optional[Mapping[str, str]] = None,
        *,
        use_systemd_python: Optional[bool] = None,
        pid: Optional[int] = None,
    ) -> None:
        env = os.environ if environ is None else environ
        self._notify_socket = env.get("NOTIFY_SOCKET") or None
        self._watchdog_usec = env.get("WATCHDOG_USEC")
        self._watchdog_pid = env.get("WATCHDOG_PID")
        self._pid = os.getpid() if pid is None else pid
        self._systemd: Optional[Callable[[str], bool]] = None
        if use_systemd_python or (use_systemd_python is None and self._notify_socket):
            self._systemd = _systemd_notify()
            if use_systemd_python and self._systemd is None:
                raise RuntimeError("systemd-python is not installed")

    @property
    def enabled(self) -> bool:
        """Whether systemd listens (`NOTIFY_SOCKET` is set)."""
        return self._notify_socket is not None

    def ready(self) -> bool:
        """Startup finished: `READY=1`."""
        return self._send("READY=1")

    def status(self, text: str) -> bool:
        """A one-line status for `systemctl status`: `STATUS=...`."""
        line = " ".join(text.split())[:_MAX_STATUS_CHARS]
        return self._send(f"STATUS={line}")

    def watchdog(self) -> bool:
        """The loop is alive: `WATCHDOG=1`."""
        return self._send("WATCHDOG=1")

    def stopping(self) -> bool:
        """Shutdown began: `STOPPING=1`."""
        return self._send("STOPPING=1")

    def watchdog_interval_s(self) -> Optional[float]:
        """How often to call `watchdog()`: half of `WATCHDOG_USEC`, or None when not asked for."""
        if not self._watchdog_usec:
            return None
        if self._watchdog_pid and self._watchdog_pid.strip() != str(self._pid):
            return None
        try:
            usec = int(self._watchdog_usec)
        except ValueError:
            return None
        return usec / 2 / 1_000_000 if usec > 0 else None

    def _send(self, state: str) -> bool:
        if self._notify_socket is None:
            return False
        if self._systemd is not None:
            return self._systemd(state)
        return _send_datagram(self._notify_socket, state)


def _send_datagram(notify_socket: str, state: str) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(_socket_address(notify_socket))
            sock.sendall(state.encode("utf-8"))
    except OSError:
        return False
    return True
