"""The movers' resource limits measured under real systemd with a real cgroup v2 tree: a VM.

The issue asks for the limits under systemd in systemd-nspawn. A container gets the host's
cgroup layout, and on a host without systemd as PID 1 and with a hybrid layout its cgroup v2 tree
has no cpu, memory or io controller, so nothing there can be limited or measured (see
`test_system_resource_limits.py`). A qemu VM boots its own kernel and systemd with the unified
hierarchy and every controller, so the same check runs there: the helper VM
(`tests.support.helpervm`, TCG), the agent installed in it from its .deb and run as
smsagent.service with the unit's own `Delegate=` and sandboxing, the emulator on the host
reached through qemu's user network, and the task's source a real ext4 on its own virtio disk.

One task, driven from the console as a user would, with its settings changed between passes:

1. START with `LINUX_IO_LIMIT=20`, `LINUX_MEM_LIMIT=300` and `CONSISTENCY_MODE=hash`: the full
   copy, then the verification, which reads every source file to hash it. The IO limit is
   measured over the verification: under TCG ssh's cipher holds the copy itself below 20 MiB/s
   (a copy that cannot reach the limit would say nothing about it), while hashing reads several
   times faster, so there the limit is what holds the reads back. The page cache is dropped
   when the verification's rsync appears, so its reads reach the disk.
2. New data written on the source, the settings changed to `LINUX_CPU_LIMIT=20` (the IO limit
   removed), START again: the sync pass copies the new data, and its movers' CPU is measured.

A sampler in the VM (its own transient unit, outside the movers' cgroup) reads the movers'
`cpu.stat` and `io.stat` twice a second; a rate is taken between the first and the last sample
inside the activity, so every second of the window has the movers working.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import pytest

from tests.support import agentvm, helpervm
from tests.support.emulator import EmulatorProcess
from tests.support.helpervm import HelperVM, helper_vm

if TYPE_CHECKING:
    from tests.system.conftest import Packages

pytestmark = [pytest.mark.slow, pytest.mark.root, pytest.mark.timeout(1500)]

MIB = 2**20
AK = "VMLIMITSTESTAK000001"
SK = "vm-limits-test-secret-key-0123456789"
SOURCE_MOUNT = "/srv/source"
UNIT_CGROUP = "/sys/fs/cgroup/system.slice/smsagent.service"
MOVERS = f"{UNIT_CGROUP}/movers"
SAMPLES = "/run/smsagent-limits-samples.jsonl"
SAMPLER_UNIT = "smsagent-limits-sampler"
# 384 MiB: at 20 MiB/s the verification reads for about 19 s.
IO_FILES, IO_FILE_MIB = 8, 48
# About 1.3 MiB/s pass through a fifth of a TCG core: some 25 s of copying.
CPU_FILE_MIB = 32
PASS_TIMEOUT_S = 600.0
MIN_WINDOW_S = 15.0

# The sampler, run in the VM: one JSON line per half second. When the verification's rsync
# (`--checksum`) first appears, it drops the page cache, so the source is read from the disk.
SAMPLER = """
import json, os, sys, time
movers, device, out = sys.argv[1:4]
dropped = False

def fields(name):
    try:
        with open(os.path.join(movers, name)) as f:
            return f.read().split("\\n")
    except OSError:
        return []

