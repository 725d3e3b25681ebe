"""Target checks that need no target: the address, df parsing, the space verdict, a TCP port."""

from __future__ import annotations

import asyncio
import socket

import pytest

from smsagent.api.enums import CheckResult
from smsagent.api.models import Task, TaskTargetServer
from smsagent.checks.target import (
    TARGET_NO_ADDRESS,
    TARGET_SPACE_SHORT,
    address_check,
    check_port,
    parse_df_available,
    space_check,
    target_address,
)
from smsagent.target.session import CONNECT_REFUSED

OK, WARN, ERROR = CheckResult.OK, CheckResult.WARN, CheckResult.ERROR
MiB = 1024 * 1024

GNU_DF = """\
Filesystem     1024-blocks    Used Available Capacity Mounted on
/dev/vdb1         41022688 1234567  37674532       4% /mnt/smsroot
"""
# A mount point with spaces, and a device name long enough to push columns apart.
ODD_DF = """\
Filesystem                                   1024-blocks  Used Available Capacity Mounted on
/dev/mapper/very--long--volume--group-root         2048  2000        48      98% /mnt/sms root
"""
BUSYBOX_DF = """\
Filesystem           1024-blocks    Used Available Capacity Mounted on
tmpfs                     2048         0      2048   0% /mnt/smsroot
"""


class TestAddress:
    def test_migration_ip_first(self) -> None:
        """The migration IP wins over the target server's IP; blanks do not count."""
        target = TaskTargetServer(ip="10.0.0.9")
        assert target_address(Task(id="t", migration_ip="192.0.2.7", target_server=target)) == (
            "192.0.2.7"
        )
        assert target_address(Task(id="t", migration_ip=" ", target_server=target)) == "10.0.0.9"
        assert target_address(Task(id="t")) is None

    def test_check(self) -> None:
        """No address, or one that looks like an option, is ERROR naming the problem."""
        assert address_check("192.0.2.7").result is OK
        missing = address_check(None)
        assert (missing.result, missing.error_code) == (ERROR, TARGET_NO_ADDRESS)
        assert address_check("-oProxyCommand=x").result is ERROR


class TestDf:
    @pytest.mark.parametrize(
        ("output", "available"),
        [(GNU_DF, 37674532 * 1024), (ODD_DF, 48 * 1024), (BUSYBOX_DF, 2048 * 1024)],
    )
    def test_parse(self, output: str, available: int) -> None:
        """The available column is read from POSIX `df -P -k` output of GNU and busybox."""
        assert parse_df_available(output) == available

    def test_garbage(self) -> None:
        """Output without a file-system line is an error quoting it."""
        with pytest.raises(ValueError, match="no file-system line"):
            parse_df_available("df: /nope: No such file or directory\n")


class TestSpace:
    @pytest.mark.parametrize(
        ("available", "needed", "expected"),
        [
            (100 * MiB, 10 * MiB, OK),
            (10 * MiB, 10 * MiB, WARN),
            (105 * MiB, 100 * MiB, WARN),
            (2 * MiB, 8 * MiB, ERROR),
            (0, 0, OK),
        ],
    )
    def test_verdict(self, available: int, needed: int, expected: CheckResult) -> None:
        """Less room than data is ERROR; less than 10 % to spare is WARN."""
        check = space_check("/mnt/smsroot", available, needed)
        assert check.result is expected
        if expected is not OK:
            assert check.error_code == TARGET_SPACE_SHORT
        assert check.details == {"available_bytes": available, "needed_bytes": needed}

    def test_reason_names_sizes(self) -> None:
        """The reason shows both sizes in readable units."""
        check = space_check("/mnt/smsroot", 2 * MiB, 8 * MiB)
        assert "2.0 MiB free in /mnt/smsroot, 8.0 MiB to copy" in check.reason


class TestPort:
    async def test_open_port(self) -> None:
        """A listening port is OK with the handshake time."""
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            check = await check_port("127.0.0.1", port, 2.0)
        finally:
            server.close()
            await server.wait_closed()
        assert check.result is OK and float(str(check.details["connect_ms"])) >= 0

    async def test_closed_port(self) -> None:
        """A port nobody listens on is ERROR SMS.3806."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        check = await check_port("127.0.0.1", port, 2.0)
        assert (check.result, check.error_code) == (ERROR, CONNECT_REFUSED)
