"""aiohttp application factory: routes, lifecycle, health."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web

from adapters.registry import build_adapters
from bot.config import Config
from bot.http import METRICS_KEY, error_middleware, json_response
from bot.services import Services

log = logging.getLogger(__name__)

SERVICES_KEY = web.AppKey("services", Services)
_MAX_REQUEST_BYTES = 2 * 1024 * 1024  # the largest per-route limit; routes enforce their own


def create_app(config: Config, services: Services | None = None) -> web.Application:
    services = services or Services(config)
    app = web.Application(middlewares=[error_middleware], client_max_size=_MAX_REQUEST_BYTES)
    app[METRICS_KEY] = services.metrics
    app[SERVICES_KEY] = services
    adapters = build_adapters(services)
    for adapter in adapters:
        services.hub.register(adapter.name, adapter)
        app.router.add_routes(adapter.routes())
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    if config.admin.token:  # the admin and agent API exist only with a token
        from bot.admin import AdminApi

        app.router.add_routes(AdminApi(services).routes())

    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        await services.start()
        for adapter in adapters:
            await adapter.start()
        log.info("kefu-hub ready: channels %s, state %s, engine %s", [a.name for a in adapters],
                 config.state.url.split("@")[-1], config.engine.kind)
        yield
        await services.hub.close()  # answer what was accepted while channels can still send
        for adapter in adapters:
            try:
                await adapter.close()
            except Exception:
                log.exception("closing channel %s failed", adapter.name)
        await services.close()

    async def end_long_requests(_app: web.Application) -> None:
        """Before aiohttp waits for open handlers: end streams (SSE) so shutdown is not held up."""
        for adapter in adapters:
            shutdown = getattr(adapter, "shutdown", None)
            if shutdown is not None:
                await shutdown()

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(end_long_requests)
    return app


async def healthz(_request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    services = request.app[SERVICES_KEY]
    state_ok = await services.store.ping()
    engine = services.engine
    engine_ok = True if engine is None else await engine.ready()
    body = {
        "status": "ok" if state_ok and engine_ok else "unavailable",
        "state": "ok" if state_ok else "unreachable",
        "engine": "faq" if engine is None else ("ok" if engine_ok else "down"),
        "pending": services.hub.pending,
    }
    return json_response(body, status=200 if state_ok and engine_ok else 503)


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=request.app[METRICS_KEY].render(), content_type="text/plain")
