"""Boot a set of disks in qemu (TCG, no KVM) and read what the boot check reports on ttyS0.

The disks are a source or a migrated target (loop devices or image files). The guest's
`smsagent-bootcheck.service` (see sourcesys.py) writes `BOOTCHECK ...` lines to the serial
console once the boot settled, then powers off; `boot()` collects every console line, parses
those, and says why the boot ended:

    result = boot(["/dev/loop3"], "bios", log_path=tmp_path / "console.log")
    assert result.reason == "done", failure_message(result)
    assert result.checks.system == "running", failure_message(result)

`done` the check finished; `timeout` the boot took longer than `timeout_s`; `quiet` the console
stayed silent for `quiet_limit_s` (a blank boot sector hangs SeaBIOS without a word); `exited`
qemu ended before the check finished (a kernel panic with -no-reboot, a firmware that gave up).
qemu is always ended and its temporary files removed, within a bounded time.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

QEMU = "qemu-system-x86_64"
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
BOOTCHECK_RE = re.compile(r"BOOTCHECK (.*)$")
_PAIR_RE = re.compile(r"([A-Za-z_][\w-]*)=(\S*)")
# After `BOOTCHECK done` the guest powers off; a slow poweroff is not the check's failure.
POWEROFF_GRACE_S = 30.0
_POLL_S = 0.2
_ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Za-z0-9]|\x1bc")


def missing_requirements(firmware: str = "bios") -> Optional[str]:
    """Why this host cannot boot disks in qemu, or None when it can."""
    if shutil.which(QEMU) is None:
        return f"{QEMU} is missing (install qemu-system-x86)"
    if firmware == "uefi" and not (OVMF_CODE.exists() and OVMF_VARS.exists()):
        return f"{OVMF_CODE} or {OVMF_VARS} is missing (install ovmf)"
    return None


@dataclass
class BootChecks:
    """What the guest's boot check reported; fields stay empty for lines that never came."""

    begun: bool = False
    done: bool = False
    system: Optional[str] = None  # systemctl is-system-running: running, degraded, starting...
    failed: list[str] = field(default_factory=list)  # failed units
    findmnt_verify_rc: Optional[int] = None
    findmnt_verify_output: list[str] = field(default_factory=list)
    root: dict[str, str] = field(default_factory=dict)  # source, uuid, fstype of /
    mounts: dict[str, dict[str, str]] = field(default_factory=dict)  # fstab target -> source...
    swaps: list[dict[str, str]] = field(default_factory=list)  # source, uuid, size_kib
    swaps_expected: Optional[int] = None  # swap lines in fstab
    smsagent: dict[str, str] = field(default_factory=dict)  # active, enabled
    networking: dict[str, str] = field(default_factory=dict)  # active
    markers: dict[str, str] = field(default_factory=dict)  # path -> sha256 or "missing"
    facts: dict[str, str] = field(default_factory=dict)  # hostname, kernel, cmdline
    lines: list[str] = field(default_factory=list)  # every BOOTCHECK body, in order

    def add(self, body: str) -> None:
        """Take one `BOOTCHECK <body>` line."""
        self.lines.append(body)
        head, _, rest = body.partition(" ")
        if body == "begin":
            self.begun = True
        elif body == "done":
            self.done = True
        elif head.startswith("system="):
            self.system = head.split("=", 1)[1]
        elif head.startswith("failed="):
            units = body.split("=", 1)[1]
            self.failed = [unit for unit in units.split(",") if unit]
        elif head == "findmnt-verify" and rest.startswith("rc="):
            self.findmnt_verify_rc = int(rest[3:])
        elif head == "findmnt-verify" and rest.startswith("| "):
            self.findmnt_verify_output.append(rest[2:])
        elif head.startswith("root="):
            self.root = _pairs(body, rename={"root": "source"})
        elif head == "mount":
            pairs = _pairs(rest)
            self.mounts[pairs.get("target", "")] = pairs
        elif head == "swap":
            self.swaps.append(_pairs(rest))
        elif head.startswith("swaps-expected="):
            self.swaps_expected = int(head.split("=", 1)[1])
        elif head == "smsagent":
            self.smsagent = _pairs(rest)
        elif head == "networking":
            self.networking = _pairs(rest)
        elif head == "marker":
            path, _, digest = rest.rpartition(" ")
            self.markers[path] = digest
        elif "=" in head:
            key, value = body.split("=", 1)
            self.facts[key] = value


