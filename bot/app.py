"""The composition root: one aiohttp application per role, wired from the config.

``all`` (the default, and ``make run``) takes and answers events in one
process. ``gateway`` serves webhooks, the widget and ``/chat`` and publishes
accepted events to the queue; ``worker`` consumes them, runs turns and sends
replies through the same channel senders, serving only health and metrics.
This module and the CLI are the only parts of ``bot/`` that know the channel
packages.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import yaml
from aiohttp import web

from adapters.registry import build_channels
from bot.config import ROOT, Config
from bot.http import METRICS_KEY, HttpError, error_middleware, json_response
from bot.logsafe import redact_url
from bot.services import Role, Services

if TYPE_CHECKING:
    from bot.console.web import ConsoleApp

log = logging.getLogger(__name__)

SERVICES_KEY = web.AppKey("services", Services)
OPENAPI_PATH = ROOT / "docs" / "openapi.yaml"
_MAX_REQUEST_BYTES = 2 * 1024 * 1024  # the largest per-route limit; routes enforce their own


def create_app(config: Config, services: Services | None = None, role: Role = "all") -> web.Application:
    services = services or Services(config, role=role)
    app = web.Application(middlewares=[error_middleware], client_max_size=_MAX_REQUEST_BYTES)
    app[METRICS_KEY] = services.metrics
    app[SERVICES_KEY] = services
    channels = build_channels(services)
    inbound = [c.inbound for c in channels if c.inbound is not None] if services.takes_events else []
    for channel in channels:
        services.hub.register(channel.name, channel.sender)  # a worker sends through every channel
    for half in inbound:
        app.router.add_routes(half.routes())
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi)
    _openapi_json()  # read at start (once per process), so a broken description shows now, not on a request
    if config.admin.token and services.takes_events:  # the admin and agent API exist only with a token
        from bot.admin import AdminApi

        app.router.add_routes(AdminApi(services).routes())
    console = _console(config, services) if config.console.enabled and services.takes_events else None
    if console is not None:
        app.router.add_routes(console.auth.routes())
        app.router.add_routes(console.routes())

    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        await services.start()
        for half in inbound:  # inbound connections (DingTalk Stream mode) belong to gateways
            await half.start()
        if services.answers_events:
            await services.hub.start_consuming()
        log.info("kefu-hub %s ready: channels %s, state %s, queue %s, engine %s", services.role,
                 [c.name for c in channels], redact_url(config.state.url),
                 redact_url(config.queue.url) if config.queue.url else "in-process", config.engine.kind)
        yield
        await services.hub.close()  # answer what was accepted while channels can still send
        for half in [*inbound, *(c.sender for c in channels)]:
            try:
                await half.close()
            except Exception:
                log.exception("closing channel %s failed", half.name)
        await services.close()

    async def end_long_requests(_app: web.Application) -> None:
        """Before aiohttp waits for open handlers: end streams (SSE) so shutdown is not held up."""
        if console is not None:
            await console.shutdown()
        for half in inbound:
            shutdown = getattr(half, "shutdown", None)
            if shutdown is not None:
                await shutdown()

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(end_long_requests)
    return app


def _console(config: Config, services: Services) -> ConsoleApp:
    """The agent console (bot/console/): sign-in, pages, JSON calls and live events, on gateways."""
    from bot.console.accounts import Accounts
    from bot.console.auth import ConsoleAuth
    from bot.console.web import ConsoleApp

    accounts = Accounts(config.resolve_path(config.console.agents_path))
    auth = ConsoleAuth(config, services.kv, services.keys, accounts)
    return ConsoleApp(services, auth)


@functools.cache
def _openapi_json() -> bytes | None:
    """docs/openapi.yaml as JSON, read once per process (None when the docs are not shipped)."""
    try:
        spec = yaml.safe_load(OPENAPI_PATH.read_text(encoding="utf-8"))
    except OSError:
        log.warning("%s is missing: GET /openapi.json answers 404", OPENAPI_PATH)
        return None
    return json.dumps(spec, ensure_ascii=False).encode()


async def openapi(_request: web.Request) -> web.Response:
    """The HTTP API's description (docs/openapi.yaml), for clients and API tools."""
    body = _openapi_json()
    if body is None:
        raise HttpError(404, "not_found", "the API description is not installed with this server")
    return web.Response(body=body, content_type="application/json", charset="utf-8",
                        headers={"Cache-Control": "public, max-age=300"})


async def healthz(_request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    services = request.app[SERVICES_KEY]
    state_ok = await services.store.ping()
    engine = services.engine
    engine_ok = True if engine is None or not services.answers_events else await engine.ready()
    pending = await _queue_depth(services)
    ok = state_ok and engine_ok and pending is not None
    body = {
        "status": "ok" if ok else "unavailable",
        "role": services.role,
        "state": "ok" if state_ok else "unreachable",
        "queue": "ok" if pending is not None else "unreachable",
        "engine": "faq" if engine is None else ("ok" if engine_ok else "down"),
        "pending": pending,
    }
    return json_response(body, status=200 if ok else 503)


async def _queue_depth(services: Services) -> int | None:
    """Events waiting (a broker call for RabbitMQ, which also sets the depth gauges); None when the
    broker is away (its connections come back by themselves)."""
    try:
        async with asyncio.timeout(2):
            return await services.hub.pending()
    except Exception:
        return None


async def metrics(request: web.Request) -> web.Response:
    if await _queue_depth(request.app[SERVICES_KEY]) is None:  # read (and the gauges set) when scraped
        log.warning("queue depth unavailable for /metrics")
    return web.Response(body=request.app[METRICS_KEY].render(), content_type="text/plain")
