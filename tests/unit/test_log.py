"""Logging: redaction of secrets, task context on every line, console/JSON/journald output."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from smsagent import log
from smsagent.journal import JournalSocket, encode_entry, stream_is_journal
from smsagent.log import (
    REDACTED,
    RedactSecrets,
    SecretRegistry,
    bind_stage,
    bind_task_context,
    configure,
    is_secret_key,
    journal_field_name,
    redact_secrets,
    register_secret,
    render_journal,
    task_context,
)


@pytest.fixture(autouse=True)
def pristine_logging() -> Iterator[None]:
    """Each test starts and ends with no registered secret and structlog's defaults."""
    log.forget_secrets()
    structlog.contextvars.clear_contextvars()
    yield
    log.forget_secrets()
    structlog.contextvars.clear_contextvars()
    structlog.reset_defaults()


def _json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


class TestRedactKeys:
    @pytest.mark.parametrize(
        "key",
        [
            "sk",
            "token",
            "password",
            "iam_password",
            "private_key",
            "target_data_private_key",
            "passphrase",
            "Authorization",
            "X-Auth-Token",
            "secret",
            "client_secret",
        ],
    )
    def test_secret_keys(self, key: str) -> None:
        """Values under secret keys are replaced, whatever their case or separator."""
        event = redact_secrets(None, "info", {"event": "e", key: "value-123"})
        assert event == {"event": "e", key: REDACTED}
        assert is_secret_key(key)

    @pytest.mark.parametrize("key", ["ak", "task", "disk", "token_expires_at", "stage"])
    def test_ordinary_keys(self, key: str) -> None:
        """The AK and other identifiers stay visible."""
        assert redact_secrets(None, "info", {key: "v"}) == {key: "v"}

    def test_nested_and_none(self) -> None:
        """Secret keys are found in nested dicts and lists; an unset secret stays None."""
        event = {
            "body": {"auth": {"password": "p", "user": "u"}, "items": [{"token": "t"}]},
            "sk": None,
        }
        assert redact_secrets(None, "info", event) == {
            "body": {"auth": {"password": REDACTED, "user": "u"}, "items": [{"token": REDACTED}]},
            "sk": None,
        }


class TestRedactValues:
    @pytest.fixture
    def redact(self) -> RedactSecrets:
        registry = SecretRegistry()
        registry.register("SK-1234567890abcdef")
        registry.register(
            "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\nBKcwggSjAgEAAoIBAQC7\n"
            "-----END PRIVATE KEY-----\n"
        )
        registry.register("abc")  # too short to be cut out of every line
        return RedactSecrets(registry)

    def test_registered_secret_in_text(self, redact: RedactSecrets) -> None:
        """A registered secret is cut out of any string, nested or not."""
        event = redact(
            None,
            "info",
            {
                "event": "signed with SK-1234567890abcdef",
                "nested": {"list": ["x SK-1234567890abcdef y"], "tuple": ("SK-1234567890abcdef",)},
            },
        )
        assert event == {
            "event": f"signed with {REDACTED}",
            "nested": {"list": [f"x {REDACTED} y"], "tuple": [REDACTED]},
        }

    def test_exceptions_and_objects(self, redact: RedactSecrets) -> None:
        """Exceptions and other objects whose text holds a secret become that text, redacted."""
        event = redact(
            None,
            "error",
            {
                "error": ValueError("bad SK-1234567890abcdef"),
                "path": Path("/k/SK-1234567890abcdef"),
            },
        )
        assert event == {"error": f"ValueError: bad {REDACTED}", "path": f"/k/{REDACTED}"}

    def test_key_lines_alone(self, redact: RedactSecrets) -> None:
        """A line of a registered key is cut out even when the key is not logged whole."""
        event = redact(None, "info", {"event": "got MIIEvQIBADANBgkqhkiG9w0BAQEFAASC from ssh"})
        assert event["event"] == f"got {REDACTED} from ssh"

    def test_short_values_are_not_registered(self, redact: RedactSecrets) -> None:
        """Values too short to be real secrets do not mangle ordinary words."""
        assert redact(None, "info", {"event": "abc abcdef"}) == {"event": "abc abcdef"}

    def test_numbers_pass_unchanged(self, redact: RedactSecrets) -> None:
        """Numbers, booleans and None pass as they are."""
        event = {"a": 1, "b": 2.5, "c": True, "d": None}
        assert redact(None, "info", dict(event)) == event