def _pairs(text: str, rename: Optional[dict[str, str]] = None) -> dict[str, str]:
    pairs = dict(_PAIR_RE.findall(text))
    for old, new in (rename or {}).items():
        if old in pairs:
            pairs[new] = pairs.pop(old)
    return pairs


@dataclass
class BootResult:
    """One boot: every console line, the parsed checks, why it ended and how long it took."""

    lines: list[str]
    checks: BootChecks
    reason: str  # "done", "timeout", "quiet" or "exited"
    duration_s: float
    argv: list[str]
    returncode: Optional[int] = None  # qemu's, when it exited by itself
    powered_off: bool = False  # qemu exited by itself after the check was done
    qemu_stderr: str = ""

    @property
    def ok(self) -> bool:
        return self.reason == "done"


def failure_message(result: BootResult, tail: int = 40) -> str:
    """Why the boot ended and the last `tail` console lines, for an assertion message."""
    head = (
        f"boot ended: {result.reason} after {result.duration_s:.0f} s "
        f"(qemu rc={result.returncode}); checks: system={result.checks.system} "
        f"failed={result.checks.failed} findmnt-verify rc={result.checks.findmnt_verify_rc}"
    )
    if result.qemu_stderr.strip():
        head += f"\nqemu stderr: {result.qemu_stderr.strip()[-2000:]}"
    lines = "\n".join(f"  | {line}" for line in result.lines[-tail:])
    return f"{head}\nlast {min(tail, len(result.lines))} console lines:\n{lines}"


def qemu_argv(
    disks: Sequence[Union[Path, str]],
    firmware: str,
    serial_path: Path,
    vars_path: Optional[Path],
    *,
    memory_mib: int,
    cpus: int,
    snapshot: bool,
    user_nic: bool,
) -> list[str]:
    """The qemu command line: TCG, no display, serial console to a file, no host networking."""
    argv = [QEMU, "-accel", "tcg", "-nodefaults", "-no-user-config", "-no-reboot"]
    argv += ["-display", "none", "-vga", "none", "-monitor", "none"]
    argv += ["-m", str(memory_mib), "-smp", str(cpus)]
    argv += ["-serial", f"file:{serial_path}"]
    if firmware == "uefi":
        assert vars_path is not None
        argv += ["-machine", "q35"]
        argv += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"]
        argv += ["-drive", f"if=pflash,format=raw,unit=1,file={vars_path}"]
    elif firmware == "bios":
        argv += ["-machine", "pc"]
    else:
        raise ValueError(f"firmware must be 'bios' or 'uefi', not {firmware!r}")
    for disk in disks:
        # O_DIRECT for block devices: no guest write lingers in the host's cache of the loop
        # device after qemu ended; image files may live on a tmpfs, which refuses O_DIRECT.
        is_block = stat.S_ISBLK(os.stat(disk).st_mode)
        cache = "none" if is_block else "writeback"
        options = f"file={disk},format=raw,if=virtio,cache={cache}"
        argv += ["-drive", options + (",snapshot=on" if snapshot else "")]
    if user_nic:
        # User-mode networking restricted to the guest: DHCP works, nothing reaches the host.
        argv += ["-nic", "user,model=virtio-net-pci,restrict=on"]
    return argv


