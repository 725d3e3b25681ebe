"""rsync argv building, the bandwidth conversion and the exit-code classes."""

from __future__ import annotations

import random
import shlex
from pathlib import Path
from typing import Optional

import pytest

from smsagent.migration.rsync import (
    MIGRATE_FAILED,
    NETWORK_FAILED,
    SYNC_FAILED,
    ExitClass,
    PassKind,
    RetryPolicy,
    RsyncJob,
    build_argv,
    bwlimit_kib_s,
    classify_exit,
)
from smsagent.target.session import AUTH_REFUSED, HOST_KEY_CHANGED, TargetSession


def _session() -> TargetSession:
    return TargetSession(
        "10.0.0.2", 22, Path("/var/lib/smsagent/keys/t 1.key"), Path("/var/lib/smsagent/kh/t1")
    )


class TestBuildArgv:
    def test_full_copy(self) -> None:
        """A full copy keeps everything, resumes partial files, reports progress, never deletes."""
        argv = build_argv(RsyncJob("/", ("", "boot"), "/mnt/smsroot"), _session())
        assert argv[0] == "rsync"
        options = argv[1 : argv.index("-e")]
        assert options[:2] == ["-aHAXS", "--numeric-ids"]
        for flag in (
            "--relative",
            "--partial-dir=.rsync-partial",
            "--timeout=600",
            "--no-h",
            "--info=progress2,stats2",
            "--one-file-system",
            "--no-inc-recursive",
            "--open-noatime",
            "--modify-window=-1",
        ):
            assert flag in options
        assert not any(flag.startswith("--delete") for flag in argv)
        assert not any(flag.startswith("--bwlimit") for flag in argv)
        assert argv[-4:] == ["--", "/./", "/./boot", "10.0.0.2:/mnt/smsroot/"]

    def test_sync_deletes_late(self) -> None:
        """A sync pass deletes, and only after the transfer (`--delete-delay`)."""
        argv = build_argv(RsyncJob("/", ("",), "/mnt/smsroot", kind=PassKind.sync), _session())
        assert "--delete-delay" in argv
        assert "--delete-excluded" not in argv

    def test_only_a_full_copy_keeps_partial_files(self) -> None:
        """A sync pass has no partial dir: rsync would look for one beside every file."""
        full = build_argv(RsyncJob("/", ("",), "/mnt/smsroot"), _session())
        sync = build_argv(RsyncJob("/", ("",), "/mnt/smsroot", kind=PassKind.sync), _session())
        assert "--partial-dir=.rsync-partial" in full
        assert not any(flag.startswith("--partial") for flag in sync)

    def test_remote_shell_is_the_sessions_ssh(self) -> None:
        """`-e` carries the session's ssh argv, quoted so a path with a space survives."""
        session = _session()
        argv = build_argv(RsyncJob("/", ("",), "/mnt/smsroot"), session)
        remote_shell = argv[argv.index("-e") + 1]
        assert shlex.split(remote_shell) == session.ssh_argv()
        assert "IdentityFile=/var/lib/smsagent/keys/t 1.key" in shlex.split(remote_shell)

    def test_options(self) -> None:
        """Bandwidth, filters, incremental recursion and the remote rsync path are passed on."""
        job = RsyncJob(
            "/srv/root/",
            ("home",),
            "/mnt/smsroot/",
            filter_rules=("- /proc/*", "- /var/cache"),
            bwlimit_kib_s=1221,
            incremental_recursion=True,
            one_file_system=False,
            nanosecond_times=False,
            remote_rsync_path="/usr/local/bin/rsync",
        )
        argv = build_argv(job, _session())
        assert "--bwlimit=1221" in argv
        assert "--filter=- /proc/*" in argv
        assert "--filter=- /var/cache" in argv
        assert "--rsync-path=/usr/local/bin/rsync" in argv
        assert "--no-inc-recursive" not in argv
        assert "--one-file-system" not in argv
        assert "--modify-window=-1" not in argv
        assert argv[-2:] == ["/srv/root/./home", "10.0.0.2:/mnt/smsroot/"]

    def test_local_destination(self) -> None:
        """Without a target the destination is a local directory and there is no `-e`."""
        argv = build_argv(RsyncJob("/src", ("",), "/dst"), None)
        assert "-e" not in argv
        assert argv[-2:] == ["/src/./", "/dst/"]

    def test_ipv6_destination(self) -> None:
        """An IPv6 target is bracketed for rsync."""
        session = TargetSession("fd00::2", 22, Path("/k"), Path("/kh"))
        assert build_argv(RsyncJob("/", ("",), "/mnt"), session)[-1] == "[fd00::2]:/mnt/"

    @pytest.mark.parametrize("source", ["/etc", "../etc", "a/../b", "a//b", "./a", "a/"])
    def test_bad_sources(self, source: str) -> None:
        """A source that is not a normalized relative path is refused, naming it."""
        with pytest.raises(ValueError, match="must be a normalized path"):
            build_argv(RsyncJob("/", (source,), "/mnt"), None)

    def test_relative_source_root(self) -> None:
        """The source root must be absolute."""
        with pytest.raises(ValueError, match="source_root 'src' must be an absolute path"):
            build_argv(RsyncJob("src", ("",), "/mnt"), None)

    def test_no_sources(self) -> None:
        """A pass without sources is refused."""
        with pytest.raises(ValueError, match="at least one source"):
            build_argv(RsyncJob("/", (), "/mnt"), None)