def verifying():
    for pid in fields("cgroup.procs"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"--checksum" in f.read().split(b"\\0"):
                    return True
        except (OSError, ValueError):
            pass
    return False

def sample():
    stat = dict(l.split()[:2] for l in fields("cpu.stat") if l)
    rbytes = 0
    for line in fields("io.stat"):
        words = line.split()
        if words and words[0] == device:
            # A device the cgroup has a limit on but has not read yet has no counters.
            rbytes = int(dict(w.split("=", 1) for w in words[1:] if "=" in w).get("rbytes", 0))
    return stat, rbytes

with open(out, "w", buffering=1) as log:
    while True:
        stat, rbytes = sample()
        check = verifying()
        if check and not dropped:
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("1")
            dropped = True
        log.write(json.dumps({
            "t": time.monotonic(), "usage_usec": int(stat.get("usage_usec", 0)),
            "nr_throttled": int(stat.get("nr_throttled", 0)), "rbytes": rbytes,
            "verifying": check, "after_drop": dropped,
        }) + "\\n")
        time.sleep(0.5)
"""


def _report(request: pytest.FixtureRequest, line: str) -> None:
    """Show a measurement in pytest's output, also without `-s` (and in the JUnit XML)."""
    if isinstance(request.node, pytest.Item):
        request.node.user_properties.append(("resource_limits", line))
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None:
        return
    suspended = capture.global_and_fixture_disabled() if capture else contextlib.nullcontext()
    with suspended:
        reporter.write_line(f"[resource limits vm] {line}")


@dataclass(frozen=True)
class Rate:
    """A counter's average rate over a window in which it grew all the time."""

    per_s: float
    window_s: float
    grew_by: int


def steady_rate(samples: Sequence[dict[str, Any]], key: str) -> Rate:
    """The rate of `samples[*][key]` between the first sample taken after it began to grow and
    the last one after which it still grew: the window holds no time before or after."""
    values = [int(s[key]) for s in samples]
    grew = [i for i in range(1, len(values)) if values[i] > values[i - 1]]
    if len(grew) < 3:
        raise AssertionError(f"{key} grew in fewer than three sample intervals: {values}")
    first, last = grew[0], grew[-1] - 1
    window = float(samples[last]["t"]) - float(samples[first]["t"])
    grown = values[last] - values[first]
    return Rate(grown / window, window, grown)


def _write_tree(root: Path) -> None:
    data = root / "data"
    data.mkdir(parents=True)
    for index in range(IO_FILES):
        (data / f"block-{index}.bin").write_bytes(
            b"".join(os.urandom(MIB) for _ in range(IO_FILE_MIB))
        )


def _ext4_image(path: Path, size: str, tree: Optional[Path], label: str) -> Path:
    argv = ["mke2fs", "-q", "-t", "ext4", "-L", label]
    if tree is not None:
        argv += ["-d", str(tree)]
    agentvm._run([*argv, str(path), size], 300)
    return path


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    """The SMS endpoint on the host's loopback, one command per poll until answered."""
    process = EmulatorProcess(tmp_path_factory.mktemp("emulator"), ak=AK, sk=SK)
    with process.started(command_delivery="repeat") as started:
        yield started


@pytest.fixture(scope="module")
def agent_vm(
    tmp_path_factory: pytest.TempPathFactory,
    packages: Packages,
    emulator: EmulatorProcess,
    request: pytest.FixtureRequest,
) -> Iterator[HelperVM]:
    """A helper VM with the source on vdb, the target's root on vdc, and the packaged agent
    running as smsagent.service against the emulator."""
    reason = helpervm.missing_requirements()
    if reason is not None:
        pytest.skip(reason)
    helpervm.sweep_stale()
    work = tmp_path_factory.mktemp("limits-vm")
    tree = work / "tree"
    _write_tree(tree)
    source = _ext4_image(work / "source.img", "1G", tree, "smssource")
    target = _ext4_image(work / "target.img", "1G", None, "smstarget")
    dependencies = agentvm.dependency_debs()
    with helper_vm(work / "vm", [source, target]) as vm:
        _report(request, f"boot to SSH (TCG): {vm.boot_seconds:.1f} s")
        vm.ssh("mkdir", "-p", SOURCE_MOUNT)
        vm.ssh("mount", vm.guest_device(0), SOURCE_MOUNT)
        vm.ssh("mount", vm.guest_device(1), vm.root)
        began = time.monotonic()
        agentvm.install_agent(vm, packages.deb, dependencies)
        _report(request, f"package installed in the VM in {time.monotonic() - began:.1f} s")
        settings = {
            **emulator.agent_env(),
            "SMSAGENT_ENDPOINT": f"http://{agentvm.QEMU_HOST}:{emulator.port}",
            # The host's loopback is not the guest's: plain HTTP needs saying so.
            "SMSAGENT_ALLOW_INSECURE_HTTP": "true",
            "SMSAGENT_ACCEPT_PRIVACY_STATEMENT": "true",
            "SMSAGENT_POLL_INTERVAL": "1",
            "SMSAGENT_ACTIVE_POLL_INTERVAL": "1",
            "SMSAGENT_SOURCE_ROOT": SOURCE_MOUNT,
            "SMSAGENT_TARGET_LAYOUT": "premounted",
            "SMSAGENT_TARGET_ROOT": vm.root,
        }
        env_text = "".join(f"{name}={value}\n" for name, value in settings.items())
        vm.ssh("sh", "-c", "cat >/etc/smsagent/smsagent.env", input_text=env_text)
        vm.ssh("sh", "-c", "cat >/root/sampler.py", input_text=SAMPLER)
        vm.ssh("systemctl", "start", "smsagent.service", timeout=300)
        yield vm


def _configure(emulator: EmulatorProcess, task_id: str, **values: str) -> None:
    body = {"configurations": [{"config_key": k, "config_value": v} for k, v in values.items()]}
    answer = emulator.signed_request("POST", f"/v3/tasks/{task_id}/configuration-setting", body)
    assert answer.status == 200, answer


def _start_and_sample(
    vm: HelperVM, emulator: EmulatorProcess, task_id: str, device: str, save_to: Path
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """START the task with the sampler running; the samples (also kept in `save_to`) and the
    START's result."""
    vm.ssh("sh", "-c", "sync; echo 3 >/proc/sys/vm/drop_caches")
    argv = ["systemd-run", "--quiet", "--collect", f"--unit={SAMPLER_UNIT}"]
    vm.ssh(*argv, "python3", "/root/sampler.py", MOVERS, device, SAMPLES)
    before = len(emulator.results())
    try:
        emulator.action(task_id, "start")
        emulator.wait_for(lambda _: len(emulator.results()) > before, timeout_s=PASS_TIMEOUT_S)
    finally:
        sampler = vm.ssh("systemctl", "is-active", SAMPLER_UNIT, check=False).stdout.strip()
        vm.ssh("systemctl", "stop", SAMPLER_UNIT, check=False)
    result = emulator.results()[before]
    text = vm.ssh("cat", SAMPLES).stdout
    journal = vm.ssh("journalctl", "--no-pager", "-o", "cat", f"--unit={SAMPLER_UNIT}")
    assert sampler == "active", f"the sampler ended early ({sampler}):\n{journal.stdout[-3000:]}"
    (save_to / f"samples-{before}.jsonl").write_text(text)
    return [json.loads(line) for line in text.splitlines()], result


def _read(vm: HelperVM, name: str) -> str:
    return vm.ssh("cat", f"{MOVERS}/{name}").stdout.strip()


def test_limits_hold_for_the_movers_of_a_task(
    agent_vm: HelperVM, emulator: EmulatorProcess, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """LINUX_IO_LIMIT=20 holds the source reads at 20 MiB/s (±20 %), LINUX_MEM_LIMIT=300 is the
    movers' memory.max, and LINUX_CPU_LIMIT=20, set while the task waited for its next pass,
    keeps that pass's movers at most 25 % of one core."""
    vm = agent_vm
    started = time.monotonic()
    device = vm.ssh("lsblk", "--nodeps", "--noheadings", "-o", "MAJ:MIN", vm.guest_device(0))
    device_id = device.stdout.strip()
    source_id = emulator.wait_for(lambda s: s["sources"], timeout_s=180)[0]["id"]
    task_id = emulator.create_task(source_id, migration_ip="127.0.0.1")
    emulator.set_cert_key(task_id, private_key=vm.client_private_key_pem)

    _configure(
        emulator, task_id, LINUX_IO_LIMIT="20", LINUX_MEM_LIMIT="300", CONSISTENCY_MODE="hash"
    )
    samples, result = _start_and_sample(vm, emulator, task_id, device_id, tmp_path)
    assert (result["command_name"], result["result"]) == ("START", "success"), result
    assert result["result_detail"]["verification"] != "off", result
    assert _read(vm, "memory.max") == str(300 * MIB)
    assert _read(vm, "io.max") == f"{device_id} rbps={20 * MIB} wbps={20 * MIB} riops=max wiops=max"
    reads = steady_rate([s for s in samples if s["verifying"] and s["after_drop"]], "rbytes")
    _report(
        request,
        f"LINUX_IO_LIMIT=20: verification read {reads.grew_by / MIB:.0f} MiB from "
        f"{vm.guest_device(0)} at {reads.per_s / MIB:.2f} MiB/s over {reads.window_s:.1f} s",
    )
    assert reads.window_s >= MIN_WINDOW_S, reads
    assert 0.8 * 20 * MIB <= reads.per_s <= 1.2 * 20 * MIB, reads

    script = f"mkdir -p {SOURCE_MOUNT}/cpu && head -c {CPU_FILE_MIB * MIB} /dev/urandom"
    vm.ssh("sh", "-c", f"{script} >{SOURCE_MOUNT}/cpu/new.bin")
    _configure(emulator, task_id, LINUX_CPU_LIMIT="20", LINUX_IO_LIMIT="")
    samples, result = _start_and_sample(vm, emulator, task_id, device_id, tmp_path)
    assert (result["command_name"], result["result"]) == ("START", "success"), result
    assert _read(vm, "cpu.max") == "20000 100000"
    assert _read(vm, "memory.max") == str(300 * MIB)
    assert device_id not in _read(vm, "io.max")
    cpu = steady_rate(samples, "usage_usec")
    throttled = samples[-1]["nr_throttled"] - samples[0]["nr_throttled"]
    _report(
        request,
        f"LINUX_CPU_LIMIT=20: the sync pass's movers used {cpu.per_s / 1e6:.1%} of one core "
        f"over {cpu.window_s:.1f} s (throttled in {throttled} periods); "
        f"memory.max {300 * MIB}; the test took {time.monotonic() - started:.0f} s",
    )
    assert cpu.window_s >= MIN_WINDOW_S, cpu
    assert throttled > 0, "the movers never reached the limit: the measurement shows nothing"
    assert cpu.per_s / 1e6 <= 0.25, cpu
    landed = vm.ssh("cmp", f"{SOURCE_MOUNT}/cpu/new.bin", f"{vm.root}/cpu/new.bin", check=False)
    assert landed.returncode == 0, landed.stdout + landed.stderr
