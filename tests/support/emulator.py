"""`smsagent emulator` as a real child process on a free loopback port, and calls to drive it.

    process = EmulatorProcess(tmp_path).start(command_delivery="repeat", seed=7)
    task_id = process.create_task(source_id)
    process.action(task_id, "start")
    process.wait_for(lambda s: s["command_results"], timeout_s=10)
    process.stop()

Flags are keyword arguments named like the flags (`redeliver_after=2` is `--redeliver-after 2`;
`True` adds a bare flag, `None`/`False` leave it out). Admin calls go to `/_emulator/` (unsigned,
never faulted); `request()` calls the SMS endpoints with the process's token.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

from smsagent.api.signing import sign

START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0
POLL_INTERVAL_S = 0.05
HTTP_TIMEOUT_S = 10.0
START_ATTEMPTS = 3  # a port picked free can be taken before the child binds it

T = TypeVar("T")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def flag_args(flags: Mapping[str, Any]) -> list[str]:
    """`{"command_delivery": "repeat", "expire_tokens": True}` -> `--command-delivery repeat`..."""
    args: list[str] = []
    for name, value in flags.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            args.append(flag)
        elif value is not None and value is not False:
            # `--flag=value`: a value starting with "-" (a random token can) stays a value.
            args.append(f"{flag}={value}")
    return args


class AdminError(Exception):
    """An emulator call answered with an error status."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body


