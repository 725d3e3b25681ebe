"""The movers' child-process helpers: environment, bounded stderr capture, the stop sequence."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from smsagent.childproc import (
    LineTail,
    in_cgroup,
    live_group_members,
    minimal_env,
    stop_process,
)
from tests.support.target import wait_none_left

# A group leader like rsync's: on SIGTERM it exits without waiting for its helper. The helper
# learns that its leader is gone (its pipe ends), then takes a while to save its work, as
# rsync's local receiver does with its partial file; with `--stubborn` it never ends at all.
LEADER_WITH_HELPER = """
import os, signal, sys, time
saved_path, stubborn = sys.argv[1], sys.argv[2:] == ["--stubborn"]
gone_r, gone_w = os.pipe()
if os.fork() == 0:
    os.close(gone_w)
    os.read(gone_r, 1)
    if stubborn:
        signal.pause()
    time.sleep(0.3)
    with open(saved_path, "w") as saved:
        saved.write("saved")
    os._exit(0)
os.close(gone_r)
signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
print("ready", flush=True)
signal.pause()
"""


async def start_leader(saved: Path, *extra: str) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        LEADER_WITH_HELPER,
        str(saved),
        *extra,
        stdout=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stdout is not None
    assert await asyncio.wait_for(proc.stdout.readline(), timeout=10) == b"ready\n"
    return proc


class TestMinimalEnv:
    def test_nothing_inherited(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Only PATH, the C locale and HOME reach a child; the agent's secrets never do."""
        monkeypatch.setenv("SMSAGENT_SK", "secret-value")
        env = minimal_env()
        assert set(env) == {"PATH", "LC_ALL", "LANG", "HOME"}
        assert env["LC_ALL"] == "C"
        assert "secret-value" not in env.values()


class TestLineTail:
    def test_keeps_the_last_lines(self) -> None:
        """Only the newest lines are kept, split across chunks correctly."""
        tail = LineTail(max_lines=3)
        tail.feed(b"one\ntw")
        tail.feed(b"o\nthree\nfour\nfi")
        tail.close()
        assert tail.lines() == ["three", "four", "fi"]

    def test_long_lines_are_cut(self) -> None:
        """A line longer than the limit is cut, also one that never ends."""
        tail = LineTail(max_lines=5, max_line_bytes=10)
        tail.feed(b"x" * 25 + b"\n")
        tail.feed(b"y" * 25)
        assert tail.lines() == ["x" * 10, "y" * 10]

    def test_blank_lines_and_bad_bytes(self) -> None:
        """Blank lines are dropped; bytes that are not UTF-8 are escaped, not fatal."""
        tail = LineTail()
        tail.feed(b"\n\r\n  \nbad \xff byte\r\n")
        assert tail.lines() == ["bad \\xff byte"]


class TestStopProcess:
    @pytest.mark.timeout(30)
    async def test_helpers_finish_after_their_leader(self, tmp_path: Path) -> None:
        """A helper still saving its work when the leader exits is not killed mid-way."""
        saved = tmp_path / "saved"
        proc = await start_leader(saved)
        await stop_process(proc, grace_s=10)
        assert saved.read_text() == "saved"
        assert live_group_members(proc.pid) == []

    @pytest.mark.timeout(30)
    async def test_a_helper_that_never_ends_is_killed_after_the_grace(self, tmp_path: Path) -> None:
        """The wait for helpers is bounded: what is left at the end of the grace is killed."""
        proc = await start_leader(tmp_path / "saved", "--stubborn")
        assert len(live_group_members(proc.pid)) == 2
        await stop_process(proc, grace_s=0.5)
        assert proc.returncode == 0  # the leader wound down by itself
        # SIGKILL is delivered, not awaited: the helper dies a moment after the stop returns.
        wait_none_left(lambda: live_group_members(proc.pid), "the helper", timeout_s=10)


class TestInCgroup:
    def test_the_child_writes_the_pid_it_keeps(self, tmp_path: Path) -> None:
        """The trampoline writes its own pid, which the mover keeps after exec, before the
        mover's first instruction; without a cgroup the argv is left as it is."""
        procs = tmp_path / "cgroup.procs"
        procs.write_text("")

        done = subprocess.run(
            in_cgroup(["/bin/sh", "-c", 'cat "$0"; echo $$', str(procs)], procs),
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )

        written, own_pid = done.stdout.split()
        assert written == own_pid
        assert in_cgroup(["rsync", "-a"], None) == ["rsync", "-a"]

    def test_a_cgroup_that_cannot_be_joined_stops_the_start(self, tmp_path: Path) -> None:
        """If the pid cannot be written the mover never runs (exit 126, the reason on stderr)."""
        procs = tmp_path / "absent" / "cgroup.procs"

        done = subprocess.run(
            in_cgroup(["/bin/echo", "ran"], procs), capture_output=True, text=True, timeout=10
        )

        assert (done.returncode, done.stdout) == (126, "")
        assert str(procs) in done.stderr
