"""Writes the commented env-file template (every setting with its default) from `Settings`.

Usage: python packaging/gen_env_template.py [--output FILE]
"""

from __future__ import annotations

import argparse
import enum
import json
import sys
import textwrap
from pathlib import PurePath
from typing import Any

from pydantic import AliasChoices, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings

EMPTY_CONTAINERS: tuple[Any, ...] = (list, dict, set, tuple)
HEADER = """\
# smsagent settings. systemd reads this file for smsagent.service (EnvironmentFile=), and the
# `smsagent` command reads it too (--env-file). One KEY=value a line, no quotes, no spaces
# around "="; lines starting with "#" are ignored.
#
# Every setting is listed below with its default. Uncomment a line to change it, then run
#   systemctl restart smsagent
# Keep this file mode 0600 and owned by root: it holds the credentials.
"""


def env_name(name: str, field: FieldInfo, prefix: str) -> str:
    """The environment variable that sets `field`, as pydantic-settings looks it up."""
    alias = field.validation_alias
    if isinstance(alias, str):
        return alias.upper()
    if isinstance(alias, AliasChoices) and isinstance(alias.choices[0], str):
        return alias.choices[0].upper()
    return f"{prefix}{name}".upper()


def render_value(value: Any) -> str:
    """A default as it would be written in the env file."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, (PurePath, str, int, float)):
        return str(value)
    return json.dumps(value, default=str)


def describe_default(field: FieldInfo) -> tuple[str, str]:
    """The value to show on the setting's line and a note for the comment above it."""
    if field.is_required():
        return "", "required"
    factory = field.default_factory
    if factory in EMPTY_CONTAINERS:
        return render_value(factory()), ""  # type: ignore[misc,call-arg]
    if factory is not None:
        # Calling the factory here would write the build machine's facts (its hostname) into
        # the template, so the line stays empty and the agent computes the value when it starts.
        return "", "" if "default:" in (field.description or "") else "default: computed at start"
    if field.default is PydanticUndefined:
        return "", "required"
    return render_value(field.default), ""


def render_field(name: str, field: FieldInfo, prefix: str) -> str:
    """The comment block and the commented-out assignment of one setting."""
    value, note = describe_default(field)
    description = (field.description or "").strip()
    text = f"{description} ({note})" if description and note else description or note
    comments = [f"# {line}" for line in textwrap.wrap(text, width=96)] if text else []
    return "\n".join([*comments, f"#{env_name(name, field, prefix)}={value}"])


def render(settings_class: type[BaseSettings]) -> str:
    """The whole template for `settings_class`."""
    prefix = str(settings_class.model_config.get("env_prefix", ""))
    blocks = [render_field(n, f, prefix) for n, f in settings_class.model_fields.items()]
    return HEADER + "\n" + "\n\n".join(blocks) + "\n"


def main(argv: list[str]) -> int:
    """Write the template of `smsagent.config.Settings` to a file or stdout."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", help="file to write (default: standard output)")
    args = parser.parse_args(argv)
    from smsagent.config import Settings

    text = render(Settings)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as out:
            out.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
