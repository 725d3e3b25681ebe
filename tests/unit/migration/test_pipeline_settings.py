"""The task's configuration settings as the file-level migration reads them."""

from __future__ import annotations

from typing import Any

import pytest

from smsagent.migration.limits import ResourceLimits
from smsagent.migration.settings import (
    DEFAULT_CONSISTENCY_EXCLUDED,
    ConsistencyMode,
    MigrationSettings,
    SettingError,
    parse_settings,
)


def entries(**values: Any) -> list[dict[str, Any]]:
    """`configurations` as `GET configuration-setting` returns them."""
    return [{"config_key": key, "config_value": value} for key, value in values.items()]


class TestParseSettings:
    def test_defaults(self) -> None:
        """No settings: one stream each way, quick verification of all but the system dirs."""
        assert parse_settings([]) == MigrationSettings()
        assert parse_settings([]).consistency_excluded == DEFAULT_CONSISTENCY_EXCLUDED

    def test_values_read(self) -> None:
        """Every key the file-level migration uses, with blanks tolerated; others ignored."""
        settings = parse_settings(
            entries(
                NUM_PROCESS_MIGRATE=" 3 ",
                NUM_PROCESS_SYNC="4",
                CONSISTENCY_MODE="HASH",
                CONSISTENCY_DIR="/srv/, /opt",
                CONSISTENCY_DIR_ILLEGAL="/srv/cache",
                MIGRATE_EXCLUDE_DIR="/var/cache/*",
                SYNC_EXCLUDE_DIR="/var/log",
                ONLY_SYNC_DIR="/srv, /srv/app, /home",
                LINUX_CPU_LIMIT="60",
                LINUX_BLOCK_CACHE_SIZE="4",
            )
        )
        assert settings == MigrationSettings(
            migrate_exclude_dir="/var/cache/*",
            sync_exclude_dir="/var/log",
            only_sync_dirs=("home", "srv"),
            streams_migrate=3,
            streams_sync=4,
            consistency_mode=ConsistencyMode.hash,
            consistency_dirs=("/srv", "/opt"),
            consistency_excluded=("/srv/cache",),
            limits=ResourceLimits(cpu_percent=60),
        )

    def test_an_explicit_scope_drops_the_default_exclusions(self) -> None:
        """`CONSISTENCY_DIR=/etc` verifies /etc although it is excluded by default."""
        settings = parse_settings(entries(CONSISTENCY_DIR="/etc"))
        assert settings.consistency_dirs == ("/etc",)
        assert settings.consistency_excluded == ()

    def test_a_later_entry_wins(self) -> None:
        """The same key twice: the last value holds."""
        settings = parse_settings(entries(NUM_PROCESS_SYNC="1") + entries(NUM_PROCESS_SYNC="2"))
        assert settings.streams_sync == 2

    @pytest.mark.parametrize(
        ("key", "value", "words"),
        [
            ("NUM_PROCESS_MIGRATE", "0", ["NUM_PROCESS_MIGRATE", "'0'", "1 to 4"]),
            ("NUM_PROCESS_SYNC", "five", ["NUM_PROCESS_SYNC", "'five'"]),
            ("NUM_PROCESS_SYNC", "2.5", ["NUM_PROCESS_SYNC", "'2.5'"]),
            ("CONSISTENCY_MODE", "md5", ["CONSISTENCY_MODE", "'md5'", "quick", "hash"]),
            ("MIGRATE_EXCLUDE_DIR", "/ok, relative", ["MIGRATE_EXCLUDE_DIR", "'relative'"]),
            ("SYNC_EXCLUDE_DIR", "/a/../b", ["SYNC_EXCLUDE_DIR", "'..'"]),
            ("ONLY_SYNC_DIR", "/srv/*", ["ONLY_SYNC_DIR", "wildcards"]),
            ("CONSISTENCY_DIR", "srv", ["CONSISTENCY_DIR", "'srv'"]),
            ("CONSISTENCY_DIR_ILLEGAL", "/a\nb", ["CONSISTENCY_DIR_ILLEGAL", "newline"]),
            ("NUM_PROCESS_MIGRATE", 2, ["NUM_PROCESS_MIGRATE", "must be a string"]),
        ],
    )
    def test_bad_values_name_the_key(self, key: str, value: Any, words: list[str]) -> None:
        """A value that cannot be used is an error naming the key and the value."""
        with pytest.raises(SettingError) as caught:
            parse_settings(entries(**{key: value}))
        for word in words:
            assert word in str(caught.value)
