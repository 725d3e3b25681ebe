"""The packaged agent under real systemd in a VM: what needs a kernel of the test's own.

Two scenarios share one booted VM (booting and installing take minutes under TCG):

* The movers' resource limits, measured with a real cgroup v2 tree (below).
* A block-level migration of a server whose file systems are on LVM, copied from LVM snapshots
  (this host's kernel has no device-mapper): see
  `test_block_copy_of_logical_volumes_reads_snapshots_removed_even_after_a_kill`.

Resource limits.

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
from typing import TYPE_CHECKING, Any, Callable, Optional, TypeVar

import pytest

from tests.support import agentvm, helpervm, sourcesys
from tests.support.blocktls import make_cert_key, ssh_public_key
from tests.support.emulator import EmulatorProcess
from tests.support.helpervm import HelperVM, helper_vm
from tests.support.wholeserver import EXTRA_MIB, target_server

if TYPE_CHECKING:
    from tests.system.conftest import Packages

pytestmark = [pytest.mark.slow, pytest.mark.root, pytest.mark.timeout(1500)]

MIB = 2**20
T = TypeVar("T")
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
        request.node.user_properties.append(("agent_vm", line))
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None:
        return
    suspended = capture.global_and_fixture_disabled() if capture else contextlib.nullcontext()
    with suspended:
        reporter.write_line(f"[agent vm] {line}")


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
def lvm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sourcesys.SourceSystem]:
    """A real Debian 12 server on LVM (layout b: LV root ext4 /, LV var xfs /var) on a disk
    image for the VM, unmounted here."""
    reason = sourcesys.missing_requirements()
    if reason is not None:
        pytest.skip(reason)
    sourcesys.sweep_stale()
    # MODULES=dep: the copy's initramfs is built again in the VM, under TCG.
    with sourcesys.source_system(
        "gpt-bios-lvm",
        tmp_path_factory.mktemp("lvm-server"),
        vg_name=LVM_VG,
        initramfs_modules="dep",
    ) as server:
        server.unmount_tree()  # from here on only the VM uses its disk
        yield server


@pytest.fixture(scope="module")
def agent_vm(
    tmp_path_factory: pytest.TempPathFactory,
    packages: Packages,
    emulator: EmulatorProcess,
    lvm_server: sourcesys.SourceSystem,
    request: pytest.FixtureRequest,
) -> Iterator[HelperVM]:
    """A helper VM with the limits test's source on vdb and target root on vdc, the LVM server
    (`lvm_source`) on vdd and its target disk on vde, and the packaged agent running as
    smsagent.service against the emulator."""
    reason = helpervm.missing_requirements()
    if reason is not None:
        pytest.skip(reason)
    helpervm.sweep_stale()
    work = tmp_path_factory.mktemp("agent-vm")
    tree = work / "tree"
    _write_tree(tree)
    source = _ext4_image(work / "source.img", "1G", tree, "smssource")
    target = _ext4_image(work / "target.img", "1G", None, "smstarget")
    dependencies = agentvm.dependency_debs()
    block_target = work / "block-target.img"
    with block_target.open("wb") as image:
        image.truncate(lvm_server.disk_size_bytes + EXTRA_MIB * MIB)
    disks = [source, target, lvm_server.images[0], block_target]
    with helper_vm(work / "vm", disks, memory_mib=1536) as vm:
        _report(request, f"boot to SSH (TCG): {vm.boot_seconds:.1f} s")
        vm.ssh("mkdir", "-p", SOURCE_MOUNT)
        vm.ssh("mount", vm.guest_device(0), SOURCE_MOUNT)
        vm.ssh("mount", vm.guest_device(1), vm.root)
        began = time.monotonic()
        agentvm.install_agent(vm, packages.deb, dependencies)
        _report(request, f"package installed in the VM in {time.monotonic() - began:.1f} s")
        _write_env(
            vm,
            emulator,
            SMSAGENT_SOURCE_ROOT=SOURCE_MOUNT,
            SMSAGENT_TARGET_LAYOUT="premounted",
            SMSAGENT_TARGET_ROOT=vm.root,
        )
        vm.ssh("sh", "-c", "cat >/root/sampler.py", input_text=SAMPLER)
        vm.ssh("systemctl", "start", "smsagent.service", timeout=300)
        yield vm


def _write_env(vm: HelperVM, emulator: EmulatorProcess, **settings: str) -> None:
    """The agent's env file: the emulator on the host, fast polls, and `settings`."""
    values = {
        **emulator.agent_env(),
        "SMSAGENT_ENDPOINT": f"http://{agentvm.QEMU_HOST}:{emulator.port}",
        # The host's loopback is not the guest's: plain HTTP needs saying so.
        "SMSAGENT_ALLOW_INSECURE_HTTP": "true",
        "SMSAGENT_ACCEPT_PRIVACY_STATEMENT": "true",
        "SMSAGENT_POLL_INTERVAL": "1",
        "SMSAGENT_ACTIVE_POLL_INTERVAL": "1",
        **settings,
    }
    env_text = "".join(f"{name}={value}\n" for name, value in values.items())
    vm.ssh("sh", "-c", "cat >/etc/smsagent/smsagent.env", input_text=env_text)


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


