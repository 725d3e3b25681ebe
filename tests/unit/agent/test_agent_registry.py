"""The handler registry (entry points, validation, disabling) and the handler boundary."""

from __future__ import annotations

import asyncio
import itertools
from importlib.metadata import Distribution, distribution
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from smsagent import log
from smsagent.agent.handler_api import CommandEnvelope, HandlerOutcome
from smsagent.agent.machine import Action, State
from smsagent.agent.registry import (
    ERROR_HANDLER_FAILED,
    ERROR_NO_HANDLER,
    HandlerLoadError,
    HandlerRegistry,
    invoke,
)
from smsagent.agent.store import Store
from smsagent.agent.work import CancelReason, WorkCancelled
from smsagent.api.enums import CommandName, CommandResult
from smsagent.commands.skip import SkipHandler
from smsagent.commands.stop import StopHandler
from tests.support.agentcore import agent_settings, handler_context, write_distribution

_unique = itertools.count()


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory on sys.path to install hand-made plugin distributions into."""
    path = tmp_path / "site"
    path.mkdir()
    monkeypatch.syspath_prepend(str(path))
    return path


def _module() -> str:
    # Fresh module names per plugin: sys.modules would otherwise serve an earlier test's code.
    return f"smsagent_test_plugin_{next(_unique)}"


def _plugin(
    site: Path, name: str, body: str, entry: str = "plugin", version: str = "1.0"
) -> Distribution:
    module = _module()
    source = (
        "from smsagent.agent.handler_api import HandlerOutcome\n"
        "from smsagent.api.enums import CommandName\n" + body
    )
    return write_distribution(site, name, {entry: f"{module}:Plugin"}, {module: source}, version)


TYPE_HANDLER = """
class Plugin:
    commands = frozenset()
    task_types = frozenset({"ACME_COPY"})
    async def handle(self, ctx, command):
        return HandlerOutcome.success("copied")
