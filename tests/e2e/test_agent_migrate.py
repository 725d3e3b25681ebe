"""The whole agent (`smsagent run`) migrating to a real sshd target, driven from the console.

These run the real process end to end: the emulator hands out the commands, the agent copies
with rsync over SSH into the target's root, and the emulator records what the agent reported.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from tests.support.agent import AgentProcess
from tests.support.emulator import EmulatorFactory, EmulatorProcess
from tests.support.target import TargetHost
from tests.support.treecompare import compare_trees

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


@pytest.fixture
def emulator(start_emulator: EmulatorFactory) -> EmulatorProcess:
    """An emulator that offers each command at every poll until its result arrives."""
    return start_emulator(command_delivery="repeat")


def _source(root: Path) -> Path:
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "app.conf").write_text("threads = 4\n")
    data = root / "srv" / "data"
    data.mkdir(parents=True)
    for index in range(200):
        (data / f"file-{index:03d}.bin").write_bytes(bytes([index % 251]) * (index * 97 + 1))
    return root


def _agent(
    tmp_path: Path, emulator: EmulatorProcess, target: TargetHost, source: Path, **extra: str
) -> AgentProcess:
    settings = {
        "SMSAGENT_SOURCE_ROOT": str(source),
        "SMSAGENT_TARGET_LAYOUT": "premounted",
        "SMSAGENT_TARGET_ROOT": str(target.root),
        **extra,
    }
    return AgentProcess(emulator, tmp_path / "agent", settings=settings).start()


def _task(emulator: EmulatorProcess, target: TargetHost, **fields: Any) -> tuple[str, str]:
    state = emulator.wait_for(lambda s: s["sources"], timeout_s=30)
    source_id = state[0]["id"]
    task_id = emulator.create_task(source_id, migration_ip=target.ip, **fields)
    emulator.set_cert_key(task_id, private_key=target.client_private_key_pem)
    return source_id, task_id


def _results(emulator: EmulatorProcess, task_id: str) -> list[tuple[str, str]]:
    return [
        (r["command_name"], r["result"]) for r in emulator.results() if r.get("task_id") == task_id
    ]


def test_a_syncing_task_keeps_the_target_in_step_until_finished(
    tmp_path: Path, emulator: EmulatorProcess, target_host: TargetHost
) -> None:
    """After the full copy of a task with `syncing`, passes repeat by themselves and carry
    later source changes over, until TASK_HAS_FINISHED ends them."""
    source = _source(tmp_path / "source")
    agent = _agent(tmp_path, emulator, target_host, source, SMSAGENT_SYNC_INTERVAL="5")
    try:
        source_id, task_id = _task(emulator, target_host, syncing=True)
        emulator.action(task_id, "start")
        emulator.wait_for(lambda s: _results(emulator, task_id), timeout_s=60)
        assert _results(emulator, task_id) == [("START", "success")]
        assert compare_trees(source, target_host.root) == []

        agent.wait_for_event("continuous_sync_started", timeout_s=30)
        (source / "srv" / "data" / "after-copy.txt").write_text("written after the full copy\n")
        (source / "etc" / "app.conf").write_text("threads = 8\n")
        landed = target_host.root / "srv" / "data" / "after-copy.txt"
        emulator.wait_for(lambda s: landed.exists(), timeout_s=60)
        emulator.wait_for(
            lambda s: (target_host.root / "etc" / "app.conf").read_text() == "threads = 8\n",
            timeout_s=60,
        )

        emulator.queue_command(source_id, "TASK_HAS_FINISHED", task_id=task_id)
        emulator.wait_for(
            lambda s: [c["copystate"] for c in emulator.changestates()][-1:] == ["finished"],
            timeout_s=60,
        )
        assert compare_trees(source, target_host.root) == []
        states = [c["copystate"] for c in emulator.changestates()]
        assert states[0] == "replicate" and "syncing" in states and states[-1] == "finished"
        assert _results(emulator, task_id) == [("START", "success")]
    finally:
        assert agent.terminate() == 0


def test_the_drill_reports_every_check_through_the_agent(
    tmp_path: Path, emulator: EmulatorProcess, target_host: TargetHost
) -> None:
    """PREMIGRATE from the console runs the drill: premiging then premiged, a success result
    carrying every check, and the network measurement posted; no data is copied."""
    source = _source(tmp_path / "source")
    agent = _agent(tmp_path, emulator, target_host, source)
    try:
        source_id, task_id = _task(emulator, target_host)
        emulator.queue_command(source_id, "PREMIGRATE", task_id=task_id)
        emulator.wait_for(lambda s: _results(emulator, task_id), timeout_s=90)
        [result] = [r for r in emulator.results() if r.get("task_id") == task_id]
        assert (result["command_name"], result["result"]) == ("PREMIGRATE", "success")
        checks = {c["name"]: c["result"] for c in result["result_detail"]["checks"]}
        assert checks["target_login"] == "OK" and checks["rsync_target"] == "OK"
        assert set(checks.values()) == {"OK"}
        states = [c["copystate"] for c in emulator.changestates()]
        assert states == ["premiging", "premiged"]
        task = next(t for t in emulator.state()["tasks"] if t["id"] == task_id)
        assert task.get("network_check_info", {}).get("evaluation_result")
        assert list(target_host.root.iterdir()) == []
    finally:
        assert agent.terminate() == 0


def _movers_of(source: Path) -> list[int]:
    """rsync/ssh processes working on `source` (found through /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        is_mover = bool(argv) and Path(argv[0].decode(errors="replace")).name in ("rsync", "ssh")
        if is_mover and any(str(source).encode() in arg for arg in argv):
            found.append(int(entry.name))
    return found


def test_kill_9_mid_copy_then_restart_completes_the_migration(
    tmp_path: Path, emulator: EmulatorProcess, target_host: TargetHost
) -> None:
    """An agent killed with SIGKILL in the middle of the copy leaves no mover behind once it
    restarts, and the restarted agent completes the same task: one START result, identical."""
    source = _source(tmp_path / "source")
    (source / "srv" / "big.bin").write_bytes(random.randbytes(24 * 1024 * 1024))
    agent = _agent(tmp_path, emulator, target_host, source)
    try:
        _, task_id = _task(emulator, target_host, speed_limit=40)
        emulator.action(task_id, "start")
        emulator.wait_for(
            lambda s: any(
                p.get("replicatesize", 0) > 4 * 1024 * 1024 for p in emulator.progress(task_id)
            ),
            timeout_s=60,
        )
        agent.kill9()
        assert _movers_of(source), "the kill should leave the copy running (its own group)"
        agent.restart()
        agent.wait_for_event("task_resumed", timeout_s=30)
        agent.wait_for_event("leftover_movers_killed", timeout_s=30)
        emulator.wait_for(lambda s: _results(emulator, task_id), timeout_s=120)
        assert _results(emulator, task_id) == [("START", "success")]
        assert compare_trees(source, target_host.root) == []
        assert _movers_of(source) == []
    finally:
        assert agent.terminate() == 0
