"""`make demo`: the agent migrates a sample server onto a target host, driven from a console.

It starts the SMS emulator, a target host in its own network namespace (a veth link, its own
address, sshd on port 22, a target root), and the agent (`smsagent run`) for a source tree: a
copy of the directory in `SOURCE=`, or a generated sample with hard links, sparse files, special
files, odd names and a large file. A console script then creates a migration task and presses
Start; the demo shows the progress SMS receives, verifies the target, changes some files,
presses Start again for a sync pass, verifies again and prints a summary. Everything it made
is removed at the end.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable, Optional

from tests.support.agent import AgentProcess
from tests.support.emulator import EmulatorProcess
from tests.support.target import TargetHost, require_root
from tests.support.tree import build_special_tree
from tests.support.treecompare import compare_trees

MiB = 1024 * 1024
TASK_TIMEOUT_S = 90.0
REGISTER_TIMEOUT_S = 30.0


def say(text: str) -> None:
    print(text, flush=True)


def _source(root: Path, copy_of: Optional[str]) -> Path:
    """The tree to migrate: a copy of `copy_of` (the demo edits it, never the original) or a
    generated sample; both get a directory of small documents the demo later changes."""
    if copy_of:
        subprocess.run(["cp", "-a", "--", f"{copy_of}/.", str(root)], check=True)
    else:
        build_special_tree(root, large_file_bytes=48 * MiB)
    docs = root / "srv" / "docs"
    docs.mkdir(parents=True)
    for index in range(2000):
        (docs / f"note-{index:04d}.txt").write_text(f"document {index}\n" * (index % 50 + 1))
    return root


def _file_bytes(root: Path) -> int:
    """Bytes in the regular files under `root` (symlinks not followed)."""
    total = 0
    for directory, _, files in os.walk(root):
        for name in files:
            info = os.lstat(os.path.join(directory, name))
            total += info.st_size if stat.S_ISREG(info.st_mode) else 0
    return total


def _changes(source: Path) -> list[str]:
    """Edit the source the way a live server changes between passes; returns what was done."""
    docs = source / "srv" / "docs"
    (docs / "added-after-copy.txt").write_text("new since the full copy\n")
    with (docs / "note-0001.txt").open("a") as stream:
        stream.write("appended\n")
    (docs / "note-0002.txt").rename(docs / "note-0002-renamed.txt")
    (docs / "note-0003.txt").chmod(0o600)
    (docs / "note-0004.txt").unlink()
    return ["1 added", "1 appended to", "1 renamed", "1 chmod-ed", "1 deleted"]


def wait_until(
    what: str, check: Callable[[], Any], timeout_s: float, tick: Callable[[], None]
) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        tick()
        time.sleep(0.5)
    raise SystemExit(f"demo: timed out waiting for {what}")


def _results(emulator: EmulatorProcess, task_id: str) -> list[dict[str, Any]]:
    return [r for r in emulator.state()["command_results"] if r.get("task_id") == task_id]


class ProgressLine:
    """Prints the newest progress report SMS received, on one updating line."""

    def __init__(self, emulator: EmulatorProcess, task_id: str) -> None:
        self._emulator = emulator
        self._task_id = task_id
        self._seen = len(emulator.progress(task_id))
        self._last = ""

    def __call__(self) -> None:
        reports = self._emulator.progress(self._task_id)[self._seen :]
        if not reports:
            return
        last = reports[-1]
        line = (
            f"  {last.get('subtask_name')}: {last.get('progress'):>3} %  "
            f"{last.get('replicatesize', 0) / MiB:8.1f} of {last.get('totalsize', 0) / MiB:.1f} MiB"
            f"  {last.get('migrate_speed') or 0:8.1f} Mbit/s"
        )
        if line != self._last:
            print("\r" + line.ljust(78), end="", flush=True)
            self._last = line

    def done(self) -> None:
        if self._last:
            print(flush=True)
        self._last = ""


def run_pass(emulator: EmulatorProcess, task_id: str, label: str) -> tuple[dict[str, Any], float]:
    """Press Start and wait for the START result; returns it and the seconds taken."""
    before = len(_results(emulator, task_id))
    say(f"console: Start ({label})")
    started = time.monotonic()
    progress = ProgressLine(emulator, task_id)
    emulator.action(task_id, "start")
    results = wait_until(
        f"the {label} result",
        lambda: _results(emulator, task_id)[before:],
        TASK_TIMEOUT_S,
        progress,
    )
    progress()
    progress.done()
    return results[0], time.monotonic() - started


def verify(source: Path, target_root: Path) -> bool:
    differences = compare_trees(source, target_root)
    if differences:
        say(f"verify: {len(differences)} differences, first: {differences[:3]}")
        return False
    say("verify: the target is identical to the source (metadata, xattrs, ACLs, content)")
    return True


def demo(work: Path, source_arg: Optional[str]) -> int:
    with ExitStack() as stack:
        emulator = EmulatorProcess(work / "emulator").start(command_delivery="repeat")
        stack.callback(emulator.stop)
        say(f"emulator: SMS v3 control plane at {emulator.url}")
        target = TargetHost.create(work / "target")
        stack.callback(target.close)
        say(f"target:   sshd on {target.ip}:22 in network namespace {target.netns}")
        source = _source(work / "source", source_arg)
        if source_arg:
            say(f"source:   a copy of {source_arg}, so that the demo's edits stay in the copy")
        size = _file_bytes(source)
        say(f"source:   {source} ({size / MiB:.1f} MiB in files)")
        agent = AgentProcess(
            emulator,
            work / "agent",
            settings={
                "SMSAGENT_SOURCE_ROOT": str(source),
                "SMSAGENT_TARGET_LAYOUT": "premounted",
                "SMSAGENT_TARGET_ROOT": str(target.root),
                "SMSAGENT_POLL_INTERVAL": "2",
                "SMSAGENT_ACTIVE_POLL_INTERVAL": "1",
                "SMSAGENT_SERVER_NAME": "demo-source",
            },
        ).start()
        stack.callback(agent.terminate)
        sources = wait_until(
            "the agent to register",
            lambda: emulator.state()["sources"],
            REGISTER_TIMEOUT_S,
            lambda: None,
        )
        source_id = sources[0]["id"]
        say(f"agent:    registered as source {source_id}")
        task_id = emulator.create_task(source_id, migration_ip=target.ip)
        emulator.set_cert_key(task_id, private_key=target.client_private_key_pem)
        say(f"console:  created task {task_id} (MIGRATE_FILE to {target.ip})")
        full, full_s = run_pass(emulator, task_id, "full migration")
        say(f"agent:    START {full['result']} after {full_s:.1f} s")
        ok_full = full["result"] == "success" and verify(source, target.root)
        say(f"source:   changed files: {', '.join(_changes(source))}")
        sync, sync_s = run_pass(emulator, task_id, "sync pass")
        say(f"agent:    START (sync) {sync['result']} after {sync_s:.1f} s")
        ok_sync = sync["result"] == "success" and verify(source, target.root)
        states = [c["copystate"] for c in emulator.state()["changestates"]]
        say("")
        say("summary")
        verdict = {True: "ok", False: "FAILED"}
        say(f"  full copy   {size / MiB:8.1f} MiB in {full_s:6.1f} s  {verdict[ok_full]}")
        say(f"  sync pass   {'':8}     in {sync_s:6.1f} s  {verdict[ok_sync]}")
        say(f"  source states reported: {' -> '.join(states)}")
        if not (ok_full and ok_sync):
            shutil.copy(agent.log_path, Path.cwd() / "demo-agent.log")
            say("  agent log kept in demo-agent.log")
            return 1
        return 0


def main(argv: Sequence[str] = ()) -> int:
    reason = require_root()
    if reason:
        print(f"demo: {reason}", file=sys.stderr)
        return 2
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="smsagent-demo-") as work:
        code = demo(Path(work), os.environ.get("SOURCE") or None)
    say(f"  demo took {time.monotonic() - started:.0f} s; everything it made is removed")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
