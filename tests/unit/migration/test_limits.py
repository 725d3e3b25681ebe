"""The resource-limit settings: parsed from the task's configuration, each bad value named."""

from __future__ import annotations

import pytest

from smsagent.migration.limits import LimitError, ResourceLimits, parse_limits
from smsagent.migration.settings import SettingError, parse_settings


class TestParseLimits:
    def test_absent_or_empty_means_unlimited(self) -> None:
        """No key, or an empty value, sets no limit."""
        limits = parse_limits({"LINUX_CPU_LIMIT": " ", "LINUX_IO_LIMIT": ""})

        assert limits == ResourceLimits()
        assert not limits.any_set

    def test_values_in_range_are_taken(self) -> None:
        """Whole numbers within the console's ranges are taken as they are."""
        values = {"LINUX_CPU_LIMIT": "20", "LINUX_MEM_LIMIT": "200", "LINUX_IO_LIMIT": "1000"}

        assert parse_limits(values) == ResourceLimits(20, 200, 1000)

    @pytest.mark.parametrize(
        ("key", "value"),
        [
            ("LINUX_CPU_LIMIT", "0"),
            ("LINUX_CPU_LIMIT", "101"),
            ("LINUX_CPU_LIMIT", "20%"),
            ("LINUX_MEM_LIMIT", "199"),
            ("LINUX_MEM_LIMIT", "100000"),
            ("LINUX_IO_LIMIT", "9"),
            ("LINUX_IO_LIMIT", "1.5"),
        ],
    )
    def test_a_bad_value_is_an_error_naming_the_key(self, key: str, value: str) -> None:
        """A value out of range or not a whole number is refused with the key and the value."""
        with pytest.raises(LimitError, match=rf"^{key}: '{value}' is not a whole number"):
            parse_limits({key: value})

    def test_the_task_settings_carry_the_limits(self) -> None:
        """`parse_settings` reads the limits with the other settings; a bad one is a
        `SettingError` like any other."""
        entries = [{"config_key": "LINUX_MEM_LIMIT", "config_value": "500"}]

        assert parse_settings(entries).limits == ResourceLimits(memory_mib=500)
        with pytest.raises(SettingError, match="LINUX_IO_LIMIT"):
            parse_settings([{"config_key": "LINUX_IO_LIMIT", "config_value": "5000"}])
