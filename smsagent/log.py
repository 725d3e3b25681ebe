"""Logging: a structlog processor chain to console, JSON or journald, with secrets redacted."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Callable, Final, Optional, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from smsagent.journal import JournalSocket, stream_is_journal

REDACTED: Final = "[redacted]"
SYSLOG_IDENTIFIER: Final = "smsagent"

# Keys whose values are secrets wherever they appear (compared lower-case, `-` as `_`). The AK is
# an identifier, not a secret, and stays visible.
SECRET_KEYS: Final = frozenset(
    {
        "sk",
        "token",
        "password",
        "private_key",
        "passphrase",
        "authorization",
        "x_auth_token",
        "secret",
    }
)
_SECRET_SUFFIXES: Final = tuple(f"_{key}" for key in SECRET_KEYS)

# Context every line of a task carries, and the journald fields they become.
TASK_CONTEXT_KEYS: Final = ("task_id", "command", "stage")

_PRIORITIES: Final[Mapping[str, int]] = {
    "debug": 7,
    "info": 6,
    "warning": 4,
    "warn": 4,
    "error": 3,
    "exception": 3,
    "critical": 2,
    "fatal": 2,
}
# journald's own fields; an event key that maps onto one is prefixed instead of overwriting it.
_JOURNAL_RESERVED: Final = frozenset(
    {"MESSAGE", "MESSAGE_ID", "PRIORITY", "CODE_FILE", "CODE_LINE", "CODE_FUNC", "ERRNO"}
)
_NOT_JOURNAL_FIELDS: Final = frozenset({"event", "level", "timestamp", "exception"})
_FIELD_CHARS: Final = re.compile(r"[^A-Z0-9_]")
# A PEM private key (RSA, EC, OpenSSH, PKCS#8, encrypted), or what is left of one cut short.
_PRIVATE_KEY_BLOCK: Final = re.compile(
    r"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----.*?(?:-----END \1PRIVATE KEY-----|\Z)", re.DOTALL
)
# How many recent events a process keeps for a log bundle (`recent_events`).
RECENT_EVENTS: Final = 1000


def is_secret_key(key: str) -> bool:
    """Whether values stored under `key` are secrets (`sk`, `iam_password`, `X-Auth-Token`, ...)."""
    normal = key.lower().replace("-", "_")
    return normal in SECRET_KEYS or normal.endswith(_SECRET_SUFFIXES)


class SecretRegistry:
    """The secret values of this process (SK, token, passwords, keys) to cut out of any text."""

    # Shorter values would cut ordinary words out of every line; no real SK, token, password
    # (IAM requires 8+) or key is that short.
    MIN_LENGTH: Final = 6
    # A PEM key may be logged in part; each of its base64 lines is a secret on its own.
    MIN_LINE_LENGTH: Final = 16

    def __init__(self) -> None:
        self._values: set[str] = set()
        self._ordered: tuple[str, ...] = ()

    def register(self, value: str) -> None:
        """Remember a secret value; multi-line values register their long lines too."""
        candidates = {value.strip()}
        if "\n" in value:
            candidates |= {line.strip() for line in value.splitlines()}
            candidates = {c for c in candidates if len(c) >= self.MIN_LINE_LENGTH or c == value}
        added = {c for c in candidates if len(c) >= self.MIN_LENGTH} - self._values
        if added:
            self._values |= added
            # Longest first, so a whole key is replaced before any of its lines.
            self._ordered = tuple(sorted(self._values, key=len, reverse=True))

    def clear(self) -> None:
        """Forget every registered value."""
        self._values.clear()
        self._ordered = ()

    def __bool__(self) -> bool:
        return bool(self._ordered)

    def scrub(self, text: str) -> str:
        """`text` with every registered secret replaced by `[redacted]`."""
        for secret in self._ordered:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text


class RedactSecrets:
    """Processor: secret keys' values become `[redacted]`; registered secrets are cut from text.

    Nested dicts, lists and tuples are walked; exceptions become their redacted text; any other
    object whose `str()` contains a registered secret becomes that redacted text.
    """

    MAX_DEPTH: Final = 16

    def __init__(self, registry: SecretRegistry) -> None:
        self._registry = registry

    def __call__(self, _: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
        return {key: self._entry(key, value, 0) for key, value in event_dict.items()}

    def _entry(self, key: Any, value: Any, depth: int) -> Any:
        if isinstance(key, str) and value is not None and is_secret_key(key):
            return REDACTED
        return self._value(value, depth)

    def _value(self, value: Any, depth: int) -> Any:
        if value is None or isinstance(value, (bool, int, float)):
            return value
        if isinstance(value, str):
            return self._registry.scrub(value)
        if depth >= self.MAX_DEPTH:
            return REDACTED
        if isinstance(value, Mapping):
            return {k: self._entry(k, v, depth + 1) for k, v in value.items()}
        if isinstance(value, (list, tuple, set, frozenset)):
            return [self._value(item, depth + 1) for item in value]
        if isinstance(value, BaseException):
            return self._registry.scrub(f"{type(value).__name__}: {value}")
        if self._registry:
            text = str(value)
            scrubbed = self._registry.scrub(text)
            if scrubbed != text:
                return scrubbed
        return value


_SECRETS: Final = SecretRegistry()
redact_secrets: Final = RedactSecrets(_SECRETS)


def register_secret(value: Optional[str]) -> None:
    """Cut `value` out of every later log line (call at startup for the SK, token, passwords)."""
    if value:
        _SECRETS.register(value)


def scrub(text: str) -> str:
    """`text` with every registered secret replaced by `[redacted]` (for messages that leave
    the process other than through a log, such as a command result)."""
    return _SECRETS.scrub(text)


def redact_private_keys(text: str) -> str:
    """`text` with every PEM private-key block (also one cut short) replaced by `[redacted]`:
    for text from outside the process, such as a file or a command's output, that may hold a
    key this process never registered."""
    if "PRIVATE KEY-----" not in text:
        return text
    return _PRIVATE_KEY_BLOCK.sub(REDACTED, text)


def forget_secrets() -> None:
    """Forget every registered secret (for a process that reconfigures from scratch)."""
    _SECRETS.clear()


class RecentEvents:
    """Processor: keeps the last `size` events, already redacted, so that a log bundle has the
    agent's own lines wherever they were written (a terminal, a pipe, the journal)."""

    def __init__(self, size: int) -> None:
        self._events: deque[dict[str, Any]] = deque(maxlen=size)

    def __call__(self, _: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
        self._events.append(dict(event_dict))
        return event_dict

    def snapshot(self) -> list[dict[str, Any]]:
        """The kept events, oldest first."""
        return list(self._events)


_RECENT: Final = RecentEvents(RECENT_EVENTS)


def recent_events() -> list[dict[str, Any]]:
    """The last events this process logged (at most `RECENT_EVENTS`), redacted, oldest first."""
    return _RECENT.snapshot()


def journal_field_name(key: str) -> str:
    """The journald field for an event key: `[A-Z0-9_]`, never one of journald's own."""
    name = _FIELD_CHARS.sub("_", key.upper()).lstrip("_")
    if not name or name[0].isdigit() or name in _JOURNAL_RESERVED:
        name = f"SMSAGENT_{name}"
    return name[:64]


def _journal_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, default=str, ensure_ascii=False, sort_keys=True)


