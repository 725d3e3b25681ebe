"""Secrets the tests hand out, and the check that none of them reaches any test output.

Tests and helpers make their secrets with `new_secret()` or `register()` them, and `register_file()`
the logs their child processes write. `LeakCheck` (a pytest plugin, registered in
`tests/conftest.py`) searches every test's report (captured stdout, stderr and log, the failure
text) and the files registered while it ran for any registered secret. A test that leaked
fails, with its failure text scrubbed; the report says where the secret was, never what it was.

Fixture values that carry secrets (an emulator process's `sk` and `token`, its `log_path`) are
registered when their test is reported, so tests that never call `register()` are covered too.
"""

from __future__ import annotations

import secrets as random_secrets
import threading
from collections.abc import Generator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest

MIN_LENGTH: Final = 8
SCRUBBED: Final = "[secret]"
SECRET_ATTRIBUTES: Final = ("sk", "token", "iam_password")
LOG_ATTRIBUTES: Final = ("log_path",)

_lock = threading.Lock()
_values: set[str] = set()
_files: list[Path] = []


def register(value: str) -> str:
    """Remember `value` as a secret that no output may contain; returns it.

    Raises:
        ValueError: the value is too short to search for without false alarms.
    """
    if len(value) < MIN_LENGTH:
        raise ValueError(f"a test secret needs at least {MIN_LENGTH} characters")
    with _lock:
        _values.add(value)
    return value


def new_secret(prefix: str = "") -> str:
    """A fresh random secret, registered."""
    return register(prefix + random_secrets.token_urlsafe(24))


def register_file(path: Path) -> Path:
    """Search `path` (a log a helper writes) when the current test is reported; returns it."""
    with _lock:
        if path not in _files:
            _files.append(path)
    return path


def registered() -> frozenset[str]:
    """Every registered secret."""
    with _lock:
        return frozenset(_values)


def count_in(text: str) -> int:
    """How many registered secrets occur in `text`."""
    return sum(1 for value in registered() if value in text)


def scrub(text: str) -> str:
    """`text` with every registered secret replaced."""
    for value in sorted(registered(), key=len, reverse=True):
        text = text.replace(value, SCRUBBED)
    return text


def register_carriers(values: Iterable[Any]) -> None:
    """Register the secrets and logs of objects that carry them (e.g. `EmulatorProcess`), and of
    the processes a factory fixture started."""
    for value in values:
        started = getattr(value, "_processes", ())
        for carrier in (value, *(started if isinstance(started, list) else ())):
            _register_attributes(carrier)


def _register_attributes(carrier: Any) -> None:
    for name in SECRET_ATTRIBUTES:
        secret = getattr(carrier, name, None)
        if isinstance(secret, str) and len(secret) >= MIN_LENGTH:
            register(secret)
    for name in LOG_ATTRIBUTES:
        path = getattr(carrier, name, None)
        if isinstance(path, Path):
            register_file(path)


def _take_files() -> list[Path]:
    with _lock:
        taken = list(_files)
        _files.clear()
    return taken


def _files_with_secrets(paths: Iterable[Path]) -> list[str]:
    found = []
    for path in paths:
        try:
            text = path.read_text(errors="replace")
        except FileNotFoundError:
            continue
        if count_in(text):
            found.append(f"file {path.name} ({path.parent.name}/)")
    return found


@dataclass(frozen=True)
class Leak:
    """A test whose output held a registered secret, and where."""

    nodeid: str
    where: tuple[str, ...]


def _report_leaks(report: pytest.TestReport) -> list[str]:
    # A report carries the sections of the phases before it too; each is checked in its own.
    where = [
        f"section {title!r}"
        for title, content in report.sections
        if title.rsplit(" ", 1)[-1] == report.when and count_in(content)
    ]
    if report.longrepr is not None and count_in(report.longreprtext):
        where.append("failure text")
    return where


class LeakCheck:
    """The pytest plugin: fails a test whose report or logs hold a registered secret."""

    def __init__(self) -> None:
        self.leaks: list[Leak] = []

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, Any, None]:
        outcome = yield
        report: pytest.TestReport = outcome.get_result()
        register_carriers(getattr(item, "funcargs", {}).values())
        where = _report_leaks(report)
        if report.when == "teardown":
            where += _files_with_secrets(_take_files())
        if where:
            self._fail(report, where)

    def _fail(self, report: pytest.TestReport, where: list[str]) -> None:
        self.leaks.append(Leak(report.nodeid, tuple(where)))
        earlier = scrub(report.longreprtext) if report.longrepr is not None else ""
        report.sections = [(title, scrub(content)) for title, content in report.sections]
        message = f"a registered secret leaked ({report.when}): in {', '.join(where)}"
        report.longrepr = f"{earlier}\n{message}" if earlier else message
        report.outcome = "failed"

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        where = _files_with_secrets(_take_files())
        if where:
            self.leaks.append(Leak("(session)", tuple(where)))
        if self.leaks:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.leaks:
            return
        terminalreporter.section("secret leaks", sep="=", red=True, bold=True)
        for leak in self.leaks:
            terminalreporter.line(f"{leak.nodeid}: {', '.join(leak.where)}")
