"""The task's configuration settings (spec §3.17) as the file-level migration uses them.

`GET /v3/tasks/{id}/configuration-setting` returns `config_key`/`config_value` pairs whose value
formats SMS leaves to the agent. This module reads the keys a file-level migration needs:

* `MIGRATE_EXCLUDE_DIR`, `SYNC_EXCLUDE_DIR`, `ONLY_SYNC_DIR`: comma-separated absolute paths (the
  format is in `excludes.py`);
* `NUM_PROCESS_MIGRATE`, `NUM_PROCESS_SYNC`: parallel rsync streams, an integer 1..4 (default 1);
* `CONSISTENCY_MODE`: `quick` (size and modification time, the default) or `hash` (content);
* `CONSISTENCY_DIR`: comma-separated directories to verify (default: everything copied);
* `CONSISTENCY_DIR_ILLEGAL`: comma-separated directories not to verify (default: spec §7.11's
  system directories, when `CONSISTENCY_DIR` is not set either);
* `LINUX_CPU_LIMIT`, `LINUX_MEM_LIMIT`, `LINUX_IO_LIMIT`: the movers' resource limits (the
  formats are in `limits.py`).

Keys for other task types (block level) are ignored; a bad value of a key read here is a
`SettingError` that names the key.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Final, Optional

from smsagent.api.enums import ConfigKey
from smsagent.migration.excludes import PathListError, only_sync_sources, parse_path_list
from smsagent.migration.limits import LimitError, ResourceLimits, parse_limits

MIN_STREAMS: Final = 1
MAX_STREAMS: Final = 4

# Spec §7.11: what a verification leaves out unless the task says otherwise.
DEFAULT_CONSISTENCY_EXCLUDED: Final = (
    "/bin",
    "/boot",
    "/dev",
    "/home",
    "/etc",
    "/lib",
    "/media",
    "/proc",
    "/sbin",
    "/selinux",
    "/sys",
    "/usr",
    "/var",
    "/run",
    "/tmp",
)


class SettingError(ValueError):
    """A configuration setting holds a value the migration cannot use; the message names it."""


class ConsistencyMode(str, Enum):
    """How the verification compares a file on the source and on the target."""

    quick = "quick"  # size and modification time
    hash = "hash"  # content checksums (reads every file on both sides)


@dataclass(frozen=True)
class MigrationSettings:
    """The configuration settings of one file-level task, checked.

    Attributes:
        migrate_exclude_dir: `MIGRATE_EXCLUDE_DIR` as given (checked), for `excludes.py`.
        sync_exclude_dir: `SYNC_EXCLUDE_DIR` as given (checked).
        only_sync_dirs: `ONLY_SYNC_DIR` as rsync sources relative to the source root; empty
            means everything.
        streams_migrate: parallel rsync streams of the full copy.
        streams_sync: parallel rsync streams of a sync pass.
        consistency_mode: how the verification compares files.
        consistency_dirs: absolute directories to verify; empty means everything copied.
        consistency_excluded: absolute directories the verification leaves out.
        limits: the movers' resource limits.
    """

    migrate_exclude_dir: Optional[str] = None
    sync_exclude_dir: Optional[str] = None
    only_sync_dirs: tuple[str, ...] = ()
    streams_migrate: int = MIN_STREAMS
    streams_sync: int = MIN_STREAMS
    consistency_mode: ConsistencyMode = ConsistencyMode.quick
    consistency_dirs: tuple[str, ...] = ()
    consistency_excluded: tuple[str, ...] = DEFAULT_CONSISTENCY_EXCLUDED
    limits: ResourceLimits = field(default_factory=ResourceLimits)


def _values(entries: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """`config_key` -> `config_value` of every entry; a later entry of a key wins."""
    values: dict[str, str] = {}
    for entry in entries:
        key, value = entry.get("config_key"), entry.get("config_value")
        if not isinstance(key, str):
            continue
        if value is not None and not isinstance(value, str):
            msg = f"{key}: config_value must be a string, not {type(value).__name__}"
            raise SettingError(msg)
        if value is not None:
            values[key] = value
    return values


def _streams(values: Mapping[str, str], key: ConfigKey) -> int:
    text = values.get(key.value, "").strip()
    if not text:
        return MIN_STREAMS
    try:
        count = int(text)
    except ValueError:
        count = 0
    if not MIN_STREAMS <= count <= MAX_STREAMS:
        msg = f"{key.value}: {text!r} is not a whole number from {MIN_STREAMS} to {MAX_STREAMS}"
        raise SettingError(msg)
    return count


def _mode(values: Mapping[str, str]) -> ConsistencyMode:
    text = values.get(ConfigKey.CONSISTENCY_MODE.value, "").strip()
    if not text:
        return ConsistencyMode.quick
    try:
        return ConsistencyMode(text.lower())
    except ValueError:
        msg = f"CONSISTENCY_MODE: {text!r} is neither 'quick' nor 'hash'"
        raise SettingError(msg) from None


def _directories(values: Mapping[str, str], key: ConfigKey) -> Optional[tuple[str, ...]]:
    """A directory list, normalized; None when the key is not set."""
    if key.value not in values:
        return None
    try:
        parsed = parse_path_list(values[key.value], key.value, allow_wildcards=False)
    except PathListError as exc:
        raise SettingError(str(exc)) from exc
    return tuple(dict.fromkeys(posixpath.normpath(path) for path in parsed))


def _checked(values: Mapping[str, str], key: ConfigKey) -> Optional[str]:
    """A path list's value after checking it parses; None when not set."""
    value = values.get(key.value)
    try:
        parse_path_list(value, key.value)
    except PathListError as exc:
        raise SettingError(str(exc)) from exc
    return value


def _only_sync(values: Mapping[str, str]) -> tuple[str, ...]:
    try:
        return only_sync_sources(values.get(ConfigKey.ONLY_SYNC_DIR.value))
    except PathListError as exc:
        raise SettingError(str(exc)) from exc


def _limits(values: Mapping[str, str]) -> ResourceLimits:
    try:
        return parse_limits(values)
    except LimitError as exc:
        raise SettingError(str(exc)) from exc


def parse_settings(entries: Iterable[Mapping[str, Any]]) -> MigrationSettings:
    """The migration's settings from the `configurations` of `GET configuration-setting`.

    Raises:
        SettingError: naming the key whose value cannot be used.
    """
    values = _values(entries)
    included = _directories(values, ConfigKey.CONSISTENCY_DIR) or ()
    excluded = _directories(values, ConfigKey.CONSISTENCY_DIR_ILLEGAL)
    if excluded is None:
        # The defaults guard a verification of "everything"; an explicit scope is taken as is.
        excluded = () if included else DEFAULT_CONSISTENCY_EXCLUDED
    return MigrationSettings(
        migrate_exclude_dir=_checked(values, ConfigKey.MIGRATE_EXCLUDE_DIR),
        sync_exclude_dir=_checked(values, ConfigKey.SYNC_EXCLUDE_DIR),
        only_sync_dirs=_only_sync(values),
        streams_migrate=_streams(values, ConfigKey.NUM_PROCESS_MIGRATE),
        streams_sync=_streams(values, ConfigKey.NUM_PROCESS_SYNC),
        consistency_mode=_mode(values),
        consistency_dirs=included,
        consistency_excluded=excluded,
        limits=_limits(values),
    )