class HttpAnswer:
    """Status, headers and body of one plain HTTP call."""

    def __init__(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        self.status = status
        self.headers = dict(headers)
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"HttpAnswer({self.status}, {self.body[:200]!r})"


class EmulatorProcess:
    """One `smsagent emulator` child process and the calls a test drives it with.

    Args:
        workdir: where the process's output log goes (and any state file the test asks for).
        ak: the access key the emulator accepts; `sk` and `token` default to random values.
        ca_file: the certificate to trust when the process serves TLS (`tls_cert`/`tls_key`).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        ak: str = "EMULATORTESTAK000001",
        sk: Optional[str] = None,
        token: Optional[str] = None,
        ca_file: Optional[Path] = None,
    ) -> None:
        self.workdir = workdir
        self.ak = ak
        self.sk = sk or secrets.token_hex(20)
        self.token = token or secrets.token_urlsafe(24)
        self.port = 0
        self.flags: dict[str, Any] = {}
        self.log_path = workdir / "emulator.log"
        self._ssl = ssl.create_default_context(cafile=str(ca_file)) if ca_file else None
        self._process: Optional[subprocess.Popen[bytes]] = None

    @property
    def url(self) -> str:
        """The base URL of the SMS endpoints, e.g. `http://127.0.0.1:41234`."""
        scheme = "https" if self.flags.get("tls_cert") else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def agent_env(self, *, token: bool = False) -> dict[str, str]:
        """`SMSAGENT_*` variables that point an agent at this emulator (AK/SK, or the token)."""
        env = {"SMSAGENT_ENDPOINT": self.url}
        if token:
            env["SMSAGENT_TOKEN"] = self.token
        else:
            env.update(SMSAGENT_AK=self.ak, SMSAGENT_SK=self.sk)
        return env

    # --- lifecycle ---

    def start(self, **flags: Any) -> EmulatorProcess:
        """Start the process with these flags and wait until it answers."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.flags = dict(flags)
        for attempt in range(START_ATTEMPTS):
            self.port = free_port()
            if self._launch_and_wait():
                return self
            if (
                "address already in use" not in self.log_text().lower()
                or attempt == START_ATTEMPTS - 1
            ):
                break
        msg = f"smsagent emulator did not start:\n{self.log_text()}"
        raise RuntimeError(msg)

    def restart(self) -> EmulatorProcess:
        """Stop the process and start it again on the same port with the same flags."""
        self.stop()
        if not self._launch_and_wait():
            raise RuntimeError(f"smsagent emulator did not restart:\n{self.log_text()}")
        return self

    def stop(self) -> Optional[int]:
        """SIGTERM, then SIGKILL after a grace period; returns the exit code."""
        process, self._process = self._process, None
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                return process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
        return process.wait()

    def log_text(self) -> str:
        """What the process printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @contextlib.contextmanager
    def started(self, **flags: Any) -> Iterator[EmulatorProcess]:
        """Start, yield, and always stop."""
        try:
            yield self.start(**flags)
        finally:
            self.stop()

    def _command(self) -> list[str]:
        base = {"bind": "127.0.0.1", "port": self.port, "ak": self.ak, "sk": self.sk}
        base["token"] = self.token
        return [sys.executable, "-m", "smsagent", "emulator", *flag_args({**base, **self.flags})]

    def _launch_and_wait(self) -> bool:
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self._process = None
                return False
            with contextlib.suppress(OSError, AdminError):
                self.admin("GET", "/health")
                return True
            time.sleep(POLL_INTERVAL_S)
        self.stop()
        return False

    # --- plain HTTP ---

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        headers: Optional[Mapping[str, str]] = None,
        raw: Optional[bytes] = None,
        with_token: bool = True,
    ) -> HttpAnswer:
        """Call an SMS endpoint with the token; `raw` sends bytes as they are, `body` as JSON."""
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        sent = {"Content-Type": "application/json"}
        if with_token:
            sent["X-Auth-Token"] = self.token
        sent.update(headers or {})
        call = urllib.request.Request(self.url + path, data=data, method=method, headers=sent)
        try:
            with urllib.request.urlopen(call, timeout=HTTP_TIMEOUT_S, context=self._ssl) as answer:
                return HttpAnswer(answer.status, answer.headers, answer.read())
        except urllib.error.HTTPError as exc:
            return HttpAnswer(exc.code, dict(exc.headers.items()), exc.read())

    def signed_request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: Optional[bytes] = None,
        sdk_date: Optional[str] = None,
        sk: Optional[str] = None,
    ) -> HttpAnswer:
        """Call an SMS endpoint signed with AK/SK (a query in `path` must be in canonical form)."""
        data = raw if raw is not None else b"" if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        headers.update(
            sign(
                ak=self.ak,
                sk=sk or self.sk,
                method=method,
                url=self.url + path,
                headers=headers,
                body=data,
                sdk_date=sdk_date,
            )
        )
        return self.request(method, path, raw=data or None, headers=headers, with_token=False)

    def register_source(self, **fields: Any) -> str:
        """Register a Linux source through `POST /v3/sources`; `fields` override the body."""
        body: dict[str, Any] = {
            "name": "source-01",
            "ip": "192.0.2.10",
            "os_type": "LINUX",
            "os_version": "Debian GNU/Linux 12",
            "agent_version": "0.1.0",
            "networks": [{"name": "eth0", "ip": "192.0.2.10", "mac": "fa:16:3e:00:00:01"}],
        }
        body.update(fields)
        answer = self.request("POST", "/v3/sources", body)
        if answer.status != 200:
            raise AdminError(answer.status, answer.body)
        source_id: str = answer.json()["id"]
        return source_id

    def admin(self, method: str, path: str, body: Any = None) -> Any:
        """Call `/_emulator{path}` and return its JSON; an error status raises `AdminError`."""
        answer = self.request(method, "/_emulator" + path, body, with_token=False)
        payload = answer.json() if answer.body else None
        if answer.status >= 400:
            raise AdminError(answer.status, payload)
        return payload

    # --- admin API ---

    def state(self) -> dict[str, Any]:
        """The state dump (see `smsagent.emulator.admin`)."""
        state: dict[str, Any] = self.admin("GET", "/state")
        return state

    def set_faults(self, **faults: Any) -> dict[str, Any]:
        """Replace the fault settings (`latency_s`, `error_rate`, ...); none given clears them."""
        settings: dict[str, Any] = self.admin("PUT", "/faults", faults)
        return settings

    def reset(self) -> None:
        """Forget all data and request counts; faults back to the start-up flags."""
        self.admin("POST", "/reset")

    def create_task(
        self,
        source_id: str,
        *,
        type: str = "MIGRATE_FILE",
        migration_ip: str = "127.0.0.1",
        syncing: Optional[bool] = None,
        speed_limit: Optional[int] = None,
        **fields: Any,
    ) -> str:
        """Create a Linux task for a registered source, as the console does (`POST /v3/tasks`).

        Region and project fields default to one region; `fields` add to or override the
        CreateTask body (`target_server=...`, `auto_start=True`, ...). Fields CreateTask does
        not take (a plugin task type, plugin fields) are set afterwards with `patch_task`.
        """
        body: dict[str, Any] = {
            "name": f"task-{source_id[:8]}",
            "type": type,
            "os_type": "LINUX",
            "source_server": {"id": source_id},
            "region_name": "ap-southeast-3",
            "region_id": "ap-southeast-3",
            "project_name": "ap-southeast-3",
            "project_id": "0123456789abcdef0123456789abcdef",
            "migration_ip": migration_ip,
            "target_server": {"name": "target", "ip": "127.0.0.1"},
            "syncing": syncing,
            "speed_limit": speed_limit,
        }
        body.update(fields)
        body = {key: value for key, value in body.items() if value is not None}
        task_id: str = self.admin("POST", "/tasks", body)["id"]
        return task_id

    def patch_task(self, task_id: str, **fields: Any) -> dict[str, Any]:
        """Set any task fields (`type="FSCOPY_TEST"`, plugin fields; None removes one).

        Returns the task as ShowTask shows it.
        """
        task: dict[str, Any] = self.admin("PATCH", f"/tasks/{task_id}", fields)
        return task

    def action(self, task_id: str, operation: str) -> None:
        """A console task action (`start`, `stop`, `skip`, `restart`, ...)."""
        self.admin("POST", f"/tasks/{task_id}/action", {"operation": operation})

    def set_cert_key(self, task_id: str, **fields: str) -> None:
        """Set what `GET /v3/tasks/{id}/certkey` answers (`private_key=...`, `passphrase=...`)."""
        self.admin("PUT", f"/tasks/{task_id}/certkey", fields)

    def queue_command(self, source_id: str, command_name: str, **param: str) -> dict[str, Any]:
        """Queue any command for a source, e.g. `queue_command(sid, "UPLOAD_LOG", bucket="b")`."""
        body = {"command_name": command_name, "command_param": param}
        command: dict[str, Any] = self.admin("POST", f"/sources/{source_id}/command", body)
        return command

    def collect_log(self, task_id: str, bucket: str) -> None:
        """The console's CollectLog (`POST /v3/tasks/{id}/log`): UPLOAD_LOG for the task's agent."""
        answer = self.request("POST", f"/v3/tasks/{task_id}/log", {"log_bucket": bucket})
        if answer.status != 200:
            raise AdminError(answer.status, answer.body)

    @property
    def obs_url(self) -> str:
        """The base URL of the object store (started with `obs_port=0`)."""
        url: Optional[str] = self.state().get("obs", {}).get("url")
        if url is None:
            raise RuntimeError("the emulator serves no object store (start it with obs_port=0)")
        return url

    def results(self, source_id: Optional[str] = None) -> list[dict[str, Any]]:
        """The stored command results (redeliveries counted, not repeated), oldest first."""
        return _matching(self.state()["command_results"], "source_id", source_id)

    def changestates(self, source_id: Optional[str] = None) -> list[dict[str, Any]]:
        """The state changes the agents sent, oldest first."""
        return _matching(self.state()["changestates"], "source_id", source_id)

    def progress(self, task_id: Optional[str] = None) -> list[dict[str, Any]]:
        """The progress reports the agents sent, oldest first."""
        return _matching(self.state()["progress"], "task_id", task_id)

    def wait_for(self, predicate: Callable[[dict[str, Any]], T], timeout_s: float = 10.0) -> T:
        """Poll the state until `predicate(state)` is truthy and return that value.

        Raises:
            AssertionError: the deadline passed; the message shows the last state's journals.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            state = self.state()
            value = predicate(state)
            if value:
                return value
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"emulator state not reached in {timeout_s} s: {_brief(state)}"
                )
            time.sleep(POLL_INTERVAL_S)

    async def wait_for_async(
        self, predicate: Callable[[dict[str, Any]], T], timeout_s: float = 10.0
    ) -> T:
        """`wait_for` for async tests: the event loop keeps running while it polls."""
        deadline = time.monotonic() + timeout_s
        while True:
            state = await asyncio.to_thread(self.state)
            value = predicate(state)
            if value:
                return value
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"emulator state not reached in {timeout_s} s: {_brief(state)}"
                )
            await asyncio.sleep(POLL_INTERVAL_S)


def _matching(
    entries: list[dict[str, Any]], field: str, wanted: Optional[str]
) -> list[dict[str, Any]]:
    return [entry for entry in entries if wanted is None or entry[field] == wanted]


def _brief(state: Mapping[str, Any]) -> str:
    keys = ("tasks", "commands", "command_results", "actions", "changestates", "requests")
    return json.dumps({key: state.get(key) for key in keys}, indent=1)[:4000]


class EmulatorFactory:
    """Starts emulator processes with any flags and stops them all at the end of a test."""

    def __init__(self, workdir: Path) -> None:
        self._workdir = workdir
        self._processes: list[EmulatorProcess] = []

    def __call__(self, *, ca_file: Optional[Path] = None, **flags: Any) -> EmulatorProcess:
        process = EmulatorProcess(
            self._workdir / f"emulator-{len(self._processes)}", ca_file=ca_file
        )
        self._processes.append(process)
        return process.start(**flags)

    def stop_all(self) -> None:
        for process in self._processes:
            process.stop()
