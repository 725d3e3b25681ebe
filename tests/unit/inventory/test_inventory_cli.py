"""`smsagent inventory` as an operator runs it: JSON on stdout, logs on stderr, exit codes."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from smsagent.api.models import PostSourceServerBody, PutDiskInfoReq
from smsagent.inventory.builder import build_disk_info, layout_fingerprint

pytestmark = pytest.mark.timeout(60)


def smsagent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "smsagent", "inventory", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_body_on_stdout_and_logs_on_stderr() -> None:
    """Even with info logging, stdout is exactly one JSON body and the log lines go to stderr."""
    done = smsagent("--log-level", "info", "--name", "from-cli")
    assert done.returncode == 0
    body = PostSourceServerBody.model_validate(json.loads(done.stdout))
    assert body.name == "from-cli"
    assert "inventory_" in done.stderr


def test_disk_info_and_fingerprint() -> None:
    """`--disk-info` prints the PUT diskinfo body; `--fingerprint` its fingerprint."""
    disk_info = smsagent("--disk-info")
    assert disk_info.returncode == 0
    assert set(json.loads(disk_info.stdout)) == {"disks", "volumegroups", "btrfs_list"}
    PutDiskInfoReq.model_validate_json(disk_info.stdout)
    fingerprint = smsagent("--fingerprint")
    assert re.fullmatch(r"[0-9a-f]{64}\n", fingerprint.stdout)
    assert fingerprint.stdout.strip() == layout_fingerprint(build_disk_info())


def test_unknown_option_is_a_usage_error() -> None:
    """A mistyped option exits 2 with the usage and no traceback."""
    done = smsagent("--prety")
    assert done.returncode == 2
    assert "usage: smsagent inventory" in done.stderr and "Traceback" not in done.stderr
