"""`smsagent status`: what the agent is doing, read from the state directory alone.

It works while the agent runs, after it stopped, and with a broken env file: it needs only the
state directory (`--state-dir`, else `SMSAGENT_STATE_DIR` from the environment or the env file,
else the default). It never writes to the state directory.

It says only what it knows, with its age: whether an agent runs comes from the lock a running
agent holds on `health.json` and, under systemd, from the unit's state; the times of the last
good poll and the last error come from `connection.json`, which a running agent writes at most
once a minute (and when it stops); what it cannot tell is shown as "unknown".
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Final, Optional

from smsagent.agent.health import HEALTH_FILE, agent_running, read_health
from smsagent.agent.store import AGENT, CONNECTION, TASK, Document, Record, Store
from smsagent.config import DEFAULT_ENV_FILE, ConfigError, read_env_file

DEFAULT_STATE_DIR: Final = Path("/var/lib/smsagent")
UNIT: Final = "smsagent.service"
OUTBOX_DIR: Final = "outbox"
UNKNOWN: Final = "unknown"
# systemd states in which the unit's process is there (starting, running or stopping).
UNIT_UP: Final = frozenset({"active", "activating", "reloading", "deactivating"})
# How often a running agent writes `connection.json` at most (ConnectionTracker).
CONNECTION_WRITE_PERIOD_S: Final = 60


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smsagent status",
        description="What the agent is doing, read from the state directory alone.",
    )
    parser.add_argument("--state-dir", type=Path, help="state directory to read")
    parser.add_argument("--env-file", type=Path, help=f"env file (default {DEFAULT_ENV_FILE})")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def find_state_dir(
    state_dir: Optional[Path], env_file: Optional[Path], environ: Mapping[str, str]
) -> Path:
    """The state directory: the flag, else the environment, else the env file, else default."""
    if state_dir is not None:
        return state_dir
    if environ.get("SMSAGENT_STATE_DIR"):
        return Path(environ["SMSAGENT_STATE_DIR"])
    path = env_file or DEFAULT_ENV_FILE
    try:
        value = read_env_file(path).get("SMSAGENT_STATE_DIR") if path.is_file() else None
    except ConfigError:
        # `status` must work with a broken env file: `run` and `check` name the fault.
        value = None
    return Path(value) if value else DEFAULT_STATE_DIR


def _load(store: Store, document: Document[Any]) -> tuple[Optional[Record], bool]:
    """A document without side effects, and whether its content is known: an absent document
    is known to be empty, an unreadable one is unknown; neither is moved."""
    path = store.path(document)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None, True
    except OSError:
        return None, False
    try:
        return document.model.model_validate_json(data), True
    except ValueError:
        return None, False


def outbox_depth(state_dir: Path) -> Optional[int]:
    """Results written and not yet accepted by the server; None when it cannot be read."""
    try:
        return sum(1 for _ in (state_dir / OUTBOX_DIR).glob("[0-9]*.json"))
    except OSError:
        return None


def unit_state() -> Optional[str]:
    """`systemctl is-active smsagent.service`, or None without systemd."""
    systemctl = shutil.which("systemctl")
    if systemctl is None or not Path("/run/systemd/system").is_dir():
        return None
    try:
        done = subprocess.run(
            [systemctl, "is-active", UNIT],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"},
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None


def is_running(holds_lock: Optional[bool], unit: Optional[str]) -> Optional[bool]:
    """Whether an agent runs: the lock when it can be tested, else what the unit says.

    Args:
        holds_lock: `agent_running` of the state directory.
        unit: `unit_state()`, None without systemd.
    """
    if holds_lock is not None:
        if not holds_lock and unit in UNIT_UP:
            return None  # starting, or running with another state directory
        return holds_lock
    return True if unit == "active" else None


def collect(state_dir: Path) -> dict[str, Any]:
    """Everything `status` shows, as plain JSON values (None where it is unknown)."""
    store = Store(state_dir)
    (agent, _), (connection, connection_known), (task, _) = (
        _load(store, doc) for doc in (AGENT, CONNECTION, TASK)
    )
    health = read_health(state_dir) or {}
    unit = unit_state()
    running = is_running(agent_running(state_dir), unit)
    readable = state_dir.is_dir() and os.access(state_dir, os.R_OK | os.X_OK)
    report: dict[str, Any] = {
        "state_dir": str(state_dir),
        "state_dir_exists": state_dir.exists(),
        "state_dir_readable": readable,
        "agent_running": running,
        "agent_pid": health.get("pid") if running else None,
        "agent_started_at": health.get("started_at"),
        "agent_stopped_at": health.get("stopped_at"),
        "unit": unit,
        "server_id": getattr(agent, "server_id", None),
        "endpoint": getattr(agent, "endpoint", None),
        "registered_at": getattr(agent, "registered_at", None),
        "connection_known": connection_known,
        "connection_recorded_at": getattr(connection, "updated_at", None) or None,
        "last_ok_at": getattr(connection, "last_ok_at", None),
        "last_error_at": getattr(connection, "last_error_at", None),
        "last_error": getattr(connection, "last_error", None),
        "consecutive_errors": getattr(connection, "consecutive_errors", None),
        "task": None,
        "outbox_depth": outbox_depth(state_dir),
        "fault": health.get("fault"),
        "fault_since": health.get("fault_since"),
    }
    if task is not None:
        record = task.model_dump(mode="json")
        stage = record.get("stage")
        progress = record.get("stages", {}).get(stage, {}) if stage else {}
        report["task"] = {
            "task_id": record["task_id"],
            "task_type": record.get("task_type"),
            "state": record["state"],
            "stage": stage,
            "bytes_done": progress.get("bytes_done"),
            "bytes_total": progress.get("bytes_total"),
            "error_code": record.get("error_code"),
            "message": record.get("message"),
            "updated_at": record.get("updated_at"),
        }
    return report


def _when(epoch_s: Any, now_s: float) -> str:
    if not isinstance(epoch_s, (int, float)):
        return "never"
    stamp = datetime.fromtimestamp(epoch_s, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"{stamp} ({max(now_s - epoch_s, 0):.0f} s ago)"


def _fault(report: Mapping[str, Any], now_s: float) -> str:
    fault = report.get("fault")
    if not fault:
        return "none"
    since = report.get("fault_since")
    return f"{fault} (since {_when(since, now_s)})" if isinstance(since, float) else str(fault)


def _agent(report: Mapping[str, Any], now_s: float) -> str:
    running = report["agent_running"]
    if running is None:
        if report["unit"] in UNIT_UP:
            return (
                f"{UNKNOWN}: {UNIT} is {report['unit']}, but no agent holds "
                f"{Path(report['state_dir']) / HEALTH_FILE}"
            )
        return f"{UNKNOWN}: cannot read {Path(report['state_dir']) / HEALTH_FILE}"
    if running:
        pid = report["agent_pid"]
        since = report["agent_started_at"]
        return (
            f"running{f' (pid {pid})' if pid else ''}, started {_when(since, now_s)}"
            if since
            else "running"
        )
    stopped = report["agent_stopped_at"]
    if report["agent_started_at"] is None:
        return "not running; no agent has run with this state directory"
    if stopped is None or stopped < report["agent_started_at"]:
        return "not running; the last one ended without stopping (killed or crashed)"
    return f"not running; the last one stopped {_when(stopped, now_s)}"


def _connection(report: Mapping[str, Any]) -> str:
    running = report["agent_running"]
    if running is False:
        return "none: no agent runs"
    if running is None or not report["connection_known"]:
        return UNKNOWN
    errors = report["consecutive_errors"] or 0
    if report["last_ok_at"] is None and not errors:
        return "no poll recorded yet"
    return "ok" if not errors else f"failing ({errors} errors in a row)"


def _last_poll(report: Mapping[str, Any], now_s: float) -> str:
    if not report["connection_known"]:
        return UNKNOWN
    shown = _when(report["last_ok_at"], now_s)
    if report["agent_running"] is not False and report["last_ok_at"] is not None:
        # The record may lag the agent's latest poll by up to its write period.
        return f"{shown} or later (recorded at most every {CONNECTION_WRITE_PERIOD_S} s)"
    return shown


def _last_error(report: Mapping[str, Any], now_s: float) -> str:
    if not report["connection_known"]:
        return UNKNOWN
    if report["last_error_at"] is None:
        return "none"
    return f"{_when(report['last_error_at'], now_s)}: {report['last_error'] or 'no detail'}"


def render(report: Mapping[str, Any], now_s: float) -> str:
    """The report as aligned `name: value` lines for a terminal."""
    lines = [
        ("agent", _agent(report, now_s)),
        ("service", report["unit"] or "not under systemd"),
        ("server id", report["server_id"] or "not registered"),
        ("endpoint", report["endpoint"] or "-"),
        ("connection", _connection(report)),
        ("last good poll", _last_poll(report, now_s)),
        ("last error", _last_error(report, now_s)),
        ("fault", _fault(report, now_s)),
    ]
    task = report["task"]
    if task is None:
        lines.append(("task", "none"))
    else:
        lines.append(("task", f"{task['task_id']} ({task['task_type'] or 'type unknown'})"))
        lines.append(("task state", task["state"]))
        if task["stage"]:
            done, total = task["bytes_done"] or 0, task["bytes_total"] or 0
            share = f", {100 * done // total} % of {total} bytes" if total else ""
            lines.append(("stage", f"{task['stage']}{share}"))
        if task["error_code"] or task["message"]:
            lines.append(("detail", f"{task['error_code'] or ''} {task['message'] or ''}".strip()))
    owed = report["outbox_depth"]
    lines.append(("results owed", UNKNOWN if owed is None else str(owed)))
    width = max(len(name) for name, _ in lines)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in lines)


def unreadable(report: Mapping[str, Any]) -> Optional[str]:
    """One line when the state directory cannot be read at all, else None."""
    state_dir = report["state_dir"]
    if not report["state_dir_exists"]:
        return f"state directory {state_dir} does not exist: no agent has run with it"
    if not report["state_dir_readable"]:
        return f"state directory {state_dir} cannot be read (run as root, or see its mode)"
    return None


def main(argv: Sequence[str]) -> int:
    """Print the status; 0 when the state directory is readable, 1 when it is not."""
    args = _parser().parse_args(list(argv))
    state_dir = find_state_dir(args.state_dir, args.env_file, os.environ)
    report = collect(state_dir)
    problem = unreadable(report)
    if args.json:
        print(json.dumps(report, sort_keys=True))
    elif problem is None:
        print(render(report, time.time()))
    if problem is not None:
        print(f"smsagent: {problem}", file=sys.stderr)
        return 1
    return 0
