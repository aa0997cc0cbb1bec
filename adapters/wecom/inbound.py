"""The WeCom inbound half (gateways only): self-built app callbacks and the AI bot callback.

Callbacks only verify, decrypt, normalize and ``hub.accept``, then answer at
once (WeCom retries after 5 s); answers leave later from whichever process
runs the turn, through :class:`adapters.wecom.sender.WecomSender`. WeCom's
redeliveries stop at ``hub.accept``'s dedup on the message id.

Before the signature is checked a request gets only bounded work: the body is
capped, the query parameters are single UTF-8 values (:func:`bot.http.query_one`),
the ``Encrypt`` value is found by a linear scan, never an XML parse. Only a
signed message is decrypted and parsed. Every refusal is a 4xx JSON answer and
a log line that names the problem, never the payload.
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
from adapters.wecom.parse import (
    CHANNEL,
    MalformedMessage,
    aibot_envelope_encrypt,
    app_event,
    envelope_encrypt,
    parse_json,
)
from bot.decode import DecodeError
from bot.http import HttpError, query_one, read_body
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
        with _refusals():
            signature, timestamp, nonce = _signed_query(request)
            echostr = _query(request, "echostr", _MAX_ECHOSTR).replace(" ", "+")  # a '+' that arrived unencoded
            plain = app.crypto.verify_url(signature, timestamp, nonce, echostr)
        return web.Response(text=plain)

    async def app_callback(self, request: web.Request) -> web.Response:
        app = self._app(request)
        body = await read_body(request, self.cfg.max_body_bytes)
        with _refusals():
            signature, timestamp, nonce = _signed_query(request)
            encrypt = envelope_encrypt(body)  # a scan, not a parse: nothing is parsed before the signature
            xml = app.crypto.decrypt(signature, timestamp, nonce, encrypt)
            event = app_event(xml, app.name)
        if event is None:
            log.info("WeCom app %r: an event that needs no answer, ignored", app.name)
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
        with _refusals():
            signature, timestamp, nonce = _signed_query(request)
            echostr = _query(request, "echostr", _MAX_ECHOSTR).replace(" ", "+")
            plain = self.aibot.crypto.verify_url(signature, timestamp, nonce, echostr)
        return web.Response(text=plain)

    async def aibot_callback(self, request: web.Request) -> web.Response:
        assert self.aibot is not None
        body = await read_body(request, self.cfg.max_body_bytes)
        with _refusals():
            signature, timestamp, nonce = _signed_query(request)
            encrypt = aibot_envelope_encrypt(body)  # unsigned: shared JSON limits, surrogates refused
            plain = self.aibot.crypto.decrypt(signature, timestamp, nonce, encrypt)
            reply = await self.aibot.handle(parse_json(plain, signed=True))  # signed: surrogates replaced
        return self.aibot.encrypted(reply)


_MAX_QUERY = 128  # msg_signature is 40 hex characters, timestamp and nonce are short
_MAX_ECHOSTR = 4096


def _query(request: web.Request, name: str, max_chars: int = _MAX_QUERY) -> str:
    """One query parameter; missing, repeated, too long or not UTF-8 is a 400."""
    return query_one(request, name, max_chars=max_chars) or ""


def _signed_query(request: web.Request) -> tuple[str, str, str]:
    return _query(request, "msg_signature"), _query(request, "timestamp"), _query(request, "nonce")


@contextmanager
def _refusals() -> Iterator[None]:
    """Callback problems to HTTP answers: bad signature / receiver 403, garbage 400.
    The log line is the reason only: payloads and query values never reach it."""
    try:
        yield
    except CallbackError as exc:
        log.warning("WeCom callback refused (%d): %s", exc.status, exc)
        raise HttpError(exc.status, exc.code, str(exc)) from None
    except MalformedMessage as exc:
        log.warning("WeCom callback refused (400): %s", exc)
        raise HttpError(400, "malformed", str(exc)) from None
    except DecodeError as exc:
        log.warning("WeCom callback refused (400): %s", exc.message)
        raise HttpError(400, exc.code, exc.message) from None
