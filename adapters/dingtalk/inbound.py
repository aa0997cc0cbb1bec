"""The DingTalk inbound half (gateways only): ``POST /dingtalk/callback`` (HTTP mode) or a
Stream-mode connection, both feeding ``hub.accept``.

Inbound traffic is only verified, parsed and handed to the hub, then acknowledged at
once; the answer goes out later from whichever process runs the turn
(:class:`adapters.dingtalk.sender.DingtalkSender`).

The ``timestamp`` and ``sign`` headers are single UTF-8 values (a repeated or
non-UTF-8 header is a 400); the body is read only after the signature checks
out, under the shared JSON limits, with lone surrogates replaced because the
message is DingTalk's. Refusals are 4xx JSON and never echo the payload.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web
from dingtalk_stream import AckMessage

from adapters.dingtalk import sign
from adapters.dingtalk.parse import CHANNEL, ParseError, parse_message
from adapters.dingtalk.stream import StreamConnection
from bot.decode import DecodeError, loads_object
from bot.http import HttpError, header_one, read_body
from bot.hub import Overloaded
from bot.services import Services

log = logging.getLogger(__name__)


class DingtalkInbound:
    name = CHANNEL

    def __init__(self, services: Services, *, clock: Callable[[], float] = time.time) -> None:
        self.services = services
        self.cfg = services.config.dingtalk
        self._clock = clock
        self.stream_connection: StreamConnection | None = None
        self._stream_task: asyncio.Task[None] | None = None

    def routes(self) -> Sequence[web.AbstractRouteDef]:
        return [web.post("/dingtalk/callback", self.callback)] if self.cfg.mode == "http" else []

    async def start(self) -> None:
        if not self.cfg.app_secret:
            log.error("dingtalk.app_secret is empty: set BOT__DINGTALK__APP_SECRET; DingTalk messages are refused")
            return
        if self.cfg.mode == "stream":
            self.stream_connection = StreamConnection(self.cfg, lambda: self.services.http, self.accept_stream)
            self._stream_task = asyncio.create_task(self.stream_connection.run(), name="dingtalk stream")

    async def close(self) -> None:
        if self._stream_task is not None:
            self._stream_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._stream_task
        if self.stream_connection is not None:
            await self.stream_connection.close()

    async def callback(self, request: web.Request) -> web.Response:
        """HTTP-mode robot callback: signature, then JSON, then the hub; 200 at once."""
        timestamp = header_one(request, "timestamp", max_chars=32)
        signature = header_one(request, "sign", max_chars=128)
        try:
            sign.verify(timestamp, signature, self.cfg.app_secret, now_ms=lambda: self._clock() * 1000)
        except sign.StaleTimestamp as exc:
            raise HttpError(403, "stale_timestamp", str(exc)) from None
        except sign.SignatureError as exc:
            raise HttpError(401, "invalid_signature", str(exc)) from None
        body = await read_body(request, self.services.config.server.max_body_bytes)
        try:
            event = parse_message(loads_object(body, surrogates="replace").data)
        except DecodeError as exc:
            log.warning("DingTalk callback refused: %s", exc.message)
            raise HttpError(400, exc.code, exc.message) from None
        except ParseError as exc:
            log.warning("DingTalk callback refused: %s", exc)
            raise HttpError(400, "invalid_message", str(exc)) from None
        try:
            await self.services.hub.accept(event)
        except Overloaded:
            raise HttpError(503, "overloaded", "too many messages in flight; retry shortly") from None
        return web.Response(status=200)

    async def accept_stream(self, data: dict[str, Any]) -> int:
        """Stream-mode robot message -> the ACK status: 200 taken (or a redelivery),
        400 unreadable (a retry cannot help), 500 overloaded (DingTalk delivers it again)."""
        try:
            event = parse_message(data)
        except ParseError as exc:
            log.warning("DingTalk Stream message refused: %s", exc)
            return AckMessage.STATUS_BAD_REQUEST
        try:
            await self.services.hub.accept(event)
        except Overloaded:
            return AckMessage.STATUS_SYSTEM_EXCEPTION
        return AckMessage.STATUS_OK
