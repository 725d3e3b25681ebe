"""Settings of the agent: `SMSAGENT_*` environment variables and the env file, validated once."""

from __future__ import annotations

import io
import ipaddress
import json
import socket
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Final, Literal, Optional
from urllib.parse import urlsplit

from dotenv.parser import Original, parse_stream
from pydantic import Field, FilePath, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX: Final = "SMSAGENT_"
DEFAULT_ENV_FILE: Final = Path("/etc/smsagent/smsagent.env")
REDACTED: Final = "[redacted]"

LogFormat = Literal["auto", "console", "json", "journal"]
LogLevel = Literal["debug", "info", "warning", "error"]
TargetLayoutMode = Literal["task", "premounted"]


class ConfigError(Exception):
    """The settings cannot be used; `str()` is one line naming the variable and the rule."""


class AuthMode(str, Enum):
    """How the agent proves who it is to SMS."""

    aksk = "aksk"
    token = "token"
    iam = "iam"


_AUTH_VARIABLES: Final[Mapping[AuthMode, tuple[str, ...]]] = {
    AuthMode.aksk: ("ak", "sk"),
    AuthMode.token: ("token",),
    AuthMode.iam: ("iam_user", "iam_password", "iam_domain"),
}


def env_name(field: str) -> str:
    """The variable that sets a field: `poll_interval` -> `SMSAGENT_POLL_INTERVAL`."""
    upper = field.upper()
    return upper if upper.startswith(ENV_PREFIX) else f"{ENV_PREFIX}{upper}"


