"""Settings: environment and env file, one auth mode, safe endpoints, one-line errors."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from smsagent import config
from smsagent.config import AuthMode, ConfigError, Settings, load_settings

AKSK = {"SMSAGENT_AK": "AKEXAMPLE0000000001", "SMSAGENT_SK": "sk-very-secret-value-0001"}
BASE = {"SMSAGENT_ENDPOINT": "https://sms.example.com", **AKSK}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No SMSAGENT_* variable of the outer environment, and no default env file, leaks in."""
    for name in list(os.environ):
        if name.startswith("SMSAGENT_"):
            monkeypatch.delenv(name)
    monkeypatch.setattr(config, "DEFAULT_ENV_FILE", tmp_path / "absent" / "smsagent.env")


def _env(monkeypatch: pytest.MonkeyPatch, values: dict[str, str]) -> None:
    for name, value in values.items():
        monkeypatch.setenv(name, value)


def _error(env_file: Path | None = None, overrides: dict[str, Any] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(env_file, overrides or {})
    text = str(caught.value)
    assert "\n" not in text
    return text


class TestSources:
    def test_environment_alone(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """With no env file, SMSAGENT_* variables are enough and the defaults fill the rest."""
        _env(monkeypatch, BASE)
        settings = load_settings(None)
        assert settings.endpoint == "https://sms.example.com"
        assert settings.auth_mode is AuthMode.aksk
        assert (settings.poll_interval, settings.active_poll_interval) == (10.0, 3.0)
        assert (settings.backoff_cap, settings.stop_grace) == (300.0, 20.0)
        assert settings.state_dir == Path("/var/lib/smsagent")
        assert settings.target_root == Path("/mnt/smsroot")
        assert settings.server_name

    def test_env_file_in_systemd_syntax(self, tmp_path: Path) -> None:
        """Comments, blank lines, quotes and other programs' variables are read as systemd does."""
        env_file = tmp_path / "smsagent.env"
        env_file.write_text(
            "# SMS agent\n\n"
            "SMSAGENT_ENDPOINT=https://sms.example.com\n"
            'SMSAGENT_AK="AKEXAMPLE0000000001"\n'
            "SMSAGENT_SK='sk with spaces'\n"
            "SMSAGENT_POLL_INTERVAL=20\n"
            "HTTPS_PROXY=http://proxy.example.com:3128\n"
        )
        settings = load_settings(env_file)
        assert settings.sk is not None and settings.sk.get_secret_value() == "sk with spaces"
        assert settings.poll_interval == 20.0

    def test_default_env_file_is_read_when_present(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        """Without --env-file the default file is used if it exists."""
        default = tmp_path / "default.env"
        default.write_text("\n".join(f"{k}={v}" for k, v in BASE.items()))
        monkeypatch.setattr(config, "DEFAULT_ENV_FILE", default)
        assert load_settings(None).ak == "AKEXAMPLE0000000001"

    def test_precedence(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        """Overrides beat the environment, which beats the env file."""
        env_file = tmp_path / "smsagent.env"
        env_file.write_text(
            "SMSAGENT_ENDPOINT=https://file.example.com\nSMSAGENT_POLL_INTERVAL=30\n"
            "SMSAGENT_LOG_LEVEL=debug\n" + "\n".join(f"{k}={v}" for k, v in AKSK.items())
        )
        _env(monkeypatch, {"SMSAGENT_POLL_INTERVAL": "40", "SMSAGENT_LOG_LEVEL": "ERROR"})
        settings = load_settings(env_file, {"log_level": "warning"})
        assert settings.endpoint == "https://file.example.com"
        assert settings.poll_interval == 40.0
        assert settings.log_level == "warning"

    def test_explicit_env_file_must_exist(self, tmp_path: Path) -> None:
        """A missing --env-file is an error naming it."""
        assert _error(tmp_path / "nope.env") == f"env file {tmp_path / 'nope.env'} does not exist"

    def test_unknown_name_in_env_file(self, tmp_path: Path) -> None:
        """A misspelt SMSAGENT_ variable in the env file is reported, not ignored."""
        env_file = tmp_path / "smsagent.env"
        env_file.write_text(
            "\n".join(f"{k}={v}" for k, v in BASE.items()) + "\nSMSAGENT_POLL_INTERVALL=5\n"
        )
        assert "SMSAGENT_POLL_INTERVALL is not a known setting" in _error(env_file)

    def test_unknown_override(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """An override of a field that does not exist is an error naming it."""
        _env(monkeypatch, BASE)
        assert "SMSAGENT_POLL_SPEED" in _error(overrides={"poll_speed": 1})

    @pytest.mark.parametrize("value", ["stop, skip", '["stop", "skip"]', "stop skip"])
    def test_disabled_handlers_list(self, monkeypatch: pytest.MonkeyPatch, value: str) -> None:
        """Handler names are given comma- or blank-separated, or as a JSON list."""
        _env(monkeypatch, {**BASE, "SMSAGENT_DISABLED_HANDLERS": value})
        assert load_settings(None).disabled_handlers == ["stop", "skip"]


class TestEnvFileLines:
    @pytest.mark.parametrize(
        ("text", "line"),
        [
            ("SMSAGENT_ENDPOINT=https://sms.example.com\nthis is not a setting\n", 2),
            ("# settings\n\nSMSAGENT_SK='unclosed secret value\n", 3),
            ("SMSAGENT_AK=a\n\n\n=no-name\n", 4),
        ],
    )
    def test_malformed_line_names_file_and_line(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture, text: str, line: int
    ) -> None:
        """A line that is not NAME=value stops the settings with one line naming the file and
        the line number (never its text: it may hold a secret), and nothing else warns."""
        env_file = tmp_path / "smsagent.env"
        env_file.write_text(text)
        message = _error(env_file)
        assert message.startswith(f"env file {env_file} line {line}: not a NAME=value line")
        assert "secret" not in message and "setting" not in message
        assert caplog.records == []

    def test_malformed_default_env_file(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        """The default env file is held to the same rule when it is read."""
        default = tmp_path / "default.env"
        default.write_text("\n".join(f"{k}={v}" for k, v in BASE.items()) + "\nnot a setting\n")
        monkeypatch.setattr(config, "DEFAULT_ENV_FILE", default)
        assert _error().startswith(f"env file {default} line 4: ")

    def test_missing_default_env_file_is_named_first(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without the default env file an error names that file before what is missing."""
        _env(monkeypatch, AKSK)
        message = _error()
        assert message.startswith(f"env file {config.DEFAULT_ENV_FILE} does not exist")
        assert message.endswith("invalid settings: SMSAGENT_ENDPOINT is not set")

    def test_given_env_file_has_no_such_lead(self, tmp_path: Path) -> None:
        """With an env file read, the error is about the settings alone."""
        env_file = tmp_path / "smsagent.env"
        env_file.write_text("\n".join(f"{k}={v}" for k, v in AKSK.items()))
        assert _error(env_file) == "invalid settings: SMSAGENT_ENDPOINT is not set"


class TestValidation:
    @pytest.mark.parametrize(
        ("name", "value", "rule"),
        [
            ("SMSAGENT_POLL_INTERVAL", "0.1", "greater than or equal to 1"),
            ("SMSAGENT_POLL_INTERVAL", "often", "valid number"),
            ("SMSAGENT_SSH_PORT", "70000", "less than or equal to 65535"),
            ("SMSAGENT_LOG_FORMAT", "xml", "'auto', 'console', 'json' or 'journal'"),
            ("SMSAGENT_ENDPOINT", "sms.example.com", "http:// or https:// URL"),
            ("SMSAGENT_PROXY", "socks5://p:1080", "proxy URL"),
            ("SMSAGENT_CA_BUNDLE", "/nonexistent/ca.pem", "does not point to a file"),
        ],
    )
    def test_bad_value_names_variable_and_rule(
        self, monkeypatch: pytest.MonkeyPatch, name: str, value: str, rule: str
    ) -> None:
        """A bad value stops start-up with one line naming the variable and the rule."""
        _env(monkeypatch, {**BASE, name: value})
        message = _error()
        assert f"; invalid settings: {name}" in message
        assert rule in message

    def test_missing_endpoint(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A missing endpoint is named."""
        _env(monkeypatch, AKSK)
        assert _error().endswith("; invalid settings: SMSAGENT_ENDPOINT is not set")

    def test_active_interval_not_longer_than_idle(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Polling faster when idle than when active is refused."""
        _env(monkeypatch, {**BASE, "SMSAGENT_ACTIVE_POLL_INTERVAL": "30"})
        assert "SMSAGENT_ACTIVE_POLL_INTERVAL must not exceed SMSAGENT_POLL_INTERVAL" in _error()

    def test_no_value_is_echoed(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Neither the bad value nor any secret appears in the message."""
        _env(monkeypatch, {**BASE, "SMSAGENT_POLL_INTERVAL": "hunter2-pass-value"})
        message = _error()
        assert "hunter2" not in message and AKSK["SMSAGENT_SK"] not in message


class TestAuth:
    @pytest.mark.parametrize(
        ("values", "mode"),
        [
            (AKSK, AuthMode.aksk),
            ({"SMSAGENT_TOKEN": "tok-0123456789"}, AuthMode.token),
            (
                {
                    "SMSAGENT_IAM_USER": "agent",
                    "SMSAGENT_IAM_PASSWORD": "pw-0123456789",
                    "SMSAGENT_IAM_DOMAIN": "acme",
                },
                AuthMode.iam,
            ),
        ],
    )
    def test_each_mode_alone(
        self, monkeypatch: pytest.MonkeyPatch, values: dict[str, str], mode: AuthMode
    ) -> None:
        """Each kind of credentials works on its own."""
        _env(monkeypatch, {"SMSAGENT_ENDPOINT": "https://sms.example.com", **values})
        assert load_settings(None).auth_mode is mode

    def test_none(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without credentials the message lists the choices."""
        _env(monkeypatch, {"SMSAGENT_ENDPOINT": "https://sms.example.com"})
        assert "no credentials: set SMSAGENT_AK and SMSAGENT_SK" in _error()

    def test_two_modes(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """AK/SK and a token together are refused, naming both."""
        _env(monkeypatch, {**BASE, "SMSAGENT_TOKEN": "tok-0123456789"})
        message = _error()
        assert "exactly one kind of credentials" in message
        assert "SMSAGENT_AK+SMSAGENT_SK" in message and "SMSAGENT_TOKEN" in message

    @pytest.mark.parametrize(
        ("values", "missing"),
        [
            ({"SMSAGENT_SK": "sk-0123456789"}, "SMSAGENT_AK"),
            ({"SMSAGENT_IAM_USER": "agent", "SMSAGENT_IAM_DOMAIN": "d"}, "SMSAGENT_IAM_PASSWORD"),
        ],
    )
    def test_partial_mode(
        self, monkeypatch: pytest.MonkeyPatch, values: dict[str, str], missing: str
    ) -> None:
        """Half a credential names the missing half."""
        _env(monkeypatch, {"SMSAGENT_ENDPOINT": "https://sms.example.com", **values})
        assert f"{missing} is not set" in _error()


class TestPlainHttp:
    @pytest.mark.parametrize(
        "endpoint", ["http://127.0.0.1:8080", "http://localhost:1", "http://[::1]:8080/"]
    )
    def test_loopback_is_allowed(self, monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
        """Plain HTTP to this machine (the emulator) is fine; a trailing slash is dropped."""
        _env(monkeypatch, {**BASE, "SMSAGENT_ENDPOINT": endpoint})
        assert load_settings(None).endpoint == endpoint.rstrip("/")

    def test_remote_http_is_refused(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Plain HTTP to another host is refused with the way out named."""
        _env(monkeypatch, {**BASE, "SMSAGENT_ENDPOINT": "http://sms.example.com"})
        message = _error()
        assert "SMSAGENT_ENDPOINT: http:// is refused" in message
        assert "SMSAGENT_ALLOW_INSECURE_HTTP" in message

    def test_remote_http_when_allowed(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The explicit switch allows it, for the IAM endpoint too."""
        _env(
            monkeypatch,
            {
                **BASE,
                "SMSAGENT_ENDPOINT": "http://10.0.0.5",
                "SMSAGENT_IAM_ENDPOINT": "http://10.0.0.6",
                "SMSAGENT_ALLOW_INSECURE_HTTP": "true",
            },
        )
        assert load_settings(None).iam_endpoint == "http://10.0.0.6"


class TestSecrecy:
    def test_settings_are_frozen(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Settings cannot be changed after validation."""
        _env(monkeypatch, BASE)
        settings = load_settings(None)
        with pytest.raises(ValidationError):
            settings.poll_interval = 1.0  # type: ignore[misc]

    def test_secrets_stay_hidden(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """repr, str and the redacted view never show the SK; the AK stays visible."""
        _env(monkeypatch, BASE)
        settings = load_settings(None)
        shown = settings.redacted()
        assert shown["sk"] == "[redacted]" and shown["token"] is None
        assert shown["ak"] == AKSK["SMSAGENT_AK"]
        text = json.dumps(shown) + repr(settings) + str(settings)
        assert AKSK["SMSAGENT_SK"] not in text
        assert settings.secrets() == [AKSK["SMSAGENT_SK"]]

    def test_constructed_directly(self) -> None:
        """Settings can be built from keyword arguments (tests, tools) with the same rules."""
        settings = Settings(endpoint="http://127.0.0.1:1", token="tok-0123456789")
        assert settings.auth_mode is AuthMode.token
