"""`make demo`: the agent migrates a whole Debian 12 server onto a target, and the target boots.

It starts the SMS emulator, a target host in its own network namespace (sshd on port 22) with a
blank disk of its own (a loop device, larger than the source's), a source server (a real Debian
12 system with kernel and GRUB on a loop disk: MBR, /boot ext4, / ext4, swap; built once with
debootstrap and cached) and the agent (`smsagent run`) for that system. A console script then
creates a migration task whose target layout mirrors the source and presses Start: the agent lays
out and formats the target disk, copies each file system into its twin, verifies, and configures
the copy for its new machine. The target disk is then booted in qemu (TCG) and its console shown.
A file changed on the source comes over in a sync pass. Everything it made is removed at the end.

Every size shown is one figure in one unit (MiB): the used bytes of the file systems copied, as
`df` counts them, which is the progress reports' `totalsize`; the summary sets beside it what the
target's file systems hold, and for the sync pass what was compared and what was sent.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Callable

from tests.support import qemuboot, sourcesys
from tests.support.agent import AgentProcess
from tests.support.emulator import EmulatorProcess
from tests.support.target import TargetHost, require_root
from tests.support.targetdisks import target_disks
from tests.support.wholeserver import target_server

MiB = 1024 * 1024
# What may differ between the source's and the target's file systems: the configuration of the
# copy (a new initramfs with VirtIO drivers, GRUB, backups) and file-system metadata.
TARGET_SLACK_BYTES = 64 * MiB
TASK_TIMEOUT_S = 600.0
REGISTER_TIMEOUT_S = 30.0


def say(text: str) -> None:
    print(text, flush=True)


def _change(source: sourcesys.SourceSystem) -> Path:
    """A file written on the source after the full copy, as a live server changes."""
    changed = source.root / "srv" / "changed-after-the-copy.txt"
    changed.parent.mkdir(parents=True, exist_ok=True)
    changed.write_text(f"written on the source at {time.strftime('%H:%M:%S')}\n")
    return changed


def used_bytes(path: Path) -> int:
    """A mounted file system's used bytes, as `df` counts them."""
    usage = os.statvfs(path)
    return (usage.f_blocks - usage.f_bfree) * usage.f_frsize


def source_used_bytes(source: sourcesys.SourceSystem) -> int:
    """The used bytes of the source's file systems: what the agent copies."""
    mounted = [v.mount_point for v in source.volumes if (v.mount_point or "").startswith("/")]
    return sum(used_bytes(source.root / m.lstrip("/")) for m in mounted if m)


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
    """Prints the progress SMS received: a line when the subtask changes or moves a quarter on
    (one line per update, so that the output reads the same in a terminal and in a log)."""

    def __init__(self, emulator: EmulatorProcess, task_id: str) -> None:
        self._emulator = emulator
        self._task_id = task_id
        self._seen = len(emulator.progress(task_id))
        self._last: tuple[str, int] = ("", -1)

    def __call__(self) -> None:
        reports = self._emulator.progress(self._task_id)[self._seen :]
        self._seen += len(reports)
        for report in reports:
            stage, percent = str(report.get("subtask_name")), int(report.get("progress") or 0)
            if stage == self._last[0] and percent // 25 == self._last[1] // 25:
                continue
            self._last = (stage, percent)
            size = ""
            if stage.startswith(("MIGRATE", "SYNC")):
                done = report.get("replicatesize", 0) / MiB
                size = f"  {done:7.1f} of {report.get('totalsize', 0) / MiB:.1f} MiB"
                size += f"  {report.get('migrate_speed') or 0:.1f} Mbit/s sent"
            say(f"  {stage:<24} {percent:>3} %{size}")

    def done(self) -> None:
        self()


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