class Settings(BaseSettings):
    """Everything the agent can be told, each field declared once with its unit and bounds."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=None,
        env_file_encoding="utf-8",
        frozen=True,
        # The env file may hold variables for other programs; unknown SMSAGENT_* names in it are
        # reported by `load_settings`, which knows the file.
        extra="ignore",
        hide_input_in_errors=True,
        validate_default=True,
    )

    endpoint: str = Field(
        description="SMS endpoint URL of the region, e.g. https://sms.example.com"
    )
    ak: Optional[str] = Field(default=None, description="access key (AK) for AK/SK signing")
    sk: Optional[SecretStr] = Field(default=None, description="secret key (SK) for AK/SK signing")
    token: Optional[SecretStr] = Field(default=None, description="a ready IAM token (X-Auth-Token)")
    iam_endpoint: str = Field(
        default="https://iam.myhuaweicloud.com", description="IAM endpoint that issues tokens"
    )
    iam_user: Optional[str] = Field(default=None, description="IAM user name for token auth")
    iam_password: Optional[SecretStr] = Field(default=None, description="IAM user's password")
    iam_domain: Optional[str] = Field(default=None, description="account (domain) of the IAM user")
    iam_token_refresh_margin: float = Field(
        default=3600.0,
        ge=60.0,
        le=43200.0,
        description="renew an IAM token this long before expiry, s",
    )
    project_id: Optional[str] = Field(default=None, description="project id sent with requests")
    state_dir: Path = Field(
        default=Path("/var/lib/smsagent"), description="directory of durable state (mode 0700)"
    )
    poll_interval: float = Field(
        default=10.0, ge=1.0, le=3600.0, description="idle command-poll period, s"
    )
    active_poll_interval: float = Field(
        default=3.0, ge=0.5, le=3600.0, description="command-poll period while a task is active, s"
    )
    backoff_cap: float = Field(
        default=300.0, ge=1.0, le=3600.0, description="longest delay between failing polls, s"
    )
    progress_interval: float = Field(
        default=5.0, ge=1.0, le=3600.0, description="shortest period between progress reports, s"
    )
    connect_timeout: float = Field(
        default=10.0, gt=0.0, le=600.0, description="TCP+TLS connect timeout, s"
    )
    read_timeout: float = Field(
        default=30.0, gt=0.0, le=3600.0, description="timeout for a response to arrive, s"
    )
    ca_bundle: Optional[FilePath] = Field(
        default=None, description="PEM file of extra CA certificates to trust"
    )
    verify_tls: bool = Field(default=True, description="verify the server's TLS certificate")
    proxy: Optional[str] = Field(
        default=None, description="HTTP(S) proxy URL for SMS, IAM and the log upload to OBS"
    )
    obs_endpoint: Optional[str] = Field(
        default=None,
        description=(
            "OBS endpoint for UPLOAD_LOG (default: https://obs.<region>.myhuaweicloud.com, "
            "the region of the task, else of SMSAGENT_ENDPOINT)"
        ),
    )
    log_format: LogFormat = Field(
        default="auto", description="auto (console on a tty, else json) | console | json | journal"
    )
    log_level: LogLevel = Field(default="info", description="debug | info | warning | error")
    allow_insecure_http: bool = Field(
        default=False, description="allow an http:// endpoint that is not a loopback address"
    )
    stop_grace: float = Field(
        default=20.0, ge=1.0, le=3600.0, description="time a stopping task gets before a kill, s"
    )
    server_name: Optional[str] = Field(
        default_factory=socket.gethostname,
        min_length=1,
        max_length=255,
        description="name the server registers under (default: the hostname)",
    )
    source_root: Path = Field(default=Path("/"), description="root of the tree to migrate")
    target_root: Path = Field(
        default=Path("/mnt/smsroot"), description="where the target's file systems are mounted"
    )
    target_layout: TargetLayoutMode = Field(
        default="task",
        description=(
            "task: lay out, format and configure the target's disks as the task says | "
            "premounted: copy into the target root as it is mounted (no format, no configure)"
        ),
    )
    ssh_port: int = Field(default=22, ge=1, le=65535, description="SSH port of the target")
    block_data_port: int = Field(
        default=8900,
        ge=1,
        le=65535,
        description="port of the block-level data channel on the target (TLS)",
    )
    block_freeze_max: float = Field(
        default=10.0,
        ge=1.0,
        le=120.0,
        description="longest a block-level final pass may hold the source's file systems frozen, s",
    )
    transfer_retries: int = Field(
        default=5, ge=0, le=100, description="times a failed transfer is retried"
    )
    sync_interval: float = Field(
        default=600.0, ge=5.0, le=604800.0, description="period of continuous sync passes, s"
    )
    disk_report_interval: float = Field(
        default=7200.0, ge=60.0, le=604800.0, description="period of disk re-reports, s"
    )
    accept_privacy_statement: bool = Field(
        default=False,
        description="accept the SMS privacy statement for the account if it is not yet accepted",
    )
    disabled_handlers: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="handler names not to load (comma-separated)"
    )

    @field_validator("endpoint", "iam_endpoint")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        if parts.query or parts.fragment:
            raise ValueError("must not carry a query or a fragment")
        return value.strip().rstrip("/")

    @field_validator("obs_endpoint", mode="before")
    @classmethod
    def _check_optional_url(cls, value: Any) -> Any:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        return cls._check_url(value) if isinstance(value, str) else value

    @field_validator("proxy")
    @classmethod
    def _check_proxy(cls, value: Optional[str]) -> Optional[str]:
        if value is None or not value.strip():
            return None
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// proxy URL with a host")
        return value.strip()

    @field_validator("log_format", "log_level", mode="before")
    @classmethod
    def _lower_case(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("disabled_handlers", mode="before")
    @classmethod
    def _split_names(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [name for name in text.replace(",", " ").split() if name]

    @model_validator(mode="after")
    def _check_combinations(self) -> Settings:
        self._check_auth()
        self._check_plain_http("endpoint")
        self._check_plain_http("iam_endpoint")
        self._check_plain_http("obs_endpoint")
        if self.active_poll_interval > self.poll_interval:
            raise ValueError(
                f"{env_name('active_poll_interval')} must not exceed {env_name('poll_interval')}"
            )
        return self

    def _check_auth(self) -> None:
        configured = [mode for mode, names in _AUTH_VARIABLES.items() if self._any_set(names)]
        if not configured:
            raise ValueError(
                "no credentials: set SMSAGENT_AK and SMSAGENT_SK, or SMSAGENT_TOKEN, or "
                "SMSAGENT_IAM_USER, SMSAGENT_IAM_PASSWORD and SMSAGENT_IAM_DOMAIN"
            )
        if len(configured) > 1:
            modes = " and ".join(_mode_text(mode) for mode in configured)
            raise ValueError(f"exactly one kind of credentials must be set, found {modes}")
        missing = [name for name in _AUTH_VARIABLES[configured[0]] if not self._is_set(name)]
        if missing:
            needed = " and ".join(env_name(n) for n in _AUTH_VARIABLES[configured[0]])
            raise ValueError(
                f"{', '.join(env_name(n) for n in missing)} is not set ({needed} go together)"
            )

    def _check_plain_http(self, field: str) -> None:
        if getattr(self, field) is None:
            return
        parts = urlsplit(getattr(self, field))
        if parts.scheme != "http" or self.allow_insecure_http or _is_loopback(parts.hostname):
            return
        raise ValueError(
            f"{env_name(field)}: http:// is refused for a non-loopback host "
            f"(use https://, or set {env_name('allow_insecure_http')}=true)"
        )

    def _is_set(self, field: str) -> bool:
        value = getattr(self, field)
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        return bool(value)

    def _any_set(self, fields: tuple[str, ...]) -> bool:
        return any(self._is_set(field) for field in fields)

    @property
    def auth_mode(self) -> AuthMode:
        """The one kind of credentials configured (validation guarantees exactly one)."""
        for mode, names in _AUTH_VARIABLES.items():
            if self._any_set(names):
                return mode
        raise AssertionError("validated settings always carry credentials")

    def secrets(self) -> list[str]:
        """The secret values set (SK, token, IAM password), to register with log redaction."""
        values = (self.sk, self.token, self.iam_password)
        return [v.get_secret_value() for v in values if v is not None and v.get_secret_value()]

    def redacted(self) -> dict[str, Any]:
        """Every field as JSON-ready values, secrets shown only as `[redacted]` when set."""
        shown: dict[str, Any] = {}
        for name, value in self.model_dump(mode="python").items():
            if isinstance(value, SecretStr):
                shown[name] = REDACTED if value.get_secret_value() else None
            elif isinstance(value, Path):
                shown[name] = str(value)
            else:
                shown[name] = value
        return shown


def _mode_text(mode: AuthMode) -> str:
    return "+".join(env_name(name) for name in _AUTH_VARIABLES[mode])


def _is_loopback(host: Optional[str]) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def format_validation_error(exc: ValidationError) -> str:
    """One line naming each bad variable and the rule it broke, never the value given.

    Args:
        exc: the error pydantic raised while building `Settings`.
    """
    problems = [_describe(error) for error in exc.errors(include_input=False, include_url=False)]
    return "invalid settings: " + "; ".join(problems)


def _describe(error: Mapping[str, Any]) -> str:
    loc = [part for part in error.get("loc", ()) if isinstance(part, str)]
    kind = error.get("type", "")
    if kind == "value_error" and "error" in error.get("ctx", {}):
        message = str(error["ctx"]["error"])
    else:
        message = str(error.get("msg", "invalid"))
    message = " ".join(message.split())
    if not loc:
        return message
    variable = env_name(loc[0])
    if kind == "missing":
        return f"{variable} is not set"
    if kind == "extra_forbidden":
        return f"{variable} is not a known setting"
    return f"{variable}: {message}"


def load_settings(env_file: Optional[Path], overrides: Mapping[str, Any] = {}) -> Settings:
    """Build the settings from the environment, the env file and command-line overrides.

    Precedence, highest first: `overrides` (field names), `SMSAGENT_*` environment variables,
    the env file. With `env_file=None` the default file is read if it exists.

    Raises:
        ConfigError: a given env file is missing or unreadable, a line of the env file is not
            `NAME=value`, or a value is invalid.
    """
    path = _env_file_to_read(env_file)
    unknown = sorted(set(overrides) - set(Settings.model_fields))
    if path is not None:
        unknown += _unknown_variables(read_env_file(path))
    if unknown:
        raise ConfigError(
            f"invalid settings: {', '.join(map(env_name, unknown))} is not a known setting"
        )
    try:
        return Settings(_env_file=path, **dict(overrides))
    except ValidationError as exc:
        raise ConfigError(
            _without_env_file(env_file, path) + format_validation_error(exc)
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read env file {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ConfigError(f"invalid settings: {' '.join(str(exc).split())}") from None


def read_env_file(path: Path) -> dict[str, Optional[str]]:
    """The variables of an env file, read as systemd's `EnvironmentFile=` reads them.

    Raises:
        ConfigError: the file cannot be read, or a line is not `NAME=value` (named by its
            number, never quoted: it may hold a secret).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read env file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"env file {path} is not UTF-8 text") from None
    values: dict[str, Optional[str]] = {}
    for binding in parse_stream(io.StringIO(text)):
        if binding.error:
            raise ConfigError(
                f"env file {path} line {_first_line(binding.original)}: not a NAME=value line "
                "(a quote not closed, or text without a name)"
            )
        if binding.key is not None:
            values[binding.key] = binding.value
    return values