def render_journal(_: WrappedLogger, method_name: str, event_dict: EventDict) -> dict[str, str]:
    """Processor: the journald fields of one event (MESSAGE, PRIORITY, upper-case context).

    MESSAGE reads like a console line: the event name, then `key=value` pairs, then the
    traceback on the following lines.
    """
    level = str(event_dict.get("level", method_name))
    fields = {
        journal_field_name(str(key)): _journal_value(value)
        for key, value in event_dict.items()
        if key not in _NOT_JOURNAL_FIELDS and value is not None
    }
    pairs = " ".join(
        f"{key}={_journal_value(value)}"
        for key, value in event_dict.items()
        if key not in _NOT_JOURNAL_FIELDS
    )
    message = " ".join(part for part in (str(event_dict.get("event", "")), pairs) if part)
    if event_dict.get("exception"):
        message = f"{message}\n{event_dict['exception']}"
    fields["MESSAGE"] = message
    fields["PRIORITY"] = str(_PRIORITIES.get(level, 6))
    fields["SYSLOG_IDENTIFIER"] = SYSLOG_IDENTIFIER
    return fields


class JournalLogger:
    """A structlog logger that hands each event's fields to journald's `send`."""

    def __init__(self, send: Callable[..., Any]) -> None:
        self._send = send

    def msg(self, **fields: str) -> None:
        """Send one entry."""
        self._send(**fields)

    log = debug = info = warning = warn = error = critical = exception = fatal = msg


