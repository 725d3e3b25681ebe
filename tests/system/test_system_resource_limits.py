"""The movers' resource limits under real systemd in systemd-nspawn: the unit's delegation and
memory cap, and the agent's code placing movers in `<unit>/movers` with the limits written there.

The limits run in a transient service with the unit's own `Delegate=` (a migration is not needed
to exercise them: the same `MoverLimits` and trampoline a pass uses run inside it).
systemd-nspawn gives the container the host's cgroup layout: on a host whose cpu, memory and io
controllers sit in cgroup v1 hierarchies (hybrid layout) the container's cgroup v2 tree has none
of them, and this test checks the placement and the one warning per missing controller. The
limits themselves are measured under systemd in a VM, which boots its own kernel with every
controller: `test_system_agent_vm.py`.
"""

from __future__ import annotations

import itertools
import json
from typing import TYPE_CHECKING

import pytest

from tests.support import nspawn

if TYPE_CHECKING:
    from tests.system.conftest import InstallDeb, Packages

pytestmark = [pytest.mark.slow, pytest.mark.root, pytest.mark.timeout(900)]

PYTHON = "/usr/lib/smsagent/venv/bin/python"
MIB = 2**20
_probes = itertools.count()
# Runs as a service: limits applied as at a pass start, then a mover started into the cgroup.
PROBE = """
import json, subprocess
from structlog.testing import capture_logs
from smsagent.childproc import in_cgroup
from smsagent.migration.limits import ResourceLimits
from smsagent.migration.mover_limits import MoverLimits

with capture_logs() as logs:
    procs = MoverLimits().apply(ResourceLimits(cpu_percent=20, memory_mib=300, io_mib_s=20), ["/"])
report = {"procs": str(procs), "logs": [dict(e) for e in logs],
          "agent": open("/proc/self/cgroup").read()}
if procs is not None:
    group = str(procs.parent)
    report["mover"] = subprocess.run(in_cgroup(["cat", "/proc/self/cgroup"], procs),
                                     capture_output=True, text=True).stdout
    report["controllers"] = open(group + "/cgroup.controllers").read().split()
print(json.dumps(report, default=str))
"""


@pytest.fixture(scope="module")
def installed(
    container: nspawn.Container, packages: Packages, install_deb: InstallDeb
) -> nspawn.Container:
    install_deb(container, packages.deb)
    return container


def probe(container: nspawn.Container) -> dict[str, object]:
    unit = f"smsagent-limits-probe-{next(_probes)}.service"
    argv = ["systemd-run", "--wait", "--pipe", "--quiet", "--collect", f"--unit={unit}"]
    argv += ["--property=Delegate=cpu memory io", PYTHON, "-c", PROBE]
    done = container.exec(argv, timeout_s=120)
    report: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


class TestResourceLimits:
    def test_the_unit_is_delegated_and_capped(self, installed: nspawn.Container) -> None:
        """systemd takes the unit's `Delegate=` and its `MemoryMax=` of 1536 MiB (the largest
        LINUX_MEM_LIMIT plus the agent's own share)."""
        unit = installed.unit_properties("smsagent.service", "Delegate", "MemoryMax")

        assert unit["Delegate"] == "yes"
        assert int(unit["MemoryMax"]) == 1536 * MIB

    def test_movers_run_in_their_own_cgroup(self, installed: nspawn.Container) -> None:
        """Under a delegated unit the agent moves into `<unit>/agent` and a mover is born in
        `<unit>/movers`; a controller the host keeps in cgroup v1 is one warning naming the
        setting and why."""
        report = probe(installed)

        assert report["procs"] != "None", report["logs"]
        assert str(report["agent"]).endswith(".service/agent\n")
        assert str(report["mover"]).endswith(".service/movers\n")
        missing = set(("cpu", "memory", "io")) - set(report["controllers"])  # type: ignore[arg-type]
        warned = [e for e in report["logs"] if e["event"] == "resource_limits_not_applied"]  # type: ignore[attr-defined,index]
        assert len(warned) == len(missing)
