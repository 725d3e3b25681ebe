"""TargetSession against a real sshd: checks, remote commands, and each failure's SMS code."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from smsagent.migration.rsync import (
    ExitClass,
    RetryPolicy,
    RsyncError,
    RsyncJob,
    build_argv,
    run_rsync,
    run_rsync_with_retries,
)
from smsagent.target.session import (
    AUTH_REFUSED,
    CONNECT_REFUSED,
    CONNECT_TIMEOUT,
    HOST_KEY_CHANGED,
    TargetError,
    TargetSession,
    store_private_key,
)
from tests.support.target import TargetHost

pytestmark = [pytest.mark.root, pytest.mark.timeout(60)]


def _exists(path: Path) -> bool:
    return path.exists()


def _fresh_session(host: TargetHost, state_dir: Path, **options: float) -> TargetSession:
    paths = store_private_key(state_dir, "task-fresh", host.client_private_key_pem)
    return TargetSession(host.ip, host.port, paths.private_key, paths.known_hosts, **options)


class TestCheck:
    async def test_first_use_pins_the_host_key(
        self, target_host: TargetHost, target_session: TargetSession
    ) -> None:
        """The first connection records the target's host key in the task's known_hosts."""
        assert not target_session.known_hosts_path.exists()
        await target_session.check()
        pinned = target_session.known_hosts_path.read_text().split()
        assert pinned[0] == target_host.ip
        assert pinned[1:3] == target_host.host_public_key.split()[:2]
        await target_session.check()  # the pinned key is accepted again

    async def test_changed_host_key(
        self, target_host: TargetHost, target_session: TargetSession
    ) -> None:
        """A target that comes back with another host key is refused with SMS.3803."""
        await target_session.check()
        target_host.replace_host_key()
        with pytest.raises(TargetError) as caught:
            await target_session.check()
        assert caught.value.error_code == HOST_KEY_CHANGED

    async def test_key_refused(
        self, target_host: TargetHost, target_session: TargetSession
    ) -> None:
        """A target that does not accept the task key fails with SMS.3804."""
        target_host.revoke_client_key()
        with pytest.raises(TargetError) as caught:
            await target_session.check()
        assert caught.value.error_code == AUTH_REFUSED

    async def test_connection_refused(
        self, target_host: TargetHost, target_session: TargetSession
    ) -> None:
        """A target without sshd fails with SMS.3806."""
        target_host.stop_sshd()
        with pytest.raises(TargetError) as caught:
            await target_session.check()
        assert caught.value.error_code == CONNECT_REFUSED

    async def test_connect_timeout(self, target_host: TargetHost, state_dir: Path) -> None:
        """A target that never answers fails with SMS.3805 after the connect timeout."""
        session = _fresh_session(target_host, state_dir, connect_timeout_s=2)
        target_host.pause_sshd()
        started = time.monotonic()
        try:
            with pytest.raises(TargetError) as caught:
                await session.check()
        finally:
            target_host.resume_sshd()
        assert caught.value.error_code == CONNECT_TIMEOUT
        assert 1.5 < time.monotonic() - started < 10

    async def test_run_timeout(
        self, target_host: TargetHost, target_session: TargetSession
    ) -> None:
        """A remote command that outlives its timeout is stopped and reported as SMS.3805."""
        started = time.monotonic()
        with pytest.raises(TargetError) as caught:
            await target_session.run(["sleep", "30"], timeout_s=1, grace_s=1)
        assert caught.value.error_code == CONNECT_TIMEOUT
        assert time.monotonic() - started < 5
        target_host.wait_no_sessions()


class TestRun:
    async def test_arguments_arrive_verbatim(
        self, target_session: TargetSession, tmp_path: Path
    ) -> None:
        """Each argument reaches the remote command as one word, never interpreted by a shell."""
        marker = tmp_path / "must-not-exist"
        odd = ["a b", "it's", f"$(touch {marker})", f"`touch {marker}`", "*", "semi;colon", ""]
        result = await target_session.run(["printf", "%s\\n", *odd], timeout_s=10)
        assert result.ok
        assert result.stdout.decode().split("\n")[:-1] == odd
        assert not _exists(marker)

    async def test_runs_as_root_in_the_targets_network(
        self, target_host: TargetHost, target_session: TargetSession
    ) -> None:
        """Commands run as root on the target host (its own network namespace)."""
        result = await target_session.run(["sh", "-c", "id -u; ip -o -4 addr show"], 10)
        lines = result.stdout.decode().splitlines()
        assert lines[0] == "0"
        assert any(f"inet {target_host.ip}/" in line for line in lines)

    async def test_exit_status_and_stderr(self, target_session: TargetSession) -> None:
        """A failing remote command returns its status and stderr; it is not an SSH error."""
        result = await target_session.run(["sh", "-c", "echo oops >&2; exit 3"], 10)
        assert result.returncode == 3
        assert not result.ok
        assert result.stderr_tail == ("oops",)

    async def test_child_environment_is_minimal(
        self,
        target_host: TargetHost,
        state_dir: Path,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """ssh, for commands and under rsync, gets only PATH, the C locale and HOME."""
        monkeypatch.setenv("SMSAGENT_SK", "do-not-leak")
        seen = tmp_path / "ssh-env"
        wrapper = _env_recording_ssh(tmp_path, seen)
        paths = store_private_key(state_dir, "task-env", target_host.client_private_key_pem)
        session = TargetSession(
            target_host.ip, 22, paths.private_key, paths.known_hosts, ssh_path=str(wrapper)
        )
        await session.check()
        assert _recorded_names(seen) == ["HOME", "LANG", "LC_ALL", "PATH"]
        (tmp_path / "src").mkdir()
        job = RsyncJob(str(tmp_path / "src"), ("",), str(target_host.root))
        result = await run_rsync(build_argv(job, session))
        assert result.outcome.exit_class is ExitClass.ok, result.stderr_tail
        assert "SMSAGENT_SK" not in _recorded_names(seen)


def _env_recording_ssh(directory: Path, record: Path) -> Path:
    """An ssh stand-in that records its environment's names, then runs the real ssh."""
    wrapper = directory / "ssh-recording-env"
    wrapper.write_text(f'#!/bin/sh\nenv > "{record}"\nexec /usr/bin/ssh "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


def _recorded_names(record: Path) -> list[str]:
    names = {line.split("=", 1)[0] for line in record.read_text().splitlines()}
    # The shell of the stand-in adds these itself.
    return sorted(names - {"PWD", "SHLVL", "_", "OLDPWD"})


class TestRsyncOverFailingSsh:
    async def test_changed_host_key_is_not_retried(
        self, target_host: TargetHost, target_session: TargetSession, tmp_path: Path
    ) -> None:
        """rsync to a target whose host key changed fails at once with SMS.3803, no retries."""
        await target_session.check()
        target_host.replace_host_key()
        (tmp_path / "src").mkdir()
        (tmp_path / "src" / "file").write_text("x")
        argv = build_argv(
            RsyncJob(str(tmp_path / "src"), ("",), str(target_host.root)), target_session
        )
        retries: list[int] = []
        with pytest.raises(RsyncError) as caught:
            await run_rsync_with_retries(
                argv, policy=RetryPolicy(retries=3), on_retry=lambda a, r, d: retries.append(a)
            )
        assert caught.value.error_code == HOST_KEY_CHANGED
        assert caught.value.result.outcome.exit_class is ExitClass.fatal
        assert retries == []
        assert not (target_host.root / "file").exists()

    async def test_unreachable_target_gives_up_with_sms_0807(
        self, target_host: TargetHost, target_session: TargetSession, tmp_path: Path
    ) -> None:
        """A target that stays down exhausts the retries and reports SMS.0807."""
        target_host.stop_sshd()
        (tmp_path / "src").mkdir()
        argv = build_argv(
            RsyncJob(str(tmp_path / "src"), ("",), str(target_host.root)), target_session
        )
        retries: list[int] = []
        with pytest.raises(RsyncError) as caught:
            await run_rsync_with_retries(
                argv,
                policy=RetryPolicy(retries=2, base_delay_s=0.1, max_delay_s=0.2),
                on_retry=lambda a, r, d: retries.append(a),
            )
        assert caught.value.error_code == "SMS.0807"
        assert "gave up after 3 runs" in caught.value.message
        assert retries == [1, 2]