@contextmanager
def _mounted_read_only(device: str, where: Path) -> Iterator[Path]:
    where.mkdir(parents=True)
    subprocess.run(["mount", "-o", "ro", device, str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


def _target_used_bytes(source: sourcesys.SourceSystem, device: str, where: Path) -> int:
    """What the target's file systems (twins of the source's) hold, mounted read-only."""
    total = 0
    for volume in source.volumes:
        if (volume.mount_point or "").startswith("/") and volume.number is not None:
            with _mounted_read_only(f"{device}p{volume.number}", where / str(volume.number)) as m:
                total += used_bytes(m)
    return total


def _totalsize(emulator: EmulatorProcess, task_id: str, stage: str) -> int:
    reports = [r for r in emulator.progress(task_id) if r.get("subtask_name") == stage]
    return int(reports[-1].get("totalsize", 0)) if reports else -1


def _show_console(result: qemuboot.BootResult) -> None:
    """The boot as a user would glance at it: the kernel, systemd's last words, the login."""
    wanted = ("Linux version", "[  OK  ] Reached target multi-user", "login:", "BOOTCHECK")
    for line in result.lines:
        text = line.strip()
        if text and any(mark in text for mark in wanted) and "systemd[1]:" not in text:
            say(f"  | {text[:110]}")


def demo(work: Path) -> int:
    with ExitStack() as stack:
        emulator = EmulatorProcess(work / "emulator").start(command_delivery="repeat")
        stack.callback(emulator.stop)
        say(f"emulator: SMS v3 control plane at {emulator.url}")
        target = TargetHost.create(work / "target")
        stack.callback(target.close)
        say(f"target:   sshd on {target.ip}:22 in network namespace {target.netns}")
        say("source:   a Debian 12 system on a loop disk (built once with debootstrap, cached)")
        started = time.monotonic()
        source = stack.enter_context(sourcesys.source_system("mbr-bios", work / "source"))
        say(f"source:   ready in {time.monotonic() - started:.0f} s: {source.disks[0]}, MBR, BIOS")
        for volume in source.volumes:
            say(
                f"            {volume.mount_point or '-':<10} {volume.fstype or '-':<6}"
                f" {volume.size_bytes / MiB:6.0f} MiB  UUID {volume.uuid}"
            )
        source_bytes = source_used_bytes(source)
        say(f"source:   {source_bytes / MiB:.1f} MiB used in its file systems (df): what is copied")
        disks = stack.enter_context(target_disks(work))
        size_mib = source.disk_size_bytes // MiB + 512
        device = disks.add(size_mib)
        source_mib = source.disk_size_bytes // MiB
        say(f"target:   blank disk {device} of {size_mib} MiB (the source's has {source_mib})")
        agent = AgentProcess(
            emulator,
            work / "agent",
            settings={
                "SMSAGENT_SOURCE_ROOT": str(source.root),
                "SMSAGENT_TARGET_LAYOUT": "task",
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
        layout = target_server(source, [device], size_mib * MiB, target.ip)
        task_id = emulator.create_task(source_id, migration_ip=target.ip, target_server=layout)
        emulator.set_cert_key(task_id, private_key=target.client_private_key_pem)
        say(f"console:  created task {task_id}: MIGRATE_FILE to {target.ip}, target disk {device}")
        full, full_s = run_pass(emulator, task_id, "full migration")
        full_message = (full.get("result_detail") or {}).get("message", "")
        say(f"agent:    START {full['result']} after {full_s:.1f} s: {full_message}")
        ok_full = full["result"] == "success"
        say("qemu:     booting the target disk (TCG, no KVM; BIOS)")
        boot = qemuboot.boot([device], source.firmware, log_path=work / "boot.console")
        _show_console(boot)
        checks = boot.checks
        ok_boot = (
            boot.ok
            and checks.system == "running"
            and not checks.failed
            and checks.findmnt_verify_rc == 0
            and checks.smsagent.get("enabled") == "masked"
        )
        say(f"qemu:     {boot.reason} after {boot.duration_s:.0f} s; systemd {checks.system}")
        changed = _change(source)
        say(f"source:   changed {changed.relative_to(source.root)}")
        sync, sync_s = run_pass(emulator, task_id, "sync pass")
        say(f"agent:    START (sync) {sync['result']} after {sync_s:.1f} s")
        sync_detail = sync.get("result_detail") or {}
        root_device = f"{device}p{source.volume('/').number}"
        with _mounted_read_only(root_device, work / "check") as copy:
            on_target = copy / changed.relative_to(source.root)
            ok_sync = sync["result"] == "success" and (
                on_target.exists() and on_target.read_bytes() == changed.read_bytes()
            )
        target_bytes = _target_used_bytes(source, device, work / "sizes")
        total_bytes = _totalsize(emulator, task_id, "MIGRATE_LINUX_FILE")
        ok_sizes = (
            abs(total_bytes - source_bytes) <= MiB
            and abs(target_bytes - source_bytes) <= TARGET_SLACK_BYTES
        )
        states = [c["copystate"] for c in emulator.state()["changestates"]]
        say("")
        say("summary")
        verdict = {True: "ok", False: "FAILED"}
        say(f"  full migration  in {full_s:6.1f} s  {verdict[ok_full]}")
        say(f"  target boot     in {boot.duration_s:6.1f} s  {verdict[ok_boot]}")
        say(f"  sync pass       in {sync_s:6.1f} s  {verdict[ok_sync]} (the changed file came)")
        say(
            f"  sizes           source {source_bytes / MiB:.1f} MiB used, progress totalsize "
            f"{total_bytes / MiB:.1f} MiB, target holds {target_bytes / MiB:.1f} MiB"
            f"  {verdict[ok_sizes]}"
        )
        say(
            f"  sync figures    compared {sync_detail.get('bytes_total', 0) / MiB:.1f} MiB "
            f"({sync_detail.get('files_total', 0)} files), sent "
            f"{sync_detail.get('bytes_sent', 0) / MiB:.1f} MiB "
            f"({sync_detail.get('files_transferred', 0)} files transferred)"
        )
        say(f"  source states reported: {' -> '.join(states)}")
        if not (ok_full and ok_boot and ok_sync and ok_sizes):
            shutil.copy(agent.log_path, Path.cwd() / "demo-agent.log")
            shutil.copy(work / "boot.console", Path.cwd() / "demo-boot.console")
            say("  agent log kept in demo-agent.log, the target's console in demo-boot.console")
            return 1
        return 0


def main(argv: Sequence[str] = ()) -> int:
    reason = require_root()
    if reason:
        print(f"demo: {reason}", file=sys.stderr)
        return 2
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="smsagent-demo-") as work:
        code = demo(Path(work))
    say(f"  demo took {time.monotonic() - started:.0f} s; everything it made is removed")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
