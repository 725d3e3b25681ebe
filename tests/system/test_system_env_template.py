"""The env-file template generated from `Settings`: every setting, each with its true default."""

from __future__ import annotations

import os
import re
from pathlib import Path
from types import ModuleType

import pytest

from smsagent.config import Settings, env_name

# The least an env file must set; everything else has a default.
REQUIRED = {
    "SMSAGENT_ENDPOINT": "https://sms.example.com",
    "SMSAGENT_AK": "TEMPLATETESTAK",
    "SMSAGENT_SK": "template-test-secret",
}
ASSIGNMENT = re.compile(r"^#(SMSAGENT_[A-Z0-9_]+)=(.*)$", re.MULTILINE)


@pytest.fixture
def template(gen_env_template: ModuleType) -> str:
    text: str = gen_env_template.render(Settings)
    return text


@pytest.fixture(autouse=True)
def no_settings_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings read SMSAGENT_* from the process environment too; the test controls them."""
    for name in [n for n in os.environ if n.startswith("SMSAGENT_")]:
        monkeypatch.delenv(name)


def load(env_file: Path) -> Settings:
    return Settings(_env_file=env_file)


class TestEnvTemplate:
    def test_lists_every_setting_once(self, template: str) -> None:
        """Each field of Settings has exactly one commented assignment in the template."""
        names = [name for name, _ in ASSIGNMENT.findall(template)]

        assert sorted(names) == sorted(env_name(field) for field in Settings.model_fields)

    def test_sets_nothing_until_edited(self, template: str) -> None:
        """No line is active, so an untouched file is recognisably unfilled."""
        active = [line for line in template.splitlines() if line and not line.startswith("#")]

        assert active == []

    def test_shown_values_are_the_defaults(self, template: str, tmp_path: Path) -> None:
        """Uncommenting every line that shows a value changes no setting."""
        shown = {name: value for name, value in ASSIGNMENT.findall(template) if value}
        baseline = tmp_path / "baseline.env"
        baseline.write_text("".join(f"{k}={v}\n" for k, v in REQUIRED.items()))
        uncommented = tmp_path / "uncommented.env"
        uncommented.write_text("".join(f"{k}={v}\n" for k, v in {**shown, **REQUIRED}.items()))

        assert len(shown) >= 20, "most settings show their default"
        assert load(uncommented).model_dump() == load(baseline).model_dump()

    def test_every_line_is_explained(self, template: str) -> None:
        """A comment line precedes each assignment (its description, or that it is required)."""
        lines = template.splitlines()
        unexplained = [
            line
            for index, line in enumerate(lines)
            if ASSIGNMENT.match(line) and (index == 0 or not lines[index - 1].startswith("# "))
        ]

        assert unexplained == []
