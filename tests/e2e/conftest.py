"""Fixtures for end-to-end tests: a real target host (netns + sshd) and a special source tree."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from smsagent.target.session import TargetSession, store_private_key
from tests.support import qemuboot, sourcesys
from tests.support.target import TargetHost, require_root
from tests.support.targetdisks import TargetDisks, target_disks
from tests.support.tree import MiB, SpecialTree, build_special_tree


@pytest.fixture
def target_host(tmp_path: Path) -> Iterator[TargetHost]:
    """A target server in its own network namespace with sshd on port 22 and a root dir.

    `target_host.ip` is the address, `target_host.root` the target root (`/mnt/smsroot`),
    `target_host.client_private_key_pem` the task key `GET certkey` would return.
    """
    reason = require_root()
    if reason is not None:
        pytest.skip(reason)
    host = TargetHost.create(tmp_path / "target")
    try:
        yield host
    finally:
        host.close()


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    """The agent's state directory for this test."""
    path = tmp_path / "state"
    path.mkdir(mode=0o700)
    return path


@pytest.fixture
def target_session(target_host: TargetHost, state_dir: Path) -> TargetSession:
    """A session to the target as the agent would open it: task key and known_hosts per task."""
    paths = store_private_key(state_dir, "task-e2e", target_host.client_private_key_pem)
    return TargetSession(
        target_host.ip,
        target_host.port,
        paths.private_key,
        paths.known_hosts,
        connect_timeout_s=5,
        alive_interval_s=2,
        alive_count_max=3,
    )


@pytest.fixture
def special_tree(tmp_path: Path) -> SpecialTree:
    """The source tree with every kind of file and metadata, its large file 20 MiB."""
    return build_special_tree(tmp_path / "source", large_file_bytes=20 * MiB)


@pytest.fixture
def disks(tmp_path: Path) -> Iterator[TargetDisks]:
    """Blank loop disks for the target (`disks.add(size_mib)`), detached afterwards."""
    with target_disks(tmp_path) as made:
        yield made


@pytest.fixture
def mbr_bios_source(tmp_path: Path) -> Iterator[sourcesys.SourceSystem]:
    """Layout (a): a Debian 12 system on a loop disk, MBR, /boot ext4, / ext4, swap, BIOS."""
    reason = sourcesys.missing_requirements() or qemuboot.missing_requirements("bios")
    if reason:
        pytest.skip(reason)
    with sourcesys.source_system("mbr-bios", tmp_path / "source") as built:
        yield built
