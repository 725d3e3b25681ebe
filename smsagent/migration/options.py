"""What the MIGRATE_FILE handler and its work share: the task type, the stage and error names,
and `MigrateOptions`, the work's timings.

Both `file_task.py` (loaded at start-up) and `migrate.py` (loaded with the first command) import
it, so neither needs the other's names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from smsagent.migration.speedlimit import DEFAULT_REFRESH_S

TASK_TYPE: Final = "MIGRATE_FILE"
VERIFY_STAGE: Final = "VERIFY_LINUX_FILE"
ERROR_SETTING: Final = "SMSAGENT.TASK_SETTING"
ERROR_SOURCE: Final = "SMS.5108"  # the source's file systems cannot be measured
ERROR_SMS_UNREACHABLE: Final = "SMS.0201"


@dataclass(frozen=True)
class MigrateOptions:
    """Timings of the migration work (the defaults suit production; tests shorten them).

    Attributes:
        speed_limit_refresh_s: how often the speed-limit windows are read again.
        retry_base_delay_s: first wait before rsync runs again after a network failure.
        retry_max_delay_s: longest such wait.
        save_interval_s: how often a stage's progress is written to the task record.
        sms_attempts: tries of each SMS call the work needs (when its error is retryable).
        sms_retry_delay_s: wait between those tries.
    """

    speed_limit_refresh_s: float = DEFAULT_REFRESH_S
    retry_base_delay_s: float = 2.0
    retry_max_delay_s: float = 60.0
    save_interval_s: float = 5.0
    sms_attempts: int = 3
    sms_retry_delay_s: float = 2.0