class TestConfigure:
    def test_json_when_not_a_tty(self) -> None:
        """`auto` on a pipe writes JSON lines with level and timestamp; below-level lines drop."""
        stream = io.StringIO()
        configure("auto", "info", stream, cache_loggers=False)
        logger = structlog.get_logger()
        logger.debug("not_shown")
        logger.info("poll_failed", status=503)
        [line] = _json_lines(stream)
        assert line["event"] == "poll_failed" and line["status"] == 503
        assert line["level"] == "info" and line["timestamp"].endswith("Z")

    def test_console_on_a_tty(self) -> None:
        """`auto` on a terminal writes coloured console lines, not JSON."""
        leader, follower = os.openpty()
        with open(follower, "w", closefd=True) as tty, open(leader, "rb", buffering=0) as reader:
            configure("auto", "info", tty, cache_loggers=False)
            structlog.get_logger().info("stage_started", stage="MIGRATE_LINUX_FILE")
            tty.flush()
            text = reader.read(4096).decode()
        plain = re.sub(r"\x1b\[[0-9;]*m", "", text)
        assert "stage_started" in plain and "stage=MIGRATE_LINUX_FILE" in plain
        assert "\x1b[" in text, "a terminal gets colours"
        assert not plain.lstrip().startswith("{")

    def test_registered_secret_never_reaches_the_output(self) -> None:
        """A secret registered at startup is redacted from messages, fields and tracebacks."""
        stream = io.StringIO()
        configure("json", "debug", stream, cache_loggers=False)
        register_secret("token-abcdef-123456")
        logger = structlog.get_logger()
        logger.info("using token-abcdef-123456", header={"X-Auth-Token": "anything"})
        try:
            raise RuntimeError("401 for token-abcdef-123456")
        except RuntimeError:
            logger.exception("auth_failed")
        assert "token-abcdef-123456" not in stream.getvalue()
        first, second = _json_lines(stream)
        assert first["header"] == {"X-Auth-Token": REDACTED}
        assert f"401 for {REDACTED}" in second["exception"]

    def test_task_context_on_every_line(self) -> None:
        """Inside a task context each line carries task_id, command and stage; outside none."""
        stream = io.StringIO()
        configure("json", "info", stream, cache_loggers=False)
        logger = structlog.get_logger()
        with task_context("t-1", "START"):
            logger.info("first")
            bind_stage("MIGRATE_LINUX_FILE")
            logger.info("second")
        logger.info("after")
        first, second, after = _json_lines(stream)
        assert (first["task_id"], first["command"], first["stage"]) == ("t-1", "START", None)
        assert second["stage"] == "MIGRATE_LINUX_FILE"
        assert "task_id" not in after

    async def test_context_does_not_leak_between_asyncio_tasks(self) -> None:
        """Context bound in one asyncio task stays out of lines logged by another."""
        stream = io.StringIO()
        configure("json", "info", stream, cache_loggers=False)
        logger = structlog.get_logger()
        bound = asyncio.Event()

        async def work() -> None:
            bind_task_context("t-2", "STOP", "SYNC_LINUX_FILE")
            logger.info("in_task")
            bound.set()

        async def poll() -> None:
            await bound.wait()
            logger.info("in_poller")

        await asyncio.gather(work(), poll())
        lines = {line["event"]: line for line in _json_lines(stream)}
        assert lines["in_task"]["command"] == "STOP"
        assert "task_id" not in lines["in_poller"]

    def test_journal_falls_back_to_json(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without systemd-python and journald, `journal` writes JSON to the stream and says so
        once."""
        monkeypatch.setitem(sys.modules, "systemd.journal", None)
        monkeypatch.setattr(JournalSocket, "available", classmethod(lambda cls, path="": False))
        stream = io.StringIO()
        configure("journal", "info", stream, cache_loggers=False)
        structlog.get_logger().info("hello")
        warning, hello = _json_lines(stream)
        assert (warning["event"], warning["fallback"]) == ("journal_unavailable", "json")
        assert hello["event"] == "hello"


class TestJournalStream:
    def test_auto_is_journal_on_systemds_journal_stream(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Standard error that is the stream named by JOURNAL_STREAM means journal output."""
        with open(tmp_path / "stream", "w") as stream:
            info = os.fstat(stream.fileno())
            assert stream_is_journal(stream.fileno(), f"{info.st_dev}:{info.st_ino}")
            assert not stream_is_journal(stream.fileno(), f"{info.st_dev}:{info.st_ino + 1}")
            assert not stream_is_journal(stream.fileno(), None)
            assert not stream_is_journal(stream.fileno(), "garbage")
            monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino}")
            assert log._automatic_format(stream) == "journal"
            monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino + 1}")
            assert log._automatic_format(stream) == "json"

    def test_native_entries_encode_multiline_values_with_a_length(self) -> None:
        """A value with a newline is sent in the length-prefixed form."""
        data = encode_entry({"MESSAGE": "a\nb", "TASK_ID": "t-1"})
        assert data == b"MESSAGE\n" + (3).to_bytes(8, "little") + b"a\nb\n" + b"TASK_ID=t-1\n"


