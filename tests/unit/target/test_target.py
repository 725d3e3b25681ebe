"""TargetSession's ssh argv, host checks, failure classes and the task key on disk."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from smsagent.target.session import (
    AUTH_REFUSED,
    CONNECT_REFUSED,
    CONNECT_TIMEOUT,
    HOST_KEY_CHANGED,
    SSH_FAILED,
    TargetSession,
    check_host,
    classify_ssh_failure,
    store_private_key,
    task_key_paths,
)

KEY = "\n".join(
    ("-----BEGIN OPENSSH PRIVATE KEY-----", "b3BlbnNzaC1rZXk=", "-----END OPENSSH PRIVATE KEY-----")
)


def _options(argv: list[str]) -> dict[str, str]:
    pairs = [argv[i + 1] for i, arg in enumerate(argv) if arg == "-o"]
    return dict(pair.split("=", 1) for pair in pairs)


class TestSshArgv:
    def test_options(self) -> None:
        """ssh ignores user config, never prompts, uses only the task key and pins host keys."""
        session = TargetSession(
            "10.1.2.3", 2222, Path("/s/k"), Path("/s/kh"), ssh_path="/usr/bin/ssh"
        )
        argv = session.ssh_argv()
        assert argv[:5] == ["/usr/bin/ssh", "-F", "none", "-T", "-x"]
        options = _options(argv)
        assert options["BatchMode"] == "yes"
        assert options["IdentitiesOnly"] == "yes"
        assert options["IdentityFile"] == "/s/k"
        assert options["UserKnownHostsFile"] == "/s/kh"
        assert options["StrictHostKeyChecking"] == "accept-new"
        assert options["User"] == "root"
        assert options["Port"] == "2222"
        assert options["ConnectTimeout"] == "20"
        assert int(options["ServerAliveInterval"]) > 0
        assert int(options["ServerAliveCountMax"]) > 0
        assert "10.1.2.3" not in argv  # the destination is added per use

    @pytest.mark.parametrize("port", [0, 65536, -1])
    def test_bad_port(self, port: int) -> None:
        """A port outside 1..65535 is refused, naming it."""
        with pytest.raises(ValueError, match=f"target port {port}"):
            TargetSession("10.1.2.3", port, Path("/k"), Path("/kh"))


class TestCheckHost:
    @pytest.mark.parametrize(
        ("host", "expected"),
        [
            ("10.0.0.1", "10.0.0.1"),
            ("fd00::1", "fd00::1"),
            ("FD00:0::1", "fd00::1"),
            ("target.example", "target.example"),
        ],
    )
    def test_accepted(self, host: str, expected: str) -> None:
        """IP addresses (normalized) and host names are accepted."""
        assert check_host(host) == expected

    @pytest.mark.parametrize("host", ["-oProxyCommand=x", "", "a b", "host;rm", "-p"])
    def test_refused(self, host: str) -> None:
        """Anything that could be read as an option or a shell word is refused."""
        with pytest.raises(ValueError, match="neither an IP address nor a host name"):
            check_host(host)


class TestClassifySshFailure:
    @pytest.mark.parametrize(
        ("stderr", "code"),
        [
            ("@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @", HOST_KEY_CHANGED),
            ("Host key verification failed.", HOST_KEY_CHANGED),
            ("root@10.0.0.2: Permission denied (publickey).", AUTH_REFUSED),
            ("ssh: connect to host 10.0.0.2 port 22: Connection timed out", CONNECT_TIMEOUT),
            ("Connection timed out during banner exchange", CONNECT_TIMEOUT),
            ("ssh: connect to host 10.0.0.2 port 22: Connection refused", CONNECT_REFUSED),
            ("ssh: connect to host 10.0.0.2 port 22: No route to host", SSH_FAILED),
        ],
    )
    def test_table(self, stderr: str, code: str) -> None:
        """ssh's messages map to the SMS codes of spec §6.3."""
        error = classify_ssh_failure([stderr])
        assert error.error_code == code
        assert str(error).startswith(code)

    def test_unknown_failure_quotes_ssh(self) -> None:
        """An unrecognised failure keeps ssh's last line for the operator."""
        error = classify_ssh_failure(
            ["kex_exchange_identification: read: Connection reset by peer"]
        )
        assert error.error_code == SSH_FAILED
        assert "Connection reset by peer" in error.message


class TestTaskKey:
    def test_store_private_key(self, tmp_path: Path) -> None:
        """The key lands mode 0600 in a 0700 dir, ends with a newline, known_hosts dir exists."""
        paths = store_private_key(tmp_path, "task-1", KEY)
        assert paths.private_key.read_text() == KEY + "\n"
        assert stat.S_IMODE(paths.private_key.stat().st_mode) == 0o600
        assert stat.S_IMODE(paths.private_key.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(paths.known_hosts.parent.stat().st_mode) == 0o700
        assert not paths.known_hosts.exists()
        assert [p.name for p in paths.private_key.parent.iterdir()] == ["task-1.key"]

    def test_store_replaces(self, tmp_path: Path) -> None:
        """Storing again (a new key for the task) replaces the old key."""
        store_private_key(tmp_path, "task-1", KEY)
        paths = store_private_key(tmp_path, "task-1", "other\n")
        assert paths.private_key.read_text() == "other\n"

    @pytest.mark.parametrize("task_id", ["../x", "", "a/b", ".hidden", "x" * 200])
    def test_task_id_must_be_a_file_name(self, tmp_path: Path, task_id: str) -> None:
        """A task id that could escape the state dir is refused."""
        with pytest.raises(ValueError, match="not a valid task id"):
            task_key_paths(tmp_path, task_id)
