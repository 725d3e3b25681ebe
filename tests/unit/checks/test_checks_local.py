"""Checks of the source server: tools, noexec `/tmp`, bind mounts, data size, tc."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from smsagent.api.enums import CheckResult
from smsagent.checks.local import (
    BIND_MOUNT,
    RSYNC_MISSING,
    SOURCE_UNREADABLE,
    TMP_NOEXEC,
    SourceData,
    bind_mounts_check,
    check_rsync_local,
    check_tmp_exec,
    duplicate_mounts,
    human_bytes,
    noexec_check,
    source_checks,
    speed_limit_check,
    used_bytes_of,
)
from smsagent.inventory.mounts import parse_mountinfo, select_filesystems

OK, WARN, ERROR = CheckResult.OK, CheckResult.WARN, CheckResult.ERROR

# ext4 root with /home on xfs; /srv/data binds a directory of the root, /export/home mounts the
# home device again; /run is tmpfs and its own bind of the root is below it.
MOUNTS = """\
22 1 253:0 / / rw,relatime shared:1 - ext4 /dev/mapper/vg-root rw
23 22 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
27 22 0:24 / /run rw,nosuid,nodev,noexec,relatime shared:5 - tmpfs tmpfs rw
30 22 253:2 / /home rw,relatime shared:32 - xfs /dev/mapper/vg-home rw
33 22 253:0 /var/lib/data /srv/data rw,relatime shared:1 - ext4 /dev/mapper/vg-root rw
34 22 253:2 / /export/home rw,relatime shared:32 - xfs /dev/mapper/vg-home rw
35 27 253:0 /run/netns /run/netns rw,relatime shared:1 - ext4 /dev/mapper/vg-root rw
"""


def _source_data(text: str, root: str = "/") -> SourceData:
    entries = tuple(parse_mountinfo(text))
    return SourceData(select_filesystems(entries, root), entries, 0)


def _statvfs(blocks: int, free: int, fragment: int) -> os.statvfs_result:
    # f_bsize f_frsize f_blocks f_bfree f_bavail f_files f_ffree f_favail f_flag f_namemax
    return os.statvfs_result((4096, fragment, blocks, free, free, 0, 0, 0, 0, 255))


class TestTmpExec:
    def test_noexec_flag_warns(self) -> None:
        """A mount with ST_NOEXEC is WARN SMS.5102; without it, OK."""
        warned = noexec_check("/tmp", os.ST_NOEXEC | os.ST_NOSUID)
        assert (warned.result, warned.error_code) == (WARN, TMP_NOEXEC)
        assert "/tmp is mounted noexec" in warned.reason
        assert noexec_check("/tmp", os.ST_NOSUID | os.ST_NODEV).result is OK

    @pytest.mark.root
    def test_real_noexec_mount(self, tmp_path: Path) -> None:
        """The kernel's flags of a real noexec tmpfs are read for the mount holding the path."""
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root")
        mount_point = tmp_path / "noexec"
        mount_point.mkdir()
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m,noexec", "smscheck", str(mount_point)],
            check=True,
        )
        try:
            (mount_point / "sub").mkdir()
            assert check_tmp_exec(str(mount_point / "sub")).result is WARN
        finally:
            subprocess.run(["umount", str(mount_point)], check=True)
        assert check_tmp_exec(str(tmp_path)).result is OK


class TestBindMounts:
    def test_duplicates_are_found(self) -> None:
        """Binds and repeated mounts of copied file systems are named, unless below a mount that
        is not copied at all."""
        assert duplicate_mounts(_source_data(MOUNTS)) == ["/srv/data", "/export/home"]

    def test_none_below_a_subtree(self) -> None:
        """Under /home nothing shows the home file system twice."""
        assert duplicate_mounts(_source_data(MOUNTS, "/home")) == []

    def test_check(self) -> None:
        """Duplicates are WARN SMS.1353 listing them (they are skipped, so copied once)."""
        check = bind_mounts_check(["/srv/data", "/export/home"])
        assert (check.result, check.error_code) == (WARN, BIND_MOUNT)
        assert "/srv/data, /export/home" in check.reason
        assert bind_mounts_check([]).result is OK


class TestSourceData:
    def test_used_bytes_per_file_system(self) -> None:
        """Used bytes are (blocks - free) * fragment size summed over the chosen file systems."""
        selection = _source_data(MOUNTS).selection
        usage = {"/": _statvfs(1000, 400, 4096), "/home": _statvfs(10, 0, 1024)}
        assert used_bytes_of(selection, usage.__getitem__) == 600 * 4096 + 10 * 1024

    def test_unreadable_mount_table(self, tmp_path: Path) -> None:
        """A mount table that cannot be read is ERROR, and bind mounts are not checked."""
        checks, used_bytes = source_checks(Path("/"), tmp_path / "missing-mountinfo")
        assert [(c.name, c.result) for c in checks] == [
            ("source_data", ERROR),
            ("bind_mounts", WARN),
        ]
        assert checks[0].error_code == SOURCE_UNREADABLE
        assert used_bytes == 0

    def test_this_server(self) -> None:
        """On this machine the root's data is counted and reported in the details."""
        checks, used_bytes = source_checks(Path("/"))
        assert checks[0].result is OK
        assert used_bytes > 0 and checks[0].details["used_bytes"] == used_bytes

    @pytest.mark.parametrize(
        ("count", "text"),
        [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (8 * 1024**2, "8.0 MiB"),
         (3 * 1024**4, "3.0 TiB")],
    )  # fmt: skip
    def test_human_bytes(self, count: int, text: str) -> None:
        """Sizes read in binary units with one decimal."""
        assert human_bytes(count) == text


class TestTools:
    def test_rsync_missing(self, tmp_path: Path) -> None:
        """Without rsync on the search path the check is ERROR SMS.6517."""
        check = check_rsync_local(search_path=str(tmp_path))
        assert (check.result, check.error_code) == (ERROR, RSYNC_MISSING)

    def test_rsync_found(self) -> None:
        """rsync on the default search path is OK and its path is shown."""
        check = check_rsync_local()
        assert check.result is OK and str(check.details["path"]).endswith("/rsync")


class TestSpeedLimitTc:
    @pytest.mark.parametrize(
        ("limit", "tc", "expected"),
        [
            (None, None, OK),
            (None, "/usr/sbin/tc", OK),
            (0, None, OK),
            (50, "/usr/sbin/tc", OK),
            (50, None, WARN),
        ],
    )
    def test_table(self, limit: int | None, tc: str | None, expected: CheckResult) -> None:
        """Only a speed limit without tc is worth a WARN: rsync still keeps the limit."""
        assert speed_limit_check(limit, tc).result is expected

    def test_warn_names_the_limit(self) -> None:
        """The WARN says which limit is set and that rsync keeps it."""
        check = speed_limit_check(50, None)
        assert "50 Mbit/s" in check.reason and "rsync" in check.reason