class TestBwlimit:
    @pytest.mark.parametrize(
        ("mbit", "streams", "kib"),
        [(0, 1, 0), (-5, 1, 0), (100, 1, 12207), (100, 4, 3052), (1, 1, 122), (0.001, 1, 1)],
    )
    def test_conversion(self, mbit: float, streams: int, kib: int) -> None:
        """Mbit/s (10^6 bit) become KiB/s per stream; 0 stays unlimited, tiny limits stay > 0."""
        assert bwlimit_kib_s(mbit, streams) == kib


class TestClassifyExit:
    @pytest.mark.parametrize(
        ("code", "exit_class", "error_code"),
        [
            (0, ExitClass.ok, None),
            (24, ExitClass.partial_warning, None),
            (20, ExitClass.cancelled, None),
            (10, ExitClass.retryable, NETWORK_FAILED),
            (12, ExitClass.retryable, NETWORK_FAILED),
            (23, ExitClass.retryable, NETWORK_FAILED),
            (30, ExitClass.retryable, NETWORK_FAILED),
            (35, ExitClass.retryable, NETWORK_FAILED),
            (255, ExitClass.retryable, NETWORK_FAILED),
            (-9, ExitClass.retryable, NETWORK_FAILED),
            (1, ExitClass.fatal, MIGRATE_FAILED),
            (2, ExitClass.fatal, MIGRATE_FAILED),
            (3, ExitClass.fatal, MIGRATE_FAILED),
            (4, ExitClass.fatal, MIGRATE_FAILED),
            (11, ExitClass.fatal, MIGRATE_FAILED),
            (25, ExitClass.fatal, MIGRATE_FAILED),
            (99, ExitClass.fatal, MIGRATE_FAILED),
        ],
    )
    def test_table(self, code: int, exit_class: ExitClass, error_code: Optional[str]) -> None:
        """Each exit code maps to its class and SMS error code."""
        outcome = classify_exit(code)
        assert outcome.exit_class is exit_class
        assert outcome.error_code == error_code
        if code:
            assert f"rsync exited {code}" in outcome.message

    def test_sync_code(self) -> None:
        """A failed sync pass reports SMS.0806, not the full copy's SMS.0805."""
        assert classify_exit(11, kind=PassKind.sync).error_code == SYNC_FAILED

    @pytest.mark.parametrize(
        ("stderr", "error_code"),
        [
            ("Host key verification failed.", HOST_KEY_CHANGED),
            ("root@10.0.0.2: Permission denied (publickey).", AUTH_REFUSED),
            ("bash: line 1: rsync: command not found", MIGRATE_FAILED),
        ],
    )
    def test_ssh_failures_that_retrying_cannot_fix(self, stderr: str, error_code: str) -> None:
        """A changed host key, a refused key or a missing remote rsync is fatal at once."""
        lines = [stderr, "rsync: connection unexpectedly closed (0 bytes received so far) [sender]"]
        outcome = classify_exit(255, stderr_lines=lines)
        assert outcome.exit_class is ExitClass.fatal
        assert outcome.error_code == error_code

    def test_message_carries_rsyncs_own_error(self) -> None:
        """The message quotes rsync's error line for the operator."""
        lines = ["some noise", "rsync error: error in file IO (code 11) at receiver.c(378)", "x"]
        assert (
            "rsync error: error in file IO (code 11)"
            in classify_exit(11, stderr_lines=lines).message
        )


class TestRetryPolicy:
    def test_delays_grow_with_jitter_up_to_the_cap(self) -> None:
        """Each wait lies between half and all of a doubling ceiling, which stops at the cap."""
        policy = RetryPolicy(retries=8, base_delay_s=1.0, max_delay_s=10.0)
        rng = random.Random(7)
        for attempt, ceiling in enumerate([1, 2, 4, 8, 10, 10, 10]):
            delay = policy.delay_s(attempt, rng)
            assert ceiling / 2 <= delay <= ceiling
