"""The emulator's aiohttp application and its serving lifecycle."""

from __future__ import annotations

import asyncio
import ssl
from typing import Callable, Optional

import structlog
from aiohttp import web

from smsagent.emulator.admin import AdminRoutes
from smsagent.emulator.app import SmsRoutes
from smsagent.emulator.faults import fault_middleware
from smsagent.emulator.gateway import gateway_middleware
from smsagent.emulator.iam import IAM_TOKENS_PATH, iam_routes
from smsagent.emulator.runtime import Emulator
from smsagent.emulator.traffic import traffic_middleware

log = structlog.get_logger()


def build_app(emulator: Emulator) -> web.Application:
    """The application: request ids and error bodies, then faults, then the gateway, then routes."""
    public_paths = {IAM_TOKENS_PATH} if emulator.options.iam_user else set()
    app = web.Application(
        middlewares=[
            traffic_middleware(emulator.requests, emulator.clock),
            fault_middleware(emulator.faults),
            gateway_middleware(emulator.gateway, public_paths),
        ],
        client_max_size=emulator.options.max_body_bytes,
    )
    app.add_routes(SmsRoutes(emulator.plane).routes())
    app.add_routes(AdminRoutes(emulator).routes())
    if emulator.options.iam_user is not None:
        app.add_routes(iam_routes(emulator.options.iam_user, emulator.tokens))
    return app


async def serve(
    emulator: Emulator,
    *,
    host: str,
    port: int,
    ssl_context: Optional[ssl.SSLContext],
    stop: asyncio.Event,
    on_listening: Callable[[str], None] = lambda url: None,
) -> None:
    """Serve until `stop` is set, then close connections and the store.

    Args:
        emulator: the emulator to serve.
        host: the address to bind.
        port: the port to bind; 0 picks a free one.
        ssl_context: serve HTTPS with it, or plain HTTP when None.
        stop: set it to shut down.
        on_listening: called with the base URL once the socket listens.
    """
    runner = web.AppRunner(build_app(emulator), access_log=None)
    await runner.setup()
    store = emulator.object_store
    store_runner = None if store is None else web.AppRunner(store.app(), access_log=None)
    try:
        site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
        await site.start()
        url = _base_url(runner, ssl_context is not None)
        if store is not None and store_runner is not None:
            await store_runner.setup()
            await web.TCPSite(
                store_runner, host, store.options.port, ssl_context=ssl_context
            ).start()
            store.url = _base_url(store_runner, ssl_context is not None)
            log.info("object_store_listening", url=store.url, region=store.options.region)
        log.info(
            "emulator_listening", url=url, command_delivery=emulator.options.command_delivery.value
        )
        on_listening(url)
        await stop.wait()
    finally:
        if store_runner is not None:
            await store_runner.cleanup()
        await runner.cleanup()
        emulator.close()
        log.info("emulator_stopped")


def _base_url(runner: web.AppRunner, tls: bool) -> str:
    host, port = runner.addresses[0][:2]
    shown = f"[{host}]" if ":" in host else host
    return f"{'https' if tls else 'http'}://{shown}:{port}"