class TestJournal:
    def test_fields(self) -> None:
        """Context becomes upper-case fields; MESSAGE reads like a console line; priority fits."""
        fields = render_journal(
            None,
            "error",
            {
                "event": "stage_failed",
                "level": "error",
                "timestamp": "2026-01-01T00:00:00Z",
                "task_id": "t-1",
                "command": "START",
                "stage": "MIGRATE_LINUX_FILE",
                "server_id": "s-1",
                "sms_error_code": "SMS.1001",
                "detail": {"rc": 23},
                "exception": "Traceback ...",
            },
        )
        assert fields["TASK_ID"] == "t-1" and fields["COMMAND"] == "START"
        assert fields["STAGE"] == "MIGRATE_LINUX_FILE" and fields["SERVER_ID"] == "s-1"
        assert fields["SMS_ERROR_CODE"] == "SMS.1001" and fields["DETAIL"] == '{"rc": 23}'
        assert fields["PRIORITY"] == "3" and fields["SYSLOG_IDENTIFIER"] == "smsagent"
        assert fields["MESSAGE"].startswith("stage_failed task_id=t-1 command=START")
        assert fields["MESSAGE"].endswith("\nTraceback ...")
        assert "TIMESTAMP" not in fields and "LEVEL" not in fields

    @pytest.mark.parametrize(
        ("key", "field"),
        [
            ("x-y", "X_Y"),
            ("message", "SMSAGENT_MESSAGE"),
            ("9lives", "SMSAGENT_9LIVES"),
            ("_private", "PRIVATE"),
            ("priority", "SMSAGENT_PRIORITY"),
        ],
    )
    def test_field_names(self, key: str, field: str) -> None:
        """Keys become valid journald names and never overwrite journald's own fields."""
        assert journal_field_name(key) == field

    @pytest.mark.parametrize(
        ("level", "priority"), [("debug", "7"), ("info", "6"), ("warning", "4")]
    )
    def test_priorities(self, level: str, priority: str) -> None:
        """Levels map to syslog priorities."""
        assert render_journal(None, level, {"event": "e"})["PRIORITY"] == priority

    JOURNALD = textwrap.dedent(
        """
        import json, os, socket, struct, subprocess, sys
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", "/run/systemd"], check=True)
        os.makedirs("/run/systemd/journal")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind("/run/systemd/journal/socket")
        sock.settimeout(10)
        if os.environ.get("WITHOUT_SYSTEMD_PYTHON"):
            sys.modules["systemd"] = None  # the packaged agent has no systemd-python
        import structlog
        from smsagent.log import configure, register_secret, task_context
        configure("journal", "info", cache_loggers=False)
        register_secret("password-0123456789")
        with task_context("t-7", "STOP", "SYNC_LINUX_FILE"):
            structlog.get_logger().warning("stop_slow", waited_s=3, note="password-0123456789")
        data = sock.recv(65536)
        fields = {}
        while data:
            line, _, rest = data.partition(b"\\n")
            if b"=" in line:
                key, _, value = line.partition(b"=")
                data = rest
            else:
                key, size = line, struct.unpack("<Q", rest[:8])[0]
                value, data = rest[8 : 8 + size], rest[9 + size :]
            fields[key.decode()] = value.decode()
        print(json.dumps(fields))
        """
    )

    @pytest.mark.root
    @pytest.mark.timeout(30)
    @pytest.mark.parametrize("without_systemd_python", ["", "1"], ids=["systemd-python", "native"])
    def test_entries_reach_journald(self, without_systemd_python: str) -> None:
        """Through systemd-python, or our own native-protocol socket without it, a line arrives
        at the journal socket with its fields."""
        if os.geteuid() != 0 or shutil.which("unshare") is None:
            pytest.skip("needs root and unshare for a private /run/systemd")
        done = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", sys.executable, "-c", self.JOURNALD],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
            env={**os.environ, "WITHOUT_SYSTEMD_PYTHON": without_systemd_python},
        )
        assert done.returncode == 0, done.stderr
        fields = json.loads(done.stdout)
        assert fields["MESSAGE"].startswith("stop_slow ")
        assert fields["PRIORITY"] == "4"
        assert (fields["TASK_ID"], fields["COMMAND"], fields["STAGE"]) == (
            "t-7",
            "STOP",
            "SYNC_LINUX_FILE",
        )
        assert fields["WAITED_S"] == "3" and fields["NOTE"] == REDACTED
        assert "password-0123456789" not in done.stdout
