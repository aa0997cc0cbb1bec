"""The WeCom inbound half (gateways only): self-built app callbacks and the AI bot callback.

Callbacks only verify, decrypt, normalize and ``hub.accept``, then answer at
once (WeCom retries after 5 s); answers leave later from whichever process
runs the turn, through :class:`adapters.wecom.sender.WecomSender`. WeCom's
redeliveries stop at ``hub.accept``'s dedup on the message id.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from aiohttp import web

from adapters.wecom.aibot import AibotCallbacks
from adapters.wecom.apps import MAIN_APP, configured_apps, where
from adapters.wecom.crypto import CallbackError, WecomCrypto
from adapters.wecom.parse import CHANNEL, MalformedMessage, app_event, envelope_encrypt, parse_json
from bot.http import HttpError, read_body
from bot.hub import Overloaded
from bot.services import Services
from bot.types import Event, EventKind

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AppCallback:
    name: str
    crypto: WecomCrypto


class WecomInbound:
    name = CHANNEL

    def __init__(self, services: Services) -> None:
        self.services = services
        self.cfg = cfg = services.config.wecom
        self.apps: dict[str, AppCallback] = {}
        for name, app in configured_apps(cfg).items():
            if not (app.corp_id and app.token and app.aes_key):
                raise ValueError(f"{where(name)}: corp_id, token and aes_key are all needed for the callback")
            crypto = WecomCrypto(app.token, app.aes_key, app.corp_id, replay_window_s=cfg.replay_window_s)
            self.apps[name] = AppCallback(name, crypto)
        self.aibot: AibotCallbacks | None = None
        if cfg.aibot_token:
            crypto = WecomCrypto(cfg.aibot_token, cfg.aibot_aes_key, "", replay_window_s=cfg.replay_window_s)
            self.aibot = AibotCallbacks(crypto, services.hub, services.kv, services.keys,
                                        stream_ttl_s=cfg.aibot_stream_ttl_s, event_wait_s=cfg.aibot_event_wait_s,
                                        bus=services.bus)

    def routes(self) -> Sequence[web.AbstractRouteDef]:
        routes: list[web.AbstractRouteDef] = []
        if self.aibot is not None:  # before /wecom/{app}/callback, which would also match
            routes += [web.get("/wecom/aibot/callback", self.aibot_verify),
                       web.post("/wecom/aibot/callback", self.aibot_callback)]
        if self.apps:
            routes += [web.get("/wecom/callback", self.app_verify), web.post("/wecom/callback", self.app_callback),
                       web.get("/wecom/{app}/callback", self.app_verify),
                       web.post("/wecom/{app}/callback", self.app_callback)]
        return routes

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        if self.aibot is not None:
            self.aibot.close()

    # ------------------------------------------------------------------ app callbacks
    def _app(self, request: web.Request) -> AppCallback:
        app = self.apps.get(request.match_info.get("app", MAIN_APP))
        if app is None:
            raise HttpError(404, "unknown_app", "no WeCom app is configured at this URL")
        return app

    async def app_verify(self, request: web.Request) -> web.Response:
        """URL verification when the callback is saved in the WeCom admin console."""
        app = self._app(request)
        q = request.query
        echostr = q.get("echostr", "").replace(" ", "+")  # a '+' that arrived unencoded
        with _refusals():
            plain = app.crypto.verify_url(q.get("msg_signature", ""), q.get("timestamp", ""), q.get("nonce", ""),
                                          echostr)
        return web.Response(text=plain)

    async def app_callback(self, request: web.Request) -> web.Response:
        app = self._app(request)
        body = await read_body(request, self.cfg.max_body_bytes)
        q = request.query
        with _refusals():
            encrypt = envelope_encrypt(body)
            xml = app.crypto.decrypt(q.get("msg_signature", ""), q.get("timestamp", ""), q.get("nonce", ""), encrypt)
            event = app_event(xml, app.name)
        if event is None:
            log.info("WeCom app %r: an event that needs no answer, ignored", app.name)
            log.debug("ignored WeCom event: %s", xml[:500])
        else:
            if event.kind is EventKind.MESSAGE and not (event.text or event.attachments):
                log.info("WeCom app %r: unsupported message type %r", app.name, event.channel_data.get("msg_type"))
            await self._accept(event)
        return web.Response(text="")  # an empty 200 stops WeCom's retries

    async def _accept(self, event: Event) -> None:
        try:
            await self.services.hub.accept(event)
        except Overloaded:
            raise HttpError(503, "overloaded", "too many messages in flight; WeCom will retry") from None

    # ------------------------------------------------------------------ AI bot callbacks
    async def aibot_verify(self, request: web.Request) -> web.Response:
        assert self.aibot is not None
        q = request.query
        with _refusals():
            plain = self.aibot.crypto.verify_url(q.get("msg_signature", ""), q.get("timestamp", ""),
                                                 q.get("nonce", ""), q.get("echostr", "").replace(" ", "+"))
        return web.Response(text=plain)

    async def aibot_callback(self, request: web.Request) -> web.Response:
        assert self.aibot is not None
        body = await read_body(request, self.cfg.max_body_bytes)
        q = request.query
        with _refusals():
            encrypt = parse_json(body).get("encrypt")
            if not isinstance(encrypt, str):
                raise MalformedMessage("'encrypt' must be a string")
            plain = self.aibot.crypto.decrypt(q.get("msg_signature", ""), q.get("timestamp", ""),
                                              q.get("nonce", ""), encrypt)
            reply = await self.aibot.handle(parse_json(plain))
        return self.aibot.encrypted(reply)


@contextmanager
def _refusals() -> Iterator[None]:
    """Callback problems to HTTP answers: bad signature / receiver 403, garbage 400."""
    try:
        yield
    except CallbackError as exc:
        log.warning("WeCom callback refused (%d): %s", exc.status, exc)
        raise HttpError(exc.status, exc.code, str(exc)) from None
    except MalformedMessage as exc:
        log.warning("WeCom callback refused (400): %s", exc)
        raise HttpError(400, "malformed", str(exc)) from None