# -- a block-level migration from LVM snapshots --

LVM_VG = "vgsnap"
LVM_TARGET_VG = "vgsnaptgt"  # not the source's: both groups live in the one VM
LVM_ROOT = "/srv/lvmserver"
WRITER_UNIT = "smsagent-test-writer"
MIGRATE_BLOCK = "MIGRATE_LINUX_BLOCK"
# The server's workload during the copy: numbered 64 KiB files under /var/writer, each written,
# fsync'd and renamed into place, two a second. A point-in-time copy holds files 0..k, every one
# whole; a copy taken while they were written may hold a name without its data.
WRITER = """
import os, sys, time
where = sys.argv[1]
os.makedirs(where, exist_ok=True)
number = 0
while True:
    path = os.path.join(where, "%08d" % number)
    with open(path + ".tmp", "wb") as f:
        f.write((b"%08d\\n" % number) * 7282)
        f.flush()
        os.fsync(f.fileno())
    os.rename(path + ".tmp", path)
    number += 1
    time.sleep(0.5)
"""
# Run in the VM on the target's /var: the writer's files are gapless from 0 and whole.
CHECK_WRITER = """
import os, sys
where = sys.argv[1]
names = sorted(n for n in os.listdir(where) if not n.endswith(".tmp"))
assert names == ["%08d" % i for i in range(len(names))], names[:5]
for name in names:
    with open(os.path.join(where, name), "rb") as f:
        assert f.read() == (name.encode() + b"\\n") * 7282, name
print(len(names))
"""


def _snapshots(vm: HelperVM) -> list[str]:
    """The agent's snapshots in the VM (tagged `smsagent`)."""
    listed = vm.ssh("lvs", "--noheadings", "-o", "vg_name,lv_name", "@smsagent", check=False)
    return ["/".join(line.split()) for line in listed.stdout.splitlines() if line.strip()]


def _until(what: str, probe: Callable[[], T], timeout_s: float) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s:.0f} s")
        time.sleep(0.5)


@contextlib.contextmanager
def _explained(vm: HelperVM, emulator: EmulatorProcess, results_before: int) -> Iterator[None]:
    """A failed wait says what the agent did: its results and the end of its journal."""
    try:
        yield
    except AssertionError as error:
        results = json.dumps(emulator.results()[results_before:], indent=1)[-3000:]
        journal = vm.ssh(
            "journalctl",
            "--no-pager",
            "-o",
            "cat",
            "-n",
            "80",
            "--unit=smsagent.service",
            check=False,
        ).stdout
        raise AssertionError(f"{error}\nresults: {results}\njournal:\n{journal}") from None


def _delete_tasks(emulator: EmulatorProcess, source_id: str) -> None:
    """DeleteTask for the source's task, as the console does before a new task."""
    answer = emulator.signed_request("GET", "/v3/tasks")
    assert answer.status == 200, answer
    for task in json.loads(answer.body)["tasks"]:
        if task["source_server"]["id"] == source_id:
            deleted = emulator.signed_request("DELETE", f"/v3/tasks/{task['id']}")
            assert deleted.status in (200, 204), deleted


