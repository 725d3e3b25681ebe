"""Re-send the disk layout to SMS every `disk_report_interval` and as soon as it changes."""

from __future__ import annotations

import asyncio
import time
from typing import Callable, Final, Optional, Protocol

import structlog

from smsagent.api.errors import SmsError
from smsagent.api.models import PutDiskInfoReq
from smsagent.inventory.builder import build_disk_info, layout_fingerprint
from smsagent.waits import wait_any

log = structlog.get_logger()

DEFAULT_CHECK_INTERVAL_S: Final = 60.0


class DiskInfoClient(Protocol):
    """The one call the reporter makes (`SmsClient.update_disk_info`)."""

    async def update_disk_info(self, source_id: str, body: PutDiskInfoReq) -> None: ...


class DiskReporter:
    """Looks at the disks every `check_interval_s`; sends them when due or when the layout changed.

    Args:
        collect: builds the disk-info body; blocking, so it runs in a worker thread.
        check_interval_s: how often the layout is looked at (a change is sent within this).
        sent_fingerprint: the fingerprint SMS already has (of the registration body), if any.
        sent_at: when SMS got it, on the `clock` passed to `run`; None means "never".
    """

    def __init__(
        self,
        *,
        collect: Callable[[], PutDiskInfoReq] = build_disk_info,
        check_interval_s: float = DEFAULT_CHECK_INTERVAL_S,
        sent_fingerprint: Optional[str] = None,
        sent_at: Optional[float] = None,
    ) -> None:
        self._collect: Final = collect
        self.check_interval_s: Final = check_interval_s
        self.sent_fingerprint = sent_fingerprint
        self.sent_at = sent_at
        self.reports_sent = 0

    async def run(
        self,
        client: DiskInfoClient,
        source_id: str,
        stop_event: asyncio.Event,
        interval_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Check, send if needed, wait; returns when `stop_event` is set.

        Args:
            interval_s: the longest time between two reports (`disk_report_interval`).
            clock: monotonic seconds.
        """
        while not stop_event.is_set():
            await self.check_once(client, source_id, interval_s, clock)
            await wait_any(stop_event, timeout_s=self.check_interval_s)

    async def check_once(
        self,
        client: DiskInfoClient,
        source_id: str,
        interval_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> bool:
        """Collect once and send when due; True when a report was sent."""
        body = await asyncio.to_thread(self._collect)
        fingerprint = layout_fingerprint(body)
        reason = self._reason_to_send(fingerprint, clock(), interval_s)
        if reason is None:
            return False
        try:
            await client.update_disk_info(source_id, body)
        except SmsError as exc:
            # The next check tries again; the poller deals with what the error means for the agent.
            log.warning("disk_report_failed", action=exc.action.value, error=str(exc))
            return False
        self.sent_fingerprint, self.sent_at = fingerprint, clock()
        self.reports_sent += 1
        log.info("disk_report_sent", reason=reason, disks=len(body.disks or []))
        return True

    def _reason_to_send(self, fingerprint: str, now: float, interval_s: float) -> Optional[str]:
        if fingerprint != self.sent_fingerprint:
            return "layout_changed"
        if self.sent_at is None or now - self.sent_at >= interval_s:
            return "interval"
        return None
