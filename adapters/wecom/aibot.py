"""WeCom AI bot (智能机器人) callbacks and the ``stream`` refresh protocol.

The first callback for a message opens a stream and is answered at once with
its id; the hub's partial answers are written to a buffer in the shared KV
(so a refresh may land on any process); WeCom then polls with ``msgtype:
stream`` refresh callbacks and gets the text so far, until ``finish: true``
after the hub delivered. The stream id is derived from the conversation and
message id, so a redelivered first callback reopens the same stream.

:class:`AibotCallbacks` is the inbound half (gateways): it opens streams,
answers refreshes from the buffers and waits for event greetings, which come
back on the reply bus. :class:`AibotSender` is the outbound half (any worker):
it writes partial and final answers into the buffers, publishes greetings to
the waiting gateway, and sends proactive replies through the conversation's
latest response_url, kept in the KV by the gateway that received it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from adapters.render import as_markdown, markdown_of, text_of
from adapters.wecom.api import CallPolicy, WecomApiError
from adapters.wecom.crypto import WecomCrypto
from adapters.wecom.parse import aibot_event, aibot_stream_id
from bot import messages
from bot.http import HttpError
from bot.hub import Hub, Overloaded
from bot.outbound import OutboundPolicy, OutboundRefused
from bot.replybus import ReplyBus, ReplyWaiters, send_replies
from bot.state.keys import Keys
from bot.state.kv import SharedKV
from bot.text import split_utf8
from bot.types import ConversationRef, Event, EventKind, Reply, ReplyChunk

log = logging.getLogger(__name__)

STREAM_LIMIT_BYTES = 20480  # WeCom's limit on a stream's content
_RESPONSE_URL_TTL_S = 3500  # WeCom keeps a response_url usable for an hour
RESPONSE_URLS = OutboundPolicy.of(["qyapi.weixin.qq.com"])  # WeCom's own host, https on 443
BUS_TOPIC = "wecom.aibot.greeting"  # event greetings, worker -> the gateway whose callback waits


def stream_id(ref: ConversationRef, msg_id: str) -> str:
    return hashlib.sha256(f"{ref.key}:{msg_id}".encode()).hexdigest()[:32]


class StreamBuffers:
    """Answers in progress by stream id: ``{"content", "finish"}`` with a TTL."""

    def __init__(self, kv: SharedKV, keys: Keys, ttl_s: float) -> None:
        self.kv = kv
        self.keys = keys
        self.ttl_s = ttl_s

    async def open(self, sid: str) -> bool:
        return await self.kv.set_nx(self.keys.wecom_stream(sid), json.dumps({"content": "", "finish": False}),
                                    self.ttl_s)

    async def write(self, sid: str, content: str, finish: bool = False) -> None:
        content = split_utf8(content, STREAM_LIMIT_BYTES)[0] if content.strip() else ""
        value = json.dumps({"content": content, "finish": finish}, ensure_ascii=False)
        await self.kv.set(self.keys.wecom_stream(sid), value, self.ttl_s)

    async def read(self, sid: str) -> tuple[str, bool] | None:
        raw = await self.kv.get(self.keys.wecom_stream(sid))
        if raw is None:
            return None
        data = json.loads(raw)
        return str(data["content"]), bool(data["finish"])

    async def drop(self, sid: str) -> None:
        await self.kv.delete(self.keys.wecom_stream(sid))



class AibotCallbacks:
    """The AI bot's callbacks (gateways only)."""

    def __init__(self, crypto: WecomCrypto, hub: Hub, kv: SharedKV, keys: Keys, *, stream_ttl_s: float,
                 event_wait_s: float, bus: ReplyBus) -> None:
        self.crypto = crypto
        self.hub = hub
        self.kv = kv
        self.keys = keys
        self.buffers = StreamBuffers(kv, keys, stream_ttl_s)
        self.event_wait_s = event_wait_s
        self._waiters = ReplyWaiters(bus, BUS_TOPIC)  # event greetings come back from the worker that ran the turn

    async def handle(self, msg: dict[str, Any]) -> dict[str, Any] | None:
        """The plaintext reply to one decrypted callback, or None for an empty answer."""
        if (sid := aibot_stream_id(msg)) is not None:
            state = await self.buffers.read(sid)
            if state is None:  # expired or never ours: close it politely rather than let WeCom poll on
                log.info("WeCom AI bot refreshed an unknown stream %.40r", sid)
                return _stream(sid, messages.text("apology", "zh"), True)
            return _stream(sid, *state)
        event = aibot_event(msg)
        if event is None:
            event_type = msg["event"].get("eventtype") if isinstance(msg.get("event"), dict) else None
            log.info("WeCom AI bot event %.40r ignored", event_type)
            return None
        if url := event.channel_data.get("response_url"):
            await self.kv.set(self.keys.wecom_response_url(event.ref.key), url, _RESPONSE_URL_TTL_S)
        if event.kind is EventKind.EVENT:
            return await self._answer_event(event)
        sid = stream_id(event.ref, event.id)
        opened = await self.buffers.open(sid)
        try:
            accepted = await self.hub.accept(event)
        except Overloaded:
            if opened:
                await self.buffers.drop(sid)
            raise HttpError(503, "overloaded", "too many messages in flight; WeCom will retry") from None
        if not accepted:
            log.info("WeCom AI bot redelivered message %s; answering with its stream", event.id)
        state = await self.buffers.read(sid) or ("", False)
        return _stream(sid, *state)

    async def _answer_event(self, event: Event) -> dict[str, Any] | None:
        """Events (enter_chat) are answered in the callback itself, so wait briefly for the greeting."""
        with self._waiters.waiting(event.id) as fut:
            try:
                if not await self.hub.accept(event):
                    return None
            except Overloaded:
                raise HttpError(503, "overloaded", "too many messages in flight; WeCom will retry") from None
            try:
                replies = await asyncio.wait_for(asyncio.shield(fut), self.event_wait_s)
            except TimeoutError:
                log.warning("no greeting for WeCom AI bot event %s within %.1fs", event.id, self.event_wait_s)
                return None
        text = text_of(replies)
        return {"msgtype": "text", "text": {"content": text}} if text else None

    def close(self) -> None:
        self._waiters.cancel_all()

    def encrypted(self, reply: dict[str, Any] | None) -> web.Response:
        if reply is None:
            return web.Response(text="")
        sealed: dict[str, Any] = self.crypto.encrypt(json.dumps(reply, ensure_ascii=False))
        sealed["timestamp"] = int(sealed["timestamp"])
        return web.json_response(sealed)


