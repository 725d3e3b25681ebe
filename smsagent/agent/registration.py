"""Start-up registration: read the agent configuration, check the privacy statement, register.

The server id SMS assigns is persisted with the endpoint it belongs to and sent back as `id` on
every later registration, so a restart updates the same source record instead of adding one.
"""

from __future__ import annotations

import time
from typing import Callable, Protocol

import structlog

from smsagent.agent.preflight import Blocked, privacy_blocker
from smsagent.agent.store import AGENT, AgentRecord, Store
from smsagent.api.errors import SmsError
from smsagent.api.models import (
    IdResponse,
    PostSourceServerBody,
    PrivacyAgreementsResponse,
    ShowConfigResponse,
)
from smsagent.errors import StartupError

log = structlog.get_logger(__name__)


class RegistrationClient(Protocol):
    """The calls registration makes (`SmsClient` has them)."""

    async def show_config(self) -> ShowConfigResponse: ...

    async def show_privacy_agreements(self) -> PrivacyAgreementsResponse: ...

    async def create_privacy_agreements(self) -> None: ...

    async def register_server(self, body: PostSourceServerBody) -> IdResponse: ...


def known_server_id(store: Store, endpoint: str) -> str | None:
    """The id this agent registered under at `endpoint`, if it has one."""
    record = store.load(AGENT).value
    if record is None or record.endpoint != endpoint:
        return None
    return record.server_id


async def ensure_privacy_statement(client: RegistrationClient, accept: bool) -> None:
    """Make sure the account has accepted the SMS privacy statement.

    Raises:
        StartupError: it has not, and the operator has not accepted it in the settings (the
            same verdict `smsagent check` shows).
    """
    agreement = await client.show_privacy_agreements()
    if agreement.flag:
        return
    blocker = privacy_blocker(agreement.flag, accept)
    if blocker is not None:
        raise Blocked(blocker)
    try:
        await client.create_privacy_agreements()
    except SmsError as exc:
        raise StartupError(
            f"SMS.0208 failed to send the privacy statement confirmation: {exc}"
        ) from None
    log.info("privacy_statement_accepted")


async def register(
    client: RegistrationClient,
    store: Store,
    *,
    endpoint: str,
    body: PostSourceServerBody,
    fingerprint: str,
    accept_privacy_statement: bool,
    clock: Callable[[], float] = time.time,
) -> AgentRecord:
    """Register this server (again) and persist the id SMS answers with.

    Raises:
        StartupError: the privacy statement is not accepted.
        SmsError: a call failed; the caller retries with backoff.
    """
    config = await client.show_config()
    log.info("sms_config", main_region=config.config.get("mainRegion"))
    await ensure_privacy_statement(client, accept_privacy_statement)
    previous_id = known_server_id(store, endpoint)
    if previous_id is not None:
        body = body.model_copy(update={"id": previous_id})
    answer = await client.register_server(body)
    record = AgentRecord(
        server_id=answer.id, endpoint=endpoint, fingerprint=fingerprint, registered_at=clock()
    )
    store.save(AGENT, record)
    if previous_id is not None and previous_id != answer.id:
        log.warning("server_id_changed", previous_server_id=previous_id, server_id=answer.id)
    log.info("registered", server_id=answer.id, reused=previous_id == answer.id)
    return record
