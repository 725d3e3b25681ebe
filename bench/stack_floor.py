"""The smallest poller on smsagent's stack: the memory floor under `bench/idle.py`'s agent.

    python bench/stack_floor.py URL INTERVAL_S

Imports what the agent cannot do without (asyncio, aiohttp, structlog, pydantic and
pydantic-settings), builds one settings class and one response model, and then GETs `URL` every
`INTERVAL_S` seconds through one `aiohttp.ClientSession`, logging each answer as JSON. What the
agent holds beyond this process is smsagent's own code and state.
"""

from __future__ import annotations

import asyncio
import sys

import aiohttp
import pydantic
import pydantic_settings
import structlog


class FloorSettings(pydantic_settings.BaseSettings):
    """A settings class, so that pydantic-settings builds one as the agent's `Settings` does."""

    model_config = pydantic_settings.SettingsConfigDict(env_prefix="SMSAGENT_FLOOR_")

    url: str
    interval_s: float = pydantic.Field(gt=0)


class Answer(pydantic.BaseModel):
    """A response model, validated on every poll as the agent validates its command."""

    status: int
    size: int


async def poll(settings: FloorSettings) -> None:
    log = structlog.get_logger()
    async with aiohttp.ClientSession() as session:
        while True:
            async with session.get(settings.url) as response:
                body = await response.read()
            answer = Answer(status=response.status, size=len(body))
            log.info("polled", status=answer.status, size=answer.size)
            await asyncio.sleep(settings.interval_s)


def main() -> None:
    structlog.configure(processors=[structlog.processors.JSONRenderer()])
    url, interval_s = sys.argv[1], float(sys.argv[2])
    asyncio.run(poll(FloorSettings(url=url, interval_s=interval_s)))


if __name__ == "__main__":
    main()