"""


def _own() -> list[Distribution]:
    return [distribution("smsagent")]


class TestInstalled:
    def test_builtins_and_the_test_plugin_load(self) -> None:
        """The installed entry points give every built-in and the FSCOPY_TEST plugin."""
        registry = HandlerRegistry.load()
        origins = {info.name: (info.distribution, info.version) for info in registry.infos}
        for name in ("stop", "skip", "delete", "task_not_started", "task_has_stopped"):
            assert origins[name][0] == "smsagent"
        assert origins["fscopy"][0] == "smsagent-fsplugin"
        assert isinstance(registry.for_command(CommandName.STOP), StopHandler)
        assert type(registry.for_task_type("FSCOPY_TEST")).__name__ == "FsCopyHandler"
        assert "FSCOPY_TEST" in registry.task_types
        assert registry.for_task_type("NO_SUCH_TYPE") is None

    def test_resolve_by_action(self) -> None:
        """Work goes to the task type's handler; other actions to the command's handler."""
        registry = HandlerRegistry.load()
        start = CommandEnvelope(CommandName.START, Action.start_task, 1, "t1", "FSCOPY_TEST")
        assert registry.resolve(start) is registry.for_task_type("FSCOPY_TEST")
        skip = CommandEnvelope(CommandName.SKIP, Action.skip_stage, 1, "t1", "FSCOPY_TEST")
        assert isinstance(registry.resolve(skip), SkipHandler)
        unknown = CommandEnvelope(CommandName.START, Action.start_task, 1, "t1", "MIGRATE_WINDOWS")
        assert registry.resolve(unknown) is None

    def test_same_distribution_twice_on_the_path(self) -> None:
        """A distribution found twice loads once."""
        registry = HandlerRegistry.load(dists=_own() + _own())
        assert sorted(info.name for info in registry.infos) == sorted(
            {info.name for info in registry.infos}
        )

    def test_other_distributions_metadata_is_not_read(self) -> None:
        """Only distributions with a handler entry point have their METADATA parsed (the parse
        of every installed package's METADATA would stay in the daemon's memory)."""
        reads: list[str] = []

        class Unrelated(Distribution):
            def read_text(self, filename: str) -> str | None:
                reads.append(filename)
                if filename == "entry_points.txt":
                    return "[console_scripts]\ntool = tool:main\n"
                return None

            def locate_file(self, path: object) -> Path:
                return Path("/nonexistent")

        registry = HandlerRegistry.load(dists=[Unrelated(), *_own()])
        assert reads == ["entry_points.txt"]
        assert registry.for_command(CommandName.STOP) is not None


class TestValidation:
    def test_plugin_for_a_task_type(self, site: Path) -> None:
        """A plugin's task type is served by it, with its distribution and version recorded."""
        dist = _plugin(site, "acme-mover", TYPE_HANDLER, version="2.3")
        registry = HandlerRegistry.load(dists=[*_own(), dist])
        [info] = [i for i in registry.infos if "ACME_COPY" in i.task_types]
        assert (info.name, info.distribution, info.version) == ("plugin", "acme-mover", "2.3")
        assert registry.for_task_type("ACME_COPY") is info.handler

    def test_duplicate_command_names_both(self, site: Path) -> None:
        """A plugin serving STOP clashes with the built-in; the error names both and their
        distributions."""
        body = """
class Plugin:
    commands = frozenset({CommandName.STOP})
    async def handle(self, ctx, command):
        return HandlerOutcome.success()
"""
        dist = _plugin(site, "acme-stopper", body, entry="stopper")
        with pytest.raises(HandlerLoadError) as caught:
            HandlerRegistry.load(dists=[*_own(), dist])
        message = str(caught.value)
        assert "command STOP is served by two handlers" in message
        assert "'stop' (smsagent " in message and "'stopper' (acme-stopper 1.0)" in message

    def test_duplicate_task_type(self, site: Path) -> None:
        """Two plugins for one task type are refused, naming both."""
        first = _plugin(site, "acme-one", TYPE_HANDLER, entry="one")
        second = _plugin(site, "acme-two", TYPE_HANDLER, entry="two")
        with pytest.raises(HandlerLoadError, match="task type ACME_COPY is served by two"):
            HandlerRegistry.load(dists=[*_own(), first, second])

    def test_import_error_names_entry_point_and_distribution(self, site: Path) -> None:
        """A plugin that fails to import stops loading with its name, target and distribution."""
        dist = _plugin(site, "acme-broken", "import does_not_exist_anywhere\n")
        with pytest.raises(HandlerLoadError) as caught:
            HandlerRegistry.load(dists=[*_own(), dist])
        message = str(caught.value)
        assert message.startswith("handler 'plugin' = 'smsagent_test_plugin_")
        assert "(acme-broken 1.0) failed to import: ModuleNotFoundError" in message
        assert isinstance(caught.value.__cause__, ModuleNotFoundError)

    @pytest.mark.parametrize(
        ("body", "problem"),
        [
            ("Plugin = 42\n", "is a int, not a class"),
            (
                "class Plugin:\n    def __init__(self, needed): pass\n",
                "cannot be created: TypeError",
            ),
            (
                "class Plugin:\n    commands = frozenset({CommandName.SKIP})\n"
                "    def handle(self, ctx, command): pass\n",
                "has no `async def handle",
            ),
            (
                "class Plugin:\n    async def handle(self, ctx, command): pass\n",
                "declares neither `commands` nor `task_types`",
            ),
            (
                "class Plugin:\n    commands = frozenset({'START'})\n"
                "    async def handle(self, ctx, command): pass\n",
                "declares START: these go to the handler of the task's type",
            ),
            (
                "class Plugin:\n    commands = frozenset({'REBOOT'})\n"
                "    async def handle(self, ctx, command): pass\n",
                "declares unknown command 'REBOOT'",
            ),
            (
                "class Plugin:\n    task_types = 'MIGRATE_FILE'\n"
                "    async def handle(self, ctx, command): pass\n",
                "`task_types` must be a set, not str",
            ),
        ],
    )
    def test_bad_plugins_are_refused_at_load(self, site: Path, body: str, problem: str) -> None:
        """A plugin that breaks the protocol is refused when loading, saying what is wrong."""
        dist = _plugin(site, "acme-bad", body)
        with pytest.raises(HandlerLoadError) as caught:
            HandlerRegistry.load(dists=[*_own(), dist])
        assert "(acme-bad 1.0)" in str(caught.value)
        assert problem in str(caught.value)

    def test_required_commands_need_handlers(self, site: Path) -> None:
        """Without the built-ins the registry refuses to exist, listing what is missing."""
        dist = _plugin(site, "acme-mover", TYPE_HANDLER)
        with pytest.raises(HandlerLoadError, match="no handler for DELETE, SKIP, STOP"):
            HandlerRegistry.load(dists=[dist])


class TestDisabling:
    def test_disabled_plugin_is_not_even_imported(self, site: Path) -> None:
        """A disabled plugin's module is never imported, so its import error does not matter."""
        dist = _plugin(site, "acme-broken", "raise SystemExit('imported')\n", entry="broken")
        registry = HandlerRegistry.load(["broken"], dists=[*_own(), dist])
        assert registry.disabled == ("broken",)
        assert "broken" not in {info.name for info in registry.infos}

    def test_builtin_the_machine_needs_cannot_be_disabled(self) -> None:
        """Disabling STOP's handler is refused, naming the setting."""
        with pytest.raises(HandlerLoadError) as caught:
            HandlerRegistry.load(["stop"], dists=_own())
        assert str(caught.value).startswith("SMSAGENT_DISABLED_HANDLERS: handler 'stop'")
        assert "serves STOP, which the agent needs" in str(caught.value)

    def test_unknown_name_is_reported(self) -> None:
        """A disabled name that matches nothing is logged, not fatal."""
        with capture_logs() as logs:
            registry = HandlerRegistry.load(["no_such_handler"], dists=_own())
        assert registry.disabled == ()
        assert {
            "event": "disabled_handler_not_installed",
            "handler": "no_such_handler",
            "log_level": "warning",
        } in logs