class AibotSender:
    """AI-bot answers from whichever process ran the turn: everything it needs is in the KV or on the bus."""

    def __init__(self, kv: SharedKV, keys: Keys, policy: CallPolicy, *, stream_ttl_s: float, bus: ReplyBus,
                 response_urls: OutboundPolicy = RESPONSE_URLS) -> None:
        self.kv = kv
        self.keys = keys
        self.policy = policy
        self.buffers = StreamBuffers(kv, keys, stream_ttl_s)
        self.bus = bus
        self.response_urls = response_urls  # where a response_url (it comes inside the callback) may point

    async def stream(self, chunk: ReplyChunk) -> None:
        await self.buffers.write(stream_id(chunk.to, chunk.in_reply_to), chunk.text_so_far)

    async def finish(self, event: Event, replies: Sequence[Reply]) -> None:
        if event.kind is EventKind.EVENT:  # the gateway's callback waits for it
            await send_replies(self.bus, BUS_TOPIC, event, replies)
            return
        await self.buffers.write(stream_id(event.ref, event.id), markdown_of(replies), finish=True)

    async def send_proactive(self, reply: Reply) -> None:
        """A reply outside a callback (an agent's answer) through the conversation's
        latest one-shot response_url: only to a host :attr:`response_urls` allows, never
        redirected, and not repeated when the answer is unreadable (it may have arrived).
        The AI bot has no other route, so a refused URL is a failed send."""
        key = self.keys.wecom_response_url(reply.to.key)
        raw = await self.kv.get(key)
        if not raw:
            raise WecomApiError(-1, f"no usable response_url for {reply.to.key}", "aibot/response")
        await self.kv.delete(key)
        try:
            url = self.response_urls.check(raw)
        except OutboundRefused as exc:
            log.warning("WeCom AI bot response_url of %s refused: host %r, %s", reply.to.key, exc.host, exc.why)
            raise WecomApiError(-1, f"response_url refused ({exc.why})", "aibot/response") from None
        content = split_utf8(as_markdown(reply), STREAM_LIMIT_BYTES)[0]
        data = await self.policy.call("POST", url, "aibot/response", params={},
                                      json={"msgtype": "markdown", "markdown": {"content": content}}, once=True)
        code = data.get("errcode") or 0
        if code not in (0, "0"):
            raise WecomApiError(code if isinstance(code, int) else -1, str(data.get("errmsg", ""))[:200],
                                "aibot/response")

    async def erase(self, ref: ConversationRef) -> int:
        """Forget the conversation's response_url (in Redis mode the admin API has already deleted it)."""
        key = self.keys.wecom_response_url(ref.key)
        if await self.kv.get(key) is None:
            return 0
        await self.kv.delete(key)
        return 1


def _stream(sid: str, content: str, finish: bool) -> dict[str, Any]:
    return {"msgtype": "stream", "stream": {"id": sid, "finish": finish, "content": content}}
