"""The WeCom channel: self-built app callbacks, the AI bot callback, active sends.

Callbacks only verify, decrypt, normalize and ``hub.accept``, then answer at
once (WeCom retries after 5 s); answers leave later through ``message/send``
(apps) or the stream buffer (AI bot) when the hub calls :meth:`deliver`.
WeCom's redeliveries stop at ``hub.accept``'s dedup on the message id.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from aiohttp import web

from adapters.wecom.aibot import AibotEndpoint
from adapters.wecom.api import AccessToken, AppClient, CallPolicy, WecomApiError
from adapters.wecom.crypto import CallbackError, WecomCrypto
from adapters.wecom.parse import AIBOT_TENANT, CHANNEL, MalformedMessage, app_event, envelope_encrypt, parse_json
from adapters.wecom.render import render
from adapters.wecom.robot import RobotNotifier
from bot.config import WecomAppConfig, WecomConfig
from bot.http import HttpError, read_body
from bot.hub import Overloaded
from bot.services import Services
from bot.state.shared import WindowGate
from bot.types import Event, EventKind, Reply, ReplyChunk

log = logging.getLogger(__name__)

MAIN_APP = ""  # the app configured at the top of the wecom section; its tenant and /wecom/callback


@dataclass(frozen=True, slots=True)
class WecomApp:
    name: str
    crypto: WecomCrypto
    client: AppClient


def configured_apps(cfg: WecomConfig) -> dict[str, WecomAppConfig]:
    """Every app with a callback, by name (``""`` for the main one)."""
    apps: dict[str, WecomAppConfig] = {}
    if cfg.corp_id:
        apps[MAIN_APP] = WecomAppConfig(corp_id=cfg.corp_id, token=cfg.token, aes_key=cfg.aes_key,
                                        secret=cfg.secret, agent_id=cfg.agent_id)
    for name, app in cfg.apps.items():
        apps[name] = app if app.corp_id else app.model_copy(update={"corp_id": cfg.corp_id})
    return apps


def enabled(cfg: WecomConfig) -> bool:
    return bool(cfg.corp_id or cfg.apps or cfg.aibot_token or cfg.robot_key)


class WecomAdapter:
    name = CHANNEL

    def __init__(self, services: Services) -> None:
        self.services = services
        self.cfg = cfg = services.config.wecom
        keys = services.keys
        self.policy = CallPolicy(lambda: services.http, cfg.send_retries, cfg.retry_backoff_s)
        self.apps: dict[str, WecomApp] = {}
        for name, app in configured_apps(cfg).items():
            where = f"wecom.apps.{name}" if name else "wecom"
            if not (app.corp_id and app.token and app.aes_key):
                raise ValueError(f"{where}: corp_id, token and aes_key are all needed for the callback")
            crypto = WecomCrypto(app.token, app.aes_key, app.corp_id, replay_window_s=cfg.replay_window_s)
            token = AccessToken(self.policy, services.kv, keys, cfg.api_base, app.corp_id, app.secret, app.agent_id)
            gate = WindowGate(services.kv, keys.rate, cfg.user_rate_per_min)
            self.apps[name] = WecomApp(name, crypto, AppClient(token, self.policy, gate, cfg.api_base, app.agent_id))
            if not (app.secret and app.agent_id):
                log.warning("%s: no secret / agent_id, so answers cannot be sent", where)
        self.aibot: AibotEndpoint | None = None
        if cfg.aibot_token:
            crypto = WecomCrypto(cfg.aibot_token, cfg.aibot_aes_key, "", replay_window_s=cfg.replay_window_s)
            self.aibot = AibotEndpoint(crypto, services.hub, services.kv, keys, self.policy,
                                       stream_ttl_s=cfg.aibot_stream_ttl_s, event_wait_s=cfg.aibot_event_wait_s,
                                       bus=services.bus, listen=services.takes_events)
        if cfg.robot_key:
            gate = WindowGate(services.kv, keys.rate, cfg.robot_rate_per_min)
            services.notifiers.append(RobotNotifier(self.policy, gate, cfg.api_base, cfg.robot_key))

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
    def _app(self, request: web.Request) -> WecomApp:
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

    # ------------------------------------------------------------------ outbound
    async def stream(self, chunk: ReplyChunk) -> None:
        if chunk.to.tenant == AIBOT_TENANT and self.aibot is not None:
            await self.aibot.stream(chunk)

    async def deliver(self, event: Event | None, replies: Sequence[Reply]) -> None:
        if event is not None and event.ref.tenant == AIBOT_TENANT and self.aibot is not None:
            await self.aibot.finish(event, replies)
            return
        for reply in replies:
            if reply.to.tenant == AIBOT_TENANT and self.aibot is not None:
                await self.aibot.send_proactive(reply)
                continue
            app = self.apps.get(reply.to.tenant)
            if app is None:
                raise WecomApiError(-1, f"no WeCom app {reply.to.tenant!r} to send to {reply.to.user_id}",
                                    "message/send")
            text = render([reply])
            if text:
                await app.client.send_text(reply.to.user_id, text, markdown=reply.markdown)


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