def _envelope(
    action: Action = Action.start_task, task_type: str = "FSCOPY_TEST"
) -> CommandEnvelope:
    command = CommandName.STOP if action is Action.cancel_task else CommandName.START
    return CommandEnvelope(command, action, 3, "t1", task_type)


class Raising:
    commands = frozenset()
    task_types = frozenset({"X"})

    def __init__(self, error: BaseException) -> None:
        self.error = error

    async def handle(self, ctx: object, command: object) -> HandlerOutcome:
        raise self.error


class TestInvoke:
    @pytest.fixture
    def store(self, tmp_path: Path) -> Store:
        store = Store(tmp_path / "state")
        store.open()
        return store

    async def test_no_handler_for_the_task_type(self, store: Store, tmp_path: Path) -> None:
        """START for a task type nobody handles fails, naming the type; the task fails."""
        ctx = handler_context(store, agent_settings(tmp_path), task_id="t1")
        outcome = await invoke(None, ctx, _envelope(task_type="MIGRATE_BLOCK"))
        assert outcome.result is CommandResult.fail and outcome.error_code == ERROR_NO_HANDLER
        assert outcome.message == "no handler is installed for task type MIGRATE_BLOCK"
        assert outcome.next_state is State.failed

    async def test_no_handler_for_a_command(self, store: Store, tmp_path: Path) -> None:
        """UPLOAD_LOG with no handler installed fails and leaves the task alone."""
        ctx = handler_context(store, agent_settings(tmp_path))
        envelope = CommandEnvelope(CommandName.UPLOAD_LOG, Action.upload_log, 0, bucket="b")
        outcome = await invoke(None, ctx, envelope)
        assert outcome.message == "no handler is installed for command UPLOAD_LOG"
        assert outcome.next_state is None

    async def test_exception_becomes_a_failure(self, store: Store, tmp_path: Path) -> None:
        """A crashing handler gives fail with its error, secrets cut out, and logs the traceback."""
        log.register_secret("super-secret-sk-value")
        try:
            ctx = handler_context(store, agent_settings(tmp_path), task_id="t1")
            handler = Raising(KeyError("super-secret-sk-value"))
            with capture_logs() as logs:
                outcome = await invoke(handler, ctx, _envelope())
        finally:
            log.forget_secrets()
        assert outcome.result is CommandResult.fail
        assert outcome.error_code == ERROR_HANDLER_FAILED
        assert outcome.message == "KeyError: '[redacted]'"
        assert outcome.next_state is State.failed
        assert logs[-1]["event"] == "handler_failed" and logs[-1]["exc_info"] is True

    async def test_stop_by_command_settles_stopped(self, store: Store, tmp_path: Path) -> None:
        """Work stopped by a command ends `stopped` and owes no result itself."""
        ctx = handler_context(store, agent_settings(tmp_path), task_id="t1")
        outcome = await invoke(Raising(WorkCancelled(CancelReason.command)), ctx, _envelope())
        assert (outcome.result, outcome.next_state) == (None, State.stopped)

    async def test_shutdown_leaves_the_state(self, store: Store, tmp_path: Path) -> None:
        """Work interrupted by shutdown changes nothing and owes nothing."""
        ctx = handler_context(store, agent_settings(tmp_path), task_id="t1")
        outcome = await invoke(Raising(WorkCancelled(CancelReason.shutdown)), ctx, _envelope())
        assert outcome == HandlerOutcome.interrupted()

    async def test_drill_failure_returns_to_idle(self, store: Store, tmp_path: Path) -> None:
        """A crashing migration drill leaves the task idle, not failed."""
        ctx = handler_context(store, agent_settings(tmp_path), task_id="t1")
        outcome = await invoke(Raising(RuntimeError("x")), ctx, _envelope(Action.run_premigrate))
        assert outcome.next_state is State.idle

    async def test_asyncio_cancellation_propagates(self, store: Store, tmp_path: Path) -> None:
        """The caller's own cancellation is never swallowed."""
        ctx = handler_context(store, agent_settings(tmp_path), task_id="t1")
        with pytest.raises(asyncio.CancelledError):
            await invoke(Raising(asyncio.CancelledError()), ctx, _envelope())

    async def test_wrong_return_type(self, store: Store, tmp_path: Path) -> None:
        """A handler returning something else than an outcome fails the command."""

        class Sloppy:
            commands = frozenset()
            task_types = frozenset({"X"})

            async def handle(self, ctx: object, command: object) -> object:
                return "done"

        ctx = handler_context(store, agent_settings(tmp_path), task_id="t1")
        outcome = await invoke(Sloppy(), ctx, _envelope())  # type: ignore[arg-type]
        assert outcome.message == "handler Sloppy returned str"


class TestOutcome:
    @pytest.mark.parametrize("state", [State.prechecking, State.running, State.stopping])
    def test_transitional_states_are_refused(self, state: State) -> None:
        """An outcome cannot leave a task in a state only the machine may set."""
        with pytest.raises(ValueError, match=state.value):
            HandlerOutcome.settled(state)