def _first_line(original: Original) -> int:
    """The number of the first line of a parsed statement that is not blank."""
    string = original.string
    blank = string[: len(string) - len(string.lstrip())]
    return original.line + blank.count("\n")


def _without_env_file(env_file: Optional[Path], path: Optional[Path]) -> str:
    """For an error, the lead that says no env file was read: the settings came from the
    environment alone, which is rarely what an operator meant."""
    if env_file is None and path is None:
        return (
            f"env file {DEFAULT_ENV_FILE} does not exist and no --env-file was given, so the "
            "settings come from the environment alone; "
        )
    return ""


def _unknown_variables(values: Mapping[str, Optional[str]]) -> list[str]:
    """`SMSAGENT_*` names in the env file that match no field: typos that would be ignored."""
    fields = {env_name(field) for field in Settings.model_fields}
    return sorted(
        name
        for name in values
        if name.upper().startswith(ENV_PREFIX) and name.upper() not in fields
    )


def default_env_file() -> Optional[Path]:
    """The default env file when it exists, else None."""
    return DEFAULT_ENV_FILE if DEFAULT_ENV_FILE.is_file() else None


def _env_file_to_read(env_file: Optional[Path]) -> Optional[Path]:
    if env_file is None:
        return default_env_file()
    if not env_file.exists():
        raise ConfigError(f"env file {env_file} does not exist")
    if not env_file.is_file():
        raise ConfigError(f"env file {env_file} is not a regular file")
    return env_file
