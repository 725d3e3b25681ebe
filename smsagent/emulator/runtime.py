"""One running emulator's options and parts: store, control plane, tokens, faults, request log."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from smsagent.emulator.commands import DeliveryMode
from smsagent.emulator.control import ControlPlane
from smsagent.emulator.faults import FaultInjector, FaultSettings
from smsagent.emulator.gateway import Gateway
from smsagent.emulator.iam import DEFAULT_TOKEN_TTL_S, IamUser, TokenRegistry
from smsagent.emulator.objectstore import ObjectStore, ObjectStoreOptions
from smsagent.emulator.store import open_store
from smsagent.emulator.traffic import RequestLog

DEFAULT_REDELIVER_AFTER_S = 30.0
DEFAULT_DISCONNECT_AFTER_S = 120.0
DEFAULT_MAX_BODY_BYTES = 1024 * 1024


@dataclass(frozen=True)
class EmulatorOptions:
    """What an emulator is started with (the `smsagent emulator` flags)."""

    ak: str
    sk: str = field(repr=False)
    token: Optional[str] = field(default=None, repr=False)
    iam_user: Optional[IamUser] = None
    token_ttl_s: float = DEFAULT_TOKEN_TTL_S
    command_delivery: DeliveryMode = DeliveryMode.once
    redeliver_after_s: float = DEFAULT_REDELIVER_AFTER_S
    disconnect_after_s: float = DEFAULT_DISCONNECT_AFTER_S
    state_file: Optional[Path] = None
    faults: FaultSettings = field(default_factory=FaultSettings)
    seed: Optional[int] = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    object_store: Optional[ObjectStoreOptions] = None

    def describe(self) -> dict[str, Any]:
        """The options without secrets, as the state dump shows them."""
        return {
            "ak": self.ak,
            "token_auth": self.token is not None,
            "iam_user": self.iam_user.name if self.iam_user else None,
            "command_delivery": self.command_delivery.value,
            "redeliver_after_s": self.redeliver_after_s,
            "disconnect_after_s": self.disconnect_after_s,
            "state_file": str(self.state_file) if self.state_file else None,
            "seed": self.seed,
            "object_store": self.object_store is not None,
        }


class Emulator:
    """The parts of one emulator, wired together; `close()` releases the store."""

    def __init__(self, options: EmulatorOptions, clock: Callable[[], float] = time.time) -> None:
        self.options = options
        self.clock = clock
        self._store = open_store(options.state_file)
        self.plane = ControlPlane(
            self._store,
            options.command_delivery,
            options.redeliver_after_s,
            options.disconnect_after_s,
            clock,
        )
        self.tokens = TokenRegistry(options.token, options.token_ttl_s, clock)
        self.faults = FaultInjector(options.faults, options.seed)
        self.tokens.set_expired(options.faults.expire_tokens)
        self.requests = RequestLog()
        self.gateway = Gateway(options.ak, options.sk, self.tokens, clock)
        self.object_store: Optional[ObjectStore] = None
        if options.object_store is not None:
            self.object_store = ObjectStore(options.object_store, options.ak, options.sk, clock)

    def set_faults(self, settings: FaultSettings) -> None:
        """Switch to new fault settings at run time."""
        self.faults.configure(settings)
        self.tokens.set_expired(settings.expire_tokens)

    def reset(self) -> None:
        """Forget all data and requests; faults go back to the start-up settings."""
        self.plane.reset()
        self.requests.clear()
        self.tokens.set_expired(False)
        self.set_faults(self.options.faults)
        self.faults.reset()
        if self.object_store is not None:
            self.object_store.reset()

    def state(self) -> dict[str, Any]:
        """The state dump of `GET /_emulator/state`."""
        dump = self.plane.dump()
        dump["requests"] = self.requests.summary()
        dump["faults"] = self.faults.settings.model_dump(mode="json")
        dump["faults_injected"] = self.faults.injected_count
        dump["options"] = self.options.describe()
        if self.object_store is not None:
            dump["obs"] = self.object_store.describe()
        return dump

    def close(self) -> None:
        self._store.close()
