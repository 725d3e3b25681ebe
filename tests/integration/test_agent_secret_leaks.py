"""The suite's secret-leak check can fail: an inner pytest session with the suite's own hook,
whose tests leak a registered secret in each way the check watches, fails and names them
without printing the secret."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import secrets

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[2]

INNER_TESTS = '''
import logging
import os
from pathlib import Path

import pytest

from tests.support import secrets

SECRET = os.environ["INNER_SECRET"]


class Carrier:
    """Looks like an emulator process to the check: a secret `sk` and a `log_path`."""

    def __init__(self, workdir: Path) -> None:
        self.sk = SECRET
        self.log_path = workdir / "carrier.log"


@pytest.fixture
def carrier(tmp_path):
    return Carrier(tmp_path)


def test_quiet():
    secrets.register(SECRET)
    print("nothing secret here")


def test_prints():
    secrets.register(SECRET)
    print(f"the key is {SECRET}")


def test_logs():
    secrets.register(SECRET)
    logging.getLogger("inner").warning("signing with %s", SECRET)


def test_fails_showing_it():
    secrets.register(SECRET)
    assert SECRET == "something else"


def test_child_log(tmp_path):
    secrets.register(SECRET)
    log = secrets.register_file(tmp_path / "child.log")
    log.write_text(f"a child wrote {SECRET}\\n")


def test_unregistered_fixture_secret(carrier):
    print(f"sk={carrier.sk}")


def test_fixture_log_file(carrier):
    carrier.log_path.write_text(f"sk={carrier.sk}\\n")
'''


@pytest.fixture
def inner_session(tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], str]:
    """Run the inner session once; returns its result and the secret it leaked."""
    inner = tmp_path / "inner"
    inner.mkdir()
    shutil.copy(REPO / "tests" / "conftest.py", inner / "conftest.py")
    (inner / "test_inner.py").write_text(INNER_TESTS)
    # Known to this process only through the inner session's output: never registered here, so
    # the outer check stays quiet even if that output were shown.
    secret = "inner-" + os.urandom(16).hex()
    env = {**os.environ, "INNER_SECRET": secret, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-rA", "-p", "no:cacheprovider", "-p", "no:asyncio"],
        cwd=inner,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    return result, secret


def outcome_lines(output: str) -> dict[str, str]:
    """`test name -> PASSED | FAILED | ERROR` from the `-rA` short summary."""
    outcomes: dict[str, str] = {}
    for line in output.splitlines():
        word, _, rest = line.partition(" ")
        if word in ("PASSED", "FAILED", "ERROR") and "::" in rest:
            name = rest.split("::", 1)[1].split(" ", 1)[0]
            outcomes.setdefault(name, word)
            if word == "ERROR":
                outcomes[name] = word
    return outcomes


def leak_summary(output: str) -> str:
    """The lines of the check's own section of the terminal summary."""
    after = output.split(" secret leaks ", 1)[1].split("\n", 1)[1]
    return after.split("\n=", 1)[0]


class TestLeakCheck:
    def test_the_inner_session_fails(
        self, inner_session: tuple[subprocess.CompletedProcess[str], str]
    ) -> None:
        """A session in which any test leaked a secret exits with failures."""
        result, _ = inner_session
        assert result.returncode == pytest.ExitCode.TESTS_FAILED

    def test_each_leak_fails_its_test(
        self, inner_session: tuple[subprocess.CompletedProcess[str], str]
    ) -> None:
        """Printing, logging, a failure message, a registered log file and a fixture's secret
        each fail the test that leaked; the quiet test passes."""
        result, _ = inner_session
        assert outcome_lines(result.stdout) == {
            "test_quiet": "PASSED",
            "test_prints": "FAILED",
            "test_logs": "FAILED",
            "test_fails_showing_it": "FAILED",
            "test_child_log": "ERROR",
            "test_unregistered_fixture_secret": "FAILED",
            "test_fixture_log_file": "ERROR",
        }

    def test_the_report_names_tests_not_the_secret(
        self, inner_session: tuple[subprocess.CompletedProcess[str], str]
    ) -> None:
        """The summary names each leaking test and where the secret was; the secret itself
        appears nowhere in the session's output."""
        result, secret = inner_session
        assert secret not in result.stdout + result.stderr
        summary = leak_summary(result.stdout)
        assert "test_inner.py::test_prints: section 'Captured stdout call'" in summary
        assert "test_inner.py::test_logs: section 'Captured log call'" in summary
        assert "test_inner.py::test_fails_showing_it: failure text" in summary
        assert "test_inner.py::test_child_log: file child.log" in summary
        assert "test_inner.py::test_fixture_log_file: file carrier.log" in summary
        assert "test_quiet" not in summary


def test_new_secrets_are_registered() -> None:
    """A secret made for a test is registered, and short values are refused as too easy to
    find by chance in ordinary output."""
    value = secrets.new_secret("sk-")
    assert value in secrets.registered()
    assert secrets.count_in(f"x{value}x") == 1
    assert secrets.scrub(f"k={value}") == "k=[secret]"
    with pytest.raises(ValueError, match="at least 8"):
        secrets.register("short")