def boot(
    disks: Sequence[Union[Path, str]],
    firmware: str,
    *,
    timeout_s: float = 300,
    quiet_limit_s: float = 60,
    memory_mib: int = 768,
    cpus: int = 1,
    snapshot: bool = False,
    user_nic: bool = False,
    log_path: Optional[Path] = None,
) -> BootResult:
    """Boot `disks` (the first is the boot disk) with `firmware` ("bios" or "uefi") under TCG.

    `snapshot` keeps the disks unchanged (the guest writes to a temporary overlay), for booting
    a source whose tree must stay as built. `log_path` keeps the console log; the lines are in
    the result either way. The disks must not be mounted on the host while the guest runs.
    """
    if not disks:
        raise ValueError("no disks to boot")
    with tempfile.TemporaryDirectory(prefix="smsagent-qemu-") as work:
        serial_path = log_path or Path(work) / "console.log"
        serial_path.parent.mkdir(parents=True, exist_ok=True)
        serial_path.write_bytes(b"")
        vars_path = None
        if firmware == "uefi":
            vars_path = Path(work) / "OVMF_VARS.fd"
            shutil.copyfile(OVMF_VARS, vars_path)
        argv = qemu_argv(
            disks,
            firmware,
            serial_path,
            vars_path,
            memory_mib=memory_mib,
            cpus=cpus,
            snapshot=snapshot,
            user_nic=user_nic,
        )
        stderr_path = Path(work) / "qemu.stderr"
        with open(stderr_path, "wb") as stderr:
            process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=stderr, stderr=subprocess.STDOUT
            )
        try:
            return _watch(process, argv, serial_path, stderr_path, timeout_s, quiet_limit_s)
        finally:
            _stop(process)


def _watch(
    process: subprocess.Popen[bytes],
    argv: list[str],
    serial_path: Path,
    stderr_path: Path,
    timeout_s: float,
    quiet_limit_s: float,
) -> BootResult:
    started = time.monotonic()
    console = _ConsoleReader(serial_path)
    checks = BootChecks()
    last_output = started
    done_at: Optional[float] = None
    reason = "timeout"
    while True:
        now = time.monotonic()
        new_lines = console.read()
        if new_lines or console.partial_grew:
            last_output = now
        for line in new_lines:
            match = BOOTCHECK_RE.search(line)
            if match:
                checks.add(match.group(1).strip())
        if checks.done and done_at is None:
            done_at = now
        if process.poll() is not None:
            reason = "done" if checks.done else "exited"
            break
        if done_at is not None and now - done_at > POWEROFF_GRACE_S:
            reason = "done"
            break
        if now - started > timeout_s:
            reason = "timeout"
            break
        if done_at is None and now - last_output > quiet_limit_s:
            reason = "quiet"
            break
        time.sleep(_POLL_S)
    for line in console.read(final=True):
        match = BOOTCHECK_RE.search(line)
        if match:
            checks.add(match.group(1).strip())
    if checks.done:
        reason = "done"
    returncode = process.poll()
    return BootResult(
        lines=console.lines,
        checks=checks,
        reason=reason,
        duration_s=round(time.monotonic() - started, 1),
        argv=argv,
        returncode=returncode,
        powered_off=checks.done and returncode is not None,
        qemu_stderr=stderr_path.read_text(errors="replace") if stderr_path.exists() else "",
    )


class _ConsoleReader:
    """Reads the serial log as it grows and splits it into clean lines (no CR, no escapes)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""
        self.partial_grew = False
        self.lines: list[str] = []

    def read(self, final: bool = False) -> list[str]:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except FileNotFoundError:
            data = b""
        self.offset += len(data)
        self.partial_grew = bool(data)
        chunks = (self.partial + data).split(b"\n")
        self.partial = chunks.pop()
        if final and self.partial:
            chunks.append(self.partial)
            self.partial = b""
        new = [_clean(chunk) for chunk in chunks]
        self.lines.extend(new)
        return new


def _clean(raw: bytes) -> str:
    text = raw.decode("utf-8", errors="replace")
    text = _ANSI_RE.sub("", text)
    # A carriage return inside a line is a redraw (GRUB's menu): keep what was drawn last.
    parts = [part for part in text.split("\r") if part.strip()]
    return parts[-1] if parts else ""


def _stop(process: subprocess.Popen[bytes]) -> None:
    """End qemu: it may already be gone; SIGTERM, then SIGKILL; never wait unbounded."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