def _journal_sender() -> Optional[Callable[..., Any]]:
    """systemd-python's `journal.send`, else our own native-protocol socket, else None."""
    try:
        import systemd.journal as journal
    except ImportError:
        return JournalSocket().send if JournalSocket.available() else None
    send: Callable[..., Any] = journal.send
    return send


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        # Tracebacks become text here so that redaction sees them.
        structlog.processors.format_exc_info,
        redact_secrets,
        _RECENT,
    ]


def _level_number(log_level: str) -> int:
    number = logging.getLevelName(log_level.upper())
    if not isinstance(number, int):
        raise ValueError(f"unknown log level {log_level!r}")
    return number


def _output(log_format: str, out: TextIO) -> tuple[Processor, Callable[..., WrappedLogger], bool]:
    """The renderer and logger factory for a format, and whether journald was wanted but absent."""
    chosen = log_format
    if chosen == "auto":
        chosen = _automatic_format(out)
    if chosen == "journal":
        send = _journal_sender()
        if send is not None:
            return render_journal, _JournalLoggerFactory(send), False
    renderer: Processor
    if chosen == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
    else:
        renderer = structlog.processors.JSONRenderer(default=str, ensure_ascii=False)
    return renderer, structlog.WriteLoggerFactory(file=out), chosen == "journal"


def _automatic_format(out: TextIO) -> str:
    """journal when `out` is the stream systemd connected to the journal, console on a
    terminal, JSON otherwise."""
    try:
        fd = out.fileno()
    except (AttributeError, OSError, ValueError):
        fd = -1
    if fd >= 0 and stream_is_journal(fd, os.environ.get("JOURNAL_STREAM")):
        return "journal"
    return "console" if out.isatty() else "json"


class _JournalLoggerFactory:
    def __init__(self, send: Callable[..., Any]) -> None:
        self._send = send

    def __call__(self, *_: Any) -> JournalLogger:
        return JournalLogger(self._send)


def configure(
    log_format: str,
    log_level: str,
    stream: Optional[TextIO] = None,
    *,
    cache_loggers: bool = True,
) -> None:
    """Set up structlog once for the process.

    Args:
        log_format: `auto` (journal when standard error is systemd's journal stream, console
            on a tty, else JSON), `console`, `json`, or `journal` (journald through
            systemd-python, else its native socket; JSON on `stream` when there is no journald).
        log_level: `debug`, `info`, `warning` or `error`.
        stream: where console and JSON lines go (default: standard error).
        cache_loggers: cache bound loggers on first use; tests turn it off to reconfigure.
    """
    renderer, factory, journal_missing = _output(
        log_format, sys.stderr if stream is None else stream
    )
    structlog.configure(
        processors=[*_shared_processors(), renderer],
        wrapper_class=structlog.make_filtering_bound_logger(_level_number(log_level)),
        logger_factory=factory,
        cache_logger_on_first_use=cache_loggers,
    )
    if journal_missing:
        structlog.get_logger().warning("journal_unavailable", fallback="json")


@contextmanager
def task_context(task_id: str, command: str, stage: Optional[str] = None) -> Iterator[None]:
    """Bind `task_id`, `command` and `stage` to every line logged inside the block."""
    with structlog.contextvars.bound_contextvars(task_id=task_id, command=command, stage=stage):
        yield


def bind_task_context(task_id: str, command: str, stage: Optional[str] = None) -> None:
    """Bind `task_id`, `command` and `stage` for the rest of the current context (asyncio task)."""
    structlog.contextvars.bind_contextvars(task_id=task_id, command=command, stage=stage)


def bind_stage(stage: Optional[str]) -> None:
    """Change the `stage` bound to later lines of the current task."""
    structlog.contextvars.bind_contextvars(stage=stage)
