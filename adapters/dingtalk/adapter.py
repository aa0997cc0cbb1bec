"""The DingTalk channel: ``POST /dingtalk/callback`` (HTTP mode) or a Stream-mode
connection, both feeding ``hub.accept``; replies through the sessionWebhook or
the robot OpenAPI, streamed answers through an AI card when one is configured.

Inbound traffic is only verified, parsed and handed to the hub, then
acknowledged at once; the answer goes out later from :meth:`deliver`.
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
from adapters.dingtalk.api import DingtalkApi, Target, has_markdown
from adapters.dingtalk.card import AiCard
from adapters.dingtalk.parse import CHANNEL, ParseError, parse_message
from adapters.dingtalk.stream import StreamConnection
from bot.http import HttpError, read_json_object
from bot.hub import Overloaded
from bot.services import Services
from bot.types import Event, Reply, ReplyChunk

log = logging.getLogger(__name__)


class DingtalkAdapter:
    name = CHANNEL

    def __init__(self, services: Services, *, clock: Callable[[], float] = time.time) -> None:
        self.services = services
        self.cfg = services.config.dingtalk
        self.api = DingtalkApi(self.cfg, lambda: services.http, services.kv, services.keys, clock=clock)
        self._clock = clock
        self._cards: dict[str, AiCard] = {}  # event id -> the card its answer streams into
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
        try:
            sign.verify(
                request.headers.get("timestamp"), request.headers.get("sign"), self.cfg.app_secret,
                now_ms=lambda: self._clock() * 1000,
            )
        except sign.StaleTimestamp as exc:
            raise HttpError(403, "stale_timestamp", str(exc)) from None
        except sign.SignatureError as exc:
            raise HttpError(401, "invalid_signature", str(exc)) from None
        data = await read_json_object(request, self.services.config.server.max_body_bytes)
        try:
            event = parse_message(data)
        except ParseError as exc:
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

    async def stream(self, chunk: ReplyChunk) -> None:
        """Partial answers go into an AI card when ``dingtalk.card_template_id`` is set."""
        if not self.cfg.card_template_id:
            return
        card = self._cards.get(chunk.in_reply_to)
        if card is None:
            card = self._cards[chunk.in_reply_to] = AiCard(self.api, self.cfg, Target.of(None, chunk.to))
        card.push(chunk.text_so_far)

    async def deliver(self, event: Event | None, replies: Sequence[Reply]) -> None:
        card = self._cards.pop(event.id, None) if event is not None else None
        errors: list[Exception] = []
        for i, reply in enumerate(replies):
            text = _with_suggestions(reply)
            if card is not None and i == 0:
                # the hub answers a failed or timed-out turn with a "system" apology
                shown = await (card.fail(text) if reply.source == "system" else card.finish(text))
                if shown:
                    continue
            target = Target.of(event, reply.to)
            try:
                await self.api.send(target, text, reply.markdown or has_markdown(text))
            except Exception as exc:
                log.error("DingTalk reply to %s failed: %s", reply.to.conversation_id, exc)
                errors.append(exc)
        if card is not None and not replies:
            await card.finish(card.latest)
        if errors:
            raise errors[0]


def _with_suggestions(reply: Reply) -> str:
    """DingTalk has no quick-reply buttons on plain messages: list the suggestions."""
    if not reply.quick_replies:
        return reply.text
    lines = [f"{i}. {q}" for i, q in enumerate(reply.quick_replies, 1)]
    return reply.text + "\n" + "\n".join(lines)
