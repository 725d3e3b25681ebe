"""The rsync runner with a real local rsync: results, progress, failures of the callback."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from smsagent.migration.rsync import (
    RSYNC_MISSING,
    ExitClass,
    RetryPolicy,
    RsyncError,
    RsyncJob,
    build_argv,
    run_rsync,
    run_rsync_with_retries,
)
from smsagent.migration.rsync_output import Progress

pytestmark = pytest.mark.timeout(60)
MiB = 1024 * 1024


@pytest.fixture
def source(tmp_path: Path) -> Path:
    root = tmp_path / "source"
    (root / "d").mkdir(parents=True)
    (root / "d" / "big").write_bytes(os.urandom(8 * MiB))
    (root / "small").write_text("small\n")
    return root


class TestRunRsync:
    async def test_local_copy(self, source: Path, tmp_path: Path) -> None:
        """A local pass ends ok with progress records and the summary."""
        records: list[Progress] = []
        argv = build_argv(RsyncJob(str(source), ("",), str(tmp_path / "copy")), None)
        result = await run_rsync(argv, on_progress=records.append)
        assert result.outcome.exit_class is ExitClass.ok
        assert result.returncode == 0
        assert records and records[-1].files_to_check == 0
        assert result.last_progress == records[-1]
        assert result.stats is not None and result.stats.files_transferred == 2
        assert (tmp_path / "copy" / "d" / "big").read_bytes() == (source / "d" / "big").read_bytes()
        assert not result.cancelled
        assert result.duration_s > 0

    async def test_failing_callback_stops_rsync(self, source: Path, tmp_path: Path) -> None:
        """An error in the progress callback stops rsync and reaches the caller."""

        def explode(progress: Progress) -> None:
            raise RuntimeError("callback failed")

        argv = build_argv(
            RsyncJob(str(source), ("",), str(tmp_path / "copy"), bwlimit_kib_s=1024), None
        )
        with pytest.raises(RuntimeError, match="callback failed"):
            await asyncio.wait_for(run_rsync(argv, on_progress=explode, grace_s=2), timeout=30)

    async def test_error_lines_are_kept(self, tmp_path: Path) -> None:
        """rsync's own error lines are kept for the failure message."""
        argv = build_argv(RsyncJob(str(tmp_path / "missing"), ("",), str(tmp_path / "copy")), None)
        result = await run_rsync(argv)
        assert result.returncode == 23
        assert any("No such file or directory" in line for line in result.stderr_tail)
        assert "rsync error" in result.outcome.message

    async def test_rsync_missing(self, source: Path, tmp_path: Path) -> None:
        """Without rsync on the server the pass fails with SMS.6517."""
        job = RsyncJob(str(source), ("",), str(tmp_path / "c"), rsync_path="/nonexistent/rsync")
        with pytest.raises(RsyncError) as caught:
            await run_rsync(build_argv(job, None))
        assert caught.value.error_code == RSYNC_MISSING
        assert caught.value.result is None

    async def test_already_cancelled(self, source: Path, tmp_path: Path) -> None:
        """A pass whose stop was requested before it started ends cancelled at once."""
        cancel = asyncio.Event()
        cancel.set()
        argv = build_argv(RsyncJob(str(source), ("",), str(tmp_path / "c"), bwlimit_kib_s=64), None)
        result = await run_rsync(argv, cancel=cancel, grace_s=2)
        assert result.cancelled
        assert result.outcome.error_code is None


class TestRetries:
    async def test_cancel_during_backoff(self, tmp_path: Path) -> None:
        """A stop during the wait between runs ends the pass as cancelled without another run."""
        argv = build_argv(RsyncJob(str(tmp_path / "missing"), ("",), str(tmp_path / "c")), None)
        cancel = asyncio.Event()
        runs: list[int] = []

        def on_retry(attempt: int, result: object, delay_s: float) -> None:
            runs.append(attempt)
            cancel.set()

        result = await run_rsync_with_retries(
            argv,
            policy=RetryPolicy(retries=5, base_delay_s=30, max_delay_s=30),
            cancel=cancel,
            on_retry=on_retry,
        )
        assert runs == [1]
        assert result.cancelled