@pytest.mark.timeout(1800)
def test_block_copy_of_logical_volumes_reads_snapshots_removed_even_after_a_kill(
    agent_vm: HelperVM,
    emulator: EmulatorProcess,
    lvm_server: sourcesys.SourceSystem,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    """A server on LVM (/ ext4 and /var xfs on LVs) migrated at block level while it writes:
    each LV is read from an LVM snapshot, so its copy is one point in time with no freeze. The
    agent killed (-9) mid-copy leaves no snapshot behind; restarted by systemd it resumes, and
    the copy ends as one point in time again: the writer's files on the target are gapless and
    whole, the file systems check clean, and no snapshot is left."""
    vm = agent_vm
    started = time.monotonic()
    # The limits test's target root: the block task's target is a disk of its own.
    vm.ssh("umount", vm.root, check=False)
    vm.ssh("vgchange", "--activate", "y", LVM_VG)
    vm.ssh("mkdir", "-p", LVM_ROOT)
    vm.ssh("mount", f"/dev/{LVM_VG}/root", LVM_ROOT)
    vm.ssh("mount", f"/dev/{LVM_VG}/var", f"{LVM_ROOT}/var")
    source_id = emulator.wait_for(lambda s: s["sources"], timeout_s=180)[0]["id"]
    _delete_tasks(emulator, source_id)
    _write_env(vm, emulator, SMSAGENT_SOURCE_ROOT=LVM_ROOT)
    vm.ssh("systemctl", "restart", "smsagent.service", timeout=300)

    certkey = make_cert_key(tmp_path / "tls")
    public = ssh_public_key(certkey.private_key, tmp_path)
    keys = "/root/.ssh/authorized_keys"
    vm.ssh("sh", "-c", f"echo >> {keys}; cat >> {keys}", input_text=public + "\n")
    size = lvm_server.disk_size_bytes + EXTRA_MIB * MIB
    server = target_server(lvm_server, [vm.guest_device(3)], size, "127.0.0.1")
    for group in server["volume_groups"]:
        group["name"] = LVM_TARGET_VG
    task_id = emulator.create_task(source_id, type="MIGRATE_BLOCK", target_server=server)
    emulator.set_cert_key(task_id, **certkey.fields())

    vm.ssh("sh", "-c", "cat >/root/writer.py", input_text=WRITER)
    writer = ["systemd-run", "--quiet", "--collect", f"--unit={WRITER_UNIT}", "python3"]
    vm.ssh(*writer, "/root/writer.py", f"{LVM_ROOT}/var/writer")
    before = len(emulator.results())

    def result() -> Optional[dict[str, Any]]:
        found = [r for r in emulator.results()[before:] if r["command_name"] == "START"]
        return found[0] if found else None

    def snapshots_taken() -> list[str]:
        """Both LVs' snapshots (lvcreate makes one at a time)."""
        if result() is not None:
            raise AssertionError("the START was answered before the snapshots were taken")
        found = _snapshots(vm)
        return found if len(found) >= 2 else []

    try:
        with _explained(vm, emulator, before):
            emulator.action(task_id, "start")
            taken = _until("the snapshots", snapshots_taken, 600)
            assert len(taken) == 2 and all("/smsagent_snap_" in n for n in taken), taken

            def copying() -> bool:
                if result() is not None:
                    raise AssertionError("the START was answered before the copy was killed")
                reports = emulator.progress(task_id)
                return any(
                    r["subtask_name"] == MIGRATE_BLOCK and r["replicatesize"] for r in reports
                )

            _until("the copy's first progress", copying, 600)
            vm.ssh("systemctl", "kill", "--signal=KILL", "smsagent.service")
            killed = time.monotonic()
            _until("the snapshots removed after the kill", lambda: not _snapshots(vm), 120)
            removed_s = time.monotonic() - killed

            # systemd starts the agent again; the START, never answered, comes again and resumes.
            outcome = _until("the START's result", result, 1500)
    finally:
        vm.ssh("systemctl", "stop", WRITER_UNIT, check=False)
    assert outcome["result"] == "success", outcome
    detail = outcome["result_detail"]
    assert detail["consistency_by_volume"] == {"/": "snapshot", "/var": "snapshot"}, detail
    assert detail["consistency"] == "snapshot", detail
    assert _snapshots(vm) == []
    journal = vm.ssh("journalctl", "--no-pager", "-o", "cat", "--unit=smsagent.service").stdout
    assert "source_snapshot_taken" in journal and "source_snapshot_removed" in journal
    assert "source_frozen" not in journal  # the snapshots made a freeze needless

    vm.ssh("vgchange", "--activate", "y", LVM_TARGET_VG)
    try:
        vm.ssh("e2fsck", "-fn", f"/dev/{LVM_TARGET_VG}/root")
        vm.ssh("xfs_repair", "-n", f"/dev/{LVM_TARGET_VG}/var")
        vm.ssh("mkdir", "-p", "/mnt/check")
        # nouuid: the source's /var, mounted, has the same UUID.
        vm.ssh("mount", "-o", "ro,nouuid", f"/dev/{LVM_TARGET_VG}/var", "/mnt/check")
        try:
            vm.ssh("sh", "-c", "cat >/root/check.py", input_text=CHECK_WRITER)
            files = int(vm.ssh("python3", "/root/check.py", "/mnt/check/writer").stdout)
        finally:
            vm.ssh("umount", "/mnt/check", check=False)
    finally:
        vm.ssh("vgchange", "--activate", "n", LVM_TARGET_VG, check=False)
    assert files > 0
    _report(
        request,
        f"LVM snapshots: removed {removed_s:.1f} s after the agent's kill; the copy holds "
        f"{files} whole writer files; {detail['passes']} passes, the test took "
        f"{time.monotonic() - started:.0f} s",
    )
