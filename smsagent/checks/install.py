"""Checks of the installation: who may read the env file, whether the state dir is usable and
private, and the handlers.

What stops `smsagent run` comes from `local_preflight`, the verdict `run` itself stops on, and
is shown as an ERROR with `run`'s sentence."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Final, Optional

from pydantic import JsonValue

from smsagent.agent.health import agent_running, read_health
from smsagent.agent.preflight import HANDLERS, STATE_DIR, Blocker, LocalPreflight
from smsagent.checks.model import Check, blocker_check

ENV_FILE: Final = "env_file"
AGENT: Final = "agent"
AGENT_FAULT: Final = "SMSAGENT.AGENT_FAULT"

INSECURE_FILE: Final = "SMSAGENT.FILE_MODE"

ROOT_UID: Final = 0
PRIVATE_MODE_BITS: Final = 0o077


def permission_problems(mode: int, uid: int, *, what: str) -> list[str]:
    """What is wrong with a private file's or directory's owner and mode bits (empty: nothing).

    Args:
        mode: `st_mode`.
        uid: `st_uid`.
        what: how the path reads in a message, e.g. `the env file`.
    """
    problems = []
    bits = stat.S_IMODE(mode)
    if bits & stat.S_IROTH:
        problems.append(f"{what} is readable by others (mode {bits:04o})")
    elif bits & PRIVATE_MODE_BITS:
        problems.append(f"{what} is open to its group or others (mode {bits:04o})")
    if uid != ROOT_UID:
        problems.append(f"{what} is owned by uid {uid}, not root")
    return problems


def private_path_check(
    name: str, path: Path, stat_result: os.stat_result, *, what: str, fix: str
) -> Check:
    """OK when only root can use `path`, else WARN listing what is wrong and how to fix it."""
    problems = permission_problems(stat_result.st_mode, stat_result.st_uid, what=what)
    mode = f"{stat.S_IMODE(stat_result.st_mode):04o}"
    if problems:
        reason = f"{'; '.join(problems)}: {fix}"
        return Check.warn(name, reason, INSECURE_FILE, path=str(path), mode=mode)
    return Check.ok(name, f"{path} belongs to root, mode {mode}", path=str(path), mode=mode)


def env_file_check(env_file: Optional[Path]) -> Check:
    """The env file holds the credentials: only root may read it."""
    if env_file is None:
        return Check.ok(ENV_FILE, "no env file; the settings come from the environment")
    try:
        stat_result = env_file.stat()
    except OSError as exc:
        return Check.error(ENV_FILE, f"cannot read {env_file}: {exc.strerror}", INSECURE_FILE)
    fix = f"chown root:root {env_file} && chmod 0600 {env_file}"
    return private_path_check(ENV_FILE, env_file, stat_result, what="the env file", fix=fix)


def _blocker_of(preflight: LocalPreflight, name: str) -> Optional[Blocker]:
    return next((b for b in preflight.blockers if b.check == name), None)


def state_dir_check(preflight: LocalPreflight) -> Check:
    """The state dir must take the agent's writes: ERROR with the sentence `smsagent run` stops
    on. It holds task keys, so only root may enter it: WARN otherwise, and for documents the
    agent will quarantine."""
    verdict = preflight.state_dir
    state_dir = verdict.path
    blocker = _blocker_of(preflight, STATE_DIR)
    if blocker is not None:
        return blocker_check(blocker, path=str(state_dir))
    if not verdict.exists:
        return Check.ok(STATE_DIR, f"{state_dir} does not exist yet; the agent creates it 0700")
    try:
        stat_result = state_dir.stat()
    except OSError as exc:  # removed since the verdict: report it as the verdict would
        return Check.error(STATE_DIR, f"cannot read {state_dir}: {exc.strerror}", INSECURE_FILE)
    mode = f"{stat.S_IMODE(stat_result.st_mode):04o}"
    problems = permission_problems(stat_result.st_mode, stat_result.st_uid, what="the state dir")
    reasons = list(verdict.document_warnings)
    if problems:
        fix = f"chown root:root {state_dir} && chmod 0700 {state_dir}"
        reasons.insert(0, f"{'; '.join(problems)}: {fix}")
    if reasons:
        code = INSECURE_FILE if problems else verdict.error_code
        return Check.warn(STATE_DIR, "; ".join(reasons), code, path=str(state_dir), mode=mode)
    reason = f"{state_dir} belongs to root, mode {mode}, writable"
    return Check.ok(STATE_DIR, reason, path=str(state_dir), mode=mode)


def agent_check(state_dir: Path) -> Check:
    """What the agent says of itself in `health.json`: ERROR while a running agent reports a
    fault (its state directory full, a part of it crashed), WARN for the fault the last run
    ended with. Whether it runs is the lock it holds on the file, not its pid."""
    health = read_health(state_dir)
    if health is None:
        return Check.ok(AGENT, "no agent has run with this state directory")
    pid, fault = health.get("pid"), health.get("fault")
    running = agent_running(state_dir) is True
    shown = f" (pid {pid})" if isinstance(pid, int) else ""
    if isinstance(fault, str) and running:
        return Check.error(AGENT, f"the running agent{shown} reports: {fault}", AGENT_FAULT)
    if isinstance(fault, str):
        return Check.warn(AGENT, f"the last agent run ended with: {fault}", AGENT_FAULT)
    if running:
        return Check.ok(AGENT, f"the agent runs{shown} and reports no fault")
    return Check.ok(AGENT, "no agent runs; the last one reported no fault")


def handlers_check(preflight: LocalPreflight) -> Check:
    """Every handler loads, and each command the agent needs has one."""
    blocker = _blocker_of(preflight, HANDLERS)
    if blocker is not None:
        return blocker_check(blocker)
    registry = preflight.registry
    if registry is None:  # handlers that do not load are always a blocker
        raise AssertionError("handlers missing without a blocker")
    loaded: list[JsonValue] = [
        f"{info.name} ({info.distribution} {info.version})" for info in registry.infos
    ]
    reason = f"{len(loaded)} handlers loaded"
    if registry.disabled:
        reason += f", disabled: {', '.join(registry.disabled)}"
    return Check.ok(HANDLERS, reason, handlers=loaded)


def install_checks(env_file: Optional[Path], preflight: LocalPreflight) -> list[Check]:
    """The env file, the state dir, what a running agent reports, and the handlers."""
    return [
        env_file_check(env_file),
        state_dir_check(preflight),
        agent_check(preflight.state_dir.path),
        handlers_check(preflight),
    ]
